"""Client timeouts (replay/timeouts.py): a client that gives up `client_timeout_s` after it sent
a request; the request ends `timed_out` where it is, the engine dropping it between steps."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_replay_support import LinearStepTime, record, run_rows

from tokenfleet.errors import UserError
from tokenfleet.replay.replica import Replica
from tokenfleet.replay.request import FINISHED, TIMED_OUT
from tokenfleet.replay.scenario import GatewayConfig, scenario_from_dict
from tokenfleet.replay.tiers import Tier
from tokenfleet.replay.views import IDLE

STEP = LinearStepTime()
GATEWAY = GatewayConfig()  # a gateway (not a pass-through): the one that watches timeouts


def tiers(timeout_s: float) -> tuple[Tier, ...]:
    """'impatient' clients give up after `timeout_s`; 'standard' ones wait forever."""
    return (Tier("standard"), Tier("impatient", client_timeout_s=timeout_s))


def row(t: float, prompt: int, output: int, tier: str = "standard", hashes=None, session=None):
    return (t, prompt, output, session, tier, None, hashes)


def step_ends(prompt: int, output: int) -> list[float]:
    """The step ends of a lone request under LinearStepTime: its prefill, then its decodes."""
    t = STEP.step_s(prompt, prompt * (prompt + 1) / 2, 0, 0)
    ends = [t]
    for k in range(1, output):
        t += STEP.step_s(0, 0.0, 1, prompt + k)
        ends.append(t)
    return ends


def test_a_running_request_leaves_at_the_first_step_end_after_its_timeout_and_frees_its_slot():
    """One batch slot: A (impatient, 1 s) decodes 2,000 tokens; B waits behind it. A is dropped
    at its first step end at or after 1 s (vLLM takes aborts between steps), B starts there,
    and A's record says when its client gave up, with the first token it did see."""
    rows = [row(0.0, 10, 2000, "impatient"), row(0.0, 10, 5)]
    for step_by_step in (False, True):
        done, _, reps = run_rows(
            rows, settings={"max_num_seqs": 1}, tiers=tiers(1.0), gateway=GATEWAY,
            step_by_step=step_by_step,
        )  # fmt: skip
        a, b = done
        assert a.status == TIMED_OUT and b.status == FINISHED
        assert a.finish_s == 1.0 and a.first_token_s is not None and a.first_token_s < 1.0
        cut = next(t for t in step_ends(10, 2000) if t >= 1.0)
        assert b.start_s == pytest.approx(cut, abs=1e-9)
        assert a.decode_s > 0.9  # it used the GPU until it left: its cost stays
        assert reps[0].kv.used_blocks(reps[0].step_no) == 0 and reps[0].state == IDLE


def test_a_client_retries_a_timeout_with_a_timeout_of_its_own():
    """With one retry allowed, A (impatient, 1 s) times out running, is sent again after the
    back-off, times out again, and ends with both attempts' GPU time, its first send as its
    arrival and its last give-up as its finish; B behind it is served between the attempts."""
    retries = dataclasses.replace(
        GATEWAY.retries, max_retries=1, base_backoff_s=0.5, max_backoff_s=0.5
    )
    rows = [row(0.0, 10, 3000, "impatient"), row(0.0, 10, 5)]
    for step_by_step in (False, True):
        done, _, reps = run_rows(
            rows, settings={"max_num_seqs": 1}, tiers=tiers(1.0), step_by_step=step_by_step,
            gateway=dataclasses.replace(GATEWAY, retries=retries),
        )  # fmt: skip
        a, b = done
        assert (a.status, a.attempts, a.arrival_s) == (TIMED_OUT, 2, 0.0)
        resent = a.finish_s - 1.0
        assert 1.0 <= resent <= 1.5  # within the back-off's jitter of the first give-up
        assert b.finish_s < resent  # B ran between the attempts
        assert a.decode_s > 1.8  # nearly two seconds of decoding, over both attempts
        assert reps[0].kv.used_blocks(reps[0].step_no) == 0


def test_a_retry_due_at_once_runs_its_second_attempt():
    """A back-off shorter than the wait for the engine to drop the attempt: the retry is sent
    the moment the engine dropped it (from inside the replica's event) and runs, rather than
    being lost and timing out unsent."""
    retries = dataclasses.replace(
        GATEWAY.retries, max_retries=1, base_backoff_s=1e-9, max_backoff_s=1e-9
    )
    rows = [row(0.0, 10, 3000, "impatient"), row(0.0, 10, 5)]
    records = []
    for step_by_step in (False, True):
        done, _, _ = run_rows(
            rows, settings={"max_num_seqs": 1}, tiers=tiers(1.0), step_by_step=step_by_step,
            gateway=dataclasses.replace(GATEWAY, retries=retries),
        )  # fmt: skip
        a, b = done
        cut = next(t for t in step_ends(10, 3000) if t >= 1.0)
        assert a.attempts == 2 and a.start_s is not None and a.start_s >= cut
        assert a.finish_s == pytest.approx(cut + 1.0)  # the retry's own timeout
        records.append([record(s) for s in done])
    assert records[0] == records[1]


def test_a_waiting_request_leaves_the_queue_without_running():
    """A (patient) holds the one slot for ~2.1 s; B (impatient, 0.5 s) waits behind it and
    gives up unstarted; C, behind B, runs when A ends, as if B had never been there."""
    rows = [row(0.0, 10, 200), row(0.1, 10, 5, "impatient"), row(0.2, 10, 5)]
    done, _, _ = run_rows(rows, settings={"max_num_seqs": 1}, tiers=tiers(0.5), gateway=GATEWAY)
    a, b, c = done
    assert (b.status, b.start_s, b.first_token_s, b.finish_s) == (TIMED_OUT, None, None, 0.6)
    assert b.prefill_s == b.decode_s == 0.0
    assert c.start_s == a.finish_s and c.status == FINISHED


def test_a_request_held_at_the_gateway_times_out_there():
    """A gateway latency longer than the timeout: every request ends at the gateway, never
    routed (no replica, no cost), and the replica never runs a step."""
    rows = [row(0.1 * k, 50, 20, "impatient") for k in range(5)]
    done, timeline, _ = run_rows(
        rows, tiers=tiers(0.5), gateway=dataclasses.replace(GATEWAY, latency_s=1.0)
    )
    assert [s.status for s in done] == [TIMED_OUT] * 5
    assert [s.finish_s for s in done] == pytest.approx([0.5 + 0.1 * k for k in range(5)])
    assert all(s.routed_s is None and s.replica == -1 for s in done)
    assert sum(r[2].steps for r in timeline) == 0


class FrontendStepTime(LinearStepTime):
    """LinearStepTime behind an engine frontend of 0.3 s in and 0.05 s out."""

    engine = SimpleNamespace(frontend_in_ms=300.0, frontend_out_ms=50.0)


def test_the_frontend_lag_counts_against_the_client():
    """A request still in the engine's frontend when its client gives up never queues; one
    the engine finished whose last token would reach the client too late is timed out too."""
    late = run_rows(
        [row(0.0, 10, 5, "impatient")], tiers=tiers(0.2), gateway=GATEWAY,
        step_time=FrontendStepTime(),
    )[0][0]  # fmt: skip
    assert (late.status, late.start_s, late.finish_s) == (TIMED_OUT, None, 0.2)
    ends = step_ends(10, 5)
    engine_done = 0.3 + ends[-1]
    timeout = engine_done + 0.02  # after the engine's last step, before the client has it
    lagged = run_rows(
        [row(0.0, 10, 5, "impatient")], tiers=tiers(timeout), gateway=GATEWAY,
        step_time=FrontendStepTime(),
    )[0][0]  # fmt: skip
    assert lagged.status == TIMED_OUT and lagged.finish_s == timeout
    assert lagged.first_token_s == pytest.approx(0.3 + ends[0] + 0.05)


def test_without_timeouts_nothing_changes():
    """A tier whose clients never give up, behind a gateway, gives the records of no gateway."""
    rows = [row(0.01 * k, 30 + k, 40 + 3 * k) for k in range(30)]
    plain, _, _ = run_rows(rows, settings={"max_num_seqs": 4}, kv_blocks=40)
    watched, _, _ = run_rows(
        rows, settings={"max_num_seqs": 4}, kv_blocks=40, tiers=tiers(0.0), gateway=GATEWAY
    )
    assert [record(s) for s in plain] == [record(s) for s in watched]


requests = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05, 0.3]),
        st.integers(1, 150),  # prompt tokens
        st.integers(0, 150),  # output tokens
        st.booleans(),  # impatient
        st.sampled_from([None, None, 1, 2]),  # a session (shared prefixes with caching)
        st.integers(0, 2),  # which of three system prompts (0-2 blocks) it starts with
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=requests,
    timeout=st.sampled_from([0.02, 0.1, 0.3, 1.0]),
    batcher=st.sampled_from(["vllm", "vllm-priority", "sglang", "static", "sarathi"]),
    kv_blocks=st.integers(16, 80),
    replicas=st.integers(1, 2),
    latency=st.sampled_from([0.0, 0.0, 0.03]),
    frontend=st.booleans(),
    retries=st.sampled_from([0, 0, 2]),
)
def test_skip_mode_equals_step_by_step_with_timeouts_under_pressure(
    reqs, timeout, batcher, kv_blocks, replicas, latency, frontend, retries
):
    """Clients giving up anywhere (gateway, frontend, queue, prefill, decode), caches small
    enough to evict and preempt: both modes give the same records; every request ends once;
    a timed-out request ends when its client gave up and a finished one within its timeout;
    KV use never exceeds capacity and all of it comes back."""
    rows, t = [], 0.0
    for i, (gap, prompt, output, impatient, session, system) in enumerate(reqs):
        t += gap
        hashes = [1000 * system + k for k in range(system)]
        hashes += [10_000 * (i + 1) + k for k in range(max(0, prompt // 16 - system))]
        prompt = max(prompt, 16 * system)
        tier = "impatient" if impatient else "standard"
        rows.append(row(t, prompt, output, tier, hashes[: prompt // 16] or None, session))
    name, policy = (batcher.split("-") + ["fcfs"])[:2]
    batcher_settings = {"sglang": {"page_size": 16}, "static": {"max_num_seqs": 4}}.get(
        name, {"max_num_seqs": 4, "max_num_batched_tokens": 64, "scheduling_policy": policy}
    )
    plain = Replica.on_event

    def checking(self, now):
        nt = plain(self, now)
        kv = self.kv
        assert kv.other_blocks + kv.decoder_blocks(self.step_no + (self.state != IDLE)) <= (
            kv.capacity_blocks
        )
        return nt

    common = dict(
        batcher=name, settings=batcher_settings, kv_blocks=kv_blocks, replicas=replicas,
        tiers=(Tier("standard", priority=1), Tier("impatient", client_timeout_s=timeout)),
        gateway=dataclasses.replace(
            GATEWAY, latency_s=latency,
            retries=dataclasses.replace(GATEWAY.retries, max_retries=retries, base_backoff_s=0.002),
        ),
        prefix_block_size=16,
        step_time=FrontendStepTime() if frontend else STEP,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Replica, "on_event", checking)
        fast, _, reps = run_rows(rows, **common)
        slow, _, _ = run_rows(rows, step_by_step=True, **common)
    assert [record(s) for s in fast] == [record(s) for s in slow]
    assert [s.row for s in fast] == list(range(len(rows)))
    for s in fast:
        assert s.attempts <= retries + 1
        if s.status == TIMED_OUT:
            assert s.tier == "impatient" and s.attempts == retries + 1
            assert s.finish_s >= s.arrival_s + retries * timeout + timeout - 1e-9
            assert s.first_token_s is None or s.first_token_s <= s.finish_s
        elif s.status == FINISHED and s.tier == "impatient" and s.attempts == 1:
            assert s.finish_s - s.arrival_s <= timeout
    for rep in reps:
        assert rep.kv.used_blocks(rep.step_no) == 0 and not rep.waiting and not rep.aborts
        assert rep.outstanding[rep.index] == 0


def test_a_negative_client_timeout_is_one_line():
    with pytest.raises(UserError, match=r"tier 'slow': client_timeout_s = -1.0 must be"):
        scenario_from_dict({"pools": [{}], "tiers": [{"name": "slow", "client_timeout_s": -1.0}]})


# --- the real vLLM runs --------------------------------------------------------------------


def test_a_saturated_vllm_run_loses_the_requests_its_client_lost(shared_data):
    """Llama-2-7B at 4 req/s of 1,082 + 1,448 tokens outruns its KV cache; the client
    (inference-perf, aiohttp's 300 s total timeout) lost 4,068 of 4,800 requests and the
    732 it kept took 160.1 s on average. Replayed with the client's timeout, the replay loses
    about as many and its finished requests take about as long."""
    from tokenfleet.study.measured_runs import load_runs, predict

    run = next(
        r
        for r in load_runs(shared_data / "measured" / "vllm_h100_runs.json")
        if r.id.endswith("llama-2-7b-tp1-reasoning")
    )
    (figures,) = predict(run)
    (measured,) = run.measured
    assert figures["timed_out"] == pytest.approx(4068, rel=0.05)
    assert figures["e2e_mean_ms"] == pytest.approx(measured["e2e_mean_ms"], rel=0.05)
    assert not math.isnan(figures["ttft_mean_ms"])


def test_frontier_varies_the_client_timeout_on_an_overloaded_replica(tmp_path, runner):
    """One replica with 2 batch slots under 40 req/s: its queue grows, so clients that give up
    after 5 s lose requests and those that wait 10,000 s lose none; the finished requests'
    E2E stays under the short timeout, which the patient clients' tail is well past."""
    from tokenfleet.cli.main import cli

    trace = tmp_path / "busy.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "400", "--rate", "40", "--seed", "5"]
    assert runner.invoke(cli, synth).exit_code == 0
    scenario = tmp_path / "one.toml"
    scenario.write_text(
        '[[pools]]\nreplicas = 1\n[pools.batcher]\npolicy = "vllm"\nmax_num_seqs = 2\n'
    )
    args = ["frontier", str(trace), "--scenario", str(scenario), "--out", str(tmp_path / "fr")]
    vary = ["--vary", "client_timeout_s=5,10000", "--jobs", "1", "--json"]
    result = runner.invoke(cli, [*args, *vary])
    assert result.exit_code == 0, result.output
    short, patient = json.loads(result.stdout)
    assert short["timed_out"] > 100 and patient["timed_out"] == 0
    e2e_p99 = [
        json.loads((tmp_path / "fr" / "runs" / row["run"] / "summary.json").read_text())[
            "latency_s"
        ]["e2e"]["p99"]
        for row in (short, patient)
    ]
    assert e2e_p99[0] <= 5.0 < e2e_p99[1]
    bad = runner.invoke(cli, [*args, "--vary", "client_timeout_s=-1", "--jobs", "1"])
    assert bad.exit_code == 2 and "client_timeout_s = -1.0 must be" in bad.output


def test_retried_timeouts_make_an_overloaded_replica_serve_fewer(tmp_path, runner):
    """One replica under more load than it serves, clients giving up after 20 s: when they
    retry (twice), the retries take the capacity the first attempts needed, so fewer requests
    finish, more time out, and each finished token costs more (a retry storm)."""
    from tokenfleet.cli.main import cli

    trace = tmp_path / "storm.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "3000", "--rate", "12", "--seed", "4"]
    assert runner.invoke(cli, synth).exit_code == 0
    runs = []
    for retries in (0, 2):
        scenario = tmp_path / f"r{retries}.toml"
        scenario.write_text(
            '[[pools]]\nreplicas = 1\n[pools.batcher]\npolicy = "vllm"\nmax_num_seqs = 16\n'
            '[[tiers]]\nname = "standard"\nclient_timeout_s = 20.0\n'
            f"[gateway.retries]\nmax_retries = {retries}\nbase_backoff_s = 1.0\n"
        )
        out = tmp_path / f"out{retries}"
        args = ["replay", str(trace), "--scenario", str(scenario), "--out", str(out)]
        result = runner.invoke(cli, [*args, "--json", "-q"])
        assert result.exit_code == 0, result.output
        runs.append(json.loads(result.stdout))
    calm, storm = runs
    assert storm["gateway"]["retries"] > 1000 and calm["gateway"]["retries"] == 0
    assert storm["finished"] < 0.8 * calm["finished"]
    assert storm["economics"]["fleet"]["timed_out"] > calm["economics"]["fleet"]["timed_out"]
    cost = [r["economics"]["fleet"]["usd_per_mtoken"]["blended"] for r in runs]
    assert cost[1] > 1.5 * cost[0]


EVERY_GATEWAY_FEATURE = """
seed = 3
interval_s = 30.0
[balancer]
policy = "least-requests"
[[pools]]
name = "main"
replicas = "auto"
[pools.batcher]
policy = "vllm"
scheduling_policy = "priority"
[pools.autoscale]
enabled = true
min_replicas = 2
max_replicas = 24
target = 0.05
provisioning_delay_s = 60.0
cooldown_s = 120.0
interval_s = 15.0
[[pools]]
name = "owned"
gpu = "a100-80gb"
replicas = 6
[pools.pricing]
kind = "owned"
[[tiers]]
name = "fast"
priority = 10
pools = ["main"]
client_timeout_s = 1.0
[[tiers]]
name = "standard"
priority = 5
client_timeout_s = 3.0
[[tiers]]
name = "batch"
deadline_s = 600.0
deferred = true
pools = ["owned"]
client_timeout_s = 400.0
[gateway]
latency_s = 0.004
deferred_max_utilisation = 0.03
deferred_margin = 0.0
tick_s = 2.0
[gateway.retries]
max_retries = 1
[[gateway.limits]]
tenant = "acme"
requests_per_minute = 1200
[[gateway.limits]]
tenant = "*"
requests_per_minute = 600
"""


def test_timeouts_and_retries_with_every_gateway_feature_give_the_same_records_both_modes(
    tmp_path, runner
):
    """Tiers whose clients give up (and retry) behind rate limits, deferral, priorities, tier
    routing, gateway latency and an autoscaled pool beside an owned one: skip mode and
    --step-by-step write the same requests, every request once, and clients do give up in
    every place and retry."""
    from tokenfleet.cli.main import cli

    trace = tmp_path / "tiers.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "12000", "--rate", "60", "--seed", "5",
             "--tenants", "acme=0.4,globex=0.3,initech=0.3", "--tiers",
             "fast=0.2,standard=0.6,batch=0.2"]  # fmt: skip
    assert runner.invoke(cli, synth).exit_code == 0
    scenario = tmp_path / "gateway.toml"
    scenario.write_text(EVERY_GATEWAY_FEATURE)
    tables = []
    for flags in ([], ["--step-by-step"]):
        out = tmp_path / f"out{len(flags)}"
        args = ["replay", str(trace), "--scenario", str(scenario), "--out", str(out), "-q"]
        result = runner.invoke(cli, [*args, *flags])
        assert result.exit_code == 0, result.output
        tables.append(pq.read_table(out / "requests.parquet"))
    assert tables[0].equals(tables[1])
    frame = pl.from_arrow(tables[0])
    assert frame["request_id"].n_unique() == frame.height == 12000
    timed_out = frame.filter(pl.col("status") == "timed_out")
    assert timed_out.height > 500 and (timed_out["attempts"] == 2).all()
    assert frame.filter((pl.col("status") == "finished") & (pl.col("attempts") == 2)).height > 0
    assert {"fast", "standard"} <= set(timed_out["tier"].to_list())
