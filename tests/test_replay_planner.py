"""Figures a fleet planner reads (issue 11, items 2-8): sizing that one request cannot move,
load figures that are not busy time, per-GPU default prices, what was simulated, the
model's context, KV peaks over provisioned time, and the gateway's wait apart from the queue."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from test_replay_economics import SATURATED, outputs, run, write_trace

from tokenfleet.cli.format import duration, format_summary
from tokenfleet.errors import Notice
from tokenfleet.hardware.profile import list_profiles, load_profile
from tokenfleet.replay.fleet import TraceLengths, build_fleet
from tokenfleet.replay.scenario import load_scenario, with_overrides


def auto_count(prompts: np.ndarray, outputs: np.ndarray, span_s: float) -> tuple[int, list]:
    """The replicas "auto" gives the default scenario for these requests, and its notices."""
    lengths = TraceLengths(prompts.size, span_s, prompts, outputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fleet, _ = build_fleet(load_scenario(None), lengths)
    notices = [str(w.message) for w in caught if issubclass(w.category, Notice)]
    return fleet.pools[0]["replicas"], notices


@pytest.mark.parametrize(
    ("prompt", "output"),
    [(10**9, 10), (100, 10**9), (500, 100_000), (120_000, 10_000)],
    ids=["huge prompt", "huge output", "long output that fits", "long prompt that fits"],
)
def test_one_absurd_request_moves_auto_sizing_by_one_replica_at_most(conv_lengths, prompt, output):
    # Item 2: one 10^9-token prompt asked for 1,065 replicas, one such output 44,551.
    prompts, outputs = (np.tile(x, 10) for x in conv_lengths)  # 20,000 requests over 10 min
    base, quiet = auto_count(prompts, outputs, 600.0)
    assert base >= 3 and quiet == []
    count, notices = auto_count(
        np.append(prompts, np.int32(prompt)), np.append(outputs, np.int32(output)), 600.0
    )
    assert abs(count - base) <= 1
    if prompt + output > 131_072:  # longer than the model's context: left out, and said so
        assert any("left out of its sizing" in n for n in notices)


def test_sizing_warns_when_a_few_requests_hold_the_work(conv_lengths):
    prompts, outputs = (np.tile(x, 10) for x in conv_lengths)
    prompts, outputs = prompts.copy(), outputs.copy()
    prompts[:15], outputs[:15] = 120_000, 10_000  # 0.075% of the requests, 8% of the tokens
    _, notices = auto_count(prompts, outputs, 600.0)
    assert any("of the trace's tokens lie beyond" in n for n in notices)


def test_load_figures_come_from_the_steps_and_busy_time_is_named_apart(
    runner, tmp_path, conv_lengths
):
    # Item 3: 8 replicas at a trickle read 77.9% "GPU busy"; the load figures say how full the
    # steps run, and sizing's target is a figure the summary shows.
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 300, 1500))
    _, timeline, summary = outputs(run(runner, tmp_path, trace, "[[pools]]\nreplicas = 8\n"))
    load = summary["load"]["default"]
    steps = timeline["steps"].sum()
    batch = (timeline["mean_batch"] * timeline["steps"]).sum() / steps
    assert load["mean_batch"] == pytest.approx(batch)
    assert load["peak_batch"] == timeline["max_batch"].max() <= 256
    assert load["batch_frac_mean"] == pytest.approx(batch / 256)
    tokens = timeline["prefill_tokens"].sum() + timeline["decode_tokens"].sum()
    assert load["token_budget_frac_mean"] == pytest.approx(tokens / steps / 8192)
    assert load["kv_peak_frac"] == timeline["kv_peak_frac"].max()
    assert load["batch_frac_mean"] < 0.1 < summary["step_busy_frac"]
    assert "gpu_busy_frac" not in summary
    auto = json.loads((run(runner, tmp_path, trace, "", "auto") / "summary.json").read_text())[
        "pools"
    ][0]["sizing"]
    assert auto["target_load"] == 0.7 and 0 < auto["estimated_load"] <= 0.7


def test_every_builtin_gpu_has_its_own_default_rent_and_the_summary_labels_it(
    runner, tmp_path, conv_lengths
):
    # Item 4: every GPU cost $2.50 an hour.
    rents = {name: load_profile(name).rent_usd_per_gpu_hour for name in list_profiles()}
    assert all(r > 0 for r in rents.values()) and len(set(rents.values())) >= 6
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 60, 200))
    pools = {}
    for gpu in ("a100-80gb", "h100-sxm"):
        summary = outputs(run(runner, tmp_path, trace, "", gpu, "--gpu", gpu, "--replicas", "1"))[2]
        pools[gpu] = summary["pools"][0]
        assert pools[gpu]["usd_per_gpu_hour"] == rents[gpu]
        assert pools[gpu]["default_prices"] == ["usd_per_gpu_hour"]
        assert f"${rents[gpu]:.2f}/GPU-h (default price)" in format_summary(summary)
    assert pools["a100-80gb"]["cost_usd"] < pools["h100-sxm"]["cost_usd"]
    set_price = "[[pools]]\nreplicas = 1\n[pools.pricing]\nusd_per_gpu_hour = 9.0\n"
    mine = outputs(run(runner, tmp_path, trace, set_price, "mine"))[2]["pools"][0]
    assert mine["usd_per_gpu_hour"] == 9.0 and mine["default_prices"] == []


def test_an_owned_pool_takes_its_gpus_tdp(runner, tmp_path, conv_lengths):
    # Item 4: owned pools took 700 W whatever the GPU.
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 60, 200))
    scenario = '[[pools]]\ngpu = "l40s"\nreplicas = 1\n[pools.pricing]\nkind = "owned"\n'
    out = run(runner, tmp_path, trace, scenario)
    resolved = (out / "scenario.toml").read_text()
    assert re.search(r"^gpu_tdp_w = 350\.0$", resolved, re.M)
    assert load_profile("l40s").tdp_w == 350.0


def test_the_records_say_what_was_simulated(runner, tmp_path, conv_lengths):
    # Item 5: model, dtype, GPU, tp, engine, batcher, price, trace, version in both files.
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 60, 200))
    out = run(runner, tmp_path, trace, "[[pools]]\nreplicas = 2\ntp = 2\n")
    summary = json.loads((out / "summary.json").read_text())
    expected = {
        "tokenfleet.model": "llama-3.1-8b",
        "tokenfleet.dtype": "bf16",
        "tokenfleet.gpu": "h100-sxm",
        "tokenfleet.tp": "2",
        "tokenfleet.engine": "vllm-v1",
        "tokenfleet.batcher": "vllm",
        "tokenfleet.usd_per_gpu_hour": "2.95",
        "tokenfleet.trace": str(trace),
        "tokenfleet.max_model_len": "131072",
    }
    for name in ("requests.parquet", "timeline.parquet"):
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(out / name).metadata.items()}
        assert {k: meta.get(k) for k in expected} == expected
        assert meta["tokenfleet.version"] == summary["run"]["version"]
        assert "[[pools]]" in meta["tokenfleet.scenario"]
    assert summary["run"]["model"] == "llama-3.1-8b" and summary["run"]["tp"] == "2"


def test_the_summary_table_reads_as_a_planner_needs(runner, tmp_path, conv_lengths):
    # Item 5: 5,074,653.7 ms; "580.61$2,215.066"; goodput 100% without an SLO; refusals unnamed.
    assert duration(5074.6537) == "84.6 min" and duration(0.0123) == "12.3 ms"
    assert duration(20_000.0) == "5.6 h"
    assert duration(42.0) == "42.0 s" and duration(900.0) == "15.0 min"
    prompts, outs = (x.copy() for x in conv_lengths)
    prompts[7] = 200_000  # longer than llama-3.1-8b's context
    trace = write_trace(tmp_path / "t.parquet", (prompts, outs), np.linspace(0, 60, 300))
    summary = outputs(run(runner, tmp_path, trace, "[[pools]]\nreplicas = 1\n"))[2]
    text = format_summary(summary)
    assert "299 finished of 300" in text and "refused: 1 too long" in text
    assert re.search(r"^standard .* no SLO ", text, re.M)
    assert "from default tier prices" in text
    (row,) = [line for line in text.splitlines() if line.startswith("standard ")]
    assert len(row.replace("no SLO", "-").split()) == 12, row  # every column apart (ms: 2)
    assert "GPU-h charged" in text and "GPU-h running steps" in text


def test_a_request_longer_than_the_context_ends_too_long(runner, tmp_path, conv_lengths):
    # Item 6: a 191,378-token Mooncake prompt "finished" on Llama-3.1-8B (context 131,072).
    prompts, outs = (x.copy() for x in conv_lengths)
    prompts[3] = 191_378
    trace = write_trace(tmp_path / "t.parquet", (prompts, outs), np.linspace(0, 60, 100))
    big = '[[pools]]\nreplicas = 1\ngpu = "b200"\n'  # a KV cache that would hold it
    requests, _, summary = outputs(run(runner, tmp_path, trace, big))
    assert requests.filter(pl.col("prompt_tokens") == 191_378)["status"].to_list() == ["too_long"]
    assert summary["status_counts"]["too_long"] == 1
    short = outputs(run(runner, tmp_path, trace, big, "short", "--max-model-len", "2048"))
    too_long = short[0].filter(pl.col("status") == "too_long")
    expected = (pl.col("prompt_tokens") + pl.col("output_tokens")) > 2048
    assert too_long.height == short[0].filter(expected).height > 1


def test_max_model_len_above_the_models_context_is_refused(runner, tmp_path, conv_lengths):
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 60, 100))
    result = runner.invoke(
        __import__("tokenfleet.cli.main", fromlist=["cli"]).cli,
        ["replay", str(trace), "--out", str(tmp_path / "o"), "--max-model-len", "200000"],
    )
    assert result.exit_code == 2
    assert "exceeds llama-3.1-8b's context of 131,072 tokens" in result.stderr
    assert "(--max-model-len on the command line)" in result.stderr
    assert not (tmp_path / "o").exists()
    scenario = with_overrides(load_scenario(None), max_model_len=4096)
    assert scenario.model.max_model_len == 4096


AUTOSCALED = """
interval_s = 5.0
[[pools]]
replicas = 1
[pools.autoscale]
enabled = true
min_replicas = 1
max_replicas = 4
target = 0.5
provisioning_delay_s = 30.0
cooldown_s = 30.0
interval_s = 5.0
"""


def test_kv_peaks_count_provisioned_replicas_only(runner, tmp_path, conv_lengths):
    # Item 7: the KV peak averaged in the rows of replicas never provisioned (0.8% vs 5.7%).
    arrivals = np.concatenate([np.linspace(0, 20, 100), np.linspace(60, 80, 300)])
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, arrivals)
    _, timeline, summary = outputs(run(runner, tmp_path, trace, AUTOSCALED))
    idle = timeline.filter(pl.col("provisioned_s") == 0)
    assert idle.height > 0 and idle["kv_peak_frac"].null_count() == idle.height
    serving = timeline.filter(pl.col("provisioned_s") > 0)
    assert serving["kv_peak_frac"].null_count() == 0
    assert summary["load"]["default"]["kv_peak_frac"] == serving["kv_peak_frac"].max()


def test_gateway_wait_is_apart_from_the_replica_queue(runner, tmp_path, conv_lengths):
    # Item 8: queue_s mixed gateway deferral with replica queueing (batch p99 5,074 s).
    tiers = ["batch" if i % 2 else "standard" for i in range(400)]
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 40, 400), tiers)
    scenario = SATURATED.format(deadline=3600.0, margin=0.25)  # batch deferred while busy
    requests, _, summary = outputs(run(runner, tmp_path, trace, scenario))
    done = requests.filter(pl.col("status") == "finished")
    waited = (
        done["gateway_wait_s"] + done["queue_s"] - (done["start_s"] - done["arrival_s"])
    ).abs()
    assert waited.max() < 1e-9
    batch = done.filter(pl.col("tier") == "batch")
    standard = done.filter(pl.col("tier") == "standard")
    assert batch["gateway_wait_s"].max() > 1.0  # deferred at the gateway
    assert standard["gateway_wait_s"].max() == 0.0  # sent on at once
    assert summary["latency_s"]["gateway_wait"]["p99"] >= batch["gateway_wait_s"].quantile(0.5)


def test_a_run_ending_on_an_interval_edge_keeps_its_billing_rounding(
    runner, tmp_path, conv_lengths
):
    # The review's case: the last finish falls exactly on an interval edge; on-demand rounding
    # of the open spans must still land in the timeline (its cost column sums to the pool's).
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.arange(200) * 0.1)
    first = outputs(run(runner, tmp_path, trace, "[[pools]]\nreplicas = 2\n"))[2]
    half = first["economics"]["fleet"]["run_s"] / 2
    again = run(
        runner, tmp_path, trace, "[[pools]]\nreplicas = 2\n", "edge", "--interval", repr(half)
    )
    _, timeline, summary = outputs(again)
    assert summary["economics"]["fleet"]["run_s"] == first["economics"]["fleet"]["run_s"]
    assert timeline["cost_usd"].sum() == pytest.approx(summary["pools"][0]["cost_usd"], rel=1e-12)
    assert (timeline["interval_s"] >= 0).all()


def test_an_owned_pool_on_a_profile_without_tdp_assumes_700_w_and_says_so(
    runner, tmp_path, conv_lengths
):
    import dataclasses

    import tomli_w

    from tokenfleet.hardware.profile import load_profile, profile_to_table

    profile = dataclasses.replace(load_profile("h100-sxm"), tdp_w=0.0, name="no-tdp")
    path = tmp_path / "no-tdp.toml"
    path.write_text(tomli_w.dumps(profile_to_table(profile)))
    trace = write_trace(tmp_path / "t.parquet", conv_lengths, np.linspace(0, 30, 100))
    scenario = f'[[pools]]\ngpu = "{path}"\nreplicas = 1\n[pools.pricing]\nkind = "owned"\n'
    (tmp_path / "s.toml").write_text(scenario)
    result = runner.invoke(
        __import__("tokenfleet.cli.main", fromlist=["cli"]).cli,
        [
            "replay",
            str(trace),
            "--scenario",
            str(tmp_path / "s.toml"),
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "has no TDP; owned power assumes gpu_tdp_w = 700" in result.stderr
    assert "gpu_tdp_w = 700.0" in (tmp_path / "o" / "scenario.toml").read_text()
