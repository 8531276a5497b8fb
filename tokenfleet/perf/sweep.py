"""The batch-size economics of one replica as a table: `tokenfleet steptime`'s rows, priced
by StepTime, so the command only prints and writes them."""

from __future__ import annotations

from tokenfleet.perf.steptime import StepTime

PREFILL_SWEEP_TOKENS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DECODE_SWEEP_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DECODE_SWEEP_CONTEXTS = (1024, 4096, 16384)


def steptime_sweep(
    st: StepTime, kv_capacity_tokens: int, usd_per_gpu_hour: float | None = None
) -> list[dict]:
    """The batch-size economics of one replica as rows: one prompt of each length prefilled
    from an empty cache, then decode steps of each batch at a few per-sequence contexts."""
    usd_per_s = None if usd_per_gpu_hour is None else st.tp * usd_per_gpu_hour / 3600.0
    rows = []

    def row(phase: str, prompt: int, batch: int, context: int, seconds: float, tokens: int) -> None:
        tokens_per_s = tokens / seconds
        rows.append(
            {
                "phase": phase,
                "prompt_tokens": prompt,
                "batch": batch,
                "context_tokens": context,
                "step_ms": seconds * 1e3,
                "tokens_per_s": tokens_per_s,
                "usd_per_mtoken": None if usd_per_s is None else usd_per_s / tokens_per_s * 1e6,
                "fits_kv": batch * (prompt or context) <= kv_capacity_tokens,
            }
        )

    for p in PREFILL_SWEEP_TOKENS:
        row("prefill", p, 1, 0, st.step_s(p, p * (p + 1) / 2, 0, 0), p)
    for context in DECODE_SWEEP_CONTEXTS:
        for d in DECODE_SWEEP_BATCHES:
            row("decode", 0, d, context, st.step_s(0, 0.0, d, d * context), d)
    return rows
