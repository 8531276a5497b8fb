"""Each batcher and balancer shows its defining behaviour."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_replay_support import p99, real_step_time, run_rows

from tokenfleet.errors import UserError
from tokenfleet.replay import balancer as balancer_mod
from tokenfleet.replay import batcher as batcher_mod
from tokenfleet.replay.balancer import (
    LeastRequests,
    LoadIndex,
    NoSettings,
    PowerOfTwo,
    SessionAffinity,
    SessionSettings,
)
from tokenfleet.replay.scenario import GatewayConfig
from tokenfleet.replay.tiers import Tier

REAL = real_step_time()


def ttft(seq) -> float:
    return seq.first_token_s - seq.arrival_s


# --- batchers ------------------------------------------------------------------------------


def test_orca_prefills_a_long_prompt_whole_so_requests_batched_with_it_wait():
    # Three short prompts and a long one arrive together (shorts first in the queue).
    rows = [(0.0, 50, 20)] * 3 + [(0.0, 12_000, 20)]
    orca, _, _ = run_rows(rows, batcher="orca", step_time=REAL)
    sarathi, _, _ = run_rows(rows, batcher="sarathi", step_time=REAL)
    orca_short = max(ttft(s) for s in orca[:3])
    sarathi_short = max(ttft(s) for s in sarathi[:3])
    # Orca's shorts get their first token only when the whole 12k prompt is read;
    # Sarathi's come out of the first 512-token step.
    assert sarathi_short < orca_short / 5
    assert orca_short == pytest.approx(ttft(orca[3]))


def test_vllm_chunks_long_prompts_and_caps_running_sequences():
    done, _, _ = run_rows(
        [(0.0, 100, 50), (0.0, 100, 80), (0.0, 100, 10)],
        settings={"max_num_seqs": 2, "max_num_batched_tokens": 4096},
        step_time=REAL,
    )
    first, second, third = done
    assert first.start_s == second.start_s == 0.0
    assert third.start_s == first.finish_s  # admitted when a slot frees


def test_static_batches_wait_for_their_longest_member_and_for_the_timeout():
    rows = [(0.0, 100, 300), (0.001, 100, 5)]
    static, _, _ = run_rows(rows, batcher="static", settings={"max_num_seqs": 1}, step_time=REAL)
    vllm, _, _ = run_rows(rows, batcher="vllm", step_time=REAL)
    assert static[1].start_s == static[0].finish_s  # queued behind the whole batch
    assert ttft(static[1]) > 10 * ttft(vllm[1])
    # A batch of two forms when the oldest has waited timeout_s; the short one pads.
    both, _, _ = run_rows(
        [(0.0, 100, 300), (0.01, 100, 5), (0.02, 100, 5)],
        batcher="static",
        settings={"max_num_seqs": 4, "timeout_s": 0.05},
        step_time=REAL,
    )
    assert both[0].start_s == both[1].start_s == both[2].start_s == 0.05
    assert both[1].finish_s < both[0].finish_s


def test_priority_scheduling_admits_the_most_urgent_first():
    from tokenfleet.replay.request import Seq

    b = batcher_mod.make_batcher("vllm", {"scheduling_policy": "priority"})
    queue = b.new_queue()
    for row, priority in enumerate([2, 0, 1, 0]):
        b.enqueue(queue, Seq(row, float(row), 10, 10, priority=priority))
    order = []
    while queue:
        order.append(b.queue.head(queue).row)
        b.queue.pop_head(queue)
    assert order == [1, 3, 2, 0]  # by priority, then arrival


@pytest.mark.parametrize(
    ("rows", "settings", "kv_blocks"),
    [
        # Both decode in the same block phase: at step 5 each needs a 4th block and one is free.
        # The standard one, first in running order, has taken it when the fast one asks.
        ([(0.0, 8, 12, None, "standard"), (0.001, 9, 12, None, "fast")], {}, 7),
        # The fast prompt is prefilled in 16-token chunks; its second chunk finds no free block.
        (
            [(0.0, 8, 30, None, "standard"), (0.001, 30, 5, None, "fast")],
            {"max_num_seqs": 2, "max_num_batched_tokens": 16},
            10,
        ),
    ],
)
def test_priority_preempts_the_lowest_priority_running_request_even_if_admitted_first(
    rows, settings, kv_blocks
):
    tiers = (Tier("fast", priority=10), Tier("standard"))
    runs = {}
    for policy in ("priority", "fcfs"):
        runs[policy], _, _ = run_rows(
            rows,
            settings={**settings, "scheduling_policy": policy},
            kv_blocks=kv_blocks,
            block_size=4,
            tiers=tiers,
            gateway=GatewayConfig(),
        )
    standard, fast = runs["priority"]
    # vLLM V1: the victim is the greatest (priority, arrival) of the whole running set, even one
    # already served in this step (it gives its block back), so the fast request runs on.
    assert standard.preemptions >= 1 and fast.preemptions == 0
    assert fast.finish_s < standard.finish_s
    # FCFS preempts the newest running request: the fast one.
    standard, fast = runs["fcfs"]
    assert standard.preemptions == 0 and fast.preemptions >= 1
    assert standard.finish_s < fast.finish_s


def test_batcher_settings_are_checked():
    with pytest.raises(UserError, match="max_num_batched_tokens"):
        batcher_mod.make_batcher("vllm", {"max_num_seqs": 512, "max_num_batched_tokens": 256})
    with pytest.raises(UserError, match="unknown setting 'chunk'"):
        batcher_mod.make_batcher("sarathi", {"chunk": 3})
    with pytest.raises(UserError, match="unknown batcher 'fifo'.*orca.*static.*vllm"):
        batcher_mod.make_batcher("fifo", {})


# --- balancers -----------------------------------------------------------------------------


def bursty_rows() -> list[tuple]:
    """Bursts of four every 0.25 s: one long request, then three short ones."""
    rows = []
    for k in range(60):
        t = 0.25 * k
        rows.append((t, 12_000, 300))
        rows += [(t, 200, 30)] * 3
    return rows


def test_least_requests_beats_round_robin_on_p99_ttft_for_a_bursty_trace():
    rows = bursty_rows()
    rr, _, _ = run_rows(rows, balancer="round-robin", replicas=4, step_time=REAL)
    lr, _, _ = run_rows(rows, balancer="least-requests", replicas=4, step_time=REAL)
    # Round-robin sends every long request to the same replica; least-requests spreads them.
    assert {s.replica for s in rr[::4]} == {0}
    assert len({s.replica for s in lr[::4]}) > 1
    assert p99([ttft(s) for s in lr]) < 0.7 * p99([ttft(s) for s in rr])


def test_least_kv_and_least_tokens_avoid_the_replica_holding_a_long_request():
    rows = [(0.0, 3000, 400), (1.0, 10, 400), (1.5, 10, 10)]
    for name in ("least-kv", "least-tokens"):
        done, _, _ = run_rows(rows, balancer=name, replicas=2, step_time=REAL)
        assert [s.replica for s in done] == [0, 1, 1], name
    done, _, _ = run_rows(rows, balancer="least-requests", replicas=2, step_time=REAL)
    assert [s.replica for s in done] == [0, 1, 0]  # a tie on counts rotates


@given(
    st.integers(1, 9),
    st.lists(st.tuples(st.integers(0, 8), st.booleans(), st.booleans()), max_size=300),
)
def test_least_requests_index_picks_what_a_scan_of_the_counts_picks(n, moves):
    """The LoadIndex pick equals `_LeastOf`'s scan (lowest count, ties round-robin from the
    last pick) under any sequence of dispatches (up) and finishes (down)."""
    loads = [0] * n
    indexed = LeastRequests(NoSettings(), [None] * n, loads, seed=0)
    scanned = balancer_mod._LeastOf(NoSettings(), [None] * n, loads, seed=0)
    for target, dispatch, pick in moves:
        i = target % n
        if pick:
            picked = indexed.pick(None, 0.0)
            assert picked == scanned._least(loads)
            i = picked
        if dispatch or loads[i] == 0:
            loads[i] += 1
            indexed.load_index.up(i)
        else:
            loads[i] -= 1
            indexed.load_index.down(i)
        index = indexed.load_index
        assert (index.low, index.total) == (min(loads), sum(loads))
        assert sorted(p for b in index.buckets for p in b) == list(range(n))
        assert all(loads[p] == v for v, b in enumerate(index.buckets) for p in b)


def test_load_index_starts_from_counts_already_there():
    index = LoadIndex([3, 1, 1, 2])
    assert (index.low, index.least(0), index.least(2), index.least(3)) == (1, 1, 2, 1)


def test_random_is_seeded_and_round_robin_cycles():
    rows = [(0.01 * i, 10, 2) for i in range(40)]
    a, _, _ = run_rows(rows, balancer="random", replicas=4, seed=1)
    b, _, _ = run_rows(rows, balancer="random", replicas=4, seed=1)
    c, _, _ = run_rows(rows, balancer="random", replicas=4, seed=2)
    assert [s.replica for s in a] == [s.replica for s in b] != [s.replica for s in c]
    assert {s.replica for s in a} == {0, 1, 2, 3}
    rr, _, _ = run_rows(rows[:6], balancer="round-robin", replicas=3)
    assert [s.replica for s in rr] == [0, 1, 2, 0, 1, 2]


def test_power_of_two_takes_the_less_loaded_of_two_random_replicas():
    outstanding = [5, 0, 5, 5]
    bal = PowerOfTwo(NoSettings(), [None] * 4, outstanding, seed=0)
    picks = [bal.pick(None, 0.0) for _ in range(2000)]
    # Replica 1 wins whenever it is one of the two drawn: probability 1/2.
    assert 0.45 < picks.count(1) / len(picks) < 0.55


def test_session_affinity_sticks_and_spills_under_bounded_load():
    outstanding = [0, 0, 0, 0]
    bal = SessionAffinity(SessionSettings(load_factor=1.25), [None] * 4, outstanding, seed=0)
    seq = SimpleNamespace(session_id=42, request_id=0)
    home = bal.pick(seq, 0.0)
    assert all(bal.pick(seq, 0.0) == home for _ in range(5))
    homes = {bal.pick(SimpleNamespace(session_id=s, request_id=0), 0.0) for s in range(200)}
    assert homes == {0, 1, 2, 3}  # sessions spread over the ring
    for _ in range(10):  # far above 1.25 x the mean, as the replicas report it
        outstanding[home] += 1
        bal.load_index.up(home)
    assert bal.pick(seq, 0.0) != home


def test_balancer_lookup_errors_name_the_known_ones():
    with pytest.raises(UserError, match="unknown balancer 'nearest'.*least-kv.*session"):
        balancer_mod.balancer_class("nearest")
