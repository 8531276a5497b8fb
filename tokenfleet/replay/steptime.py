"""StepTime: the duration of one forward pass of a mixed batch, from physics and a few coefficients.

For a step with P prefill tokens (causal query-key pairs A), D decoding sequences whose contexts
total K tokens, on `tp` GPUs (every time is per GPU; all GPUs work in parallel)::

    gemm  = max(dense FLOPs / (peak * eff(P + D)), weight bytes read / (bw * bw_eff))
            (+ the same for MoE experts: FLOPs at the tokens each expert gets, bytes of the
            experts the batch touches in expectation)
    attn  = prefill attention FLOPs / (peak * attn_eff)
            + max(decode attention FLOPs / (peak * attn_eff), KV bytes read and written / bw)
    comm  = 2 all-reduces per layer: latency + ring bytes / (link bw * link_eff)
    gpu   = gemm + attn + comm
    step  = step_overhead + seq_overhead * D + max(n_layers * layer_launch, gpu)    (eager)
          = step_overhead + seq_overhead * D + n_layers * layer_graph + gpu        (CUDA graphs,
                                                                                     decode-only)

In eager mode the CPU launches kernels ahead of the GPU, so the step waits for the slower of
the two; a 2023 engine at small batches is launch-bound, a modern one replays a CUDA graph.
The hardware coefficients come from the GPU profile, the overheads from the engine preset.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from tokenfleet.calibrate.profile import EnginePreset, GpuProfile, load_engine
from tokenfleet.errors import UserError
from tokenfleet.replay.memory import kv_shard
from tokenfleet.models.spec import ModelSpec, kv_dtype_bytes, weight_dtype_bytes

ACTIVATION_BYTES = 2.0  # bf16 activations on the wire for the TP all-reduces


class StepTime:
    """Prices forward passes for one replica: a model on `tp` GPUs of one profile."""

    def __init__(
        self,
        model: ModelSpec,
        gpu: GpuProfile,
        tp: int = 1,
        dtype: str = "bf16",
        kv_dtype: str | None = None,
        engine: str | EnginePreset | None = None,
    ) -> None:
        if tp < 1:
            raise UserError(f"--tp must be >= 1, got {tp}")
        if model.n_heads % tp:
            raise UserError(
                f"--tp {tp} does not divide {model.name}'s {model.n_heads} attention heads; "
                "use a power of two that divides it"
            )
        self.model, self.gpu, self.tp, self.dtype = model, gpu, tp, dtype
        self.kv_dtype = kv_dtype or ("fp16" if dtype == "fp16" else "bf16")
        if isinstance(engine, EnginePreset):
            self.engine = engine
        else:
            self.engine = load_engine(engine or gpu.default_engine, gpu)
        wbytes = weight_dtype_bytes(dtype)
        kvbytes = kv_dtype_bytes(self.kv_dtype)

        peak = gpu.peak_flops(dtype)
        bw = gpu.hbm_tb_s * 1e12 * gpu.bw_eff
        self._emax, self._half = gpu.gemm_eff_max, gpu.gemm_half_tokens
        # FLOPs per token per GPU, pre-divided by the peak so the formula stays short (seconds).
        lm_head_flops = 2.0 * (model.lm_head_params or model.embedding_params)
        routed_flops = 2.0 * model.n_moe_layers * model.experts_per_token * model.expert_params
        dense_flops = model.flops_per_token_dense - routed_flops
        self._pre_s = (dense_flops - lm_head_flops) / (tp * peak)  # prefill: no logits
        self._dec_s = dense_flops / (tp * peak)
        self._exp_s = routed_flops / (tp * peak)
        # Weights read once per step: all but the embedding table (a row lookup) and the routed
        # experts, which are read only where the batch routes tokens.
        routed_bytes = model.n_moe_layers * model.n_experts * model.expert_params * wbytes
        embedding_bytes = 0.0 if model.tied_embeddings else model.embedding_params * 2.0
        self._weights_s = (model.weight_bytes(dtype) - routed_bytes - embedding_bytes) / (tp * bw)
        self._expert_s = model.n_moe_layers * model.expert_params * wbytes / (tp * bw)
        self._k_per_e = model.experts_per_token / max(model.n_experts, 1)
        self._miss = 1.0 - self._k_per_e
        self._n_experts = float(model.n_experts)
        # Attention. KV heads split over TP down to one head per GPU; MLA's latent is replicated.
        shard = kv_shard(model, tp)
        attn = tp * peak * gpu.attn_eff
        self._attn_pre_s = model.attn_flops_per_pair(decode=False) / attn
        self._attn_dec_s = model.attn_flops_per_pair(decode=True) / attn
        self._kv_s = model.kv_bytes_per_token(self.kv_dtype) / (shard * bw)
        # Sliding-window layers see at most `window` keys per query.
        self._full_frac = 1.0 - model.sliding_layers / model.n_layers
        self._slide_frac = model.sliding_layers / model.n_layers
        self._window = float(model.sliding_window)
        # Communication: two all-reduces per layer (after attention and after the FFN).
        n_allreduce = 2.0 * model.n_layers if tp > 1 else 0.0
        latency_s = (gpu.allreduce_latency_us + self.engine.allreduce_overhead_us) * 1e-6
        link = gpu.link_gb_s / 2 * 1e9 * gpu.link_eff  # one direction
        ring = 2.0 * (tp - 1) / tp
        self._comm_fixed_s = n_allreduce * latency_s
        self._comm_tok_s = n_allreduce * ring * model.hidden_size * ACTIVATION_BYTES / link
        self._act_s = (
            self.engine.act_passes * model.n_layers * model.hidden_size * ACTIVATION_BYTES / bw
        )
        # Engine overheads.
        self._step_s = self.engine.step_overhead_ms * 1e-3
        self._prefill_step_s = self._step_s + self.engine.prefill_overhead_ms * 1e-3
        self._seq_s = self.engine.seq_overhead_us * 1e-6
        self._launch_s = model.n_layers * self.engine.layer_launch_us * 1e-6
        self._graph_s = (
            model.n_layers * self.engine.layer_graph_us * 1e-6 if self.engine.cuda_graphs else -1.0
        )

    # The formula is written once and evaluated on floats (step_s) or arrays (step_s_array) with
    # the same IEEE operations in the same order, so both agree to the last bit.
    def _formula(self, p, a, d, k, touched, mx: Callable, mn: Callable, decode_only):
        n = p + d
        eff = self._emax * n / (n + self._half)
        t = mx((p * self._pre_s + d * self._dec_s) / eff, self._weights_s)
        if self._n_experts:
            per_expert = n * self._k_per_e * self._n_experts / touched
            eff_e = self._emax * per_expert / (per_expert + self._half)
            t = t + mx(n * self._exp_s / eff_e, touched * self._expert_s)
        if self._slide_frac:
            a = self._full_frac * a + self._slide_frac * mn(a, p * self._window)
            k = self._full_frac * k + self._slide_frac * mn(k, d * self._window)
        t = t + a * self._attn_pre_s + mx(k * self._attn_dec_s, (k + n) * self._kv_s)
        t = t + (self._comm_fixed_s + n * self._comm_tok_s) + n * self._act_s
        launch = mx(self._launch_s, t)
        if self._graph_s >= 0.0:
            launch = decode_only(self._graph_s + t, launch)
        return decode_only(self._step_s, self._prefill_step_s) + d * self._seq_s + launch

    def step_s(
        self,
        prefill_tokens: int,
        prefill_attn_pairs: float,
        decode_seqs: int,
        decode_context_tokens: int,
    ) -> float:
        """Seconds for one forward pass of a mixed batch (see the module docstring)."""
        touched = 0.0
        if self._n_experts:
            touched = self._n_experts * (
                1.0 - math.pow(self._miss, float(prefill_tokens + decode_seqs))
            )
        is_decode = prefill_tokens == 0
        return self._formula(
            float(prefill_tokens),
            float(prefill_attn_pairs),
            float(decode_seqs),
            float(decode_context_tokens),
            touched,
            max,
            min,
            lambda graph, eager: graph if is_decode else eager,
        )

    def step_s_array(
        self,
        prefill_tokens,
        prefill_attn_pairs,
        decode_seqs,
        decode_context_tokens,
    ) -> np.ndarray:
        """`step_s` over arrays (broadcast together); equal to it element by element."""
        p, a, d, k = np.broadcast_arrays(
            *(np.asarray(x, dtype=np.float64) for x in (prefill_tokens, prefill_attn_pairs,
                                                        decode_seqs, decode_context_tokens))
        )
        touched = 0.0
        if self._n_experts:
            # math.pow, element by element: numpy's pow may differ from libm in the last bit.
            powers = [math.pow(self._miss, float(x)) for x in (p + d).ravel()]
            touched = self._n_experts * (1.0 - np.array(powers).reshape(p.shape))
        is_decode = p == 0.0
        out = self._formula(
            p,
            a,
            d,
            k,
            touched,
            np.maximum,
            np.minimum,
            lambda graph, eager: np.where(is_decode, graph, eager),
        )
        return np.asarray(out, dtype=np.float64)

    def weight_read_s(self) -> float:
        """Seconds to read the weights once at the achievable bandwidth (dense part)."""
        return self._weights_s
