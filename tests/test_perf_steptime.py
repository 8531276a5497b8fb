"""StepTime: the physics it must respect, scalar/array agreement, validation on real data, CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.cli.main import cli
from tokenfleet.hardware.profile import list_profiles, load_engine, load_profile
from tokenfleet.models import get_model
from tokenfleet.perf.steptime import StepTime

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import validate_steptime  # noqa: E402

CASES = [
    ("llama-3.1-8b", "h100-sxm", 1),
    ("llama-3.1-70b", "a100-80gb", 4),
    ("qwen3-32b", "l40s", 2),
    ("mixtral-8x7b", "mi300x", 1),
    ("deepseek-v3", "h200", 8),
    ("gpt-oss-120b", "b200", 1),
]


@pytest.mark.parametrize(("model", "gpu", "tp"), CASES)
@pytest.mark.parametrize("engine", ["vllm-v1", "trtllm", "vllm-v0-2023"])
def test_decode_at_batch_one_never_beats_reading_the_weights(model, gpu, tp, engine) -> None:
    spec, profile = get_model(model), load_profile(gpu)
    steptime = StepTime(spec, profile, tp=tp, engine=engine)
    # Every weight a token touches (all but the unused experts and the embedding table) must
    # cross HBM once per step, at no more than the datasheet bandwidth.
    floor_s = spec.params_active * 2.0 / tp / (profile.hbm_tb_s * 1e12)
    assert steptime.step_s(0, 0.0, 1, 1000) >= floor_s


@pytest.mark.parametrize(("model", "gpu", "tp"), CASES[:3])  # dense: MoE reads more experts
def test_throughput_grows_with_batch_until_compute_bound_then_flattens(model, gpu, tp) -> None:
    steptime = StepTime(get_model(model), load_profile(gpu), tp=tp)
    bound = steptime.compute_bound_batch()
    batches = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    tokens_per_s = batches / steptime.step_s_array(0, 0.0, batches, batches * 512)
    # Batching never lowers throughput, except that a step computing past the boost window runs
    # at the power-capped clock: that costs at most the clock's loss.
    gpu_profile = load_profile(gpu)
    assert np.all(tokens_per_s[1:] >= gpu_profile.sustained_clock_frac * tokens_per_s[:-1])
    assert np.all(np.diff(tokens_per_s[: int(np.argmax(tokens_per_s)) + 1]) > 0)
    # Far below the bound, doubling the batch nearly doubles throughput (weights dominate) ...
    assert tokens_per_s[1] / tokens_per_s[0] > 1.8
    # ... well above it, doubling buys little: the step is compute-bound.
    above = batches >= 4 * bound
    gains = tokens_per_s[1:][above[1:]] / tokens_per_s[:-1][above[1:]]
    assert gains.size and np.all(gains < 1.25)


def test_prefill_grows_super_linearly_with_very_long_prompts() -> None:
    steptime = StepTime(get_model("llama-3.1-8b"), load_profile("h100-sxm"))

    def prefill(tokens: int) -> float:
        return steptime.step_s(tokens, tokens * (tokens + 1) / 2, 0, 0)

    assert prefill(65536) / prefill(32768) > 2.2  # attention is quadratic in the prompt
    assert prefill(131072) / prefill(65536) > prefill(65536) / prefill(32768)


def test_tp2_halves_the_weight_read_but_adds_all_reduces() -> None:
    spec, gpu = get_model("llama-3.1-70b"), load_profile("h100-sxm")
    one, two = StepTime(spec, gpu, tp=1), StepTime(spec, gpu, tp=2)
    assert two.decode_gemm_s(1)[1] == pytest.approx(one.decode_gemm_s(1)[1] / 2)  # weight read
    engine = load_engine("vllm-v1")
    all_reduce_s = 2 * spec.n_layers * (gpu.allreduce_latency_us + engine.allreduce_overhead_us)
    decode_one, decode_two = one.step_s(0, 0.0, 1, 100), two.step_s(0, 0.0, 1, 100)
    assert decode_two < 0.6 * decode_one
    assert decode_two > decode_one / 2 + 0.9 * all_reduce_s * 1e-6 / 2


def test_fp8_weights_halve_a_memory_bound_decode_step() -> None:
    spec, gpu = get_model("llama-3.1-70b"), load_profile("h100-sxm")
    bf16, fp8 = StepTime(spec, gpu, tp=2), StepTime(spec, gpu, tp=2, dtype="fp8")
    assert fp8.decode_gemm_s(1)[1] / bf16.decode_gemm_s(1)[1] == pytest.approx(0.5, abs=0.02)
    assert fp8.step_s(0, 0.0, 1, 100) < 0.6 * bf16.step_s(0, 0.0, 1, 100)


def test_moe_decode_reads_more_experts_as_the_batch_grows() -> None:
    steptime = StepTime(get_model("mixtral-8x7b"), load_profile("h100-sxm"))
    one_compute, one_read = steptime.decode_gemm_s(1)
    many_compute, many_read = steptime.decode_gemm_s(64)
    assert many_read > 2.5 * one_read  # 2 of 8 experts at batch 1, all 8 at batch 64
    assert many_compute > one_compute


def test_engine_overheads_do_not_touch_the_hardware() -> None:
    spec, gpu = get_model("llama-2-70b"), load_profile("a100-80gb")
    old, new = StepTime(spec, gpu, 8, engine="splitwise-2023"), StepTime(spec, gpu, 8)
    assert old.engine.name == "vllm-v0-2023" and new.engine.name == gpu.default_engine
    assert old.decode_gemm_s(1) == new.decode_gemm_s(1)
    # A 2023 eager engine is launch-bound at batch 1; CUDA graphs remove most of that (2.3x
    # at TP 8, where vllm-v1's fitted all-reduce cost per peer adds 6 ms back).
    assert old.step_s(0, 0.0, 1, 600) > 2 * new.step_s(0, 0.0, 1, 600)


steps = st.tuples(
    st.integers(0, 20_000), st.floats(0, 1.0), st.integers(0, 512), st.integers(0, 4_000)
).filter(lambda s: s[0] + s[2] > 0)


ENGINES = ["vllm-v1", "trtllm", "vllm-v0-2023"]  # CUDA graphs for decode, and eager


@settings(max_examples=60, deadline=None)
@given(st.lists(steps, min_size=1, max_size=20), st.sampled_from(CASES), st.sampled_from(ENGINES))
def test_step_s_and_step_s_array_agree_exactly(batch, case, engine) -> None:
    model, gpu, tp = case
    steptime = StepTime(get_model(model), load_profile(gpu), tp=tp, engine=engine)
    p = np.array([s[0] for s in batch])
    a = np.array([s[0] * (s[0] + 1) / 2 * s[1] for s in batch])  # up to a whole prompt's pairs
    d = np.array([s[2] for s in batch])
    k = d * np.array([s[3] for s in batch])
    vector = steptime.step_s_array(p, a, d, k)
    scalar = [steptime.step_s(int(p[i]), a[i], int(d[i]), int(k[i])) for i in range(len(p))]
    assert vector.tolist() == scalar


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(CASES),
    st.sampled_from(ENGINES),
    st.integers(1, 512),
    st.integers(0, 8_000),
    st.integers(1, 300),
    st.floats(0.0, 1e5),
)
def test_a_decode_piece_prices_its_steps_as_step_s_does_up_to_rounding(
    case, engine, batch, context, steps, start_s
) -> None:
    model, gpu, tp = case
    steptime = StepTime(get_model(model), load_profile(gpu), tp=tp, engine=engine)
    k = batch * context
    a, b, shift, context_end = steptime.decode_piece(batch, k)
    if steptime._lean:  # the common case: the first step ends exactly where step_s puts it
        assert start_s + (a + b * (k + shift)) == start_s + steptime.step_s(0, 0.0, batch, k)
    t0, m0, summed, total, last = start_s, 0, 0, 0.0, start_s
    for m in range(1, steps + 1):
        ctx = k + batch * (m - 1)
        if ctx >= context_end:  # the next piece starts where this one's last step ended
            a, b, shift, context_end = steptime.decode_piece(batch, ctx)
            t0, m0, summed = last, m - 1, 0
        assert context_end > ctx  # a piece holds at least the step it is asked about
        summed += ctx + shift  # K_m, an exact integer
        end = t0 + ((m - m0) * a + b * summed)
        total += steptime.step_s(0, 0.0, batch, ctx)
        assert end >= last  # ends never go back, so "first end >= T" can be inverted
        # Within rounding: the terms' (relative) and adding each piece to the clock (an ulp).
        assert abs(end - (start_s + total)) <= 1e-9 * total + m * math.ulp(end)
        last = end


@given(st.integers(1, 4096), st.integers(1, 100_000))
def test_a_longer_context_never_makes_a_decode_step_faster(batch: int, context: int) -> None:
    steptime = StepTime(get_model("gpt-oss-120b"), load_profile("h200"))
    assert steptime.step_s(0, 0.0, batch, batch * (context + 1)) >= steptime.step_s(
        0, 0.0, batch, batch * context
    )


@pytest.mark.parametrize("gpu", list_profiles())
def test_every_built_in_profile_is_physical(gpu: str) -> None:
    profile = load_profile(gpu)
    for key in ("gemm_eff_max", "attn_eff", "bw_eff", "link_eff"):
        assert 0.3 <= getattr(profile, key) <= 0.95, key
    # Where FP8 (FP4) tensor cores exist they double the rate of the next wider type.
    for narrow, wide in (
        (profile.peak_tflops_fp8, profile.peak_tflops_bf16),
        (profile.peak_tflops_fp4, profile.peak_tflops_fp8),
    ):
        assert narrow == 0.0 or narrow == pytest.approx(2 * wide, rel=0.03)
    assert 0 < profile.peak_tflops_bf16 * 1e12 / (profile.hbm_tb_s * 1e12) < 600  # FLOP/byte


def test_validation_on_the_splitwise_measurements(shared_data: Path) -> None:
    points = validate_steptime.predict(
        load_profile("a100-80gb"),
        "splitwise-2023",
        shared_data / "measured" / "splitwise_a100_llama2_bloom.csv",
    )
    excluded = {(p.model, p.tp, p.prompt, p.batch) for p in points if p.excluded}
    # Only the configuration whose KV cache cannot hold the batch is left out (README: anomalous).
    assert excluded == {("llama2-70b", 2, 512, 64)}
    summary = validate_steptime.summary(points)
    assert summary["decode"]["points"] == 75 and summary["prefill"]["points"] == 51
    assert summary["decode"]["median_abs_pct"] <= 10
    assert summary["decode"]["max_abs_pct"] <= 25
    assert summary["prefill"]["median_abs_pct"] <= 9
    # The max misses the 25% target: Llama's batched 512-token prefills are slower than one step
    # can be (the script's data floor, >= 28%); this bound guards what the model achieves.
    assert summary["prefill"]["max_abs_pct"] <= 34


def test_steptime_cli_prints_and_writes_the_same_figures(tmp_path: Path, runner) -> None:
    out, js = tmp_path / "st.parquet", tmp_path / "st.json"
    args = [
        "steptime",
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "h100-sxm",
        "--usd-per-gpu-hour",
        "2",
        "--parquet",
        str(out),
        "--json",
        str(js),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(js.read_text())
    rows = pq.read_table(out).to_pylist()
    assert rows == doc["rows"]
    steptime = StepTime(get_model("llama-3.1-8b"), load_profile("h100-sxm"))
    decode_64 = next(r for r in rows if r["batch"] == 64 and r["context_tokens"] == 4096)
    assert decode_64["step_ms"] == pytest.approx(steptime.step_s(0, 0, 64, 64 * 4096) * 1e3)
    assert decode_64["usd_per_mtoken"] == pytest.approx(2 / 3600 / decode_64["tokens_per_s"] * 1e6)
    assert f"decode turns compute-bound at batch {doc['compute_bound_decode_batch']:,}" in (
        result.output
    )
    assert f"{doc['kv_capacity_tokens']:,} tokens" in result.output
    stdout = runner.invoke(cli, [*args[:7], "--json", "-"])
    assert json.loads(stdout.output)["rows"] == doc["rows"]


def test_unknown_gpu_lists_the_known_profiles(runner) -> None:
    result = runner.invoke(cli, ["steptime", "--model", "llama-3.1-8b", "--gpu", "v100"])
    assert result.exit_code == 2
    assert "unknown GPU 'v100'" in result.output
    assert all(name in result.output for name in list_profiles())


def test_a_malformed_profile_is_refused_naming_the_key(tmp_path: Path, runner) -> None:
    good = (Path(__file__).parents[1] / "tokenfleet/hardware/profiles/h100-sxm.toml").read_text()
    cases = {
        "bw_eff": good.replace("bw_eff = 0.88", "bw_eff = 1.7"),  # not a fraction
        "hbm_tb_s": good.replace("hbm_tb_s = 3.35", 'hbm_tb_s = "fast"'),
        "link_eff": good.replace("link_eff = 0.80", ""),  # missing
        "gemm_efficiency": good.replace("gemm_eff_max", "gemm_efficiency"),  # unknown
    }
    for key, text in cases.items():
        path = tmp_path / f"{key}.toml"
        path.write_text(text)
        for args in (
            ["gpus", "show", str(path)],
            ["steptime", "--model", "llama-3.1-8b", "--gpu", str(path)],
        ):
            result = runner.invoke(cli, args)
            assert result.exit_code == 2, (key, result.output)
            assert key in result.output and result.output.count("\n") == 1


def test_a_model_that_does_not_fit_is_refused_and_writes_nothing(tmp_path: Path, runner) -> None:
    out = tmp_path / "st.parquet"
    result = runner.invoke(
        cli,
        [
            "steptime",
            "--model",
            "llama-3.1-405b",
            "--gpu",
            "h100-sxm",
            "--tp",
            "8",
            "--parquet",
            str(out),
        ],
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    expected = "needs 756 GiB of weights; 8 x h100-sxm hold 640 GiB; use tp 16, fp8 weights"
    assert expected in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    result = runner.invoke(
        cli, ["steptime", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--tp", "3"]
    )
    assert result.exit_code == 2 and "tp = 3 does not divide" in result.output


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["llama-2-7b", "llama-3.1-70b", "mixtral-8x7b", "gpt-oss-120b"]),
    tp=st.sampled_from([1, 2, 4]),
    engine=st.sampled_from(["vllm-v1", "vllm-v0-2023"]),
    seqs=st.integers(1, 300),
    context=st.integers(1, 4000),
)
def test_decode_terms_sum_to_the_decode_step(name, tp, engine, seqs, context):
    """The named parts of a decode step (overhead, weights, experts, attention, all-reduce,
    ...) add up to the step StepTime prices, graphed (vllm-v1) or eager (vllm-v0-2023)."""
    step_time = StepTime(get_model(name), load_profile("h100-sxm"), tp, engine=engine)
    terms = step_time.decode_terms(seqs, seqs * context)
    assert all(v >= 0 for v in terms.values())
    assert sum(terms.values()) == pytest.approx(step_time.step_s(0, 0, seqs, seqs * context))
