"""StepTime: the duration of one forward pass of a mixed batch, from physics and a few coefficients.

For a step with P prefill tokens (causal query-key pairs A), D decoding sequences whose contexts
total K tokens, N = P + D tokens, on `tp` GPUs (times per GPU; the GPUs work in parallel)::

    gemm  = max(dense FLOPs / (peak * eff(N)), weight bytes / bw)   eff(N) = emax N / (N + half)
          + max(expert FLOPs / (peak * eff(tokens per expert)), bytes of experts touched / bw)
          + A * FLOPs per pair / (peak * attn_eff)                          (prefill attention)
    gemm += max(gemm - boost_window, 0) * (1 / sustained_clock - 1)        (power-capped clock)
    attn  = max(K * FLOPs per pair / (peak * attn_eff), (K + N) * KV bytes per token / bw)
    comm  = 2 * layers * (latency + N * hidden * 2 bytes * 2 (tp - 1) / tp / link)     (tp > 1)
            latency = the GPU's + the engine's allreduce_overhead + allreduce_peer * (tp - 1)
    act   = N * act_passes * layers * hidden * 2 bytes / bw      (norms, residuals; every rank)
    gpu   = gemm + attn + comm + act
    step  = step_overhead + D * seq_overhead + max(layers * layer_launch, gpu)       (eager)
          = step_overhead + D * seq_overhead + layers * layer_graph + gpu      (CUDA graphs,
                                                                               decode-only)

step_overhead and seq_overhead include, where the requests' sampling filters by top-p/top-k,
the engine's sampler_filter_ms and sampler_filter_ns_per_logit x vocabulary.

Within a run of decode-only steps everything but the attention over the contexts is fixed by
the batch, so `decode_piece` gives a run's step ends in closed form: a per-batch constant per
step plus a term affine in the summed context (see its docstring for what that defines).

bw = HBM bandwidth x bw_eff and link = one direction of the scale-up link x link_eff. MoE
experts touched by N tokens: E (1 - (1 - k/E)^N). Prefill tokens skip the LM head. A step's
compute runs at the boost clock for `boost_window` seconds; beyond it the board's power limit
holds the clock at `sustained_clock` of boost (long prefills; decode steps are far shorter).
In eager mode the CPU launches kernels ahead of the GPU, so a step waits for the slower of the
two: a 2023 engine at small batches is launch-bound; a modern one replays a CUDA graph for
decode steps.
Hardware coefficients come from the GPU profile, overheads from the engine preset.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import EnginePreset, GpuProfile, load_engine
from tokenfleet.models.spec import UNQUANTISED_BYTES, ModelSpec, weight_dtype_bytes
from tokenfleet.perf.memory import kv_shard

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
        _check_tp(model, tp)
        self.model, self.gpu, self.tp, self.dtype = model, gpu, tp, dtype
        self.kv_dtype = kv_dtype or ("fp16" if dtype == "fp16" else "bf16")
        if isinstance(engine, EnginePreset):
            self.engine = engine
        else:
            self.engine = load_engine(engine or gpu.default_engine, gpu)
        wbytes = weight_dtype_bytes(dtype)

        peak = gpu.peak_flops(dtype)
        bw = gpu.hbm_tb_s * 1e12 * gpu.bw_eff
        self._emax, self._half = gpu.gemm_eff_max, gpu.gemm_half_tokens
        self._boost_s = gpu.boost_window_s
        self._throttle = 1.0 / gpu.sustained_clock_frac - 1.0  # extra time per second beyond it
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
        embedding_bytes = (
            0.0 if model.tied_embeddings else model.embedding_params * UNQUANTISED_BYTES
        )
        self._weights_s = (model.weight_bytes(dtype) - routed_bytes - embedding_bytes) / (tp * bw)
        self._expert_s = model.n_moe_layers * model.expert_params * wbytes / (tp * bw)
        self._k_per_e = model.experts_per_token / max(model.n_experts, 1)
        self._miss = 1.0 - self._k_per_e
        self._n_experts = float(model.n_experts)
        # Attention. KV heads split over TP down to one head per GPU; MLA's latent is replicated.
        shard = kv_shard(model, tp)
        attn = tp * gpu.peak_flops("bf16") * gpu.attn_eff  # attention runs in 16-bit
        self._attn_pre_s = model.attn_flops_per_pair(decode=False) / attn
        self._attn_dec_s = model.attn_flops_per_pair(decode=True) / attn
        self._kv_s = model.kv_bytes_per_token(self.kv_dtype) / (shard * bw)
        # Sliding-window layers see at most `window` keys per query.
        self._full_frac = 1.0 - model.sliding_layers / model.n_layers
        self._slide_frac = model.sliding_layers / model.n_layers
        self._window = float(model.sliding_window)
        # Communication: two all-reduces per layer (after attention and after the FFN).
        n_allreduce = 2.0 * model.n_layers if tp > 1 else 0.0
        # A one-shot all-reduce's latency grows with the peers it signals and reads.
        per_peer_us = self.engine.allreduce_peer_us * (tp - 1)
        latency_s = (
            gpu.allreduce_latency_us + self.engine.allreduce_overhead_us + per_peer_us
        ) * 1e-6
        link = gpu.link_gb_s / 2 * 1e9 * gpu.link_eff  # one direction
        ring = 2.0 * (tp - 1) / tp
        self._comm_fixed_s = n_allreduce * latency_s
        self._comm_tok_s = n_allreduce * ring * model.hidden_size * ACTIVATION_BYTES / link
        self._act_s = (
            self.engine.act_passes * model.n_layers * model.hidden_size * ACTIVATION_BYTES / bw
        )
        self._set_engine_overheads(model)

    def _set_engine_overheads(self, model: ModelSpec) -> None:
        """The engine's CPU-side costs, and the per-batch caches of decode-only steps that
        build on them (after the hardware terms, which `_lean` compares)."""
        n_layers = model.n_layers
        self._step_s = self.engine.step_overhead_ms * 1e-3
        self._seq_s = self.engine.seq_overhead_us * 1e-6
        # Top-p/top-k filtering runs outside the CUDA graph over each sequence's whole
        # vocabulary: a fixed part per step and a part per sequence (hardware/profile.py
        # STEP_TERM_KEYS); only where the requests' sampling asks for it.
        self._sampler_step_s = 0.0
        self._sampler_seq_s = 0.0
        if model.filtered_sampling:
            self._sampler_step_s = self.engine.sampler_filter_ms * 1e-3
            self._sampler_seq_s = self.engine.sampler_filter_ns_per_logit * model.vocab_size * 1e-9
        self._step_s += self._sampler_step_s
        self._seq_s += self._sampler_seq_s
        self._launch_s = n_layers * self.engine.layer_launch_us * 1e-6
        self._graph_s = (
            n_layers * self.engine.layer_graph_us * 1e-6 if self.engine.cuda_graphs else -1.0
        )
        # Decode-only steps, per batch size d: the constant part of their duration (CUDA graphs:
        # everything but the context term; eager: the CPU-side overheads) and the GPU time
        # without the context term. Filled on first use.
        self._dec_fixed: list[float] = [math.nan]  # (no step has no work)
        self._dec_gpu: list[float] = [math.nan]
        # With CUDA graphs, full attention and KV reads slower than attention FLOPs per token
        # (then (K + D) * kv >= K * attn for every K, as rounding is monotonic), a decode step
        # is the per-batch constant plus (K + D) * kv.
        self._lean = (
            self._graph_s >= 0.0 and not self._slide_frac and self._kv_s >= self._attn_dec_s
        )

    # Everything but the context term, for a given batch shape. Shared by the mixed path of
    # `step_s` and by the per-batch decode constants, so both run the same IEEE operations.
    def _gpu_s(self, p: int, a: float, d: int) -> float:
        n = p + d
        eff = self._emax * n / (n + self._half)
        t = (p * self._pre_s + d * self._dec_s) / eff
        w = self._weights_s
        t = t if t >= w else w
        if self._n_experts:
            touched = self._n_experts * (1.0 - math.pow(self._miss, n))
            per_expert = n * self._k_per_e * self._n_experts / touched
            eff_e = self._emax * per_expert / (per_expert + self._half)
            c, m = n * self._exp_s / eff_e, touched * self._expert_s
            t = t + (c if c >= m else m)
        if self._slide_frac:
            pw = p * self._window
            a = self._full_frac * a + self._slide_frac * (a if a <= pw else pw)
        t = t + a * self._attn_pre_s
        if t > self._boost_s:  # adds exactly 0.0 otherwise, as the array form does
            t = t + (t - self._boost_s) * self._throttle
        return t + (self._comm_fixed_s + n * self._comm_tok_s) + n * self._act_s

    def _context_s(self, k: float, d: int, n: int) -> float:
        """Attention over the decode contexts: the slower of its FLOPs and its KV reads."""
        if self._slide_frac:
            dw = d * self._window
            k = self._full_frac * k + self._slide_frac * (k if k <= dw else dw)
        c, m = k * self._attn_dec_s, (k + n) * self._kv_s
        return c if c >= m else m

    def _decode_constants(self, d: int) -> None:
        """Fill the per-batch constants of decode-only steps up to `d` sequences."""
        fixed, gpu = self._dec_fixed, self._dec_gpu
        for b in range(len(fixed), max(d + 1, 2 * len(fixed))):
            x = self._gpu_s(0, 0.0, b)
            s = self._step_s + b * self._seq_s
            gpu.append(x)
            fixed.append(s + self._graph_s + x if self._graph_s >= 0.0 else s)

    def step_s(
        self,
        prefill_tokens: int,
        prefill_attn_pairs: float,
        decode_seqs: int,
        decode_context_tokens: int,
    ) -> float:
        """Seconds for one forward pass of a mixed batch (see the module docstring)."""
        d, k = decode_seqs, decode_context_tokens
        if not prefill_tokens:
            if d >= len(self._dec_fixed):
                self._decode_constants(d)
            if self._lean:  # CUDA graphs, full attention, KV reads bound: one multiply-add
                return self._dec_fixed[d] + (k + d) * self._kv_s
            ctx = self._context_s(k, d, d)
            if self._graph_s >= 0.0:
                return self._dec_fixed[d] + ctx
            t = self._dec_gpu[d] + ctx
            return self._dec_fixed[d] + (t if t >= self._launch_s else self._launch_s)
        p = prefill_tokens
        t = self._gpu_s(p, prefill_attn_pairs, d) + self._context_s(k, d, p + d)
        return self._step_s + d * self._seq_s + (t if t >= self._launch_s else self._launch_s)

    def step_s_array(
        self,
        prefill_tokens: npt.ArrayLike,
        prefill_attn_pairs: npt.ArrayLike,
        decode_seqs: npt.ArrayLike,
        decode_context_tokens: npt.ArrayLike,
    ) -> np.ndarray:
        """`step_s` over arrays (broadcast together); equal to it element by element: the same
        IEEE operations in the same order as `_gpu_s`, `_context_s` and `step_s` (a test checks
        the bits), with `max` for their comparisons and `where` for the decode-only branch."""
        p, a, d, k = np.broadcast_arrays(
            *(
                np.asarray(x, dtype=np.float64)
                for x in (prefill_tokens, prefill_attn_pairs, decode_seqs, decode_context_tokens)
            )
        )
        n = p + d
        eff = self._emax * n / (n + self._half)
        t = np.maximum((p * self._pre_s + d * self._dec_s) / eff, self._weights_s)
        if self._n_experts:
            # math.pow, element by element: numpy's pow may differ from libm in the last bit.
            powers = [math.pow(self._miss, x) for x in n.ravel().tolist()]
            touched = self._n_experts * (1.0 - np.array(powers).reshape(n.shape))
            per_expert = n * self._k_per_e * self._n_experts / touched
            eff_e = self._emax * per_expert / (per_expert + self._half)
            t = t + np.maximum(n * self._exp_s / eff_e, touched * self._expert_s)
        if self._slide_frac:
            a = self._full_frac * a + self._slide_frac * np.minimum(a, p * self._window)
            k = self._full_frac * k + self._slide_frac * np.minimum(k, d * self._window)
        t = t + a * self._attn_pre_s
        t = t + np.maximum(t - self._boost_s, 0.0) * self._throttle
        t = t + (self._comm_fixed_s + n * self._comm_tok_s) + n * self._act_s
        ctx = np.maximum(k * self._attn_dec_s, (k + n) * self._kv_s)
        fixed = self._step_s + d * self._seq_s
        out = fixed + np.maximum(t + ctx, self._launch_s)
        if self._graph_s >= 0.0:
            out = np.where(p == 0.0, fixed + self._graph_s + t + ctx, out)
        return np.asarray(out, dtype=np.float64)

    def decode_piece(
        self, decode_seqs: int, context_tokens: int
    ) -> tuple[float, float, int, float]:
        """(A, B, shift, context_end): decode-only steps of `decode_seqs` sequences whose
        contexts run from `context_tokens` (growing by `decode_seqs` per step) up to, not
        including, `context_end` form a *piece*: its m-th step ends at
        `t0 + (m * A + B * K_m)`, K_m the sum of (context + shift) over its first m steps.

        This defines the replay's decode step durations as the differences of that closed form,
        so a run of any length is priced, cut and inverted in O(1). The first step of a piece
        takes exactly `step_s` in the common case (CUDA graphs, full attention, KV-read bound);
        otherwise, and for later steps, ends differ from summing `step_s` only by rounding (K_m is
        an exact integer; A and B are the terms of `step_s` in the regime holding at the
        piece's start). A piece ends where that regime may switch: attention turning
        compute-bound, sliding layers reaching their window, an eager step leaving the launch
        bound."""
        d, k = decode_seqs, context_tokens
        if d >= len(self._dec_fixed):
            self._decode_constants(d)
        fixed, kv, attn = self._dec_fixed[d], self._kv_s, self._attn_dec_s
        if self._lean:  # CUDA graphs, full attention, KV reads bound: A + (k + d) * kv always
            return fixed, kv, d, math.inf
        # The attended context alpha k + beta: sliding layers see at most d * window keys.
        end = math.inf
        alpha, beta = 1.0, 0.0
        if self._slide_frac:
            dw = d * self._window
            if k <= dw:
                alpha, end = self._full_frac + self._slide_frac, math.floor(dw) + 1
            else:
                alpha, beta = self._full_frac, self._slide_frac * dw
        # Attention: the slower of its FLOPs and its KV reads, which cross at most once.
        cross = d * kv / (attn - kv) if attn > kv else math.inf  # attended context where they meet
        if alpha * k + beta >= cross:
            a, b = beta * attn, alpha * attn
        else:
            a, b = (beta + d) * kv, alpha * kv
            if cross < math.inf:
                end = min(end, math.ceil((cross - beta) / alpha))
        if self._graph_s >= 0.0:
            return fixed + a, b, 0, max(end, k + 1)
        # Eager: the CPU's kernel launches bound the step until the GPU's time exceeds them.
        gpu, launch = self._dec_gpu[d], self._launch_s
        if gpu + a + b * k < launch:
            if b > 0.0:
                end = min(end, math.ceil((launch - gpu - a) / b))
            return fixed + launch, 0.0, 0, max(end, k + 1)
        return fixed + (gpu + a), b, 0, max(end, k + 1)

    def decode_terms(self, decode_seqs: int, context_tokens: int) -> dict[str, float]:
        """A decode-only step of `decode_seqs` sequences whose contexts total `context_tokens`,
        in named parts (seconds) that sum to `step_s(0, 0, decode_seqs, context_tokens)` (to
        rounding): what a check against measured steps reads to find the term that is off."""
        d = decode_seqs
        eff = self._emax * d / (d + self._half)
        dense = max(d * self._dec_s / eff, self._weights_s)
        experts = 0.0
        if self._n_experts:
            touched = self._n_experts * (1.0 - math.pow(self._miss, d))
            per_expert = d * self._k_per_e * self._n_experts / touched
            eff_e = self._emax * per_expert / (per_expert + self._half)
            experts = max(d * self._exp_s / eff_e, touched * self._expert_s)
        gemm = dense + experts
        throttle = (gemm - self._boost_s) * self._throttle if gemm > self._boost_s else 0.0
        sampler = self._sampler_step_s + d * self._sampler_seq_s
        terms = {
            "overhead": self._step_s + d * self._seq_s - sampler,
            "sampler_filter": sampler,
            "weights_or_gemm": dense,
            "experts": experts,
            "clock_throttle": throttle,
            "attention": self._context_s(context_tokens, d, d),
            "allreduce": self._comm_fixed_s + d * self._comm_tok_s,
            "activations": d * self._act_s,
        }
        gpu = sum(terms.values()) - terms["overhead"] - sampler
        graphed = self._graph_s >= 0.0
        terms["graph_gaps"] = self._graph_s if graphed else 0.0
        terms["launch_wait"] = 0.0 if graphed else max(0.0, self._launch_s - gpu)
        return terms

    def decode_gemm_s(self, decode_seqs: int) -> tuple[float, float]:
        """(compute, weight read) seconds of the GEMMs of a decode step of `decode_seqs`."""
        n = float(decode_seqs)
        compute = n * self._dec_s / (self._emax * n / (n + self._half))
        memory = self._weights_s
        if self._n_experts:
            touched = self._n_experts * (1.0 - math.pow(self._miss, n))
            per_expert = n * self._k_per_e * self._n_experts / touched
            compute += n * self._exp_s / (self._emax * per_expert / (per_expert + self._half))
            memory += touched * self._expert_s
        return compute, memory

    def compute_bound_batch(self, limit: int = 1 << 20) -> int | None:
        """Smallest decode batch whose GEMMs take longer to compute than to read their weights:
        below it, adding sequences is nearly free; above it, cost per token stops falling."""
        if self.decode_gemm_s(limit)[0] < self.decode_gemm_s(limit)[1]:
            return None
        low, high = 0, limit  # compute < memory at `low` (or low == 0), >= at `high`
        while high - low > 1:
            mid = (low + high) // 2
            compute, memory = self.decode_gemm_s(mid)
            if compute >= memory:
                high = mid
            else:
                low = mid
        return high


def _check_tp(model: ModelSpec, tp: int) -> None:
    """Refuse a tensor-parallel degree that cannot shard the model's attention heads."""
    if tp < 1:
        raise UserError(f"tp must be >= 1, got {tp}")
    if model.n_heads % tp:
        raise UserError(
            f"tp = {tp} does not divide {model.name}'s {model.n_heads} attention heads; "
            "use a power of two that divides it"
        )
