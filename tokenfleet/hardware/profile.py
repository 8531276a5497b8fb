"""Hardware profiles and engine presets: the coefficients StepTime reads.

A *hardware profile* (one TOML file per GPU) holds the datasheet peaks and the efficiencies the
hardware reaches. An *engine preset* holds the overheads that belong to the serving software
(scheduler time, kernel launches, CUDA graphs, the all-reduce implementation). They are kept
apart so that fitting one engine's step logs never bends the hardware's coefficients, and a user
can price the engine they run on the GPU they have.

Profile TOML (what the built-ins use and what `tokenfleet calibrate` writes)::

    format = "tokenfleet-gpu-profile/1"
    name = "a100-80gb"
    description = "NVIDIA A100 SXM4 80GB"
    default_engine = "vllm-v1"          # engine preset used when none is asked for

    [datasheet]                         # vendor figures, dense (no sparsity)
    peak_tflops_bf16 = 312.0            # BF16/FP16 tensor TFLOPS
    peak_tflops_fp8 = 0.0               # 0 = no FP8 tensor cores (fp8 weights computed in bf16)
    peak_tflops_fp4 = 0.0               # 0 = no FP4 tensor cores
    peak_tflops_fp32 = 0.0              # optional: fp32 TFLOPS; a device without 16-bit tensor
                                        # cores (a CPU) has peak_tflops_bf16 = 0 and computes
                                        # 16-bit weights at this peak
    hbm_gb = 80.0                       # memory capacity as the vendor states it; these
                                        # "GB" are binary (an 80 GB A100 has 81,920 MiB)
    hbm_tb_s = 2.039                    # memory bandwidth, TB/s
    link_gb_s = 600.0                   # scale-up link (NVLink, Infinity Fabric, PCIe), GB/s,
                                        # both directions summed, per GPU
    tdp_w = 400.0                       # board power, W

    [coefficients]                      # hardware efficiencies (what calibrate measures)
    gemm_eff_max = 0.80                 # GEMM fraction of peak at large token counts, <= 1
    gemm_half_tokens = 48.0             # tokens per step at which GEMM efficiency is half of max
    attn_eff = 0.60                     # attention-kernel fraction of peak, <= 1
    bw_eff = 0.85                       # achievable fraction of HBM bandwidth, <= 1
    link_eff = 0.75                     # achieved all-reduce bus bandwidth / one-way link, <= 1
    allreduce_latency_us = 12.0         # small-message all-reduce latency of the interconnect
    sustained_clock_frac = 0.755        # optional: clock under sustained power-capped compute /
                                        # boost clock, <= 1 (default 1: the clock holds)
    boost_window_s = 0.2                # optional: compute seconds per step run at boost clock
                                        # before the power limiter pulls the clock down

    [engine]                            # optional: a custom engine preset (see below); when
    name = "my-engine"                  # present it becomes this profile's default engine
    ...

    [meta]                              # optional, free-form: device, driver, date, backend,
    source = "..."                      # where each figure comes from

GEMM efficiency over the tokens n in a step is `gemm_eff_max * n / (n + gemm_half_tokens)`.
A step's compute beyond `boost_window_s` runs at `sustained_clock_frac` of the boost clock.

Engine preset TOML (built-ins in profiles/engines/, or the [engine] table above)::

    format = "tokenfleet-engine/1"
    name = "vllm-v1"
    aliases = []                        # other names accepted for this preset
    description = "..."
    step_overhead_ms = 0.8              # CPU time per step: scheduling, input prep, sampling sync
    seq_overhead_us = 8.0               # CPU time per decoding sequence per step
    layer_launch_us = 40.0              # CPU time to launch one layer's kernels in eager mode;
                                        # overlaps with GPU work (the step waits for the slower)
    cuda_graphs = true                  # decode-only steps replay a captured graph ...
    layer_graph_us = 4.0                # ... costing this GPU-side gap time per layer instead
    allreduce_overhead_us = 0.0         # per all-reduce, the engine's implementation on top of
                                        # the interconnect latency
    act_passes = 10.0                   # memory-bound non-GEMM traffic per token per layer
                                        # (norms, residuals, rotary, casts) in hidden-size
                                        # 16-bit vectors, on every TP rank; ~10 when fused
    allreduce_peer_us = 0.0             # optional: per all-reduce per TP rank beyond the first
    sampler_filter_ms = 0.0             # optional: per step with top-p/top-k sampling ...
    sampler_filter_ns_per_logit = 0.0   # ... and per sequence x vocabulary (STEP_TERM_KEYS)
    frontend_in_ms = 0.0                # optional: per request, client send -> engine queue
    frontend_out_ms = 0.0               # optional: per token, step end -> client (CLIENT_KEYS)
    async_scheduling = false            # optional: each step chosen one step ahead (ASYNC_KEY)

StepTime's formula, with every coefficient in place, is in tokenfleet/perf/steptime.py.

Unknown, missing or mistyped keys are refused with one line naming the key and the file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from tokenfleet.atomic import atomic_path
from tokenfleet.errors import UserError
from tokenfleet.tomlfile import read_toml

PROFILE_FORMAT = "tokenfleet-gpu-profile/1"
ENGINE_FORMAT = "tokenfleet-engine/1"
PROFILES_DIR = Path(__file__).parent / "profiles"
ENGINES_DIR = PROFILES_DIR / "engines"

DATASHEET_KEYS = (
    "peak_tflops_bf16",
    "peak_tflops_fp8",
    "peak_tflops_fp4",
    "hbm_gb",
    "hbm_tb_s",
    "link_gb_s",
    "tdp_w",
)
# Optional datasheet peaks and their defaults (0: not given).
OPTIONAL_DATASHEET = {"peak_tflops_fp32": 0.0}
# The hardware coefficients StepTime uses and calibrate fits; fractions must lie in (0, 1].
COEFFICIENT_KEYS = (
    "gemm_eff_max",
    "gemm_half_tokens",
    "attn_eff",
    "bw_eff",
    "link_eff",
    "allreduce_latency_us",
)
# Optional hardware coefficients and their defaults (profiles written before they existed).
OPTIONAL_COEFFICIENTS = {"sustained_clock_frac": 1.0, "boost_window_s": 0.0}
FRACTION_KEYS = ("gemm_eff_max", "attn_eff", "bw_eff", "link_eff", "sustained_clock_frac")
# The engine overheads StepTime uses (times are >= 0).
ENGINE_KEYS = (
    "step_overhead_ms",
    "seq_overhead_us",
    "layer_launch_us",
    "cuda_graphs",
    "layer_graph_us",
    "allreduce_overhead_us",
    "act_passes",
)

# Optional engine keys for the serving frontend, per request, not per step (vLLM V1: the API
# server process in front of the engine core). `frontend_in_ms`: from the client's send to the
# engine core's queue: HTTP, chat template and tokenisation (vllm/entrypoints/openai/,
# vllm/v1/engine/input_processor.py), the hop to the engine core process
# (vllm/v1/engine/core_client.py). `frontend_out_ms`: from the end of the step that sampled a
# token to the client: the hop back, detokenisation (vllm/v1/engine/output_processor.py) and
# the streamed write; every token of a request is that late, so TTFT and E2E grow by it and
# the time between tokens does not.
CLIENT_KEYS = ("frontend_in_ms", "frontend_out_ms")
# Optional per-step terms of an engine, 0 where not fitted. `allreduce_peer_us`: per
# all-reduce, per TP rank beyond the first: a one-shot all-reduce (vLLM's custom all-reduce,
# vllm/distributed/device_communicators/custom_all_reduce.py) signals and reads every peer, so
# its latency grows with the group. `sampler_filter_ms` and `sampler_filter_ns_per_logit`: a
# step whose requests ask for top-p or top-k filtering (a model's generation_config.json,
# which vLLM applies by default: vllm/config/model.py generation_config = "auto") runs the
# filter over every sequence's whole vocabulary outside the CUDA graph
# (vllm/v1/sample/sampler.py, vllm/v1/sample/ops/topk_topp_sampler.py): a fixed time per step
# and a time per logit (sequences x vocabulary).
STEP_TERM_KEYS = ("allreduce_peer_us", "sampler_filter_ms", "sampler_filter_ns_per_logit")
# Optional: the engine chooses each step while the one before runs (vLLM V1's async scheduling,
# on by default in the releases of late 2025 on, v0.15.1 of the measured runs among them, unless
# an option rules it out: vllm/config/vllm.py "Enable async
# scheduling unless there is an incompatible option"; EngineCore.step_with_batch_queue in
# vllm/v1/engine/core.py keeps two batches in flight). A request that reaches a busy engine
# core is taken in at the end of the step under way, when the next step is chosen already: it
# can join only the one after (a step more of TTFT and E2E; the time between tokens is the
# same). An idle engine takes it at once. Replica.on_arrival / _take_inbox.
ASYNC_KEY = "async_scheduling"
PROVENANCE_KEYS = ("fitted_to", "fit_error")


@dataclass(frozen=True)
class EnginePreset:
    """Overheads of a serving engine (software), independent of the GPU it runs on."""

    name: str
    step_overhead_ms: float
    seq_overhead_us: float
    layer_launch_us: float
    cuda_graphs: bool
    layer_graph_us: float
    allreduce_overhead_us: float
    act_passes: float = 0.0
    # What a client sees beyond the engine's steps (CLIENT_KEYS), 0 where not fitted.
    frontend_in_ms: float = 0.0
    frontend_out_ms: float = 0.0
    # Per-step terms (STEP_TERM_KEYS), 0 where not fitted.
    allreduce_peer_us: float = 0.0
    sampler_filter_ms: float = 0.0
    sampler_filter_ns_per_logit: float = 0.0
    async_scheduling: bool = False  # ASYNC_KEY
    description: str = ""
    aliases: tuple[str, ...] = ()
    # Where the overheads come from and how far off they are there (`gpus show` prints both).
    fitted_to: str = ""
    fit_error: str = ""


@dataclass(frozen=True)
class GpuProfile:
    """One GPU: datasheet peaks plus the efficiencies it reaches (hardware only)."""

    name: str
    peak_tflops_bf16: float
    peak_tflops_fp8: float
    peak_tflops_fp4: float
    hbm_gb: float
    hbm_tb_s: float
    link_gb_s: float
    tdp_w: float
    gemm_eff_max: float
    gemm_half_tokens: float
    attn_eff: float
    bw_eff: float
    link_eff: float
    allreduce_latency_us: float
    sustained_clock_frac: float = 1.0
    boost_window_s: float = 0.0
    peak_tflops_fp32: float = 0.0
    description: str = ""
    default_engine: str = "vllm-v1"
    # A typical on-demand rent per GPU-hour (its source beside it in the profile); 0 means
    # unknown, not free: a replay falls back to cost.GENERIC_USD_PER_GPU_HOUR.
    rent_usd_per_gpu_hour: float = 0.0
    engine: EnginePreset | None = None  # a custom preset carried by the file, if any
    meta: dict[str, Any] | None = None

    @property
    def hbm_bytes(self) -> float:
        """Memory capacity. Vendors' memory "GB" are binary: an "80 GB" A100 has 81,920 MiB."""
        return self.hbm_gb * 2**30

    def peak_flops(self, dtype: str) -> float:
        """Dense tensor FLOP/s for weights of `dtype`; without tensor cores for it, the weights
        are dequantised and multiplied in bf16."""
        if dtype == "fp4" and self.peak_tflops_fp4 > 0:
            return self.peak_tflops_fp4 * 1e12
        if dtype == "fp8" and self.peak_tflops_fp8 > 0:
            return self.peak_tflops_fp8 * 1e12
        if self.peak_tflops_bf16 > 0:
            return self.peak_tflops_bf16 * 1e12  # bf16/fp16, and weight-only quantisation
        return self.peak_tflops_fp32 * 1e12  # no 16-bit tensor cores (a CPU): fp32 it is

    @property
    def measured_on_cpu(self) -> bool:
        """Whether `tokenfleet calibrate` measured this profile on a CPU (its [meta] says so, or
        for an engine fit its base profile's did): its figures then describe a CPU, not a GPU."""
        meta = self.meta or {}
        return meta.get("kind") == "cpu" or meta.get("base_kind") == "cpu"

    def gemm_eff(self, tokens: float) -> float:
        """GEMM fraction of peak at `tokens` rows: small steps fill the tensor cores poorly."""
        return self.gemm_eff_max * tokens / (tokens + self.gemm_half_tokens)


def _check_keys(table: dict, allowed: tuple[str, ...], required: tuple[str, ...], where: str):
    for key in table:
        if key not in allowed:
            raise UserError(f"{where}: unknown key {key!r}; expected one of {', '.join(allowed)}")
    for key in required:
        if key not in table:
            raise UserError(f"{where}: missing key {key!r}")


def _number(table: dict, key: str, where: str) -> float:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{where}: key {key!r} must be a number, got {value!r}")
    if value < 0:
        raise UserError(f"{where}: key {key!r} must be >= 0, got {value!r}")
    return float(value)


def _string(table: dict, key: str, where: str, default: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise UserError(f"{where}: key {key!r} must be a string, got {value!r}")
    return value


def _engine_from_table(table: dict, where: str) -> EnginePreset:
    allowed = ("format", "name", "aliases", "description", *PROVENANCE_KEYS, *ENGINE_KEYS,
               *STEP_TERM_KEYS, *CLIENT_KEYS, ASYNC_KEY)  # fmt: skip
    _check_keys(table, allowed, ("name", *ENGINE_KEYS), where)
    if "format" in table and table["format"] != ENGINE_FORMAT:
        raise UserError(f"{where}: key 'format' must be {ENGINE_FORMAT!r}, got {table['format']!r}")
    for key in ("cuda_graphs", ASYNC_KEY):
        if not isinstance(table.get(key, False), bool):
            raise UserError(f"{where}: key {key!r} must be true or false")
    aliases = table.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise UserError(f"{where}: key 'aliases' must be a list of strings")
    numbers = {k: _number(table, k, where) for k in ENGINE_KEYS if k != "cuda_graphs"}
    for key in (*STEP_TERM_KEYS, *CLIENT_KEYS):
        if key in table:
            numbers[key] = _number(table, key, where)
            if numbers[key] < 0:
                raise UserError(f"{where}: key {key!r} must be >= 0, got {numbers[key]!r}")
    provenance = {k: _string(table, k, where) for k in PROVENANCE_KEYS if k in table}
    return EnginePreset(
        name=_string(table, "name", where),
        description=_string(table, "description", where),
        **provenance,
        aliases=tuple(aliases),
        cuda_graphs=table["cuda_graphs"],
        async_scheduling=table.get(ASYNC_KEY, False),
        **numbers,
    )


def _profile_from_table(doc: dict, where: str) -> GpuProfile:
    top = ("format", "name", "description", "default_engine", "datasheet", "coefficients")
    _check_keys(doc, (*top, "rent_usd_per_gpu_hour", "engine", "meta"), top[:2] + top[4:], where)
    if doc["format"] != PROFILE_FORMAT:
        raise UserError(f"{where}: key 'format' must be {PROFILE_FORMAT!r}, got {doc['format']!r}")
    values: dict[str, float] = {}
    for section, keys, optional in (
        ("datasheet", DATASHEET_KEYS, tuple(OPTIONAL_DATASHEET)),
        ("coefficients", COEFFICIENT_KEYS, tuple(OPTIONAL_COEFFICIENTS)),
    ):
        table = doc[section]
        if not isinstance(table, dict):
            raise UserError(f"{where}: key {section!r} must be a table [{section}]")
        allowed = (*keys, *optional)
        _check_keys(table, allowed, keys, f"{where} [{section}]")
        values.update({k: _number(table, k, f"{where} [{section}]") for k in allowed if k in table})
    values = {**OPTIONAL_DATASHEET, **OPTIONAL_COEFFICIENTS, **values}
    for key in FRACTION_KEYS:
        if not 0 < values[key] <= 1:
            raise UserError(
                f"{where} [coefficients]: key {key!r} must be in (0, 1], got {values[key]}"
            )
    if values["peak_tflops_bf16"] <= 0 and values["peak_tflops_fp32"] <= 0:
        raise UserError(
            f"{where} [datasheet]: key 'peak_tflops_bf16' must be > 0 "
            "(or 0 with peak_tflops_fp32 > 0: a device without 16-bit tensor cores)"
        )
    for key in ("hbm_gb", "hbm_tb_s", "link_gb_s"):
        if values[key] <= 0:
            raise UserError(f"{where} [datasheet]: key {key!r} must be > 0")
    engine = None
    if "engine" in doc:
        if not isinstance(doc["engine"], dict):
            raise UserError(f"{where}: key 'engine' must be a table [engine]")
        engine = _engine_from_table(doc["engine"], f"{where} [engine]")
    meta = doc.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise UserError(f"{where}: key 'meta' must be a table [meta]")
    default_engine = engine.name if engine else _string(doc, "default_engine", where, "vllm-v1")
    rent = _number(doc, "rent_usd_per_gpu_hour", where) if "rent_usd_per_gpu_hour" in doc else 0.0
    return GpuProfile(
        name=_string(doc, "name", where),
        rent_usd_per_gpu_hour=rent,
        description=_string(doc, "description", where),
        default_engine=default_engine,
        engine=engine,
        meta=meta,
        **values,
    )


def _builtin_names(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or "/" in name_or_path or Path(name_or_path).is_file()


def list_profiles() -> list[str]:
    """Names of the built-in hardware profiles."""
    return _builtin_names(PROFILES_DIR)


def load_profile(name_or_path: str) -> GpuProfile:
    """A built-in profile by name (case-insensitive) or a profile TOML file by path."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path)
        return _profile_from_table(read_toml(path), str(path))
    name = name_or_path.lower()
    if name not in list_profiles():
        raise UserError(
            f"unknown GPU {name_or_path!r}; known: {', '.join(list_profiles())} "
            "(or pass a profile .toml path)"
        )
    path = PROFILES_DIR / f"{name}.toml"
    return _profile_from_table(read_toml(path), str(path))


def _builtin_engines() -> dict[str, EnginePreset]:
    presets = {}
    for stem in _builtin_names(ENGINES_DIR):
        path = ENGINES_DIR / f"{stem}.toml"
        preset = _engine_from_table(read_toml(path), str(path))
        for key in (preset.name, *preset.aliases):
            presets[key] = preset
    return presets


def builtin_engines() -> list[EnginePreset]:
    """The built-in engine presets, one each (aliases folded), by name."""
    return sorted({p.name: p for p in _builtin_engines().values()}.values(), key=lambda p: p.name)


def list_engines() -> list[str]:
    """Names (and aliases) of the built-in engine presets."""
    return sorted(_builtin_engines())


def load_engine(name_or_path: str, profile: GpuProfile | None = None) -> EnginePreset:
    """An engine preset by name, alias or TOML path; the profile's own [engine] counts too."""
    if profile is not None and profile.engine is not None and name_or_path == profile.engine.name:
        return profile.engine
    if _looks_like_path(name_or_path):
        path = Path(name_or_path)
        return _engine_from_table(read_toml(path), str(path))
    presets = _builtin_engines()
    preset = presets.get(name_or_path.lower())
    if preset is None:
        raise UserError(
            f"unknown engine {name_or_path!r}; known: {', '.join(sorted(presets))} "
            "(or pass an engine .toml path)"
        )
    return preset


def profile_to_table(profile: GpuProfile, meta: dict[str, Any] | None = None) -> dict:
    """The TOML document for `profile` (the inverse of loading it)."""
    doc: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "name": profile.name,
        "description": profile.description,
        "default_engine": profile.engine.name if profile.engine else profile.default_engine,
        **(
            {"rent_usd_per_gpu_hour": profile.rent_usd_per_gpu_hour}
            if profile.rent_usd_per_gpu_hour
            else {}
        ),
        "datasheet": {
            **{k: getattr(profile, k) for k in DATASHEET_KEYS},
            **{k: getattr(profile, k) for k in OPTIONAL_DATASHEET if getattr(profile, k) > 0},
        },
        "coefficients": {
            k: getattr(profile, k) for k in (*COEFFICIENT_KEYS, *OPTIONAL_COEFFICIENTS)
        },
    }
    if profile.engine is not None:
        engine = asdict(profile.engine)
        engine["aliases"] = list(engine["aliases"])
        doc["engine"] = {"format": ENGINE_FORMAT, **engine}
    merged = {**(profile.meta or {}), **(meta or {})}
    if merged:
        doc["meta"] = merged
    return doc


def save_profile(profile: GpuProfile, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write `profile` as TOML atomically; `meta` (device, date, sources...) goes in [meta]."""
    doc = profile_to_table(profile, meta)
    _profile_from_table(doc, str(path))  # never write a file we would refuse to read
    with atomic_path(path) as tmp:
        tmp.write_bytes(tomli_w.dumps(doc).encode())
