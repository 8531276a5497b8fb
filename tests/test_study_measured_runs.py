"""Measured vLLM runs (study/measured_runs.py): the real file reads into runs whose traces carry the
published workload, whose replays hit the prefix cache on every repeat, and whose bad fields
are refused in one line naming the run and the field."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import numpy as np
import pyarrow.parquet as pq
import pytest

from tokenfleet.errors import UserError
from tokenfleet.models import get_model
from tokenfleet.replay.run import run_replay
from tokenfleet.study.measured_runs import (
    ID_BLOCK,
    PROMPTS,
    decode_check,
    errors_pct,
    implied_outputs,
    load_runs,
    planned_kv_blocks,
    predict,
    run_scenario,
    run_trace,
)


@pytest.fixture(scope="module")
def runs_file(shared_data):
    return shared_data / "measured" / "vllm_h100_runs.json"


@pytest.fixture(scope="module")
def runs(runs_file):
    return load_runs(runs_file)


def test_every_run_reads_with_a_built_in_model_and_its_published_request_count(runs_file, runs):
    raw = {r["id"]: r for r in json.loads(runs_file.read_text())["runs"]}
    assert len(runs) == 21 == len(raw)
    assert len({r.model for r in runs}) == 9
    for run in runs:
        get_model(run.model)  # a built-in
        trace = run_trace(run)
        assert trace.num_rows == raw[run.id]["workload"]["requests"], run.id
        assert len(run.measured) == len(run.stages)


def test_a_trace_is_constant_rate_stages_of_100_rotating_prompts(runs):
    run = next(r for r in runs if len(r.stages) == 2)
    trace = run_trace(run)
    arrivals = trace.column("arrival_s").to_numpy()
    (rate1, span1), (rate2, _span2) = run.stages
    first = round(rate1 * span1)
    assert np.allclose(np.diff(arrivals[:first]), 1 / rate1)
    assert np.allclose(np.diff(arrivals[first:]), 1 / rate2)
    assert arrivals[first] == pytest.approx(span1)
    hashes = trace.column("prefix_hashes").to_pylist()
    assert len({tuple(h) for h in hashes}) == PROMPTS
    assert hashes[0] == hashes[PROMPTS] != hashes[1]
    system = run.system_prompt_len // ID_BLOCK
    # prompts 0-9 share a system prompt, 10 starts another
    assert hashes[0][:system] == hashes[9][:system] != hashes[10][:system]
    assert hashes[0][system:] != hashes[1][system:]


def test_a_replayed_run_hits_the_cache_on_every_repeat(runs, tmp_path):
    """After the first 100 requests every prompt is a repeat: vLLM serves it from the cache
    but for its last block (the hit is capped at prompt - 1 tokens)."""
    run = min(runs, key=lambda r: r.prompt_tokens)
    short = dataclasses.replace(run, stages=((run.stages[0][0], 60.0),), measured=run.measured[:1])
    trace = tmp_path / "trace.parquet"
    pq.write_table(run_trace(short), trace)
    run_replay(trace, run_scenario(short, "vllm-v1"), tmp_path / "out")
    cached = pq.read_table(tmp_path / "out" / "requests.parquet").column("cached_tokens")
    cached = cached.to_numpy()
    full_hit = (short.prompt_tokens - 1) // 16 * 16
    assert cached[PROMPTS:].min() == cached[PROMPTS:].max() == full_hit
    assert cached[:10].max() < full_hit  # the first of each system prompt hit nothing or less


def test_predicted_itl_divides_by_the_output_count_the_measurements_imply(runs):
    run = runs[0]
    measured = run.measured[0]
    counted = implied_outputs(measured)
    assert 200 < counted < run.output_len  # re-tokenised streams count fewer tokens
    predicted = predict(dataclasses.replace(run, stages=((run.stages[0][0], 30.0),),
                                            measured=run.measured[:1]))[0]  # fmt: skip
    assert predicted["itl_mean_ms"] == pytest.approx(
        (predicted["e2e_mean_ms"] - predicted["ttft_mean_ms"]) / (counted - 1)
    )
    assert predicted["ttft_mean_ms"] < predicted["e2e_mean_ms"]
    assert errors_pct(measured, measured) == dict.fromkeys(measured, 0.0)


def broken(runs_file, tmp_path, change) -> str:
    doc = json.loads(runs_file.read_text())
    change(doc["runs"][2])
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError) as err:
        load_runs(path)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.pop("tp"), "field tp is missing"),
        (lambda r: r.update(gpu="A100"), "field gpu = 'A100' is unknown"),
        (lambda r: r.update(model="acme/Unknown-7B"), "field model = 'acme/Unknown-7B'"),
        (
            lambda r: r["measured"]["stages"][0].update(e2e_mean_ms=-5.0),
            "field measured.stages[0].e2e_mean_ms = -5.0 must be > 0",
        ),
        (
            lambda r: r["measured"]["stages"][0].update(itl_mean_ms=math.nan),
            "field measured.stages[0].itl_mean_ms = nan must be > 0",
        ),
        (
            lambda r: r["measured"]["stages"][0].update(ttft_p99_ms=1e9),
            "field measured.stages[0].ttft_p99_ms = 1000000000.0 is above e2e_p99_ms",
        ),
        (lambda r: r["workload"].pop("stages"), "field workload.stages is missing"),
    ],
)
def test_a_bad_run_is_one_line_naming_the_run_and_the_field(runs_file, tmp_path, change, expected):
    message = broken(runs_file, tmp_path, change)
    assert "run '20260217-155451'" in message and expected in message, message


def test_the_memory_plan_gives_the_kv_blocks_vllm_logged_for_every_dense_model(runs):
    """13 runs logged vLLM's KV block count: for the dense models the plan (weights, runtime
    reserve, activations, the RoPE table under gpu_memory_utilization) is within 1.5% of it.
    Llama 4 Scout (FP8, MoE, a vision tower) is 38% over, 59% before its 10.5M-position RoPE
    table was reserved: the rest is not yet modelled."""
    checked = 0
    for run in runs:
        if run.kv_blocks is None:
            continue
        ratio = planned_kv_blocks(run) / run.kv_blocks
        if run.model == "llama-4-scout":
            assert 1.3 < ratio < 1.45, (run.id, ratio)
            continue
        assert abs(ratio - 1) < 0.015, (run.id, run.model, ratio)
        checked += 1
    assert checked == 9


def test_the_decode_step_at_the_implied_batch_is_near_the_measured_itl(runs):
    """Little's law gives each stage's decoding batch, rate x (E2E - TTFT); StepTime's decode
    step at that batch is within 15% of the measured time per generated token at the median
    over the unsaturated stages (10.0% with vllm-v1 on 2 December 2026, too fast on every one
    of them). A guard for the step model while it is being fitted."""
    errors = [
        check["error_pct"]
        for run in runs
        if not run.saturated
        for check in decode_check(run, "vllm-v1")
    ]
    assert len(errors) == 28
    assert statistics.median(abs(e) for e in errors) < 15
    # the batch is Little's law over the decode phase
    run = runs[0]
    (rate, _), measured = run.stages[0], run.measured[0]
    implied = rate * (measured["e2e_mean_ms"] - measured["ttft_mean_ms"]) / 1e3
    assert decode_check(run, "vllm-v1")[0]["batch"] == pytest.approx(implied)
    # the measured step divides by the tokens the server generated, not the re-tokenised count
    # the file's ITL divides by (Llama-2's tokenizer counts 1,120 of run 67's 1,448)
    run = next(r for r in runs if r.id == "67")
    measured = run.measured[0]
    check = decode_check(run, "vllm-v1")[0]
    per_token = (measured["e2e_mean_ms"] - measured["ttft_mean_ms"]) / (1448 - 1)
    assert check["step_measured_ms"] == pytest.approx(per_token)
    assert check["step_measured_ms"] < 0.8 * measured["itl_mean_ms"]
