"""The microbenchmarks behind a hardware profile: GEMM sweep, memory bandwidth, launch
overhead and (with several GPUs) all-reduce, written once against `backends.Backend`.

Each measured point becomes one row (`MEASUREMENT_SCHEMA`), so the raw figures land in
Parquet beside the profile and the fit can be re-run or audited from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tokenfleet.calibrate.backends.base import DTYPE_BYTES, Backend, Timing
from tokenfleet.errors import UserError

if TYPE_CHECKING:  # calibrate reads a model's shapes; it does not depend on the catalog
    from tokenfleet.models import ModelSpec

# Tokens in a step: powers of two from 1 to 16384, plus a few points between them where the
# efficiency curve bends (tile-size boundaries of GEMM kernels).
M_FULL = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
          3072, 4096, 6144, 8192, 12288, 16384)  # fmt: skip
M_QUICK = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

ALLREDUCE_BYTES_FULL = tuple(4096 * 2**i for i in range(17))  # 4 KiB .. 256 MiB
ALLREDUCE_BYTES_QUICK = tuple(4096 * 8**i for i in range(6))  # 4 KiB .. 128 MiB
# Read sizes as fractions of the memory buffer: all far beyond the last-level cache.
READ_FRACTIONS = (0.25, 0.375, 0.5, 0.75, 1.0)

MEASUREMENT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # gemm | memory | launch | allreduce
        ("name", pa.string()),  # layer or shape label, memory op, probe name
        ("dtype", pa.string()),
        ("m", pa.int64()),
        ("n", pa.int64()),
        ("k", pa.int64()),
        ("bytes", pa.int64()),  # bytes moved (memory) or message size (all-reduce)
        ("flops", pa.float64()),
        ("devices", pa.int32()),
        ("median_s", pa.float64()),
        ("min_s", pa.float64()),
        ("max_s", pa.float64()),
        ("iqr_s", pa.float64()),
        ("repeats", pa.int32()),
        ("tflops", pa.float64()),  # achieved, at the median
        ("gb_per_s", pa.float64()),  # achieved, at the median (1 GB = 1e9 bytes)
    ]
)


@dataclass(frozen=True)
class GemmShape:
    """One weight matrix: C[M, n] = A[M, k] @ W[k, n]; M is the tokens in the step."""

    name: str
    n: int
    k: int


@dataclass(frozen=True)
class BenchPlan:
    """What to measure and how hard; `plan_benchmarks` sizes it for the device and --quick."""

    dtypes: tuple[str, ...]
    shapes: tuple[GemmShape, ...]
    m_values: tuple[int, ...]
    memory_bytes: int
    allreduce_bytes: tuple[int, ...]
    warmup: int
    repeats: int
    launch_inner: int
    point_budget_s: float  # a shape's sweep stops growing M once one call takes longer
    operand_cap_bytes: int  # points whose operands would not fit in this are skipped


@dataclass
class BenchResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=MEASUREMENT_SCHEMA)


def model_gemm_shapes(model: ModelSpec, tp: int) -> tuple[GemmShape, ...]:
    """The per-layer weight GEMMs of a transformer, sharded over `tp` GPUs the way Megatron-style
    tensor parallelism splits them (QKV and gate/up by columns, O and down by rows). For an MoE
    the routed expert's FFN is measured (what a token multiplies); for MLA the query up-projection
    stands for the attention input GEMMs. A `tp` that cannot shard the heads is refused, as
    StepTime refuses it: a profile measured at shapes no deployment has prices nothing."""
    if tp < 1 or model.n_heads % tp:
        divisors = ", ".join(str(d) for d in range(1, model.n_heads + 1) if model.n_heads % d == 0)
        raise UserError(
            f"tp = {tp} does not divide {model.name}'s {model.n_heads} attention heads; "
            f"choose one of {divisors}"
        )
    h = model.hidden_size
    if model.is_mla:
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim
        qkv = GemmShape("q_up", _split(model.n_heads * qk, tp), model.q_lora_rank or h)
    else:
        qkv_cols = (model.n_heads + 2 * model.n_kv_heads) * model.head_dim
        qkv = GemmShape("qkv", _split(qkv_cols, tp), h)
    ffn = model.expert_ffn_size if model.is_moe else model.ffn_size
    up = (
        GemmShape("gate_up", _split(2 * ffn, tp), h)
        if model.gated_ffn
        else GemmShape("up", _split(ffn, tp), h)
    )
    return (
        qkv,
        GemmShape("o", h, _split(model.attn_width, tp)),
        up,
        GemmShape("down", h, _split(ffn, tp)),
    )


def _split(size: int, tp: int) -> int:
    return max(size // tp, 1)


def plan_benchmarks(
    backend: Backend,
    *,
    quick: bool,
    dtypes: tuple[str, ...] | None = None,
    shapes: tuple[GemmShape, ...] | None = None,
) -> BenchPlan:
    """Sizes that fit the device: a GPU sweeps large square shapes in a minute; the CPU path
    uses smaller squares and a time budget per point so --quick stays well under a minute."""
    gpu = backend.info.kind == "gpu"
    dtypes = tuple(backend.check_dtypes(list(dtypes or backend.default_gemm_dtypes)))
    twice = [d for d in dict.fromkeys(dtypes) if dtypes.count(d) > 1]
    if twice:
        raise UserError(f"dtypes = {','.join(dtypes)}: {twice[0]} is listed twice")
    # The first dtype's curve becomes the profile's, its peak stored under the dtype's own key.
    if gpu and dtypes[0] not in ("bf16", "fp16"):
        raise UserError(
            f"dtypes = {','.join(dtypes)}: the profile's GEMM curve is the first dtype's and is "
            "relative to the bf16 tensor peak, so list bf16 or fp16 first (other dtypes are "
            "measured and reported too)"
        )
    if not gpu and dtypes[0] != "fp32":
        raise UserError(
            f"dtypes = {','.join(dtypes)}: the profile's GEMM curve is the first dtype's and its "
            "peak is stored as peak_tflops_fp32, so list fp32 first (other dtypes are measured "
            "and reported too)"
        )
    if shapes is None:
        sides = (4096, 8192) if gpu else ((1024,) if quick else (1024, 2048))
        shapes = tuple(GemmShape(f"square-{s}", s, s) for s in sides[: 1 if quick else None])
    cache = max(backend.info.cache_bytes, 1)
    # Far larger than the last-level cache, so the figure is DRAM/HBM, not cache.
    memory_bytes = max(16 * cache, 1 << 30) if gpu else max(8 * cache, 256 << 20)
    memory_bytes = min(memory_bytes, backend.info.memory_bytes // 8)
    return BenchPlan(
        dtypes=dtypes,
        shapes=shapes,
        m_values=M_QUICK if quick else M_FULL,
        memory_bytes=memory_bytes,
        allreduce_bytes=ALLREDUCE_BYTES_QUICK if quick else ALLREDUCE_BYTES_FULL,
        warmup=2 if quick else 3,
        repeats=(5 if quick else 11) if not gpu else (10 if quick else 30),
        launch_inner=200 if quick else 1000,
        point_budget_s=(0.25 if quick else 1.5) if not gpu else (0.5 if quick else 2.0),
        operand_cap_bytes=backend.info.memory_bytes // (4 if gpu else 8),
    )


def run_microbenchmarks(
    backend: Backend, plan: BenchPlan, *, progress: bool = False
) -> BenchResult:
    """Run every benchmark of `plan`; progress shows a tqdm bar (the CLI decides when)."""
    from tqdm import tqdm

    result = BenchResult()
    started = time.perf_counter()
    steps = list(_steps(backend, plan, result))
    with tqdm(total=len(steps), disable=not progress, desc="calibrate", unit="bench") as bar:
        for label, step in steps:
            bar.set_postfix_str(label, refresh=False)
            step()
            backend.release()  # the step's buffers are gone; give their memory back
            bar.update()
    result.wall_s = time.perf_counter() - started
    return result


def _steps(
    backend: Backend, plan: BenchPlan, result: BenchResult
) -> Iterator[tuple[str, Callable[[], None]]]:
    for dtype in plan.dtypes:
        for shape in plan.shapes:
            yield (
                f"gemm {dtype} {shape.name}",
                lambda d=dtype, s=shape: _gemm_sweep(backend, plan, d, s, result),
            )
    yield "memory", lambda: _memory(backend, plan, result)
    yield "launch", lambda: _launch(backend, plan, result)
    yield "all-reduce", lambda: _allreduce(backend, plan, result)


def _gemm_sweep(
    backend: Backend, plan: BenchPlan, dtype: str, shape: GemmShape, result: BenchResult
) -> None:
    itemsize = DTYPE_BYTES[dtype]
    for m in plan.m_values:
        operand_bytes = (m * shape.k + shape.k * shape.n + m * shape.n) * itemsize
        if operand_bytes > plan.operand_cap_bytes:
            result.notes.append(
                f"gemm {dtype} {shape.name}: M >= {m} skipped, operands would need "
                f"{operand_bytes / 1e9:.1f} GB"
            )
            return
        fn = backend.gemm(dtype, m, shape.n, shape.k)
        timing = backend.time(
            fn, warmup=plan.warmup, repeats=plan.repeats, budget_s=plan.point_budget_s
        )
        del fn
        backend.release()
        flops = 2.0 * m * shape.n * shape.k
        result.rows.append(
            _row(
                "gemm", shape.name, dtype, timing, m=m, n=shape.n, k=shape.k, flops=flops,
                tflops=flops / timing.median_s / 1e12,
            )
        )  # fmt: skip
        if timing.median_s > plan.point_budget_s and m != plan.m_values[-1]:
            result.notes.append(
                f"gemm {dtype} {shape.name}: stopped after M={m}, one call took "
                f"{timing.median_s:.2f} s (budget {plan.point_budget_s} s per point)"
            )
            return


def _memory(backend: Backend, plan: BenchPlan, result: BenchResult) -> None:
    """Read as a matrix-vector product (how a decode step streams its weights) over several
    buffer sizes, so every point informs the streaming rate; write as a fill and copy as copyto
    over the largest. fp32, so every backend has the kernels."""
    xp = backend.xp
    cols = 4096
    rows = max(plan.memory_bytes // (4 * cols), 4)
    src = xp.ones((rows, cols), dtype=xp.float32)
    vec = xp.ones(cols, dtype=xp.float32)
    out = xp.empty(rows, dtype=xp.float32)
    # Reads that fit twice in the last-level cache would measure the cache: left out, unless
    # memory is too small to leave two points without them (a host whose reported L3 is
    # large against its RAM, e.g. 480 MB of L3 and 23 GB here).
    floor = 2 * backend.info.cache_bytes
    fractions = [f for f in READ_FRACTIONS if rows * cols * 4 * f >= floor]
    if len(fractions) < 2:
        fractions = READ_FRACTIONS[-2:]
    for part in sorted({max(int(rows * f), 1) for f in fractions}):
        view, out_view = src[:part], out[:part]
        timing = backend.time(
            lambda v=view, o=out_view: xp.matmul(v, vec, out=o),
            warmup=plan.warmup,
            repeats=plan.repeats,
        )
        nbytes = part * cols * 4
        result.rows.append(
            _row(
                "memory",
                "read",
                "fp32",
                timing,
                nbytes=nbytes,
                gb_per_s=nbytes / timing.median_s / 1e9,
            )
        )
    dst = xp.empty_like(src)
    nbytes = rows * cols * 4
    for op, fn, moved in (
        ("write", lambda: dst.fill(1.0), nbytes),
        ("copy", lambda: xp.copyto(dst, src), 2 * nbytes),
    ):
        timing = backend.time(fn, warmup=plan.warmup, repeats=plan.repeats)
        result.rows.append(
            _row("memory", op, "fp32", timing, nbytes=moved, gb_per_s=moved / timing.median_s / 1e9)
        )


def _launch(backend: Backend, plan: BenchPlan, result: BenchResult) -> None:
    """A one-element add, back to back: the fixed cost every kernel (or NumPy call) pays."""
    xp = backend.xp
    tiny = xp.zeros(1, dtype=xp.float32)
    timing = backend.time(
        lambda: xp.add(tiny, 1.0, out=tiny),
        warmup=plan.warmup,
        repeats=plan.repeats,
        inner=plan.launch_inner,
    )
    result.rows.append(_row("launch", "tiny_kernel", "fp32", timing))


def _allreduce(backend: Backend, plan: BenchPlan, result: BenchResult) -> None:
    devices = backend.info.device_count
    if backend.allreduce(plan.allreduce_bytes[0]) is None:
        result.notes.append(
            f"all-reduce not measured: {devices} device visible to the {backend.name} backend "
            "(it needs 2 or more GPUs)"
        )
        return
    for nbytes in plan.allreduce_bytes:
        fn = backend.allreduce(nbytes)
        timing = backend.time_allreduce(fn, warmup=plan.warmup, repeats=plan.repeats)
        del fn
        backend.release()
        result.rows.append(
            _row(
                "allreduce", "nccl_sum", "fp16", timing, nbytes=nbytes, devices=devices,
                gb_per_s=nbytes / timing.median_s / 1e9,
            )
        )  # fmt: skip


def _row(
    kind: str,
    name: str,
    dtype: str,
    timing: Timing,
    *,
    m: int | None = None,
    n: int | None = None,
    k: int | None = None,
    nbytes: int | None = None,
    flops: float | None = None,
    devices: int = 1,
    tflops: float | None = None,
    gb_per_s: float | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "name": name,
        "dtype": dtype,
        "m": m,
        "n": n,
        "k": k,
        "bytes": nbytes,
        "flops": flops,
        "devices": devices,
        "median_s": timing.median_s,
        "min_s": timing.min_s,
        "max_s": timing.max_s,
        "iqr_s": timing.iqr_s,
        "repeats": timing.repeats,
        "tflops": tflops,
        "gb_per_s": gb_per_s,
    }
