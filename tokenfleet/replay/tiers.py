"""Latency tiers: what a request pays and what it was promised.

A tier prices tokens (input, cached input, output, in $ per million) and promises service
levels (time to first token, time per output token, and for deferred work a completion
deadline). Goodput counts the requests that kept their tier's promises; revenue counts
what they paid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from tokenfleet.errors import UserError, require_non_negative

TOKENS_PER_MTOKEN = 1e6


PRICE_KEYS = ("usd_per_mtoken_input", "usd_per_mtoken_cached_input", "usd_per_mtoken_output")
# A tier's numbers that requests are priced and judged by (columns of the same names in frames).
PRICE_AND_SLO_KEYS = (
    *PRICE_KEYS,
    "ttft_slo_s",
    "tpot_slo_s",
    "deadline_s",
)


@dataclass(frozen=True)
class Tier:
    """One latency tier. An SLO of 0 means none; `deadline_s` bounds end-to-end time (for a
    deferred tier, finishing later makes the request `expired`). `client_timeout_s` is how
    long its clients wait for the last token before they disconnect (0: forever), which
    makes the request `timed_out` and aborts it in the engine (replay/timeouts.py). A higher
    `priority` is scheduled first and preempted last; `pools` empty means every pool."""

    name: str
    usd_per_mtoken_input: float = 0.20
    usd_per_mtoken_cached_input: float = 0.10
    usd_per_mtoken_output: float = 0.60
    ttft_slo_s: float = 0.0
    tpot_slo_s: float = 0.0
    deadline_s: float = 0.0
    client_timeout_s: float = 0.0
    priority: int = 0
    deferred: bool = False
    pools: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        require_non_negative(
            f"tier {self.name!r}",
            client_timeout_s=self.client_timeout_s,
            **{key: getattr(self, key) for key in PRICE_AND_SLO_KEYS},
        )
        if self.deferred and self.deadline_s <= 0:
            raise UserError(f"tier {self.name!r}: a deferred tier needs a deadline_s > 0")


def revenue_expr() -> pl.Expr:
    """Revenue of a finished request, from its token counts and its tier's prices."""
    fresh = pl.col("prompt_tokens") - pl.col("cached_tokens")
    return (
        fresh * pl.col("usd_per_mtoken_input")
        + pl.col("cached_tokens") * pl.col("usd_per_mtoken_cached_input")
        + pl.col("output_tokens") * pl.col("usd_per_mtoken_output")
    ) / TOKENS_PER_MTOKEN


def slo_met_expr() -> pl.Expr:
    """Whether a finished request met its tier's SLOs: each SLO of 0 is none; TTFT, TPOT and
    end-to-end time (the deadline) within the others."""

    def within(value: str, limit: str) -> pl.Expr:
        return (pl.col(limit) == 0) | (pl.col(value) <= pl.col(limit))

    return (
        within("ttft_s", "ttft_slo_s")
        & within("tpot_s", "tpot_slo_s")
        & within("e2e_s", "deadline_s")
    )
