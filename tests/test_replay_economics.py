"""Economics through real replays: pool costs, attribution, revenue, limits, deferral, autoscaling,
priorities, and every way to get the new scenario sections wrong.

Request lengths come from the Azure conv trace (../shared/data); arrivals are laid out by hand
so each figure can be computed on paper.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_replay_cli import assert_refused, replay

from tokenfleet.cli.main import cli
from tokenfleet.hardware.profile import load_engine, load_profile
from tokenfleet.replay.cost import OwnedPricing

# The default engine's frontend lag (vllm-v1's frontend_out_ms): a client sees each token this
# late, but the GPUs are billed only until the engine's last step.
LAG_S = load_engine(load_profile("h100-sxm").default_engine).frontend_out_ms * 1e-3


def write_trace(path: Path, lengths, arrivals, tiers=None, tenants=None) -> Path:
    prompts, outputs = lengths
    n = len(arrivals)
    columns = {
        "arrival_s": pa.array(np.asarray(arrivals, dtype=np.float64)),
        "prompt_tokens": pa.array(prompts[:n]),
        "output_tokens": pa.array(outputs[:n]),
    }
    if tiers is not None:
        columns["tier"] = pa.array(list(tiers), pa.string())
    if tenants is not None:
        columns["tenant"] = pa.array(list(tenants), pa.string())
    pq.write_table(pa.table(columns), path)
    return path


def run(runner, tmp_path: Path, trace: Path, scenario: str, name: str = "run", *flags) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(scenario)
    out = tmp_path / name
    result = replay(runner, trace, "--scenario", path, "--out", out, *flags)
    assert result.exit_code == 0, result.output
    return out


def outputs(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    return (
        pl.read_parquet(out / "requests.parquet"),
        pl.read_parquet(out / "timeline.parquet"),
        json.loads((out / "summary.json").read_text()),
    )


# --- cost of the fleet --------------------------------------------------------------------


def test_two_rented_gpus_are_billed_to_the_end_of_the_run(runner, tmp_path, conv_lengths):
    # 200 requests spread over the first 50 minutes: the run ends at the last finish, a little
    # after 3,000 s, and both replicas are billed until then (whole seconds, on demand), not
    # to the end of the 10-minute interval it falls in.
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 3000, 200))
    scenario = """
interval_s = 600.0
[[pools]]
replicas = 2
[pools.pricing]
kind = "rented"
usd_per_gpu_hour = 2.0
"""
    requests, timeline, summary = outputs(run(runner, tmp_path, trace, scenario))
    (pool,) = summary["pools"]
    run_s = summary["economics"]["fleet"]["run_s"]
    assert run_s == requests["finish_s"].max() - LAG_S  # the engine's last token
    billed = 2 * math.ceil(run_s) * 2.0 / 3600
    assert pool["cost_usd"] == pytest.approx(billed)
    assert summary["economics"]["fleet"]["cost_usd"] == pytest.approx(billed)
    # The timeline: 6 intervals x 2 replicas; the last one only as long as the run lasted.
    assert timeline.height == 12
    assert timeline["interval_s"].to_list() == [600.0] * 10 + [run_s - 3000.0] * 2
    assert (timeline["provisioned_s"] == timeline["interval_s"]).all()
    assert timeline["cost_usd"].sum() == pytest.approx(billed)
    # Every dollar lands on a request, idle time included, in proportion to its GPU time.
    assert requests["cost_usd"].sum() == pytest.approx(billed)
    ratio = (requests["cost_usd"] / requests["gpu_s"]).to_numpy()
    assert ratio == pytest.approx(np.full(200, billed / requests["gpu_s"].sum()))
    assert pool["utilisation"] == pytest.approx(timeline["busy_s"].sum() / (2 * run_s))
    # A fixed fleet: 2 GPUs provisioned for the whole run, 2 GPUs on average, as at the start.
    assert summary["gpu_hours_provisioned"] == pytest.approx(2 * run_s / 3600)
    assert summary["gpus_mean"] == pytest.approx(2) and summary["gpus"] == 2
    throughput = summary["throughput"]
    assert throughput["output_tokens_per_s_per_gpu"] == pytest.approx(
        throughput["output_tokens_per_s"] / 2
    )


def test_the_interval_changes_no_summary_figure(runner, tmp_path, conv_lengths):
    """Issue 11 item 1: interval 1 s and 1 h used to bill $0.093 and $0.917 per Mtoken."""
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 360, 2000))
    summaries = []
    for interval in (1, 10, 60, 3600):
        out = tmp_path / f"out-{interval}"
        args = ["replay", str(trace), "--out", str(out), "--interval", str(interval), "-q"]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        summaries.append(json.loads((out / "summary.json").read_text()))
    first = _numbers(summaries[0])
    assert first["economics.fleet.cost_usd"] > 0 and first["load.default.mean_batch"] > 1
    for other in summaries[1:]:
        figures = _numbers(other)
        assert figures.keys() == first.keys()
        for key, value in first.items():
            assert figures[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def _numbers(doc, prefix: str = "") -> dict[str, float]:
    """Every number in a summary by its dotted path (lists by index)."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    out: dict[str, float] = {}
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, dict | list):
            out |= _numbers(value, path + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = value
    return out


def test_an_owned_pool_costs_its_formula(runner, tmp_path, conv_lengths):
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 3000, 300))
    scenario = """
interval_s = 600.0
[[pools]]
replicas = 1
tp = 2
[pools.pricing]
kind = "owned"
capex_usd_per_gpu = 43800.0   # $1.00/h over 5 years
lifetime_years = 5.0
opex_fraction_per_year = 0.10 # $0.50/h
gpu_tdp_w = 700.0
gpu_idle_w = 100.0
server_w_per_gpu = 200.0
pue = 1.5
usd_per_kwh = 0.10
"""
    requests, timeline, summary = outputs(run(runner, tmp_path, trace, scenario))
    busy_gpu_h = timeline["busy_s"].sum() * 2 / 3600
    # 2 GPUs over the run (to its last finish) x $1.50 fixed; (300 W x the GPU-h + 600 W x
    # busy GPU-h) x PUE 1.5 x $0.10.
    hours = summary["economics"]["fleet"]["run_s"] / 3600
    expected = 2 * hours * 1.5 + (0.3 * 2 * hours + 0.6 * busy_gpu_h) * 1.5 * 0.10
    (pool,) = summary["pools"]
    assert 0 < busy_gpu_h < 2
    assert pool["cost_usd"] == pytest.approx(expected)
    assert timeline["cost_usd"].sum() == pytest.approx(expected)
    assert requests["cost_usd"].sum() == pytest.approx(expected)
    pricing = OwnedPricing(43800.0, 5.0, 0.10, 700.0, 100.0, 200.0, 1.5, 0.10)
    assert pool["cost_usd"] == pytest.approx(pricing.cost_usd(2, hours * 3600, busy_gpu_h * 3600))


TWO_POOLS = """
interval_s = 60.0
[[pools]]
name = "owned"
replicas = 1
[pools.pricing]
kind = "owned"
[[pools]]
name = "cloud"
replicas = 2
[pools.pricing]
usd_per_gpu_hour = 3.0
billing_granularity_s = 3600.0
[[tiers]]
name = "standard"
pools = ["owned"]
usd_per_mtoken_input = 1.0
usd_per_mtoken_output = 4.0
[[tiers]]
name = "fast"
pools = ["cloud"]
usd_per_mtoken_input = 2.0
usd_per_mtoken_output = 8.0
ttft_slo_s = 0.2
"""


def test_tiers_go_to_their_pools_and_costs_and_revenue_add_up(runner, tmp_path, conv_lengths):
    n = 400
    tiers = ["fast" if i % 4 == 0 else "standard" for i in range(n)]
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 400, n), tiers)
    requests, timeline, summary = outputs(run(runner, tmp_path, trace, TWO_POOLS))
    pools = {p["name"]: p for p in summary["pools"]}
    served = requests.group_by("tier").agg(pl.col("pool").unique()).sort("tier").rows()
    assert served == [("fast", ["cloud"]), ("standard", ["owned"])]
    # Rented by the started hour: 2 replicas x 1 h x $3, however short the run.
    run_s = summary["economics"]["fleet"]["run_s"]
    assert run_s < 3600 and pools["cloud"]["cost_usd"] == pytest.approx(6.0)
    for name, pool in pools.items():
        mine = requests.filter(pl.col("pool") == name)
        assert mine["cost_usd"].sum() == pytest.approx(pool["cost_usd"])
        assert timeline.filter(pl.col("pool") == name)["cost_usd"].sum() == pytest.approx(
            pool["cost_usd"]
        )
    # Revenue from the tier prices, by hand.
    for tier, (usd_in, usd_out) in {"standard": (1.0, 4.0), "fast": (2.0, 8.0)}.items():
        mine = requests.filter(pl.col("tier") == tier)
        expected = (
            mine["prompt_tokens"].sum() * usd_in + mine["output_tokens"].sum() * usd_out
        ) / 1e6
        assert mine["revenue_usd"].sum() == pytest.approx(expected)
        figures = summary["economics"]["tiers"][tier]
        assert figures["revenue_usd"] == pytest.approx(expected)
        assert figures["margin_usd"] == pytest.approx(expected - mine["cost_usd"].sum())
    fast = requests.filter(pl.col("tier") == "fast")
    assert fast["slo_met"].to_list() == (fast["ttft_s"] <= 0.2).to_list()
    assert summary["economics"]["tiers"]["fast"]["goodput_requests"] == fast["slo_met"].sum()
    fleet = summary["economics"]["fleet"]
    assert fleet["cost_usd"] == pytest.approx(sum(p["cost_usd"] for p in pools.values()))
    assert fleet["margin_usd"] == pytest.approx(fleet["revenue_usd"] - fleet["cost_usd"])


# --- the gateway ----------------------------------------------------------------------------


def test_a_tenant_over_its_rpm_limit_gets_exactly_the_expected_rejections(
    runner, tmp_path, conv_lengths
):
    # acme sends 100 requests within one second: the bucket holds 60 and refills one a second,
    # so 60 pass (the refill stays below one whole request) and 40 are rejected. globex has no
    # limit and loses none.
    arrivals = np.sort(np.concatenate([np.linspace(0, 0.9, 100), np.linspace(0, 0.9, 20)]))
    tenants = ["globex" if i % 6 == 5 else "acme" for i in range(120)]
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, arrivals, tenants=tenants)
    scenario = """
[[pools]]
replicas = 2
[[gateway.limits]]
tenant = "acme"
requests_per_minute = 60
"""
    requests, _, summary = outputs(run(runner, tmp_path, trace, scenario))
    counts = requests.group_by("tenant", "status").len().sort("tenant", "status").rows()
    assert counts == [
        ("acme", "finished", 60),
        ("acme", "rate_limited", 40),
        ("globex", "finished", 20),
    ]
    assert summary["economics"]["tenants"]["acme"]["rate_limited"] == 40
    limited = requests.filter(pl.col("status") == "rate_limited")
    assert (limited["cost_usd"] == 0).all() and (limited["revenue_usd"] == 0).all()
    assert not limited["slo_met"].any()


def test_retries_come_back_later_and_count_as_load(runner, tmp_path, conv_lengths):
    arrivals = np.linspace(0, 0.5, 30)
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, arrivals, tenants=["acme"] * 30)
    scenario = """
[[pools]]
replicas = 2
[gateway.retries]
max_retries = 3
base_backoff_s = 20.0
max_backoff_s = 60.0
[[gateway.limits]]
tenant = "*"
requests_per_minute = 10
"""
    requests, _, summary = outputs(run(runner, tmp_path, trace, scenario))
    first = requests.filter(pl.col("attempts") == 1)
    retried = requests.filter(pl.col("attempts") > 1)
    assert first.height == 10 and (first["status"] == "finished").all()
    assert retried.height == 20
    assert summary["gateway"]["retries"] == (requests["attempts"] - 1).sum()
    ok = retried.filter(pl.col("status") == "finished")
    # They waited out their back-off at the gateway, not in a replica's queue.
    assert ok.height > 0 and (ok["gateway_wait_s"] > 0).all()
    assert (ok["gateway_wait_s"] + ok["queue_s"] == ok["start_s"] - ok["arrival_s"]).all()
    assert (retried.filter(pl.col("status") == "rate_limited")["attempts"] == 4).all()


SATURATED = """
interval_s = 10.0
[[pools]]
replicas = 1
[pools.batcher]
policy = "vllm"
max_num_seqs = 8
[[tiers]]
name = "standard"
[[tiers]]
name = "batch"
deferred = true
deadline_s = {deadline}
priority = -1
[gateway]
deferred_max_utilisation = 0.5
deferred_margin = {margin}
tick_s = 0.1
"""


def deferral_run(runner, tmp_path, conv_lengths, deadline: float, margin: float, name: str):
    # 40 standard requests at t=0 fill the 8 batch slots five times over; 10 batch requests
    # arrive at t=1.
    arrivals = [0.0] * 40 + [1.0] * 10
    tiers = ["standard"] * 40 + ["batch"] * 10
    trace = write_trace(tmp_path / f"{name}.parquet", conv_lengths, arrivals, tiers)
    scenario = SATURATED.format(deadline=deadline, margin=margin)
    return outputs(run(runner, tmp_path, trace, scenario, name))[0]


def test_the_batch_tier_waits_while_the_pool_is_busy(runner, tmp_path, conv_lengths):
    requests = deferral_run(runner, tmp_path, conv_lengths, 10_000.0, 0.25, "patient")
    standard = requests.filter(pl.col("tier") == "standard").sort("finish_s")
    batch = requests.filter(pl.col("tier") == "batch")
    # Headroom means fewer than 4 requests (half of 8 slots) in the pool: that is after the
    # 37th of the 40 standard requests has finished; no batch request starts before.
    headroom_s = standard["finish_s"][36]
    assert (batch["status"] == "finished").all()
    assert batch["start_s"].min() >= headroom_s
    # Released while the standard requests drain: they overlap with the last of them.
    assert batch["start_s"].min() < standard["finish_s"].max()


def test_a_near_deadline_forces_the_batch_tier_in_and_without_margin_it_expires(
    runner, tmp_path, conv_lengths
):
    forced = deferral_run(runner, tmp_path, conv_lengths, 4.0, 0.5, "forced")
    standard = forced.filter(pl.col("tier") == "standard").sort("finish_s")
    batch = forced.filter(pl.col("tier") == "batch")
    # Forced out at 1 + 4 x 0.5 = 3 s, while the pool is still full.
    assert standard["finish_s"][36] > 3.0
    assert batch["start_s"].min() >= 3.0
    assert batch["start_s"].min() < standard["finish_s"][36]
    expired = deferral_run(runner, tmp_path, conv_lengths, 2.0, 0.0, "expired")
    batch = expired.filter(pl.col("tier") == "batch")
    assert (batch["status"] == "expired").all() and batch["start_s"].is_null().all()
    assert (batch["revenue_usd"] == 0).all()


def test_higher_priority_lowers_the_fast_tiers_ttft_under_load(runner, tmp_path, conv_lengths):
    n = 600
    tiers = ["fast" if i % 5 == 0 else "standard" for i in range(n)]
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 30, n), tiers)
    scenario = """
[[pools]]
replicas = 1
gpu_memory_utilization = 0.3
[pools.batcher]
policy = "vllm"
max_num_seqs = 32
scheduling_policy = "priority"
[[tiers]]
name = "standard"
[[tiers]]
name = "fast"
priority = {priority}
"""
    ttft = {}
    for priority in (0, 10):
        out = run(runner, tmp_path, trace, scenario.format(priority=priority), f"p{priority}")
        requests = outputs(out)[0]
        fast = requests.filter(pl.col("tier") == "fast")
        standard = requests.filter(pl.col("tier") == "standard")
        ttft[priority] = (fast["ttft_s"].mean(), standard["ttft_s"].mean())
    assert ttft[0][1] > 1.0  # overloaded: standard requests queue for seconds
    assert ttft[10][0] < ttft[0][0] / 3  # the fast tier jumps the queue
    assert ttft[10][1] > ttft[0][1]  # at the standard tier's expense


def test_gateway_latency_is_added_to_ttft(runner, tmp_path, conv_lengths):
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 60, 50))
    base = "[[pools]]\nreplicas = 2\n"
    plain = outputs(run(runner, tmp_path, trace, base, "plain"))[0]
    slow = outputs(run(runner, tmp_path, trace, base + "[gateway]\nlatency_s = 0.25\n", "gw"))[0]
    assert (slow["ttft_s"] - plain["ttft_s"]).to_numpy() == pytest.approx(np.full(50, 0.25))


def test_gateway_runs_are_deterministic_and_step_by_step_exact(runner, tmp_path, conv_lengths):
    n = 400
    arrivals = np.linspace(0, 40, n)
    tiers = [("fast", "standard", "batch", "standard")[i % 4] for i in range(n)]
    tenants = [("acme", "globex")[i % 2] for i in range(n)]
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, arrivals, tiers, tenants)
    example = (Path(__file__).resolve().parents[1] / "examples" / "model-lab.toml").read_text()
    scenario = example.replace('replicas = "auto"', "replicas = 1") + (
        "[gateway.retries]\nmax_retries = 1\n[[gateway.limits]]\ntenant = 'acme'\n"
        "requests_per_minute = 60\n"
    )
    outs = [
        run(runner, tmp_path, trace, scenario, "a"),
        run(runner, tmp_path, trace, scenario, "b"),
        run(runner, tmp_path, trace, scenario, "c", "--step-by-step"),
    ]
    for name in ("requests.parquet", "timeline.parquet", "summary.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert (outs[0] / "requests.parquet").read_bytes() == (
        outs[2] / "requests.parquet"
    ).read_bytes()
    requests = outputs(outs[0])[0]
    assert (requests["attempts"] > 1).any() and (requests["status"] == "rate_limited").any()


# --- autoscaling ---------------------------------------------------------------------------


def test_autoscaling_adds_replicas_only_after_the_provisioning_delay(
    runner, tmp_path, conv_lengths
):
    # Quiet for 50 s, then a burst the single replica cannot carry.
    arrivals = np.concatenate([np.linspace(0, 50, 10), np.linspace(50, 170, 1800)])
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, arrivals)
    scenario = """
interval_s = 5.0
[[pools]]
replicas = 1
[pools.batcher]
policy = "vllm"
max_num_seqs = 16
[pools.pricing]
usd_per_gpu_hour = 3.6
[pools.autoscale]
enabled = true
min_replicas = 1
max_replicas = 3
target = 0.5
provisioning_delay_s = 60.0
cooldown_s = 30.0
interval_s = 5.0
"""
    requests, timeline, summary = outputs(run(runner, tmp_path, trace, scenario))
    (pool,) = summary["pools"]
    assert pool["scale_ups"] >= 1 and pool["peak_replicas"] == 3
    added = timeline.filter((pl.col("replica") > 0) & (pl.col("provisioned_s") > 0))
    asked_s = added["interval_start_s"].min()  # the tick that asked for them
    assert asked_s >= 50
    on_new = requests.filter(pl.col("replica") > 0)
    assert on_new.height > 0
    assert on_new["start_s"].min() >= asked_s + 60.0  # served only once provisioned
    early = timeline.filter((pl.col("replica") > 0) & (pl.col("interval_start_s") < asked_s + 55))
    assert early["busy_s"].sum() == 0 and early["provisioned_s"].sum() > 0  # paid, idle
    # On demand at $3.6/h = $0.001/s: the pool costs its provisioned seconds, each span
    # rounded up to a whole second (the spans still open end with the run, mid-second).
    spans = pool["scale_ups"] + 1
    extra = pool["cost_usd"] - timeline["provisioned_s"].sum() * 0.001
    assert -1e-9 <= extra < spans * 0.001
    assert timeline["cost_usd"].sum() == pytest.approx(pool["cost_usd"])
    assert requests["cost_usd"].sum() == pytest.approx(pool["cost_usd"])
    assert pool["scale_downs"] >= 1  # and scaled back once the burst was over
    # Per-GPU figures divide by the GPUs provisioned on average (those being provisioned too:
    # the GPU time paid for), not by the one replica the pool started with.
    assert summary["gpus"] == 1
    assert summary["gpu_hours_provisioned"] * 3.6 == pytest.approx(pool["cost_usd"] - extra)
    run_s = summary["economics"]["fleet"]["run_s"]
    assert summary["gpus_mean"] == pytest.approx(timeline["provisioned_s"].sum() / run_s)
    assert 1.5 < summary["gpus_mean"] < 3
    throughput = summary["throughput"]
    assert throughput["output_tokens_per_s_per_gpu"] == pytest.approx(
        throughput["output_tokens_per_s"] / summary["gpus_mean"]
    )


def test_the_timeline_spreads_each_pools_cost_over_its_intervals(runner, tmp_path, conv_lengths):
    """A pool's cost is computed once, from its provisioned spans (summary.json); the
    timeline's cost column prices every interval from the same spans, so per pool the two
    agree: on demand with per-minute billing (its rounding lands where a span ends), autoscaled,
    next to an owned pool whose power follows its busy time."""
    arrivals = np.concatenate([np.linspace(0, 50, 10), np.linspace(50, 170, 1500)])
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, arrivals)
    scenario = """
interval_s = 7.0
[[pools]]
name = "cloud"
replicas = 1
[pools.batcher]
policy = "vllm"
max_num_seqs = 16
[pools.pricing]
usd_per_gpu_hour = 3.6
billing_granularity_s = 60.0
[pools.autoscale]
enabled = true
max_replicas = 3
target = 0.5
provisioning_delay_s = 20.0
cooldown_s = 30.0
interval_s = 5.0
[[pools]]
name = "own"
replicas = 2
[pools.pricing]
kind = "owned"
"""
    _, timeline, summary = outputs(run(runner, tmp_path, trace, scenario))
    pools = {p["name"]: p for p in summary["pools"]}
    assert pools["cloud"]["scale_ups"] >= 1 and pools["cloud"]["scale_downs"] >= 1
    by_pool = timeline.group_by("pool").agg(pl.col("cost_usd").sum(), pl.col("busy_s").sum())
    for name, cost, busy in by_pool.iter_rows():
        assert busy > 0
        assert cost == pytest.approx(pools[name]["cost_usd"], rel=1e-9)
    # Per-minute billing rounds every closed span up: more than the provisioned seconds cost.
    provisioned = timeline.filter(pl.col("pool") == "cloud")["provisioned_s"].sum()
    assert pools["cloud"]["cost_usd"] > provisioned * 0.001


def test_an_autoscaled_pool_with_a_deferred_tier_ends_when_the_work_does(
    runner, tmp_path, conv_lengths
):
    # Regression: the gateway's deferral tick once reset "trace done", so the autoscaler
    # kept ticking forever and the run never ended.
    arrivals = np.linspace(0, 20, 60)
    tiers = ["batch" if i % 3 == 0 else "standard" for i in range(60)]
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, arrivals, tiers)
    scenario = """
interval_s = 5.0
[[pools]]
replicas = 1
[pools.autoscale]
enabled = true
min_replicas = 1
max_replicas = 2
provisioning_delay_s = 10.0
interval_s = 5.0
[[tiers]]
name = "standard"
[[tiers]]
name = "batch"
deferred = true
deadline_s = 600.0
"""
    requests, timeline, summary = outputs(run(runner, tmp_path, trace, scenario))
    assert (requests["status"] == "finished").all() and requests.height == 60
    # The run ends at the last finish, not at some far-off tick.
    run_s = summary["economics"]["fleet"]["run_s"]
    assert run_s == requests["finish_s"].max() - LAG_S


# --- bad input: one line, exit 2, nothing written ---------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "needles"),
    [
        ("[[tiers]]\nname = 'standard'\nusd_per_mtoken_output = -1.0\n", ["usd_per_mtoken_output"]),
        ("[[tiers]]\nname = 'standard'\nttft_slo_s = -0.5\n", ["ttft_slo_s"]),
        ("[[tiers]]\nname = 'standard'\npools = ['gpu-farm']\n", ["'gpu-farm'", "pools"]),
        ("[[pools]]\n[pools.pricing]\nusd_per_gpu_hour = -2.0\n", ["usd_per_gpu_hour"]),
        ("[[pools]]\n[pools.pricing]\nkind = 'leased'\n", ["'leased'"]),
        (
            "[[pools]]\n[pools.autoscale]\nenabled = true\nmin_replicas = 4\nmax_replicas = 2\n",
            ["min_replicas = 4", "max_replicas = 2"],
        ),
        ("[gateway]\nlatncy_s = 0.1\n", ["'latncy_s'"]),
        ("[[gateway.limits]]\ntenant = 'a'\nrequests_per_minute = -1\n", ["requests_per_minute"]),
        ("[[tiers]]\nname = 'batch'\ndeferred = true\n", ["deadline_s"]),
    ],
)
def test_bad_economics_settings_are_refused(runner, tmp_path, conv_lengths, scenario, needles):
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, [0.0, 1.0])
    path = tmp_path / "bad.toml"
    path.write_text(scenario)
    out = tmp_path / "out"
    assert_refused(replay(runner, trace, "--scenario", path, "--out", out), out, *needles)


def test_unknown_trace_tiers_are_counted_or_refused(runner, tmp_path, conv_lengths):
    tiers = ["standard"] * 5 + ["premium"] * 3
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.arange(8.0), tiers)
    out = tmp_path / "out"
    result = replay(runner, trace, "--unknown-tier", "reject", "--out", out)
    assert_refused(
        result, out, "'premium' (3 requests)", 'unknown_tier = "default"', "--unknown-tier"
    )
    result = replay(runner, trace, "--replicas", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert "premium (3)" in result.stdout
    requests, _, summary = outputs(out)
    assert summary["gateway"]["unknown_tiers"] == {"premium": 3}
    assert (requests["tier"] == "standard").all()  # served and billed as the default tier
