"""vLLM V1 prefix caching: the hit rule, the LRU order, exactness of skip mode, the KV bound,
and the real Mooncake trace's reuse reproduced to the token."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_replay_support import LinearStepTime, real_step_time, record, run_rows

from tokenfleet.replay.replica import IDLE, Replica

REAL = real_step_time()
BIG = {"max_num_batched_tokens": 1 << 20, "max_num_seqs": 256}


def row(t: float, prompt: int, output: int, hashes=None, session=None) -> tuple:
    return (t, prompt, output, session, "standard", None, hashes)


def test_a_repeated_prompt_hits_all_but_its_last_block():
    """vLLM caps the hit at prompt - 1 tokens, rounded down to a block: a 64-token prompt sent
    again recomputes its last 16-token block; a 65-token one hits all 64 full-block tokens."""
    for prompt, hit in ((64, 48), (65, 64), (15, 0), (33, 32)):
        hashes = list(range(1, (prompt // 16) + 1))
        done, _, _ = run_rows(
            [row(0.0, prompt, 2, hashes), row(5.0, prompt, 2, hashes)], prefix_block_size=16
        )
        assert [s.cached_tokens for s in done] == [0, hit], prompt


def test_caching_off_gives_no_hits_and_the_full_prefill():
    rows = [row(0.0, 64, 2, [1, 2, 3, 4]), row(5.0, 64, 2, [1, 2, 3, 4])]
    on, _, _ = run_rows(rows, prefix_block_size=16, step_time=LinearStepTime())
    off, _, _ = run_rows(
        rows,
        prefix_block_size=16,
        settings={"enable_prefix_caching": False},
        step_time=LinearStepTime(),
    )
    assert [s.cached_tokens for s in off] == [0, 0]
    assert off[1].prefill_s > on[1].prefill_s  # 64 prompt tokens computed instead of 16
    assert on[1].first_token_s - on[1].arrival_s < off[1].first_token_s - off[1].arrival_s


def test_reverse_order_return_decides_which_blocks_survive():
    """A frees blocks 1-4 in reverse, so the queue holds [6 never used][4][3][2][1]. B's 8 new
    blocks take the 6 unused ones, then 4 and 3: A's first two blocks survive, and C, which
    repeats A's prompt, hits exactly those (forward order would have kept 3 and 4, useless to
    a chain lookup)."""
    rows = [
        row(0.0, 64, 1, [1, 2, 3, 4]),  # A: 4 blocks, finishes at the end of its prefill
        row(1.0, 128, 1, list(range(11, 19))),  # B: 8 distinct blocks
        row(2.0, 80, 1, [1, 2, 3, 4, 5]),  # C: A's prompt and one more block
    ]
    done, _, reps = run_rows(rows, kv_blocks=10, prefix_block_size=16)
    assert [s.cached_tokens for s in done] == [0, 0, 32]
    assert reps[0].prefix.evicted_blocks >= 2


def test_a_session_turn_hits_the_previous_turns_prompt_and_output():
    """Without hashes, a session's turns are one growing stream: turn 2 re-sends turn 1's
    100-token prompt and 30-token output, whose KV (all but the last output token's, 129
    tokens: 8 full blocks) is cached when turn 1 finishes."""
    rows = [row(0.0, 100, 30, session=7), row(10.0, 200, 5, session=7), row(20.0, 200, 5)]
    done, _, _ = run_rows(rows)
    assert [s.cached_tokens for s in done] == [0, 128, 0]


def test_cached_blocks_shared_by_running_requests_count_once():
    """Three requests arriving together share a 10-block prefix: the first registers it when
    it is scheduled, so the other two hit it in the same step (as in vLLM V1), and at their
    last step they hold 10 + 3 x 5 blocks, not 3 x 15 (each has 2 blocks of its own prompt
    and 3 of output: 192 + 39 tokens with KV)."""
    shared = list(range(1, 11))
    rows = [row(0.0, 192, 40, shared + [100 + 10 * k, 101 + 10 * k]) for k in range(3)]
    done, timeline, _ = run_rows(rows, prefix_block_size=16)
    assert [s.cached_tokens for s in done] == [0, 160, 160]
    assert max(r[2].kv_peak_blocks for r in timeline) == 10 + 3 * 5


# --- exactness and bounds under pressure ------------------------------------------------------

shared_requests = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05, 0.3]),
        st.integers(0, 3),  # which of four system prompts (0-3 blocks of 16 tokens) it starts with
        st.integers(1, 200),  # its own tokens after that
        st.integers(0, 120),
        st.sampled_from([None, None, 1, 2]),  # a session
    ),
    min_size=1,
    max_size=25,
)


def _rows(reqs, block: int, nested: bool = False) -> list[tuple]:
    """Rows with hashes in trace blocks of `block` tokens. The system prompts are four apart,
    or (`nested`) each the start of the next, so that one request's chain of ids parts from
    another's inside it."""
    rows, t = [], 0.0
    for i, (gap, system, own, output, session) in enumerate(reqs):
        t += gap
        prompt = system * block + own
        first = 1000 * (0 if nested else system)
        hashes = [first + k for k in range(system)]  # shared system-prompt blocks
        hashes += [10_000 * (i + 1) + k for k in range(prompt // block - system)]
        rows.append(row(t, prompt, output, hashes or None, session))
    return rows


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=shared_requests,
    kv_blocks=st.integers(16, 120),
    max_seqs=st.integers(1, 8),
    replicas=st.integers(1, 2),
    balancer=st.sampled_from(["round-robin", "least-kv", "session"]),
    trace_block=st.sampled_from([16, 16, 64]),
    nested=st.booleans(),
)
@example(  # a head that does not fit, looked up again every step only in step-by-step mode
    reqs=[(0, 0, 186, 73, None), (0.001, 0, 128, 65, 2), (0.01, 0, 71, 96, None),
          (0.05, 2, 48, 62, 2), (0.01, 2, 155, 26, 2), (0.001, 2, 121, 114, None),
          (0.05, 0, 10, 91, 1), (0, 0, 174, 24, 1), (0.3, 3, 100, 93, 1), (0.001, 3, 18, 105, 1),
          (0, 3, 72, 2, None), (0, 2, 55, 73, 2), (0, 0, 30, 16, 2), (0, 2, 32, 44, None),
          (0, 0, 118, 81, None)],
    kv_blocks=37, max_seqs=5, replicas=1, balancer="round-robin", trace_block=16, nested=False,
)  # fmt: skip
def test_skip_mode_equals_step_by_step_with_caching_under_pressure(
    reqs, kv_blocks, max_seqs, replicas, balancer, trace_block, nested
):
    """Shared prefixes and sessions through a cache small enough to evict and preempt: both
    modes give the same records, every request ends once, referenced blocks never exceed the
    capacity, and the cache's structure stays sound after every event (spans of trace ids
    included: trace blocks of 1 or 4 engine blocks, chains that part inside a span)."""
    rows = _rows(reqs, trace_block, nested)
    checked = []
    plain = Replica.on_event

    def checking(self, now):
        nt = plain(self, now)
        kv = self.kv
        used = kv.other_blocks + kv.decoder_blocks(self.step_no + (self.state != IDLE))
        assert used <= kv.capacity_blocks
        self.prefix.check(used, kv.capacity_blocks)
        checked.append(1)
        return nt

    common = dict(
        settings={"max_num_seqs": max_seqs, "max_num_batched_tokens": 64},
        kv_blocks=kv_blocks,
        replicas=replicas,
        balancer=balancer,
        prefix_block_size=trace_block,
        step_time=REAL,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Replica, "on_event", checking)
        fast, _, fast_reps = run_rows(rows, **common)
        slow, _, _ = run_rows(rows, step_by_step=True, **common)
    assert [record(s) for s in fast] == [record(s) for s in slow]
    assert [s.row for s in fast] == list(range(len(rows)))
    for s in fast:
        assert 0 <= s.cached_tokens < max(s.prompt_tokens, 1)
    for rep in fast_reps:
        assert rep.kv.used_blocks(rep.step_no) == 0
        rep.prefix.flush(kv_blocks)  # the allocations not yet applied: every block is free
        rep.prefix.check(0, kv_blocks)
        assert not any(g.holders for g in rep.prefix.groups.values())
    assert checked or all(s.status == "too_long" for s in fast)


# --- the real Mooncake trace --------------------------------------------------------------------


def test_mooncake_cached_tokens_equal_the_traces_reuse_to_the_token(mooncake_rows):
    """One replica whose cache outlasts the trace: every request's hit is the longest run of
    16-token blocks, from its start, that an earlier request's prompt held (block j of trace
    block b is known by (hash b, j)), capped at prompt - 1 tokens, computed here without the
    simulator."""
    seen: set = set()
    expected = []
    for _t, prompt, _o, _s, _tier, _tenant, hashes in mooncake_rows:
        full = min(len(hashes) * 512, prompt) // 16  # blocks the trace's hashes cover
        keys = [(hashes[j // 32], j % 32) for j in range(full)]
        hit = 0
        while hit < min(full, (prompt - 1) // 16) and keys[hit] in seen:
            hit += 1
        expected.append(16 * hit)
        seen.update(keys)
    done, _, reps = run_rows(
        mooncake_rows, kv_blocks=4_000_000, prefix_block_size=512, settings=BIG
    )
    assert reps[0].prefix.evicted_blocks == 0
    assert [s.cached_tokens for s in done] == expected
    assert sum(expected) > 0.6 * sum(r[1] for r in mooncake_rows)  # 65%: not a corner case


def test_caching_on_changes_nothing_on_the_azure_conv_trace(conv_lengths):
    """The Azure conversation trace has no prefix hashes and no sessions: with the cache on
    (vLLM's default) every request's record equals the record with it off while nothing is
    preempted. Under KV pressure a preempted request resumes on its own cached blocks, as
    vLLM V1's do, so it recomputes less and the records part."""
    prompts, outputs = conv_lengths
    rows = [
        (i * 0.02, int(p), int(o))
        for i, (p, o) in enumerate(zip(prompts[:600], outputs[:600], strict=True))
    ]
    runs = {}
    for kv_blocks in (100_000, 2_000):
        for caching in (True, False):
            runs[kv_blocks, caching], _, _ = run_rows(
                rows,
                kv_blocks=kv_blocks,
                replicas=2,
                step_time=REAL,
                settings={"enable_prefix_caching": caching},
            )
    roomy_on, roomy_off = runs[100_000, True], runs[100_000, False]
    assert not any(s.preemptions for s in roomy_on)
    assert [record(s) for s in roomy_on] == [record(s) for s in roomy_off]
    tight_on, tight_off = runs[2_000, True], runs[2_000, False]
    assert any(s.preemptions for s in tight_off)
    assert sum(s.prefill_s for s in tight_on) < sum(s.prefill_s for s in tight_off)
