"""Memory planning for a replica: weights per GPU and what is left for the KV cache.

Like vLLM, a fraction `gpu_memory_utilization` of each GPU is the budget; the weights shard over
`tp` GPUs, a reserve is kept for the runtime, the activations of a large prefill step and the
rotary embedding's table, and the rest holds KV blocks. A model that does not fit is refused
in one line that says what would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import GpuProfile
from tokenfleet.models.spec import ModelSpec

GIB = 2**30
RUNTIME_RESERVE_BYTES = 1e9  # CUDA context, NCCL and allocator buffers per GPU
ACTIVATION_TOKENS = 8192  # the prefill step whose activations are reserved (a common budget)
ACTIVATION_BYTES = 2.0
ROPE_CACHE_BYTES = 2.0  # the cos/sin table is kept in the model's dtype (bf16 or fp16)


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory of one replica; KV capacity is the replica's (all its GPUs)."""

    weights_per_gpu_bytes: float
    reserve_per_gpu_bytes: float
    kv_per_gpu_bytes: float
    kv_bytes_per_token_per_gpu: float
    kv_capacity_tokens: int
    kv_blocks: int
    block_size: int


def activation_reserve_bytes(model: ModelSpec, tp: int) -> float:
    """Peak activations of an ACTIVATION_TOKENS-token step on one GPU: the residual stream and
    attention projections (full width) plus the widest FFN intermediate (sharded)."""
    ffn = max(model.ffn_size, model.expert_ffn_size * model.experts_per_token)
    width = 4 * model.hidden_size + (3 if model.gated_ffn else 2) * ffn / tp
    return ACTIVATION_TOKENS * width * ACTIVATION_BYTES


def rope_cache_bytes(model: ModelSpec) -> float:
    """The rotary embedding's cos/sin table on each GPU: vLLM's `RotaryEmbedding` precomputes
    one row per position up to the config's `max_position_embeddings`, `rotary_dim` values
    wide, in the model's dtype, and keeps it as a GPU buffer shared by the layers
    (vllm/model_executor/layers/rotary_embedding.py `_compute_cos_sin_cache`, the models' own
    `get_rope(max_position=config.max_position_embeddings)`, e.g. models/llama4.py). Negligible
    for most models (Llama 3.1's 131,072 positions: 34 MB), 2.7 GB for Llama 4's 10,485,760.
    The width is the head's (MLA's: its RoPE part), an upper bound for partial-rotary models;
    scaled variants that extend the table (YaRN, linear) reach about the configured length."""
    width = model.qk_rope_head_dim if model.is_mla else model.head_dim
    return model.max_position_embeddings * width * ROPE_CACHE_BYTES


def kv_shard(model: ModelSpec, tp: int) -> int:
    """GPUs the KV cache splits over: KV heads shard down to one per GPU; MLA's latent cannot."""
    return 1 if model.is_mla else min(tp, model.n_kv_heads)


def plan_memory(
    model: ModelSpec,
    gpu: GpuProfile,
    tp: int,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    gpu_memory_utilization: float = 0.9,
    block_size: int = 16,
) -> MemoryPlan:
    """The replica's memory plan, or a one-line UserError when the model does not fit."""
    if not 0 < gpu_memory_utilization <= 1:
        raise UserError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if block_size < 1:
        raise UserError(f"block_size must be >= 1, got {block_size}")
    kv_dtype = kv_dtype or ("fp16" if dtype == "fp16" else "bf16")
    weights_total = model.weight_bytes(dtype)
    weights = weights_total / tp
    reserve = RUNTIME_RESERVE_BYTES + activation_reserve_bytes(model, tp) + rope_cache_bytes(model)
    budget = gpu.hbm_bytes * gpu_memory_utilization
    kv_per_token = model.kv_bytes_per_token(kv_dtype) / kv_shard(model, tp)
    kv_bytes = budget - reserve - weights
    kv_tokens = int(kv_bytes // kv_per_token) if kv_bytes > 0 else 0
    blocks = kv_tokens // block_size
    if blocks < 1:
        raise UserError(
            _refusal(model, gpu, tp, dtype, weights_total, budget - reserve, gpu_memory_utilization)
        )
    return MemoryPlan(
        weights_per_gpu_bytes=weights,
        reserve_per_gpu_bytes=reserve,
        kv_per_gpu_bytes=kv_bytes,
        kv_bytes_per_token_per_gpu=kv_per_token,
        kv_capacity_tokens=blocks * block_size,
        kv_blocks=blocks,
        block_size=block_size,
    )


def _refusal(
    model: ModelSpec,
    gpu: GpuProfile,
    tp: int,
    dtype: str,
    weights: float,
    usable: float,
    utilization: float,
) -> str:
    """e.g. "llama-3.1-405b in bf16 needs 756 GiB of weights; 8 x h100-sxm hold 640 GiB; ...".
    Memory is in GiB everywhere (`gpus list` too): vendors' memory "GB" are GiB."""
    fixes = []
    if usable > 0:
        need_tp = 2 ** math.ceil(math.log2(weights / usable * 1.05))
        if need_tp > tp and model.n_heads % need_tp == 0:
            fixes.append(f"tp {need_tp}")
    if dtype in ("bf16", "fp16"):
        fixes.append("fp8 weights")
    held = tp * gpu.hbm_bytes
    if weights < held:
        fixes.append("a higher gpu_memory_utilization")
    fixes.append("a larger GPU")
    what = f"{model.name} in {dtype} needs {weights / GIB:,.0f} GiB of weights"
    where = f"{tp} x {gpu.name} hold {held / GIB:,.0f} GiB"
    if weights < held:
        what += " plus room for its KV cache"
        where += (
            f", {max(usable, 0) * tp / GIB:,.0f} GiB usable at gpu_memory_utilization "
            f"{utilization:g} after the runtime and activation reserve"
        )
    return f"{what}; {where}; use {', '.join(fixes[:-1])}, or {fixes[-1]}"
