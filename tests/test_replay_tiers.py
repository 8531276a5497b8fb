"""Tier prices give hand-computed revenue; SLOs need every promise kept."""

import polars as pl
import pytest

from tokenfleet.errors import UserError
from tokenfleet.replay.tiers import PRICE_AND_SLO_KEYS, Tier, revenue_expr, slo_met_expr

FAST = Tier(
    "fast",
    usd_per_mtoken_input=1.0,
    usd_per_mtoken_cached_input=0.25,
    usd_per_mtoken_output=4.0,
    ttft_slo_s=0.5,
    tpot_slo_s=0.05,
)


def priced(tier: Tier, **columns) -> pl.DataFrame:
    prices = {key: getattr(tier, key) for key in PRICE_AND_SLO_KEYS}
    frame = pl.DataFrame(columns)
    return frame.with_columns(**{k: pl.lit(v) for k, v in prices.items()}).select(
        revenue_usd=revenue_expr(), slo_met=slo_met_expr()
    )


def test_revenue_from_tier_prices():
    # 3,000 fresh + 1,000 cached input, 500 output: 0.003 + 0.00025 + 0.002 dollars.
    row = priced(
        FAST, prompt_tokens=[4000], cached_tokens=[1000], output_tokens=[500],
        ttft_s=[0.1], tpot_s=[0.01], e2e_s=[5.0],
    )  # fmt: skip
    assert row["revenue_usd"][0] == pytest.approx(0.00525)


def test_slo_needs_every_promise():
    rows = priced(
        FAST, prompt_tokens=[1] * 3, cached_tokens=[0] * 3, output_tokens=[1] * 3,
        ttft_s=[0.4, 0.6, 0.4], tpot_s=[0.04, 0.04, 0.06], e2e_s=[100.0, 1.0, 1.0],
    )  # fmt: skip
    assert rows["slo_met"].to_list() == [True, False, False]


def test_no_slo_is_always_met_and_a_deadline_is_end_to_end():
    best_effort = priced(
        Tier("best-effort"), prompt_tokens=[1], cached_tokens=[0], output_tokens=[1],
        ttft_s=[1e9], tpot_s=[1e9], e2e_s=[1e9],
    )  # fmt: skip
    assert best_effort["slo_met"][0]
    batch = Tier("batch", deferred=True, deadline_s=3600.0)
    late = priced(
        batch, prompt_tokens=[1, 1], cached_tokens=[0, 0], output_tokens=[1, 1],
        ttft_s=[10.0, 10.0], tpot_s=[0.1, 0.1], e2e_s=[3599.0, 3601.0],
    )  # fmt: skip
    assert late["slo_met"].to_list() == [True, False]


@pytest.mark.parametrize(
    "kwargs",
    [{"usd_per_mtoken_output": -1.0}, {"ttft_slo_s": -0.1}, {"deferred": True}],
)
def test_bad_tiers_are_user_errors(kwargs):
    with pytest.raises(UserError):
        Tier("batch", **kwargs)
