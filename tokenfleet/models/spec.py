"""ModelSpec: an LLM's architecture and what follows from it (parameters, bytes, FLOPs).

Only the numbers that decide serving cost are kept: layer shapes for FLOPs and weight bytes,
the attention layout (GQA or MLA, sliding windows) for KV-cache bytes, and the MoE routing for
active parameters and the experts a batch touches.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from tokenfleet.errors import UserError

# Bytes per weight of a quantised linear layer, scales included: fp8 per-channel scales are
# negligible; MXFP4 stores one 8-bit scale per 32 values; int4 (GPTQ/AWQ) one fp16 scale per
# group of 128. Embeddings, norms, biases and routers stay in bf16.
WEIGHT_DTYPE_BYTES = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "fp4": 0.5 + 1 / 32,
    "int4": 0.5 + 2 / 128,
}
KV_DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0}
UNQUANTISED_BYTES = 2.0


def _dtype_bytes(table: dict[str, float], dtype: str, what: str) -> float:
    """Bytes per value of `dtype`; a dtype can come from a scenario file, so unknown is a
    user error that lists the known ones."""
    try:
        return table[dtype]
    except KeyError:
        raise UserError(f"unknown {what} dtype {dtype!r}; use one of {', '.join(table)}") from None


def weight_dtype_bytes(dtype: str) -> float:
    return _dtype_bytes(WEIGHT_DTYPE_BYTES, dtype, "weight")


def kv_dtype_bytes(dtype: str) -> float:
    return _dtype_bytes(KV_DTYPE_BYTES, dtype, "KV-cache")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, dense or MoE, with GQA or MLA attention."""

    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int  # intermediate size of the dense FFN (and of the first dense layers of an MoE)
    vocab_size: int
    gated_ffn: bool = True  # SwiGLU (gate, up, down) versus a plain two-matrix MLP
    tied_embeddings: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    ffn_bias: bool = False
    norm_bias: bool = False  # LayerNorm (weight and bias) versus RMSNorm (weight)
    qk_norm: bool = False  # per-head RMSNorm on queries and keys (Qwen3)
    embed_norm: bool = False  # LayerNorm after the embedding (BLOOM)
    attn_sinks: bool = False  # one learned sink logit per head (gpt-oss)
    # MoE: experts per MoE layer, experts each token uses, their FFN size, always-on shared
    # experts, and the number of leading layers that use the dense FFN instead.
    n_experts: int = 0
    experts_per_token: int = 0
    expert_ffn_size: int = 0
    n_shared_experts: int = 0
    first_dense_layers: int = 0
    router_bias: bool = False
    # MLA (DeepSeek): queries through a low-rank q_lora_rank, keys/values cached as one latent
    # of kv_lora_rank plus a shared RoPE key of qk_rope_head_dim.
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Sliding-window attention on `sliding_layers` of the layers (gpt-oss alternates).
    sliding_window: int = 0
    sliding_layers: int = 0
    # The longest context (prompt + output) the model takes: config.json's
    # max_position_embeddings; 0 when unknown (no limit but the KV cache's).
    max_position_embeddings: int = 0
    # The model's generation_config.json asks for top-p or top-k filtering (top_p < 1 or
    # top_k > 0), which vLLM applies to every request that sets no sampling of its own (its
    # default generation_config = "auto", vllm/config/model.py); the filter costs per step.
    filtered_sampling: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        for key in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "vocab_size"):
            if getattr(self, key) <= 0:
                raise UserError(f"model {self.name!r}: key {key!r} must be > 0")
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"model {self.name!r}: n_heads must be a multiple of n_kv_heads")
        if self.is_moe and not (0 < self.experts_per_token <= self.n_experts):
            raise UserError(f"model {self.name!r}: experts_per_token must be in 1..n_experts")
        if self.is_moe and self.expert_ffn_size <= 0:
            raise UserError(f"model {self.name!r}: key 'expert_ffn_size' must be > 0 for an MoE")
        if self.is_mla and min(self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim) <= 0:
            raise UserError(
                f"model {self.name!r}: MLA needs qk_nope_head_dim, qk_rope_head_dim, v_head_dim"
            )
        if not 0 <= self.sliding_layers <= self.n_layers:
            raise UserError(f"model {self.name!r}: sliding_layers must be in 0..n_layers")
        if self.sliding_layers and self.sliding_window <= 0:
            raise UserError(f"model {self.name!r}: key 'sliding_window' must be > 0")
        if not 0 <= self.first_dense_layers <= self.n_layers:
            raise UserError(f"model {self.name!r}: first_dense_layers must be in 0..n_layers")

    # --- structure -------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def n_dense_ffn_layers(self) -> int:
        return self.n_layers - self.n_moe_layers

    @property
    def attn_width(self) -> int:
        """Width of the attention output (heads x value head dim), the o_proj input."""
        return self.n_heads * (self.v_head_dim if self.is_mla else self.head_dim)

    # --- parameters (weights of linear layers are the quantisable part) ----------------------
    def _ffn_matrix_params(self, ffn: int) -> int:
        return (3 if self.gated_ffn else 2) * self.hidden_size * ffn

    def _ffn_bias_params(self, ffn: int) -> int:
        return ((2 if self.gated_ffn else 1) * ffn + self.hidden_size) if self.ffn_bias else 0

    @cached_property
    def attn_matrix_params(self) -> int:
        """Linear weights of one attention block."""
        h = self.hidden_size
        if self.is_mla:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (
                h * self.q_lora_rank + self.q_lora_rank * self.n_heads * qk
                if self.q_lora_rank
                else h * self.n_heads * qk
            )
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * self.n_heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_a + kv_b + self.attn_width * h
        q = h * self.n_heads * self.head_dim
        kv = 2 * h * self.n_kv_heads * self.head_dim
        return q + kv + self.attn_width * h

    @cached_property
    def attn_other_params(self) -> int:
        """Biases, norms and sinks of one attention block plus the layer's two norms."""
        n = 0
        if self.qkv_bias:
            n += (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        if self.out_bias:
            n += self.hidden_size
        if self.qk_norm:
            n += 2 * self.head_dim
        if self.attn_sinks:
            n += self.n_heads
        if self.is_mla:
            n += self.q_lora_rank + self.kv_lora_rank  # the latent RMSNorms
        return n + 2 * self.hidden_size * (2 if self.norm_bias else 1)

    @cached_property
    def expert_params(self) -> int:
        """Linear weights of one routed expert."""
        return self._ffn_matrix_params(self.expert_ffn_size)

    @cached_property
    def router_params(self) -> int:
        return self.hidden_size * self.n_experts + (self.n_experts if self.router_bias else 0)

    @cached_property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @cached_property
    def lm_head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab_size * self.hidden_size

    @cached_property
    def _global_other_params(self) -> int:
        norm = self.hidden_size * (2 if self.norm_bias else 1)
        return norm * (2 if self.embed_norm else 1)

    @cached_property
    def layer_matrix_params_dense(self) -> int:
        """Quantisable weights of all layers, counting every expert."""
        dense_ffn = self.n_dense_ffn_layers * self._ffn_matrix_params(self.ffn_size)
        moe = self.n_moe_layers * (self.n_experts + self.n_shared_experts) * self.expert_params
        return self.n_layers * self.attn_matrix_params + dense_ffn + moe

    @cached_property
    def _layer_other_params(self) -> int:
        dense_ffn = self.n_dense_ffn_layers * self._ffn_bias_params(self.ffn_size)
        experts = self.n_experts + self.n_shared_experts
        moe = self.n_moe_layers * (
            experts * self._ffn_bias_params(self.expert_ffn_size) + self.router_params
        )
        return self.n_layers * self.attn_other_params + dense_ffn + moe

    @cached_property
    def params_total(self) -> int:
        return (
            self.embedding_params
            + self.lm_head_params
            + self._global_other_params
            + self.layer_matrix_params_dense
            + self._layer_other_params
        )

    @cached_property
    def params_active(self) -> int:
        """Parameters one token computes with: all but the unused experts and the embedding
        table (a lookup reads one row; with tied embeddings the table is the LM head)."""
        unused = self.n_moe_layers * (self.n_experts - self.experts_per_token)
        unused_params = unused * (self.expert_params + self._ffn_bias_params(self.expert_ffn_size))
        embedding = 0 if self.tied_embeddings else self.embedding_params
        return self.params_total - unused_params - embedding

    # --- bytes -----------------------------------------------------------------------------
    def weight_bytes(self, dtype: str = "bf16") -> float:
        """Bytes of all weights: linear layers in `dtype`, the rest in bf16."""
        quantised = self.layer_matrix_params_dense * weight_dtype_bytes(dtype)
        return quantised + (self.params_total - self.layer_matrix_params_dense) * UNQUANTISED_BYTES

    @cached_property
    def kv_values_per_token(self) -> int:
        """Cached values per token, all layers: K and V per KV head, or MLA's latent + RoPE key."""
        per_layer = (
            self.kv_lora_rank + self.qk_rope_head_dim
            if self.is_mla
            else 2 * self.n_kv_heads * self.head_dim
        )
        return self.n_layers * per_layer

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> float:
        """KV-cache bytes per token of context (sliding-window layers counted in full: the
        conservative bound for capacity planning)."""
        return self.kv_values_per_token * kv_dtype_bytes(kv_dtype)

    # --- FLOPs -----------------------------------------------------------------------------
    @cached_property
    def flops_per_token_dense(self) -> float:
        """Matmul FLOPs per token outside attention scores: 2 per active linear weight."""
        active_matrices = (
            self.layer_matrix_params_dense
            - self.n_moe_layers * (self.n_experts - self.experts_per_token) * self.expert_params
            + self.n_moe_layers * self.hidden_size * self.n_experts  # router
            + (self.lm_head_params or self.embedding_params)
        )
        return 2.0 * active_matrices

    def attn_flops_per_pair(self, decode: bool = False) -> float:
        """FLOPs per query-key pair summed over layers (QK^T and PV, 2 FLOPs per MAC).

        MLA decodes in the absorbed form (scores and values over the latent), but prefills with
        decompressed per-head keys and values, which costs far fewer FLOPs per pair.
        """
        if self.is_mla:
            qk = (
                self.kv_lora_rank + self.qk_rope_head_dim
                if decode
                else (self.qk_nope_head_dim + self.qk_rope_head_dim)
            )
            v = self.kv_lora_rank if decode else self.v_head_dim
        else:
            qk = v = self.head_dim
        return 2.0 * self.n_heads * (qk + v) * self.n_layers

    def effective_pairs_fraction(self, context_tokens: float) -> float:
        """Fraction of layer-pairs actually computed: sliding layers stop at their window."""
        if not self.sliding_layers or context_tokens <= self.sliding_window:
            return 1.0
        full = self.n_layers - self.sliding_layers
        return (full + self.sliding_layers * self.sliding_window / context_tokens) / self.n_layers
