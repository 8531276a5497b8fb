"""`tokenfleet calibrate fit-steps`: fitting an engine's overheads to measured step times, on
the real Splitwise A100 measurements and on step logs in the generic format."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MEASURED

from tokenfleet.calibrate.fit_steps import fit_engine
from tokenfleet.calibrate.step_log import read_step_log
from tokenfleet.cli.main import cli
from tokenfleet.hardware.profile import COEFFICIENT_KEYS, DATASHEET_KEYS, load_engine, load_profile
from tokenfleet.models import get_model
from tokenfleet.perf.steptime import StepTime

SPLITWISE = MEASURED / "splitwise_a100_llama2_bloom.csv"
A100 = load_profile("a100-80gb")


def test_splitwise_fit_beats_the_built_in_profile(shared_data) -> None:
    log = read_step_log(SPLITWISE)
    assert len(log.step_ms) == 128  # 76 configurations: 76 prefill + 52 decode (token_size > 1)
    assert log.repeats.sum() == 2 * 420 - 0  # every row gives a prefill and a decode step
    base = load_engine("splitwise-2023")
    fit = fit_engine(log, A100, base, name="fitted")
    assert fit.after.median_residual < fit.before.median_residual
    errors = pl.from_arrow(fit.points)
    assert errors["after_error"].abs().median() == pytest.approx(fit.after.median_residual)
    for key in ("step_overhead_ms", "seq_overhead_us", "layer_launch_us"):
        assert key in fit.fitted_keys  # an eager 2023 engine: all three are visible
    assert fit.preset.cuda_graphs is False


def test_splitwise_decode_contexts_follow_the_generation(shared_data) -> None:
    log = read_step_log(SPLITWISE, model="llama2-70b", tp=4)
    assert set(log.model) == {"llama2-70b"} and set(log.tp.tolist()) == {4}
    decode = [i for i, p in enumerate(log.phase) if p == "decode"]
    i = next(i for i in decode if log.label[i] == "llama2-70b tp4, decode 1 seqs ctx 513-2559")
    contexts = log.decode_context_tokens[i]
    assert contexts[0] == 513 and contexts[-1] == 512 + 2048 - 1  # prompt + generated - 1
    j = next(i for i, p in enumerate(log.phase) if p == "prefill" and "16x512" in log.label[i])
    assert log.prefill_tokens[j, 0] == 16 * 512
    assert log.prefill_attn_pairs[j, 0] == 16 * 512 * 513 / 2


def test_fit_steps_cli_writes_a_profile_whose_engine_is_the_fit(runner, tmp_path, shared_data):
    out = tmp_path / "sw.toml"
    args = ["calibrate", "fit-steps", str(SPLITWISE), "--gpu", "a100-80gb"]
    result = runner.invoke(cli, [*args, "--engine", "splitwise-2023", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    profile = load_profile(str(out))
    assert profile.engine is not None and profile.default_engine == profile.engine.name
    assert profile.engine.name == "fit-splitwise-a100-llama2-bloom"
    for key in (*DATASHEET_KEYS, *COEFFICIENT_KEYS):  # the hardware is not bent
        assert getattr(profile, key) == getattr(A100, key), key
    table = pq.read_table(tmp_path / "sw.steps-fit.parquet")
    for column in ("prefill_tokens", "decode_seqs", "tp"):  # counts are integers
        assert table.schema.field(column).type == pa.int64(), column
    points = table.to_pylist()
    assert len(points) == len(summary["points"]) == 128
    assert profile.meta["base_kind"] == "gpu" and not profile.measured_on_cpu
    # StepTime on the written profile reproduces the "after" column.
    row = next(p for p in points if p["point"] == "llama2-70b tp8, prefill 1x2048")
    step = StepTime(get_model("llama-2-70b"), profile, tp=8)
    assert step.step_s(2048, 2048 * 2049 / 2, 0, 0) * 1e3 == pytest.approx(row["after_ms"])
    errors = summary["errors"]["all"]
    assert errors["after_median_abs_error"] < errors["before_median_abs_error"]
    assert profile.meta["errors"]["all"] == pytest.approx(errors)


def test_fit_steps_prints_every_point_before_and_after(runner, tmp_path, shared_data) -> None:
    args = ["calibrate", "fit-steps", str(SPLITWISE), "--gpu", "a100-80gb", "--model"]
    result = runner.invoke(cli, [*args, "bloom-176b", "--out", str(tmp_path / "b.toml")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["point", "measured", "ms", "before", "after"]
    point_lines = [line for line in lines if line.startswith("bloom-176b tp8")]
    # 19 configurations: 19 decode points; their prefills differ only in 13 (the seven runs of
    # 512-token prompts at batch 1 vary just the generated length, so share one prefill point).
    assert len(point_lines) == 13 + 19
    assert all(line.count("%") == 2 for line in point_lines)
    assert any(line.startswith("decode") for line in lines)


def _write_generic_log(path, truth, rng) -> None:
    """A step log of llama-3.1-8b on 2 A100s under engine `truth`, with foreign column names."""
    step = StepTime(get_model("llama-3.1-8b"), A100, tp=2, engine=truth)
    rows = []
    for batch in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        for ctx in (256, 1024, 4096):
            rows.append((0, batch, batch * ctx))
    for prompt in (16, 64, 256, 1024, 4096):
        rows.append((prompt, 0, 0))
    for chunk, batch in ((256, 8), (512, 32)):
        rows.append((chunk, batch, batch * 1024))
    frame = pl.DataFrame(rows, schema=["new_tokens", "running", "kv_tokens"], orient="row")
    pairs = frame["new_tokens"].cast(pl.Float64) * (frame["new_tokens"] + 1) / 2
    seconds = step.step_s_array(frame["new_tokens"], pairs, frame["running"], frame["kv_tokens"])
    noise = np.exp(rng.normal(0, 0.005, len(rows)))
    frame.with_columns(latency_ms=pl.Series(seconds * 1e3 * noise)).write_parquet(path)


def test_generic_step_log_with_column_mapping(runner, tmp_path) -> None:
    base = load_engine("vllm-v1")
    truth = dataclasses.replace(base, step_overhead_ms=3.0, seq_overhead_us=40.0)
    steps = tmp_path / "engine_steps.parquet"
    _write_generic_log(steps, truth, np.random.default_rng(3))
    columns = "prefill_tokens=new_tokens,decode_seqs=running,decode_context_tokens=kv_tokens,"
    columns += "step_ms=latency_ms"
    out = tmp_path / "fit.toml"
    result = runner.invoke(
        cli,
        ["calibrate", "fit-steps", str(steps), "--gpu", "a100-80gb", "--model", "llama-3.1-8b",
         "--tp", "2", "--engine", "vllm-v1", "--columns", columns, "--json", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    errors = json.loads(result.stdout)["errors"]
    assert errors["all"]["after_median_abs_error"] < 0.01 < errors["all"]["before_median_abs_error"]
    # One model at one tp: the all-reduce overhead is a fixed cost per step like the step
    # overhead, so it keeps the base value (here the truth) and the step overhead is exact.
    engine = load_profile(str(out)).engine
    summary = json.loads(result.stdout)
    assert "allreduce_overhead_us" in summary["held_keys"]
    assert engine.allreduce_overhead_us == base.allreduce_overhead_us
    assert engine.seq_overhead_us == pytest.approx(40.0, rel=0.05)
    assert engine.step_overhead_ms == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("prefill_tokens,decode_seqs,decode_context_tokens\n0,4,400\n", [],
         "missing column 'step_ms'"),
        ("prefill_tokens,decode_seqs,decode_context_tokens,step_ms\n0,4,400,9.5\n0,8,800,0\n", [],
         "column 'step_ms', row 2: got 0.0, expected a time > 0 ms"),
        ("prefill_tokens,decode_seqs,decode_context_tokens,step_ms\n0,4,400,-3\n", [],
         "expected a time > 0 ms"),
        ("prefill_tokens,decode_seqs,decode_context_tokens,step_ms\n0,0,0,4.0\n", [],
         "a step does some work"),
        ("prefill_tokens,decode_seqs,decode_context_tokens,step_ms\n0,4,400,abc\n", [],
         "column 'step_ms' must be numeric"),
        ("prefill_tokens,decode_seqs,decode_context_tokens,step_ms\n0,2.5,400,9\n", [],
         "column 'decode_seqs', row 1: got 2.5, expected a whole sequence count >= 0"),
        ("prefill_tokens,decode_seqs,decode_context_tokens,step_ms\n0,4,400,9\n",
         ["--columns", "step_ms=nope"], "no column 'nope'"),
        ("model,prefill_tokens,decode_seqs,decode_context_tokens,step_ms\nllama-3.1-8b,0,4,400,9\n",
         ["--model", "qwen3-32b"], "no rows for model = qwen3-32b"),
        (None, [], "steps file not found"),
    ],
)  # fmt: skip
def test_bad_steps_files_are_refused_in_one_line(runner, tmp_path, content, extra, message):
    steps = tmp_path / "steps.csv"
    if content is not None:
        steps.write_text(content)
    model = [] if "--model" in extra or (content or "").startswith("model") else ["--model"]
    model += ["llama-3.1-8b"] if model else []
    out = tmp_path / "out" / "p.toml"
    out.parent.mkdir()
    result = runner.invoke(
        cli,
        ["calibrate", "fit-steps", str(steps), "--gpu", "a100-80gb", *model, *extra,
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1
    assert list(out.parent.iterdir()) == []


def test_steps_file_without_a_model_needs_one(runner, tmp_path) -> None:
    steps = tmp_path / "steps.csv"
    steps.write_text("prefill_tokens,decode_seqs,decode_context_tokens,step_ms\n0,4,400,9.5\n")
    result = runner.invoke(
        cli, ["calibrate", "fit-steps", str(steps), "--gpu", "a100-80gb", "--out", "x.toml"]
    )
    assert result.exit_code == 2 and "no 'model' column; give the model setting" in result.output


def test_fit_steps_is_deterministic(runner, tmp_path, shared_data) -> None:
    outputs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        args = ["calibrate", "fit-steps", str(SPLITWISE), "--gpu", "a100-80gb", "--model"]
        args += ["llama-2-70b", "--out", str(folder / "p.toml")]
        assert runner.invoke(cli, args).exit_code == 0
        outputs.append([(folder / f).read_bytes() for f in ("p.toml", "p.steps-fit.parquet")])
    assert outputs[0] == outputs[1]
