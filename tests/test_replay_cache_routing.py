"""Cache-aware balancers (replay/cache_routing.py): the real Mooncake trace's hits and TTFT
against load-only routing, cache-aware's imbalance rule against least-requests, each policy's
rule on hand-built states, and bad settings."""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_replay_support import real_step_time, run_rows

from tokenfleet.errors import UserError
from tokenfleet.replay.balancer import BUILTIN_BALANCERS, Router, make_balancer
from tokenfleet.replay.cache_routing import CACHE_BALANCERS

# --- the real Mooncake trace ------------------------------------------------------------------

# 8 replicas of 100,000 16-token blocks (1.6M tokens each): a good share of the trace's reuse
# fits, not all of it (round-robin hits 15% of prompt tokens, one endless cache 65%).
FLEET = {"replicas": 8, "kv_blocks": 100_000, "prefix_block_size": 512}


@pytest.fixture(scope="module")
def mooncake_runs(mooncake_rows) -> dict[str, tuple[float, float]]:
    """(cached share of prompt tokens, mean TTFT) per balancer, all 3,993 requests (under a
    second a run)."""
    step_time = real_step_time()
    prompt = sum(r[1] for r in mooncake_rows)
    out = {}
    for name in ("round-robin", "least-requests", *CACHE_BALANCERS):
        done, _, _ = run_rows(mooncake_rows, balancer=name, step_time=step_time, **FLEET)
        served = [s for s in done if s.first_token_s is not None]
        assert len(served) == len(mooncake_rows)
        ttft = sum(s.first_token_s - s.arrival_s for s in served) / len(served)
        out[name] = (sum(s.cached_tokens for s in done) / prompt, ttft)
    return out


def test_cache_aware_hits_more_and_answers_sooner_than_load_only_routing(mooncake_runs):
    hit, ttft = mooncake_runs["cache-aware"]
    for baseline in ("round-robin", "least-requests"):
        base_hit, base_ttft = mooncake_runs[baseline]
        assert hit > 2 * base_hit, (baseline, hit, base_hit)  # 62% against 15%
        assert ttft < base_ttft, (baseline, ttft, base_ttft)


@pytest.mark.parametrize("name", ["prefix-affinity", "precise-prefix", "kv-router"])
def test_every_cache_policy_beats_least_requests_on_mooncake(mooncake_runs, name):
    hit, ttft = mooncake_runs[name]
    base_hit, base_ttft = mooncake_runs["least-requests"]
    assert hit > 2 * base_hit and ttft < base_ttft, (name, mooncake_runs)


def test_cache_aware_always_imbalanced_picks_what_least_requests_picks(mooncake_rows):
    """abs 0 and rel 1 make every state with unequal loads imbalanced: the least loaded wins,
    by the same round-robin tie-break as least-requests. At an exact tie (the only balanced
    state) the cache path runs; the rows carry no hashes, so nothing is keyed, nothing
    matches and every tree stays empty, and the smallest tree is the tie-break pointer's
    replica, least-requests' choice too. With the default thresholds the same rows diverge,
    so the comparison can fail."""
    rows = [r[:6] + (None,) for r in mooncake_rows[:1500]]
    kw = {"step_time": real_step_time(), **FLEET}

    def choices(balancer, settings=None):
        done, _, _ = run_rows(rows, balancer=balancer, balancer_settings=settings, **kw)
        return [s.replica for s in done]

    least = choices("least-requests")
    strict = {"balance_abs_threshold": 0, "balance_rel_threshold": 1.0}
    assert choices("cache-aware", strict) == least
    assert choices("cache-aware") != least


# --- hand-built states --------------------------------------------------------------------------


def seq(prompt: int, hashes=None, session=None, start_s=None):
    return SimpleNamespace(prompt_tokens=prompt, hashes=hashes, session_id=session, start_s=start_s)


def plain_replicas(n: int) -> list:
    return [SimpleNamespace(prefix=None) for _ in range(n)]


def test_cache_aware_follows_a_long_shared_prefix_and_sends_new_ones_to_the_smallest_tree():
    out = [0, 0, 0]
    b = make_balancer("cache-aware", {}, plain_replicas(3), out, 0)
    a = list(range(1, 9))  # 8 trace blocks of 512 tokens
    assert b.pick(seq(4096, a), 0.0) == 0  # empty trees: the pointer's replica
    assert b.pick(seq(4096, a[:6] + [20, 21]), 1.0) == 0  # 6/8 matched > 0.3
    assert b.size == [10 * 512, 0, 0]
    assert b.pick(seq(4096, list(range(100, 108))), 2.0) == 1  # new: smallest tree
    assert b.pick(seq(4096, a[:2] + [30 + k for k in range(6)]), 3.0) == 2  # 2/8 = 0.25
    out[:] = [60, 0, 0]  # 60 - 0 <= 64: balanced, the prefix wins
    assert b.pick(seq(4096, a), 4.0) == 0
    out[:] = [100, 0, 0]  # 100 - 0 > 64 and 100 > 1.5 * 0: least loaded, prefix still inserted
    i = b.pick(seq(4096, a), 5.0)
    assert i in (1, 2) and set(a) <= set(b.tenant_keys(i))


def test_cache_aware_evicts_least_recently_used_leaves_at_the_interval():
    b = make_balancer(
        "cache-aware",
        {"max_tree_size": 8 * 512, "eviction_interval_s": 1.0},
        plain_replicas(2),
        [0, 0],
        0,
    )
    assert b.pick(seq(4096, list(range(1, 9))), 0.0) == 0
    assert b.pick(seq(4096, [1, 2, 3, 4, 30, 31, 32, 33]), 0.5) == 0  # 4/8 matched
    assert b.size[0] == 12 * 512  # over, but nothing is evicted before t = 1
    assert b.pick(seq(4096, [1, 2, 3, 4, 30, 31, 32, 33]), 0.7) == 0
    b.pick(seq(100), 1.0)
    # The second pick's match refreshed the partly matched node [1..8] whole (prefix_match
    # stamps the last node it reaches), then its insert split it: [1..4] -> [5..8] (t=0.5),
    # [30..33] (t=0.7, refreshed by the third). The older leaf goes whole, to the size.
    assert sorted(b.tenant_keys(0)) == [1, 2, 3, 4, 30, 31, 32, 33]
    assert b.size[0] == 8 * 512 and 8 not in b.tenant_keys(1)
    assert b.match(list(range(1, 9)))[0] == 4  # the evicted node left the shared tree


def test_cache_aware_evicts_whole_nodes_and_keeps_other_replicas_parts():
    """Eviction takes a replica's least recently used leaf node whole, even past the size
    (the source's rule), and leaves a node other replicas hold."""
    b = make_balancer(
        "cache-aware",
        {"max_tree_size": 6 * 512, "eviction_interval_s": 1.0, "cache_threshold": 0.9},
        plain_replicas(2),
        [0, 0],
        0,
    )
    shared = list(range(1, 5))
    assert b.pick(seq(4096, shared + [10, 11, 12, 13]), 0.0) == 0
    assert b.pick(seq(4096, shared + [20, 21, 22, 23]), 0.1) == 1  # 4/8 < 0.9: smallest tree
    assert b.pick(seq(4096, shared + [10, 11, 12, 13]), 0.2) == 0  # 8/8 matched
    assert b.size == [8 * 512, 8 * 512]
    b.pick(seq(100), 1.0)  # both over 6: each loses its one leaf, 4 blocks
    assert sorted(b.tenant_keys(0)) == shared and sorted(b.tenant_keys(1)) == shared
    assert b.size == [4 * 512, 4 * 512]
    assert b.match(shared + [10])[0] == 4


def test_prefix_affinity_adds_weighted_prefix_and_queue_scores():
    out = [1, 0]
    b = make_balancer("prefix-affinity", {}, plain_replicas(2), out, 0)
    a = list(range(1, 9))
    assert b.pick(seq(4096, a), 0.0) == 1  # no prefix anywhere: the shorter queue
    out[:] = [0, 2]
    # replica 1 holds all 256 blocks: 2 * 1.0 + 1 * 0.0 against 2 * 0.0 + 1 * 1.0
    assert b.scores(seq(4096, a), 1.0) == [1.0, 2.0]
    # half the blocks: 2 * 0.5 + 0 = 1.0 each, a tie
    assert b.scores(seq(4096, a[:4] + [50, 51, 52, 53]), 1.0) == [1.0, 1.0]
    # 16 trace blocks, capped at 256 x 16 tokens = the first 8: a full match
    assert b.scores(seq(8192, a + list(range(60, 68))), 1.0) == [1.0, 2.0]
    light = make_balancer("prefix-affinity", {"prefix_weight": 0.5}, plain_replicas(2), [1, 0], 0)
    light.pick(seq(4096, a), 0.0)
    light.outstanding[:] = [0, 2]
    assert light.scores(seq(4096, a), 1.0) == [1.0, 0.5]
    assert light.pick(seq(4096, a), 1.0) == 0  # the queue outweighs half a prefix point


def test_prefix_affinity_forgets_the_oldest_blocks_past_its_capacity():
    b = make_balancer(
        "prefix-affinity", {"lru_capacity_per_server": 64}, plain_replicas(2), [1, 0], 0
    )
    b.pick(seq(4096, list(range(1, 9))), 0.0)  # to replica 1, whose LRU keeps 2 keys: 7 and 8
    assert list(b.lrus[1]) == [7, 8]
    assert b.prefix_scores(seq(4096, list(range(1, 9))), list(range(1, 9))) == [0.0, 0.0]


def fake_cached(blocks: int):
    return SimpleNamespace(
        block_size=16, trace_block=512, cached_prompt_blocks=lambda s, n=blocks: n
    )


def test_kv_router_reproduces_the_dynamo_worked_example():
    """10 request blocks; cached 2, 5, 8; active 10, 5, 9: costs 8 + 10, 5 + 5, 2 + 9."""
    reps = [
        SimpleNamespace(
            prefix=fake_cached(cached),
            kv=SimpleNamespace(capacity_blocks=100, block_size=16),
            kv_used_at=lambda now, d=active: d / 100,
        )
        for cached, active in ((2, 10), (5, 5), (8, 9))
    ]
    b = make_balancer("kv-router", {}, reps, [0, 0, 0], 0)
    request = seq(160, [1])
    assert b.costs(request, 0.0) == [18, 10, 11]
    assert b.pick(request, 0.0) == 1
    heavy = make_balancer("kv-router", {"overlap_score_weight": 2.0}, reps, [0, 0, 0], 0)
    assert heavy.costs(request, 0.0) == [26, 15, 13]
    assert heavy.pick(request, 0.0) == 2


def test_precise_prefix_sees_a_stored_block_only_after_the_delay():
    held = {0: 0, 1: 0}
    reps = [
        SimpleNamespace(
            prefix=SimpleNamespace(
                block_size=16, trace_block=512, cached_prompt_blocks=lambda s, i=i: held[i]
            )
        )
        for i in range(2)
    ]
    out = [1, 0]
    b = make_balancer("precise-prefix", {}, reps, out, 0)  # delay 0.05 s
    first = seq(1024, [1, 2])
    assert b.pick(first, 0.0) == 1  # nothing cached: the shorter queue
    held[1] = 64  # its 2 trace blocks, 64 engine blocks, stored when it starts
    out[:] = [0, 1]
    again = seq(1024, [1, 2])
    assert b.raw_scores(again, 5.0, [1, 2]) == [0, 0]  # routed, never started: no event
    first.start_s = 1.0
    assert b.raw_scores(again, 1.04, [1, 2]) == [0, 0]
    assert b.pick(again, 1.04) == 0  # unseen: the queue decides
    assert b.raw_scores(again, 1.06, [1, 2]) == [0, 64]
    assert b.scores(again, 1.06) == [1.0, 2.0]  # 2 * 0 + 1 against 2 * 1 + 0
    assert b.pick(again, 1.06) == 1


# --- settings -----------------------------------------------------------------------------------


def test_the_cache_policies_are_built_in():
    for name in CACHE_BALANCERS:
        assert BUILTIN_BALANCERS[name] is CACHE_BALANCERS[name]


@pytest.mark.parametrize(
    ("name", "settings", "words"),
    [
        ("cache-aware", {"cache_threshold": -0.1}, "cache_threshold = -0.1 must be in [0.0, 1.0]"),
        ("cache-aware", {"balance_abs_threshold": -1}, "balance_abs_threshold = -1 must be"),
        ("cache-aware", {"balance_rel_threshold": 0.5}, "balance_rel_threshold = 0.5 must be"),
        ("cache-aware", {"eviction_interval_s": -1.0}, "eviction_interval_s = -1.0 must be"),
        ("cache-aware", {"max_tree_size": 0}, "max_tree_size = 0 must be"),
        ("prefix-affinity", {"queue_weight": -1.0}, "queue_weight = -1.0 must be"),
        ("prefix-affinity", {"block_size_tokens": 0}, "block_size_tokens = 0 must be"),
        ("precise-prefix", {"precise_weight": -2.0}, "precise_weight = -2.0 must be"),
        ("precise-prefix", {"cache_signal_delay_s": -0.1}, "cache_signal_delay_s = -0.1 must"),
        ("kv-router", {"overlap_score_weight": -0.5}, "overlap_score_weight = -0.5 must be"),
        ("kv-router", {"overlap_weight": 1.0}, "unknown setting 'overlap_weight'"),
        ("cache-aware", {"cache_treshold": 0.3}, "unknown setting 'cache_treshold'"),
        ("prefix-affinity", {"max_prefix_blocks": 2.5}, "max_prefix_blocks = 2.5 should be"),
    ],
)
def test_bad_settings_are_one_line_user_errors(name, settings, words):
    with pytest.raises(UserError) as err:
        make_balancer(name, settings, plain_replicas(2), [0, 0], 0)
    message = str(err.value)
    assert words in message and "\n" not in message, message
    assert f"balancer {name!r}" in message


def router_replicas(n: int) -> list:
    return [SimpleNamespace(prefix=None, views=[]) for _ in range(n)]


def test_a_rebuilt_router_keeps_what_it_learned_of_the_replicas_that_stay():
    """An autoscaler adding a replica rebuilds the router: the cache-aware tree follows the
    staying replicas to their new positions, and a replica that leaves takes its part."""
    out = [0, 0, 0]
    router = Router("cache-aware", {}, router_replicas(3), out, 0)
    router.set_members([1, 2])
    a, b = list(range(1, 9)), list(range(50, 58))
    assert router.pick(seq(4096, a), 0.0) == 1
    assert router.pick(seq(4096, b), 0.1) == 2  # new prompt: the smaller tree
    router.set_members([0, 1, 2])  # replica 0 joins; 1 and 2 move to positions 1 and 2
    assert router.pick(seq(4096, a), 0.2) == 1 and router.pick(seq(4096, b), 0.3) == 2
    router.set_members([0, 2])  # replica 1 leaves: its prefix is forgotten, 2's is kept
    assert router.balancer.match(a) == (0, None)
    assert router.pick(seq(4096, b), 0.4) == 2


@pytest.mark.parametrize("name", ["prefix-affinity", "precise-prefix"])
def test_rebuilt_scorers_keep_their_replicas_maps(name):
    out = [0, 0, 0]
    router = Router(name, {}, router_replicas(3), out, 0)
    router.set_members([1, 2])
    router.pick(seq(4096, list(range(1, 9))), 0.0)
    old = router.balancer
    kept = old.lrus if name == "prefix-affinity" else old.visible
    router.set_members([0, 1, 2])
    new = router.balancer
    now = new.lrus if name == "prefix-affinity" else new.visible
    assert now[1:] == kept and not now[0]
    assert new.index == {k: {i + 1 for i in h} for k, h in old.index.items()}


def reference_evict(b, max_size: int) -> None:
    """`Tree::evict_tenant_by_size` as the source writes it: every leaf of every replica into
    one heap at once, popped by access time, a parent pushed when it becomes a leaf."""

    def leaf(node, t):
        return not any(t in c.tenants for c in node.children.values())

    heap, stack, order = [], [b.root], 0
    while stack:
        node = stack.pop()
        stack.extend(node.children.values())
        for t in node.tenants if node is not b.root else ():
            if leaf(node, t):
                heap.append((node.tenants[t], order, t, node))
                order += 1
    heapify(heap)
    while heap:
        _, _, t, node = heappop(heap)
        if b.size[t] <= max_size or t not in node.tenants:
            continue
        b.size[t] -= len(node.keys) * b.trace_block
        del node.tenants[t]
        parent = node.parent
        if not node.children and not node.tenants:
            del parent.children[node.keys[0]]
        if parent is not b.root and t in parent.tenants and leaf(parent, t):
            heappush(heap, (parent.tenants[t], order, t, parent))
            order += 1


@settings(max_examples=150, deadline=None)
@given(
    prompts=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(0, 4)), min_size=1, max_size=40
    ),
    max_blocks=st.integers(1, 12),
    every=st.integers(1, 6),
)
def test_cache_aware_eviction_by_leaf_heaps_equals_the_sources_full_walk(
    prompts, max_blocks, every
):
    """The incremental eviction (one lazily kept heap of leaves per replica) leaves exactly
    the tree the source's walk over every leaf does, on random prompts that share chains and
    part inside nodes (times strictly increase, so no two leaves of a replica tie)."""
    settings_ = {"eviction_interval_s": 0.0, "max_tree_size": max_blocks * 512}
    settings_["cache_threshold"] = 0.2
    mine = make_balancer("cache-aware", settings_, plain_replicas(3), [0, 0, 0], 0)
    theirs = make_balancer("cache-aware", settings_, plain_replicas(3), [0, 0, 0], 0)
    for k, (chain, shared, own) in enumerate(prompts):
        keys = [100 * chain + j for j in range(shared)] + [10_000 + 10 * k + j for j in range(own)]
        t = float(k)
        assert mine.pick(seq(512 * max(len(keys), 1), keys), t) == theirs.pick(
            seq(512 * max(len(keys), 1), keys), t
        )
        if k % every == every - 1:
            mine.evict(settings_["max_tree_size"])
            reference_evict(theirs, settings_["max_tree_size"])
            assert mine.size == theirs.size
            for r in range(3):
                assert sorted(mine.tenant_keys(r)) == sorted(theirs.tenant_keys(r))


def test_precise_prefix_lets_go_of_started_requests():
    """Keys no later request reaches would hold their requests to the end of the run: once
    the lists pass 4,096, those of started requests become visibility times, as a walk would
    make them, and the requests are let go."""
    b = make_balancer("precise-prefix", {}, plain_replicas(2), [0, 0], 0)
    routed = []
    for k in range(5000):
        s = seq(1024, [10 * k, 10 * k + 1], start_s=None)
        b.pick(s, float(k))
        s.start_s = k + 0.5  # it starts before the next request is routed
        routed.append(s)
    lists = [v for vis in b.visible for v in vis.values() if isinstance(v, list)]
    assert len(lists) < 2 * 5000 - 4096  # most were resolved
    times = {v for vis in b.visible for v in vis.values() if not isinstance(v, list)}
    assert min(times) == 0.5 + 0.05  # request 0's start plus the delay
