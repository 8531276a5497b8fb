"""Published offline-throughput benchmarks: read them, replay each as tokenfleet serves it,
and set the replay's output tokens/s beside the published figure.

The file format is `tokenfleet-published-throughput/1`; the one shipped,
`study/data/trtllm_h100_published.json`, holds TensorRT-LLM's own `trtllm-bench throughput`
tables for H100 FP8 (NVIDIA/TensorRT-LLM docs/source/performance/perf-overview.md, v1.0 and
the PyTorch-backend tables before it). Each row becomes:

- a trace: its `requests`, all queued at t = 0 (the doc: "all requests are queued in rapid
  succession"), every prompt `isl` tokens of random ids (no prefix reuse) and every output
  `osl` tokens (stdev 0 in the doc's dataset command);
- a scenario: one replica of the row's GPU and TP, FP8 weights and FP8 KV cache, the batch
  and token caps trtllm-bench itself picks for that ISL/OSL (`trtllm_bench_settings`), and
  the KV cache 95% of the memory the weights leave (`kv_cache_free_gpu_mem_fraction`).

The replay's figure is trtllm-bench's "Total Output Throughput": every output token over
the time from the first request to the last token.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import EnginePreset, load_engine, load_profile
from tokenfleet.models import get_model
from tokenfleet.models.spec import ModelSpec
from tokenfleet.replay.run import run_replay
from tokenfleet.replay.scenario import Scenario, scenario_from_dict, validate
from tokenfleet.study.measured_runs import RunFields, read_runs
from tokenfleet.study.run_fit import fit_preset

FORMAT = "tokenfleet-published-throughput/1"
SHIPPED = Path(__file__).parent / "data" / "trtllm_h100_published.json"
GPUS = {"H100": "h100-sxm"}
DTYPES = {"FP8": "fp8", "BF16": "bf16", "FP16": "fp16"}
KV_FREE_MEM_FRACTION = 0.95  # the doc's --kv_cache_free_gpu_mem_fraction
# What an offline benchmark's throughput can tell apart: the per-step and per-sequence
# overheads and the all-reduce's cost per TP peer (hardware/profile.py STEP_TERM_KEYS).
FITTED_KEYS = ("step_overhead_ms", "seq_overhead_us", "allreduce_peer_us")


@dataclass(frozen=True)
class PublishedRun:
    """One published row: its engine setup, its workload and its throughput."""

    id: str
    source: str  # the table it comes from (a key of the file's `sources`)
    model: str  # a built-in model name
    gpu: str  # a GPU profile name
    tp: int
    dtype: str
    isl: int
    osl: int
    requests: int
    output_tokens_per_s: float


def load_published(path: str | Path = SHIPPED) -> list[PublishedRun]:
    """The rows of a published-throughput file, each checked: a missing field, an unknown GPU
    or model, or a figure that is not a finite number > 0 is one UserError naming the row."""
    path = Path(path)
    return [_row(path, i, r) for i, r in enumerate(read_runs(path, FORMAT, "published-throughput"))]


def _row(path: Path, index: int, r) -> PublishedRun:
    fields = RunFields(path, index, r)

    def field(key: str):
        return fields.field(r, key)

    def number(key: str) -> float:
        return fields.number(r, key)

    model = field("model")
    try:
        get_model(model)
    except UserError as err:
        raise fields.fail(f"model: {err}") from None
    gpu, precision = field("gpu"), field("precision")
    if gpu not in GPUS:
        raise fields.fail(f"gpu = {gpu!r} is unknown (known: H100)")
    if precision not in DTYPES:
        raise fields.fail(f"precision = {precision!r} is unknown")
    return PublishedRun(
        id=fields.name,
        source=str(field("source")),
        model=model,
        gpu=GPUS[gpu],
        tp=int(number("tp")),
        dtype=DTYPES[precision],
        isl=int(number("isl")),
        osl=int(number("osl")),
        requests=int(number("requests")),
        output_tokens_per_s=number("output_tokens_per_s"),
    )


def trtllm_bench_settings(model: ModelSpec, hbm_bytes: float, run: PublishedRun) -> tuple[int, int]:
    """(max_batch_size, max_num_tokens) as trtllm-bench picks them for the row
    (tensorrt_llm/bench/build/tuning.py, calc_engine_setting and finetune_setting): the
    requests of isl + osl tokens that 95% of the memory the weights leave can hold, capped at
    4096 and rounded up ("slightly optimistic"), and that many x (1 + isl/osl) tokens a step,
    capped at 32768 and rounded up, at least 2048."""
    gib = 1024**3
    weight_bytes = 1.0 if run.dtype == "fp8" else 2.0
    kv_bytes = 1.0 if run.dtype == "fp8" else 2.0
    per_token = 2 * model.n_layers * max(run.tp, model.n_kv_heads) * model.head_dim * kv_bytes
    available = (hbm_bytes * run.tp - model.params_total * weight_bytes) / gib
    max_requests = available * KV_FREE_MEM_FRACTION / (per_token / gib * (run.isl + run.osl))
    raw_bs = min(max_requests, 4096)
    raw_tokens = min(raw_bs * (1 + run.isl / run.osl), 32768)
    if raw_bs < 256:
        max_bs = max(64, 32 * math.ceil(raw_bs / 32))
    elif raw_bs < 1024:
        max_bs = 128 * math.ceil(raw_bs / 128)
    else:
        max_bs = 256 * math.ceil(raw_bs / 256)
    if raw_tokens < 4096:
        max_tokens = max(2048, 256 * math.ceil(raw_tokens / 256))
    elif raw_tokens < 8192:
        max_tokens = 512 * math.ceil(raw_tokens / 512)
    else:
        max_tokens = 1024 * math.ceil(raw_tokens / 1024)
    return max_bs, max_tokens


def bench_trace(run: PublishedRun) -> pa.Table:
    """The row's requests as a trace: all at t = 0, fixed lengths, no shared prefixes."""
    n = run.requests
    return pa.table(
        {
            "arrival_s": np.zeros(n),
            "prompt_tokens": pa.array(np.full(n, run.isl), pa.int32()),
            "output_tokens": pa.array(np.full(n, run.osl), pa.int32()),
        }
    )


def bench_scenario(run: PublishedRun, engine: str = "trtllm") -> Scenario:
    """One replica as trtllm-bench sets it up (see the module docstring)."""
    model, gpu = get_model(run.model), load_profile(run.gpu)
    max_bs, max_tokens = trtllm_bench_settings(model, gpu.hbm_bytes, run)
    # The KV cache gets 95% of what the weights leave: as a share of the whole memory.
    weights = model.weight_bytes(run.dtype) / run.tp
    if weights >= gpu.hbm_bytes:
        raise UserError(
            f"run {run.id!r}: {run.model}'s {run.dtype} weights, {weights / 2**30:.0f} GiB per "
            f"GPU at TP {run.tp}, do not fit one {run.gpu} ({gpu.hbm_bytes / 2**30:.0f} GiB)"
        )
    utilisation = (weights + KV_FREE_MEM_FRACTION * (gpu.hbm_bytes - weights)) / gpu.hbm_bytes
    doc = {
        "model": {"name": run.model, "dtype": run.dtype, "kv_dtype": run.dtype},
        "balancer": {"policy": "round-robin"},
        "pools": [
            {
                "gpu": run.gpu,
                "tp": run.tp,
                "replicas": 1,
                "engine": engine,
                "gpu_memory_utilization": round(utilisation, 6),
                "batcher": {
                    "policy": "vllm",
                    "max_num_seqs": max_bs,
                    "max_num_batched_tokens": max_tokens,
                    "enable_prefix_caching": False,
                },
            }
        ],
    }
    return validate(scenario_from_dict(doc, f"run {run.id}"))


def predict(run: PublishedRun, engine: str = "trtllm") -> float:
    """The replay's total output tokens/s for the row."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.parquet"
        pq.write_table(bench_trace(run), trace)
        run_replay(trace, bench_scenario(run, engine), Path(tmp) / "out")
        finish = pq.read_table(Path(tmp) / "out" / "requests.parquet", columns=["finish_s"])
    return run.requests * run.osl / float(finish.column("finish_s").to_numpy().max())


def errors(runs: list[PublishedRun], engine: str = "trtllm") -> list[dict]:
    """Per row: predicted and published tokens/s and the error in %."""
    out = []
    for run in runs:
        predicted = predict(run, engine)
        out.append(
            {
                "run": run.id,
                "model": run.model,
                "predicted": predicted,
                "published": run.output_tokens_per_s,
                "error_pct": 100 * (predicted - run.output_tokens_per_s) / run.output_tokens_per_s,
            }
        )
    return out


def fit_throughput(
    runs: list[PublishedRun], base: str = "trtllm", keys: tuple[str, ...] = FITTED_KEYS
) -> EnginePreset:
    """The base preset with `keys` fitted to the rows' throughput (run_fit.fit_preset: log
    errors, bounded Levenberg-Marquardt). The frontend keys are not among them: an offline
    benchmark's throughput does not see a frontend's lag."""
    base_preset = load_engine(base)

    def residuals(engine: str) -> np.ndarray:
        return np.array([math.log(predict(r, engine) / r.output_tokens_per_s) for r in runs])

    return fit_preset(base_preset, keys, residuals, f"{base_preset.name}-published")


def summary(rows: list[dict]) -> dict[str, float]:
    """Median and maximum |error| over the rows."""
    return {
        "median_abs_pct": statistics.median(abs(r["error_pct"]) for r in rows),
        "max_abs_pct": max(abs(r["error_pct"]) for r in rows),
    }
