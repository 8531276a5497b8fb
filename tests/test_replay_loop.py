"""The event loop: hand-checked timings, preemption, and skip mode == step-by-step mode."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_replay_support import LinearStepTime, real_step_time, record, run_rows

from tokenfleet.hardware.profile import load_engine, load_profile
from tokenfleet.models import get_model
from tokenfleet.perf.steptime import StepTime
from tokenfleet.replay.balancer import BUILTIN_BALANCERS
from tokenfleet.replay.batcher import BUILTIN_BATCHERS
from tokenfleet.replay.replica import RUN, Replica
from tokenfleet.replay.scenario import GatewayConfig, LimitConfig, RetryConfig
from tokenfleet.replay.tiers import Tier

REAL = real_step_time()
# Decode pieces that end mid-run: sliding-window layers reaching their window, eager launches.
SLIDING = real_step_time("gpt-oss-120b")
EAGER = StepTime(get_model("llama-3.1-8b"), load_profile("h100-sxm"), engine="vllm-v0-2023")


def prefill_pairs(n: int, cached: int = 0) -> float:
    return n * (cached + (n + 1) / 2)


def test_one_request_alone_takes_prefill_plus_its_decode_steps():
    for step_time in (LinearStepTime(), REAL):
        done, _, _ = run_rows([(1.0, 100, 5)], step_time=step_time)
        (seq,) = done
        t = 1.0 + step_time.step_s(100, prefill_pairs(100), 0, 0)
        assert seq.first_token_s == t
        for j in range(1, 5):  # four decode steps; the context grows by one each
            t += step_time.step_s(0, 0.0, 1, 100 + j)
        # (to an ulp: the replica adds the decode steps up in its own order)
        assert seq.finish_s == pytest.approx(t, rel=1e-15)
        assert (seq.start_s, seq.preemptions, seq.status) == (1.0, 0, "finished")


def test_two_simultaneous_requests_share_their_steps():
    st_ = LinearStepTime()
    done, _, _ = run_rows([(0.0, 50, 3), (0.0, 70, 5)], step_time=st_)
    a, b = done
    t = st_.step_s(120, prefill_pairs(50) + prefill_pairs(70), 0, 0)
    assert a.first_token_s == b.first_token_s == t
    ctx = 51 + 71
    for _ in range(2):  # both decode together until a has its 3 tokens
        t += st_.step_s(0, 0.0, 2, ctx)
        ctx += 2
    assert a.finish_s == t
    ctx = 70 + 2 + 1
    for _ in range(2):  # b alone for its last two tokens
        t += st_.step_s(0, 0.0, 1, ctx)
        ctx += 1
    assert b.finish_s == t


def test_kv_too_small_for_two_long_prompts_preempts_the_newest_and_both_finish():
    # 160-token prompts take 10 blocks each; 25 blocks run out while both decode.
    for step_by_step in (False, True):
        done, timeline, reps = run_rows(
            [(0.0, 160, 100), (0.0, 160, 100)], kv_blocks=25, step_by_step=step_by_step
        )
        a, b = done
        assert (a.status, b.status) == ("finished", "finished")
        assert a.preemptions == 0 and b.preemptions >= 1
        assert b.finish_s > a.finish_s
        assert max(row[2].kv_peak_blocks for row in timeline) <= 25
        assert reps[0].kv.used_blocks(reps[0].step_no) == 0  # everything freed


def test_long_prompt_is_chunked_by_the_token_budget():
    st_ = LinearStepTime()
    done, _, _ = run_rows(
        [(0.0, 1000, 1)], settings={"max_num_batched_tokens": 512, "max_num_seqs": 4}, step_time=st_
    )
    t = st_.step_s(512, prefill_pairs(512), 0, 0)
    t += st_.step_s(488, prefill_pairs(488, cached=512), 0, 0)
    assert done[0].first_token_s == done[0].finish_s == t


def test_request_too_long_for_the_cache_is_refused_not_stuck():
    done, _, _ = run_rows([(0.0, 100, 10), (0.0, 5000, 10)], kv_blocks=100, block_size=16)
    assert [s.status for s in done] == ["finished", "too_long"]


# --- exactness: advancing runs at once gives the same records as one step at a time -------

requests = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05, 0.3, 1.0]),  # gaps, with ties
        st.integers(1, 400),
        st.integers(0, 300),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # Dense arrivals at any time and long outputs: many looks inside and just past each step.
    reqs=st.lists(
        st.tuples(
            st.floats(0.0, 0.02),
            st.integers(1, 400),
            st.integers(20, 300),
            st.just(0),
        ),
        min_size=10,
        max_size=60,
    ),
    balancer=st.sampled_from(["least-kv", "least-tokens"]),
    replicas=st.integers(2, 4),
    step_time=st.sampled_from([REAL, SLIDING, EAGER, LinearStepTime()]),
    step_by_step=st.booleans(),
)
def test_balancer_views_kept_between_step_ends_equal_a_fresh_look(
    reqs, balancer, replicas, step_time, step_by_step
):
    """steps_done_at keeps its answer until the step in progress ends: at every pick, every
    replica's answer must equal the one computed afresh from the run and its piece."""
    rows, t = [], 0.0
    for gap, p, o, session in reqs:
        t += gap
        rows.append((t, p, o, session))
    looks = []
    original = Replica.steps_done_at

    def checked(rep, now):
        got = original(rep, now)
        fresh = 0
        if rep.state == RUN:
            fresh = min(max(rep.piece.first_end_at(now)[0] - rep.run_s0, 0), rep.run_n)
        looks.append(got == fresh)
        return got

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Replica, "steps_done_at", checked)
        run_rows(
            rows,
            balancer=balancer,
            replicas=replicas,
            kv_blocks=200,
            step_time=step_time,
            step_by_step=step_by_step,
        )
    assert looks and all(looks)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=requests,
    batcher=st.sampled_from(sorted(BUILTIN_BATCHERS)),
    balancer=st.sampled_from(sorted(BUILTIN_BALANCERS)),
    replicas=st.integers(1, 3),
    kv_blocks=st.integers(20, 300),
    block_size=st.sampled_from([4, 16]),
    max_seqs=st.integers(1, 8),
    step_time=st.sampled_from([REAL, REAL, SLIDING, EAGER]),
)
def test_skip_mode_gives_the_same_records_as_step_by_step(
    reqs, batcher, balancer, replicas, kv_blocks, block_size, max_seqs, step_time
):
    rows, t = [], 0.0
    for gap, p, o, session in reqs:
        t += gap
        rows.append((t, p, o, session))
    options = {"max_num_seqs": max_seqs}
    if batcher == "sglang":  # SGLang's names; its pages are the blocks
        options = {"max_running_requests": max_seqs, "page_size": block_size}
    if batcher in ("vllm", "sarathi"):
        options["max_num_batched_tokens"] = max(max_seqs, 64)
    common = dict(
        batcher=batcher,
        settings=options,
        balancer=balancer,
        replicas=replicas,
        kv_blocks=kv_blocks,
        block_size=block_size,
        step_time=step_time,
        seed=3,
    )
    fast, fast_tl, fast_reps = run_rows(rows, **common)
    slow, slow_tl, _ = run_rows(rows, step_by_step=True, **common)
    assert [record(s) for s in fast] == [record(s) for s in slow]
    assert [s.row for s in fast] == list(range(len(rows)))  # each request ends exactly once
    capacity = kv_blocks
    assert all(row[2].kv_peak_blocks <= capacity for row in fast_tl + slow_tl)
    for s in fast:
        if s.status == "finished":
            assert s.arrival_s <= s.start_s <= s.first_token_s <= s.finish_s
    for rep in fast_reps:  # everything handed back at the end
        assert rep.outstanding[rep.index] == 0 and rep.tokens_left == 0
        assert rep.kv.used_blocks(rep.step_no) == 0 and not rep.waiting and not rep.decoding


# --- the same through the gateway: tiers with priorities, deferral, latency, limits, retries --

TIERS = (
    Tier("fast", priority=10),
    Tier("standard"),
    Tier("batch", priority=-5, deferred=True, deadline_s=3.0),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05, 0.3, 1.0]),
            st.integers(1, 400),
            st.integers(0, 300),
            st.sampled_from(["fast", "standard", "batch", "unknown"]),
            st.sampled_from(["a", "b"]),
        ),
        min_size=1,
        max_size=25,
    ),
    batcher=st.sampled_from(["vllm", "sarathi", "orca"]),
    replicas=st.integers(1, 3),
    kv_blocks=st.integers(20, 300),
    max_seqs=st.integers(1, 8),
    latency_s=st.sampled_from([0.0, 0.02]),
    rpm=st.sampled_from([0.0, 6.0]),
    retries=st.integers(0, 2),
    margin=st.sampled_from([0.0, 0.5]),
)
@example(  # orca with a tiny cache: a finish and a preemption in the same step
    reqs=[(0.0, 63, 74, "fast", "a"), (0.0, 1, 100, "fast", "a"), (0.3, 193, 0, "fast", "a"),
          (0.0, 21, 300, "fast", "a"), (0.0, 1, 33, "fast", "a"), (0.0, 1, 0, "fast", "a"),
          (0.0, 1, 0, "fast", "a"), (0.0, 1, 0, "fast", "a"), (0.0, 1, 0, "fast", "a"),
          (0.0, 122, 26, "fast", "a"), (0.0, 146, 16, "batch", "a"), (0.3, 1, 0, "fast", "a"),
          (0.0, 1, 0, "fast", "a")],
    batcher="orca", replicas=2, kv_blocks=20, max_seqs=4,
    latency_s=0.0, rpm=0.0, retries=0, margin=0.0,
)  # fmt: skip
def test_gateway_runs_give_the_same_records_as_step_by_step(
    reqs, batcher, replicas, kv_blocks, max_seqs, latency_s, rpm, retries, margin
):
    rows, t = [], 0.0
    for gap, p, o, tier, tenant in reqs:
        t += gap
        rows.append((t, p, o, None, tier, tenant))
    options = {"max_num_seqs": max_seqs, "scheduling_policy": "priority"}
    if batcher in ("vllm", "sarathi"):
        options["max_num_batched_tokens"] = max(max_seqs, 64)
    gateway = GatewayConfig(
        latency_s=latency_s,
        deferred_max_utilisation=0.5,
        deferred_margin=margin,
        tick_s=0.1,
        retries=RetryConfig(max_retries=retries, base_backoff_s=0.5),
        limits=(LimitConfig(tenant="a", requests_per_minute=rpm),) if rpm else (),
    )
    common = dict(
        batcher=batcher,
        settings=options,
        balancer="least-requests",
        replicas=replicas,
        kv_blocks=kv_blocks,
        step_time=REAL,
        seed=3,
        tiers=TIERS,
        gateway=gateway,
    )
    fast, fast_tl, fast_reps = run_rows(rows, **common)
    slow, _, _ = run_rows(rows, step_by_step=True, **common)
    assert [record(s) for s in fast] == [record(s) for s in slow]
    assert [s.row for s in fast] == list(range(len(rows)))  # each request ends exactly once
    for s in fast:
        assert s.status in ("finished", "too_long", "rate_limited", "expired")  # an end status
        assert s.tier in ("fast", "standard", "batch")  # unknown tiers served as the default
        if s.status in ("finished", "expired") and s.start_s is not None:
            assert s.arrival_s + latency_s <= s.start_s <= s.first_token_s <= s.finish_s
        if s.status == "rate_limited":
            assert s.tenant == "a" and s.attempts == retries + 1
    for rep in fast_reps:
        assert rep.outstanding[rep.index] == 0 and rep.tokens_left == 0
        assert rep.kv.used_blocks(rep.step_no) == 0 and not rep.waiting and not rep.decoding


class AsyncLinearStepTime(LinearStepTime):
    """LinearStepTime on an engine that chooses each step one step ahead (ASYNC_KEY)."""

    def __init__(self, async_scheduling: bool) -> None:
        self.engine = dataclasses.replace(
            load_engine("vllm-v1"),
            frontend_in_ms=0.0,
            frontend_out_ms=0.0,
            async_scheduling=async_scheduling,
        )


def test_async_scheduling_lets_a_request_in_one_step_later_when_the_engine_is_busy():
    """B arrives during A's first decode step. Synchronous: it is chosen at that step's end, for
    the next step. Async (vLLM V1's default): the next step is chosen already, so B waits for
    the one after. An idle engine (A's own arrival) takes a request at once either way."""
    st_ = LinearStepTime()
    prefill_end = st_.step_s(100, prefill_pairs(100), 0, 0)
    first_decode_end = prefill_end + st_.step_s(0, 0.0, 1, 101)
    second_decode_end = first_decode_end + st_.step_s(0, 0.0, 1, 102)
    b_arrives = (prefill_end + first_decode_end) / 2
    starts = {}
    for flag in (False, True):
        for step_by_step in (False, True):
            done, _, _ = run_rows(
                [(0.0, 100, 20), (b_arrives, 30, 5)],
                step_time=AsyncLinearStepTime(flag),
                step_by_step=step_by_step,
            )
            a, b = done
            assert a.start_s == 0.0 and a.first_token_s == prefill_end
            assert (a.status, b.status) == ("finished", "finished")
            starts[flag, step_by_step] = b.start_s
    assert starts[False, False] == starts[False, True] == first_decode_end
    assert starts[True, False] == starts[True, True] == second_decode_end


def test_async_scheduling_takes_a_request_at_once_when_nothing_else_was_chosen():
    """A's last token is sampled by the step under way, so nothing was chosen after it: B, which
    arrives during that step, starts at its end, as with a synchronous engine."""
    st_ = LinearStepTime()
    prefill_end = st_.step_s(100, prefill_pairs(100), 0, 0)
    last_end = prefill_end + st_.step_s(0, 0.0, 1, 101)  # A's second and last token
    for flag in (False, True):
        done, _, _ = run_rows(
            [(0.0, 100, 2), ((prefill_end + last_end) / 2, 30, 5)],
            step_time=AsyncLinearStepTime(flag),
        )
        a, b = done
        assert a.finish_s == last_end and b.start_s == last_end
