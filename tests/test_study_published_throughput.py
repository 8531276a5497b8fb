"""Published offline-throughput benchmarks (study/published_throughput.py): TensorRT-LLM's
tables read into rows, trtllm-bench's own batch and token caps, a replay whose throughput
is what the benchmark measures, a fit that recovers the overheads that made the figures,
and bad rows refused in one line naming the row and the field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import load_engine, load_profile
from tokenfleet.models import get_model
from tokenfleet.study.published_throughput import (
    SHIPPED,
    bench_scenario,
    fit_throughput,
    load_published,
    predict,
    trtllm_bench_settings,
)
from tokenfleet.study.run_fit import write_preset

H100 = load_profile("h100-sxm")


@pytest.fixture(scope="module")
def rows():
    return load_published()


def row(rows, run_id: str):
    return next(r for r in rows if r.id == run_id)


def test_the_shipped_tables_read_whole(rows):
    """87 H100 FP8 rows of dense Llama models, each with the doc's request count."""
    assert len(rows) == 87
    assert {r.model for r in rows} == {"llama-3.1-8b", "llama-3.1-70b", "llama-3.3-70b",
                                       "llama-3.1-405b"}  # fmt: skip
    assert {r.source for r in rows} == {"v1.0", "v0.19-era"}
    eight = row(rows, "v1.0/llama-3.1-8b/tp1/128-128")
    assert (eight.tp, eight.dtype, eight.requests, eight.output_tokens_per_s) == (
        1, "fp8", 30000, 28312.0)  # fmt: skip
    assert all(r.requests in (1000, 1500, 3000, 30000) for r in rows)


def test_trtllm_bench_caps_follow_its_heuristic(rows):
    """By hand from tensorrt_llm/bench/build/tuning.py: Llama-3.1-8B FP8 on one H100 holds
    (80 GiB - 8.03e9 B) x 0.95 / (64 KiB x 22,000) = 51 requests of 20,000 + 2,000 tokens:
    batch 64 (the floor), tokens max(2048, 51 x 11 rounded up to 256) = 2048; at 128/128 the
    4096-request cap binds, and 4096 x 2 = 8192 tokens."""
    model = get_model("llama-3.1-8b")
    long = row(rows, "v1.0/llama-3.1-8b/tp1/20000-2000")
    assert trtllm_bench_settings(model, H100.hbm_bytes, long) == (64, 2048)
    short = row(rows, "v1.0/llama-3.1-8b/tp1/128-128")
    assert trtllm_bench_settings(model, H100.hbm_bytes, short) == (4096, 8192)
    # 2048/128 on 70B at TP 2: 0.95 x (160 GiB - 70.55e9 B) / (160 KiB x 2176) = 270 requests,
    # rounded up to 128s; 270 x 17 = 4587 tokens, rounded up to 512s
    seventy = row(rows, "v1.0/llama-3.3-70b/tp2/2048-128")
    bs, tokens = trtllm_bench_settings(get_model("llama-3.3-70b"), H100.hbm_bytes, seventy)
    assert (bs, tokens) == (384, 4608)
    batcher = bench_scenario(seventy).pools[0].batcher.settings
    assert (batcher["max_num_seqs"], batcher["max_num_batched_tokens"]) == (bs, tokens)
    assert batcher["enable_prefix_caching"] is False


def small(run, requests: int = 120):
    return dataclasses.replace(run, requests=requests)


def test_the_replay_is_as_fast_as_its_steps_allow(rows, tmp_path):
    """All requests at t=0, one batch: 120 x 2048 tokens take about 2048 decode steps, so
    the throughput is 120 over the step time, and it falls as the per-step overhead grows."""
    run = small(row(rows, "v1.0/llama-3.1-8b/tp1/128-2048"))
    slow = dataclasses.replace(load_engine("trtllm"), name="slow", aliases=(), step_overhead_ms=5.0)
    fast_tok_s = predict(run)
    slow_tok_s = predict(run, str(write_preset(slow, tmp_path / "slow.toml")))
    assert 50 * 120 < fast_tok_s < 1000 * 120  # steps of 1 to 20 ms
    assert slow_tok_s < fast_tok_s / 1.3  # 4.7 ms more on each of those steps


def test_the_fit_recovers_the_overheads_that_made_the_figures(rows, tmp_path):
    """Figures a known preset produced (step overhead 1.5 ms, 5 us a sequence), fitted from
    trtllm's values: back to them within a few percent."""
    truth = dataclasses.replace(load_engine("trtllm"), name="truth", aliases=(),
                                step_overhead_ms=1.5, seq_overhead_us=5.0)  # fmt: skip
    engine = str(write_preset(truth, tmp_path / "truth.toml"))
    picked = [small(row(rows, f"v1.0/llama-3.1-8b/tp1/{s}"), n)
              for s, n in (("128-128", 600), ("2048-128", 150), ("128-2048", 60))]  # fmt: skip
    made = [dataclasses.replace(r, output_tokens_per_s=predict(r, engine)) for r in picked]
    fitted = fit_throughput(made, keys=("step_overhead_ms", "seq_overhead_us"))
    assert fitted.step_overhead_ms == pytest.approx(1.5, rel=0.05)
    assert fitted.seq_overhead_us == pytest.approx(5.0, rel=0.1)
    assert fitted.layer_launch_us == load_engine("trtllm").layer_launch_us  # untouched


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("osl"), "run 'x': field osl is missing"),
        (lambda r: r.update(model="gpt-9"), "run 'x': field model: unknown model 'gpt-9'"),
        (lambda r: r.update(gpu="B300"), "run 'x': field gpu = 'B300' is unknown"),
        (lambda r: r.update(output_tokens_per_s=-3.0), "output_tokens_per_s = -3.0 must be > 0"),
        (lambda r: r.update(requests=float("nan")), "field requests = nan must be > 0"),
        (lambda r: r.update(isl="128"), "field isl = '128' is no number"),
    ],
)
def test_a_bad_row_is_one_line_naming_the_row_and_the_field(tmp_path, change, message):
    doc = json.loads(SHIPPED.read_text())
    doc["runs"] = [dict(doc["runs"][0], id="x")]
    change(doc["runs"][0])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_published(path)


def test_a_file_of_another_format_is_refused(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"format": "tokenfleet-measured-runs/1", "runs": []}))
    with pytest.raises(UserError, match="not a published-throughput file"):
        load_published(path)


def test_a_row_whose_weights_do_not_fit_is_one_line(rows):
    """405B in FP8 is ~382 GiB: one H100 cannot hold it."""
    run = dataclasses.replace(row(rows, "v1.0/llama-3.1-405b/tp8/128-128"), tp=1)
    with pytest.raises(UserError, match="fp8 weights, 382 GiB per GPU at TP 1, do not fit"):
        bench_scenario(run)
