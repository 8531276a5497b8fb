"""Measured serving runs: read them, replay each as tokenfleet serves it, and set what a client
of the replay would see against what the run's client measured.

The file format is `tokenfleet-measured-runs/1` (../shared/data/measured/vllm_h100_runs.json:
21 vLLM v0.15.1 runs on H100, measured with inference-perf). Each run becomes:

- a trace: its stages back to back, one request every 1/rate s (inference-perf's constant
  load), prompts of the measured mean length drawn in rotation from 100 fixed prompts (10
  system prompts of `system_prompt_len` tokens x 10 questions), as the runs' configs show, so
  that vLLM's prefix cache hits every repeat; prefix ids per 16-token block, chained (a system
  prompt's blocks shared by its 10 prompts); every output `output_len` tokens (the server
  generated that many, `ignore_eos`);
- a scenario: the model's built-in architecture, one replica of the run's GPU and tensor
  parallelism, the `vllm` batcher with the run's max_num_seqs, max_num_batched_tokens, block
  size, gpu_memory_utilization (0.9 where not recorded) and prefix caching on, and clients that
  give up after CLIENT_TIMEOUT_S, as inference-perf's did (replay/timeouts.py).

A run the server could not keep up with lost requests to that timeout (the file's
`requests_failed`); its latencies are over the requests that finished, on both sides.

The client figures follow the file's `definitions`: E2E from arrival to the last token, TTFT
to the first, and ITL = (E2E mean - TTFT mean) / (output count - 1), where the output count is
the one the measured figures imply (inference-perf re-tokenises the streamed text and counts
fewer tokens than the server generated).
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import load_profile
from tokenfleet.models import get_model
from tokenfleet.perf.memory import plan_memory
from tokenfleet.perf.steptime import StepTime
from tokenfleet.replay.run import run_replay
from tokenfleet.replay.scenario import Scenario, scenario_from_dict, validate
from tokenfleet.traces.schema import PREFIX_BLOCK_SIZE_KEY

FORMAT = "tokenfleet-measured-runs/1"
# The runs' Hugging Face model ids and GPU names, as the built-ins call them.
MODELS = {
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "codellama/CodeLlama-34b-Instruct-hf": "codellama-34b",
    "mistralai/Mistral-Nemo-Instruct-2407": "mistral-nemo-12b",
    "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b",
    "01-ai/Yi-34B": "yi-34b",
    "RedHatAI/Llama-4-Scout-17B-16E-Instruct-FP8-dynamic": "llama-4-scout",
}
GPUS = {"H100": "h100-sxm"}
DTYPES = {"FP16": "fp16", "BF16": "bf16", "FP8": "fp8"}
# Figures compared, per run and stage, in the file's names.
FIGURES = (
    "e2e_mean_ms",
    "e2e_p90_ms",
    "e2e_p99_ms",
    "ttft_mean_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "itl_mean_ms",
)
# inference-perf's client timeout: its aiohttp session gets no timeout of its own when the
# config's `load.request_timeout` is null (as in every run's results/config.yaml), so aiohttp's
# default applies, ClientTimeout(total=5 * 60): the whole request, to its last streamed byte.
# (inference_perf/client/modelserver/openai_client.py; the saturated runs' E2E p99 are 290-298 s.)
CLIENT_TIMEOUT_S = 300.0
PROMPTS = 100  # 10 system prompts x 10 questions, sent in rotation
SYSTEM_PROMPTS = 10
ID_BLOCK = 16  # tokens per prefix id in the runs' traces (vLLM's block)


@dataclass(frozen=True)
class MeasuredRun:
    """One run: its engine settings, its workload and what its client measured."""

    id: str
    model: str  # a built-in model name
    gpu: str  # a GPU profile name
    tp: int
    dtype: str
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    gpu_memory_utilization: float
    kv_blocks: int | None  # the engine's own count of KV blocks, where recorded
    saturated: bool
    stages: tuple[tuple[float, float], ...]  # (requests/s, seconds)
    system_prompt_len: int
    prompt_tokens: int
    output_len: int
    measured: tuple[dict[str, float], ...]  # per stage, FIGURES
    failed: tuple[int | None, ...] = ()  # per stage, requests the client lost (None: not given)


def load_runs(path: str | Path) -> list[MeasuredRun]:
    """The runs of a measured-runs file, each checked: a missing field, an unknown GPU or
    model, or an impossible figure is one UserError naming the run and the field."""
    path = Path(path)
    return [_run(path, i, r) for i, r in enumerate(read_runs(path, FORMAT, "measured-runs"))]


def read_runs(path: Path, fmt: str, kind: str) -> list:
    """The `runs` list of a JSON file of format `fmt` (a `kind` file), or one UserError."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise UserError(f"{path}: not a {kind} file (format {fmt!r} expected)")
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{path}: no runs")
    return runs


class RunFields:
    """Checked reads of one run's fields: each failure is one UserError naming the file, the
    run and the field."""

    def __init__(self, path: Path, index: int, run) -> None:
        if not isinstance(run, dict):
            raise UserError(f"{path}: run {index} is not an object")
        self.path, self.name = path, str(run.get("id", index))

    def fail(self, what: str) -> UserError:
        return UserError(f"{self.path}: run {self.name!r}: field {what}")

    def field(self, table: dict, key: str, where: str = ""):
        if not isinstance(table, dict) or table.get(key) is None:
            raise self.fail(f"{where}{key} is missing")
        return table[key]

    def number(self, table: dict, key: str, where: str = "") -> float:
        """A field that must be a finite number > 0 (every figure and setting read is)."""
        value = self.field(table, key, where)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{where}{key} = {value!r} is no number")
        if not (math.isfinite(value) and value > 0):
            raise self.fail(f"{where}{key} = {value} must be > 0")
        return float(value)


def _run(path: Path, index: int, r) -> MeasuredRun:
    fields = RunFields(path, index, r)
    field, number, name = fields.field, fields.number, fields.name

    model = field(r, "model")
    if model not in MODELS:
        raise UserError(
            f"{path}: run {name!r}: field model = {model!r} is not a known model "
            f"(known: {', '.join(sorted(MODELS))})"
        )
    gpu = field(r, "gpu")
    if gpu not in GPUS:
        raise UserError(f"{path}: run {name!r}: field gpu = {gpu!r} is unknown (known: H100)")
    precision = field(r, "precision")
    if precision not in DTYPES:
        raise UserError(f"{path}: run {name!r}: field precision = {precision!r} is unknown")
    work = field(r, "workload")
    stages = field(work, "stages", "workload.")
    if not isinstance(stages, list) or not stages:
        raise UserError(f"{path}: run {name!r}: field workload.stages must list [rate, seconds]")
    parsed_stages = []
    for k, stage in enumerate(stages):
        if not (isinstance(stage, list) and len(stage) == 2):
            raise UserError(f"{path}: run {name!r}: field workload.stages[{k}] is no [rate, s]")
        pair = dict(zip(("rate", "seconds"), stage, strict=True))
        parsed_stages.append(
            (
                number(pair, "rate", f"workload.stages[{k}]."),
                number(pair, "seconds", f"workload.stages[{k}]."),
            )
        )
    measured = field(r, "measured")
    stage_figures = field(measured, "stages", "measured.")
    if not isinstance(stage_figures, list) or len(stage_figures) != len(parsed_stages):
        raise UserError(
            f"{path}: run {name!r}: field measured.stages must have one entry per workload stage"
        )
    figures, failed = [], []
    for k, table in enumerate(stage_figures):
        where = f"measured.stages[{k}]."
        values = {key: number(table, key, where) for key in FIGURES}
        for kind in ("mean", "p90", "p99"):
            if values[f"ttft_{kind}_ms"] > values[f"e2e_{kind}_ms"]:
                raise UserError(
                    f"{path}: run {name!r}: field {where}ttft_{kind}_ms = "
                    f"{values[f'ttft_{kind}_ms']:.1f} is above e2e_{kind}_ms = "
                    f"{values[f'e2e_{kind}_ms']:.1f}"
                )
        figures.append(values)
        lost = table.get("requests_failed")
        if lost is not None and (isinstance(lost, bool) or not isinstance(lost, int) or lost < 0):
            raise fields.fail(f"{where}requests_failed = {lost!r} must be a count >= 0")
        failed.append(lost)
    kv = r.get("vllm_total_kv_blocks")
    return MeasuredRun(
        id=name,
        model=MODELS[model],
        gpu=GPUS[gpu],
        tp=int(number(r, "tp")),
        dtype=DTYPES[precision],
        max_num_seqs=int(number(r, "max_num_seqs")),
        max_num_batched_tokens=int(number(r, "max_num_batched_tokens")),
        block_size=int(r.get("block_size") or 16),
        gpu_memory_utilization=float(r.get("gpu_memory_utilization") or 0.9),
        kv_blocks=int(kv) if kv else None,
        saturated=bool(r.get("saturated", False)),
        stages=tuple(parsed_stages),
        system_prompt_len=int(number(work, "system_prompt_len", "workload.")),
        prompt_tokens=round(number(work, "prompt_tokens_measured_mean", "workload.")),
        output_len=int(number(work, "output_len", "workload.")),
        measured=tuple(figures),
        failed=tuple(failed),
    )


def run_trace(run: MeasuredRun) -> pa.Table:
    """The run's requests as a trace (see the module docstring)."""
    arrivals, start = [], 0.0
    for rate, seconds in run.stages:
        n = round(rate * seconds)
        arrivals.append(start + np.arange(n) / rate)
        start += seconds
    arrival = np.concatenate(arrivals)
    n = len(arrival)
    prompt = run.prompt_tokens
    blocks = prompt // ID_BLOCK
    system_blocks = min(run.system_prompt_len // ID_BLOCK, blocks)
    which = np.arange(n) % PROMPTS
    lists = []
    for p in range(PROMPTS):  # chained ids: a system prompt's, then its question's own
        system = p // (PROMPTS // SYSTEM_PROMPTS)
        ids = [1_000_000 * (system + 1) + b for b in range(system_blocks)]
        ids += [10_000_000 * (p + 1) + b for b in range(system_blocks, blocks)]
        lists.append(ids)
    table = pa.table(
        {
            "arrival_s": arrival,
            "prompt_tokens": pa.array(np.full(n, prompt), pa.int32()),
            "output_tokens": pa.array(np.full(n, run.output_len), pa.int32()),
            "prefix_hashes": pa.array([lists[p] for p in which], pa.list_(pa.int64())),
        }
    )
    return table.replace_schema_metadata({PREFIX_BLOCK_SIZE_KEY: str(ID_BLOCK).encode()})


def run_scenario(run: MeasuredRun, engine: str = "") -> Scenario:
    """One replica as the run's engine was set up."""
    doc = {
        "model": {"name": run.model, "dtype": run.dtype},
        "balancer": {"policy": "round-robin"},
        "tiers": [{"name": "standard", "client_timeout_s": CLIENT_TIMEOUT_S}],
        "pools": [
            {
                "gpu": run.gpu,
                "tp": run.tp,
                "replicas": 1,
                "engine": engine,
                "gpu_memory_utilization": run.gpu_memory_utilization,
                "block_size": run.block_size,
                "batcher": {
                    "policy": "vllm",
                    "max_num_seqs": run.max_num_seqs,
                    "max_num_batched_tokens": run.max_num_batched_tokens,
                    "enable_prefix_caching": True,
                },
            }
        ],
    }
    return validate(scenario_from_dict(doc, f"run {run.id}"))


def predict(run: MeasuredRun, engine: str = "") -> tuple[dict[str, float], ...]:
    """The client figures of a replay of the run, per stage, in FIGURES' names, over the
    requests that finished (NaN where none did), and `timed_out`: the requests lost to the
    client's timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.parquet"
        pq.write_table(run_trace(run), trace)
        run_replay(trace, run_scenario(run, engine), Path(tmp) / "out")
        requests = pq.read_table(
            Path(tmp) / "out" / "requests.parquet",
            columns=["arrival_s", "first_token_s", "finish_s", "status"],
        )
    arrival = requests.column("arrival_s").to_numpy()
    first = requests.column("first_token_s").to_numpy(zero_copy_only=False)
    finish = requests.column("finish_s").to_numpy(zero_copy_only=False)
    finished = (requests.column("status").to_numpy(zero_copy_only=False) == "finished").astype(bool)
    out, start = [], 0.0
    for (_rate, seconds), measured in zip(run.stages, run.measured, strict=True):
        sent = (arrival >= start) & (arrival < start + seconds)
        inside = sent & finished
        start += seconds
        if not inside.any():
            out.append({**dict.fromkeys(FIGURES, math.nan), "timed_out": int(sent.sum())})
            continue
        e2e = (finish[inside] - arrival[inside]) * 1e3
        ttft = (first[inside] - arrival[inside]) * 1e3
        figures = {
            "e2e_mean_ms": float(e2e.mean()),
            "e2e_p90_ms": float(np.percentile(e2e, 90)),
            "e2e_p99_ms": float(np.percentile(e2e, 99)),
            "ttft_mean_ms": float(ttft.mean()),
            "ttft_p90_ms": float(np.percentile(ttft, 90)),
            "ttft_p99_ms": float(np.percentile(ttft, 99)),
        }
        counted = implied_outputs(measured)
        figures["itl_mean_ms"] = (figures["e2e_mean_ms"] - figures["ttft_mean_ms"]) / (counted - 1)
        figures["timed_out"] = int((sent & ~finished).sum())
        out.append(figures)
    return tuple(out)


def planned_kv_blocks(run: MeasuredRun) -> int:
    """The KV blocks tokenfleet's memory plan gives the run's replica (fleet.py's call), to
    set beside the count vLLM logged (`kv_blocks`)."""
    plan = plan_memory(
        get_model(run.model),
        load_profile(run.gpu),
        run.tp,
        run.dtype,
        None,
        run.gpu_memory_utilization,
        run.block_size,
    )
    return plan.kv_blocks


def decode_check(run: MeasuredRun, engine: str = "") -> list[dict[str, float]]:
    """Per stage, the decode step StepTime prices at the batch the measurements imply, beside
    the measured time per generated token: by Little's law the requests decoding at once are
    rate x (E2E - TTFT) (at most max_num_seqs, and what the KV cache holds), each at about
    its prompt plus half its output of context. The new prompts' prefill (one cached-but-last
    block each, a few tokens a step) is left out. This checks the step model alone, with no
    queueing or scheduling in between; `terms_ms` splits the step (`StepTime.decode_terms`) to
    show which part is off.

    The measured step is (E2E - TTFT) / (output_len - 1), over the tokens the server generated,
    not the file's ITL: that divides by the re-tokenised count, which for the Llama-2
    tokenizer is up to 23% short (run 67: 1,120 of 1,448), and so reads the step as slower
    than it was."""
    step = StepTime(get_model(run.model), load_profile(run.gpu), run.tp, run.dtype, engine=engine)
    context = run.prompt_tokens + run.output_len / 2
    # At most max_num_seqs decode at once, and at most as many as the KV cache holds at that
    # context (prompts' shared blocks aside): a saturated stage's Little's-law batch is more
    # (its finished requests are a fraction of the rate, and Llama-2-7B's cache holds ~65).
    most = min(run.max_num_seqs, planned_kv_blocks(run) * run.block_size / context)
    out = []
    for (rate, _seconds), measured in zip(run.stages, run.measured, strict=True):
        batch = min(rate * (measured["e2e_mean_ms"] - measured["ttft_mean_ms"]) / 1e3, most)
        seqs = max(1, round(batch))
        tokens = round(seqs * context)
        predicted = 1e3 * step.step_s(0, 0.0, seqs, tokens)
        per_token = (measured["e2e_mean_ms"] - measured["ttft_mean_ms"]) / (run.output_len - 1)
        out.append(
            {
                "batch": batch,
                "step_measured_ms": per_token,
                "decode_step_ms": predicted,
                "error_pct": 100 * (predicted - per_token) / per_token,
                "terms_ms": {k: 1e3 * v for k, v in step.decode_terms(seqs, tokens).items()},
            }
        )
    return out


def implied_outputs(measured: dict[str, float]) -> float:
    """The output count a stage's figures imply: (E2E - TTFT) / ITL + 1 (the file's
    `output_len_mean_implied`)."""
    return (measured["e2e_mean_ms"] - measured["ttft_mean_ms"]) / measured["itl_mean_ms"] + 1


def errors_pct(predicted: dict[str, float], measured: dict[str, float]) -> dict[str, float]:
    """(predicted - measured) / measured, in %, per figure."""
    return {k: 100 * (predicted[k] - measured[k]) / measured[k] for k in FIGURES}


def error_summary(errors: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median and maximum |error| per figure over the given stages."""
    return {
        k: {
            "median_abs_pct": statistics.median(abs(e[k]) for e in errors),
            "max_abs_pct": max(abs(e[k]) for e in errors),
        }
        for k in FIGURES
    }
