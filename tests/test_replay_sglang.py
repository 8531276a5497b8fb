"""The sglang batcher and its radix cache: hand-built cases for each rule, exactness of skip
mode under eviction and retraction, and the Mooncake trace's reuse counted independently."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_replay_support import real_step_time, record, run_rows

from tokenfleet.errors import UserError
from tokenfleet.replay.batcher import make_batcher
from tokenfleet.replay.radix import RadixCache
from tokenfleet.replay.request import Seq

REAL = real_step_time()


def row(t: float, prompt: int, output: int, hashes=None, session=None) -> tuple:
    return (t, prompt, output, session, "standard", None, hashes)


def sg(rows, **kw):
    kw.setdefault("block_size", kw.get("settings", {}).get("page_size", 1))
    kw.setdefault("prefix_block_size", 16)
    return run_rows(rows, batcher="sglang", **kw)


# --- the radix cache alone ------------------------------------------------------------------


def seq(row_id: int, prompt: int, hashes: list[int]) -> Seq:
    return Seq(row_id, 0.0, prompt, 1, hashes=hashes)


def tree(policy: str = "lru") -> RadixCache:
    return RadixCache(1000, 1, 16, policy)


def insert(cache: RadixCache, s: Seq) -> None:
    cache._insert(cache.key(s, s.prompt_tokens), s.prompt_tokens)


def test_eviction_never_takes_a_locked_node():
    cache = tree()
    a, b = seq(0, 32, [1, 2]), seq(1, 32, [3, 4])
    insert(cache, a)
    insert(cache, b)
    hit, node = cache.match(a, 33)
    assert hit == 32
    cache.lock(a, node, hit)
    assert cache.evict(1000) == 32  # only b's 32 tokens could go
    assert cache.match(a, 33)[0] == 32 and cache.match(b, 33)[0] == 0
    cache.check()


def test_lru_and_lfu_pick_different_victims():
    """a is hit twice long ago, b once recently: lru evicts a (older access), lfu evicts b
    (fewer hits)."""
    victims = {}
    for policy in ("lru", "lfu"):
        cache = tree(policy)
        a, b = seq(0, 16, [1]), seq(1, 16, [2])
        insert(cache, a)
        insert(cache, b)
        cache.match(a, 17)
        cache.match(a, 17)
        cache.match(b, 17)
        cache.evict(1)
        victims[policy] = "a" if cache.match(a, 17)[0] == 0 else "b"
    assert victims == {"lru": "a", "lfu": "b"}


def test_a_match_is_cut_to_whole_pages_and_splits_the_node():
    cache = RadixCache(1000, 4, 16)
    insert(cache, seq(0, 16, [1]))
    other = seq(1, 11, [1])  # the same first trace block, 11 tokens: the key is 10, 8 in pages
    hit, node = cache.match(other, 11)
    assert hit == 8 and node.end == 8 and len(cache.root.children) == 1
    cache.check()


# --- scheduling --------------------------------------------------------------------------------


def test_repeated_prompt_hits_all_but_one_token_page_truncated():
    """SGLang matches the first prompt - 1 tokens, cut to pages: with page 1 a repeated
    64-token prompt hits 63; with page 16, 48."""
    for page, hit in ((1, 63), (16, 48)):
        rows = [row(0.0, 64, 2, [1, 2, 3, 4]), row(5.0, 64, 2, [1, 2, 3, 4])]
        done, _, _ = sg(rows, settings={"page_size": page})
        assert [s.cached_tokens for s in done] == [0, hit], page


def test_lpm_serves_the_longest_cached_match_first():
    """A warms the cache with block 1-4; while B (long, busy) runs, C (no hit) and D (A's
    prompt) queue. lpm admits D before C; fcfs keeps arrival order."""
    rows = [
        row(0.0, 64, 1, [1, 2, 3, 4]),
        row(1.0, 2000, 5, list(range(100, 225))),
        row(1.001, 64, 1, [50, 51, 52, 53]),
        row(1.002, 65, 1, [1, 2, 3, 4]),
    ]
    starts = {}
    for policy in ("fcfs", "lpm"):
        done, _, _ = sg(rows, settings={"schedule_policy": policy, "chunked_prefill_size": 512})
        starts[policy] = done[2].start_s < done[3].start_s
        if policy == "lpm":
            assert done[3].cached_tokens == 64
    assert starts == {"fcfs": True, "lpm": False}


def test_lpm_falls_back_to_fcfs_above_128_waiting():
    """129 requests wait behind a long prefill, the hot one (A's prompt, cached) last; a round
    admits about ten (max_prefill_tokens 640). Above 128 waiting lpm keeps arrival order, so
    the hot request misses the first round; with 101 waiting it sorts first and makes it."""
    rows = [row(0.0, 64, 1, [1, 2, 3, 4]), row(1.0, 4000, 5, list(range(100, 350)))]
    rows += [row(1.001 + i * 1e-6, 64, 1, [1000 + i]) for i in range(128)]
    rows.append(row(1.01, 65, 1, [1, 2, 3, 4]))
    settings = {"schedule_policy": "lpm", "chunked_prefill_size": 512, "max_prefill_tokens": 640}
    for queue, hot_first in ((rows, False), (rows[:102] + rows[-1:], True)):
        done, _, _ = sg(queue, settings=settings)
        first_round = min(s.start_s for s in done[2:])
        assert (done[-1].start_s == first_round) is hot_first, len(queue)
        assert done[-1].cached_tokens == 64


def test_in_batch_prefix_check_prefills_a_shared_prefix_once():
    """A1-A4 share 64 uncached tokens; U is unrelated; a round admits two (max_prefill_tokens
    200). Under lpm the in-batch check holds A2-A4 back behind U, so all three hit A1's prefix
    in the next round; under fcfs A2 prefills it again beside A1 and only A3 and A4 hit."""
    shared = [1, 2, 3, 4]
    rows = [row(0.0, 80, 2, shared + [10 + k]) for k in range(4)]
    rows.append(row(0.0, 80, 2, [90, 91, 92, 93, 94]))
    settings = {"max_prefill_tokens": 200}
    lpm, _, _ = sg(rows, settings={**settings, "schedule_policy": "lpm"})
    fcfs, _, _ = sg(rows, settings={**settings, "schedule_policy": "fcfs"})
    assert [s.cached_tokens for s in lpm] == [0, 64, 64, 64, 0]
    assert [s.cached_tokens for s in fcfs] == [0, 0, 64, 64, 0]
    assert lpm[4].start_s == lpm[0].start_s < lpm[1].start_s  # U went in with A1


def test_new_token_ratio_decays_per_decode_step_and_resets_when_idle():
    batcher = make_batcher("sglang", {})
    assert batcher.ratio(0) == pytest.approx(0.7)
    assert batcher.ratio(300) == pytest.approx(0.7 - 300 * (0.7 - 0.098) / 600)
    assert batcher.ratio(10_000) == pytest.approx(0.098)
    done, _, reps = sg([row(0.0, 50, 100), row(10.0, 50, 5)])
    b = reps[0].batcher
    # The second request found the replica idle: the ratio restarted at 0.7 from there.
    assert b.base_ratio == pytest.approx(0.7) and b.base_step == 99
    assert b.ratio(reps[0].step_no) == pytest.approx(0.7 - 4 * b.decay)


def test_retraction_takes_fewest_outputs_then_longest_prompt_and_sets_the_ratio():
    """R0 decodes alone, then R1 (60-token prompt) and R2 (50) are admitted together; when the
    decoders' next tokens no longer fit, the one with the fewest outputs goes, and between R1
    and R2 (equal outputs) the longer prompt, R1. With a smaller cache R1, admitted alone
    beside R0, has fewer outputs than R0 and goes. After a retraction the ratio jumps up from
    its decayed value: min(1, (outputs + 20 n) / (max_new + 1)) of the survivors."""
    rows = [row(0.0, 40, 100), row(0.5, 60, 60), row(0.5, 50, 60)]
    for kv, together in ((355, True), (250, False)):
        done, _, reps = sg(rows, kv_blocks=kv, settings={"schedule_policy": "fcfs"})
        assert [s.preemptions for s in done] == [0, 1, 0], kv
        assert (done[1].start_s == done[2].start_s) is together
        b = reps[0].batcher
        assert b.base_ratio == 1.0  # up from at most 0.7 before it


def test_prefill_steps_hold_no_decodes():
    """While a long prompt prefills in chunks, the running request makes no progress."""
    rows = [row(0.0, 10, 50), row(0.05, 40_000, 1)]
    done, _, _ = sg(rows, settings={"chunked_prefill_size": 4096})
    short, long = done
    assert long.finish_s < short.finish_s  # it waited for the whole prefill


def test_bad_settings_are_one_line_user_errors():
    bad = (
        {"schedule_policy": "lof"},
        {"radix_eviction_policy": "fifo"},
        {"page_size": 0},
        {"max_running_requests": 0},
        {"chunked_prefill_size": 0},
    )
    for values in bad:
        with pytest.raises(UserError) as err:
            make_batcher("sglang", values)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="page_size"):
        sg([row(0.0, 10, 1)], block_size=16)


# --- exactness under pressure -------------------------------------------------------------------

shared_requests = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05, 0.3]),
        st.integers(0, 3),  # which of four system prompts (0-3 blocks of 16 tokens)
        st.integers(1, 200),
        st.integers(0, 120),
        st.sampled_from([None, None, 1, 2]),
    ),
    min_size=1,
    max_size=25,
)


def _rows(reqs) -> list[tuple]:
    rows, t = [], 0.0
    for i, (gap, system, own, output, session) in enumerate(reqs):
        t += gap
        prompt = system * 16 + own
        hashes = [1000 * system + k for k in range(system)]
        hashes += [10_000 * (i + 1) + k for k in range(prompt // 16 - system)]
        rows.append(row(t, prompt, output, hashes or None, session))
    return rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=shared_requests,
    kv_tokens=st.integers(330, 2000),
    page=st.sampled_from([1, 1, 4, 16]),
    max_running=st.integers(1, 8),
    policy=st.sampled_from(["fcfs", "lpm", "dfs-weight"]),
    eviction=st.sampled_from(["lru", "lfu"]),
    chunk=st.sampled_from([64, 8192]),
)
def test_skip_mode_equals_step_by_step_under_eviction_and_retraction(
    reqs, kv_tokens, page, max_running, policy, eviction, chunk
):
    rows = _rows(reqs)
    common = dict(
        settings={
            "max_running_requests": max_running,
            "schedule_policy": policy,
            "radix_eviction_policy": eviction,
            "page_size": page,
            "chunked_prefill_size": chunk,
            "in_batch_prefix_caching_check_threshold": 16,
            "in_batch_prefix_caching_deprioritize_threshold": 16,
        },
        kv_blocks=kv_tokens // page,
        step_time=REAL,
    )
    fast, fast_tl, reps = sg(rows, **common)
    slow, slow_tl, _ = sg(rows, step_by_step=True, **common)
    assert [record(s) for s in fast] == [record(s) for s in slow]
    assert [s.row for s in fast] == list(range(len(rows)))
    assert all(r[2].kv_peak_blocks <= kv_tokens // page for r in fast_tl + slow_tl)
    for s in fast:
        assert 0 <= s.cached_tokens < max(s.prompt_tokens, 1)
    for rep in reps:
        assert rep.kv.used_blocks(rep.step_no) == 0
        rep.prefix.check()
        assert rep.prefix.evictable == rep.prefix.cached_blocks * page  # nothing locked


# --- the real Mooncake trace --------------------------------------------------------------------


def test_mooncake_hits_equal_the_traces_reuse(mooncake_rows):
    """A cache that outlasts the trace: each hit is the longest run of 512-token trace blocks
    an earlier request's prompt held, token by token (a block's first k tokens are shared by
    prompts with the same hash), capped at prompt - 1 tokens. fcfs with chunking never has
    two requests with the same uncached prefix in one batch except in its first round, so
    the count reads prompts in admission order: arrival order."""
    seen: dict = {}  # hash -> the most tokens of its block an earlier prompt held
    expected = []
    for _t, prompt, _o, _s, _tier, _tenant, hashes in mooncake_rows:
        cap = prompt - 1
        hit = 0
        for b, h in enumerate(hashes):
            have = seen.get(h, 0)
            take = min(have, cap - 512 * b)
            if take <= 0:
                break
            hit += take
            if take < 512:
                break
        expected.append(hit)
        for b, h in enumerate(hashes):
            seen[h] = max(seen.get(h, 0), min(512, prompt - 512 * b))
    done, _, reps = sg(
        mooncake_rows,
        kv_blocks=40_000_000,
        prefix_block_size=512,
        settings={"max_running_requests": 1},
    )
    assert reps[0].prefix.evicted_blocks == 0
    assert [s.cached_tokens for s in done] == expected
    assert sum(expected) > 0.6 * sum(r[1] for r in mooncake_rows)
