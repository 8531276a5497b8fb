"""Tier prices give hand-computed revenue; the frame expressions agree with the scalar rules."""

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenfleet.errors import UserError
from tokenfleet.replay.tiers import Tier, revenue_expr, slo_met_expr, tier_table

FAST = Tier(
    "fast",
    usd_per_mtoken_input=1.0,
    usd_per_mtoken_cached_input=0.25,
    usd_per_mtoken_output=4.0,
    ttft_slo_s=0.5,
    tpot_slo_s=0.05,
)


def test_revenue_from_tier_prices():
    # 3,000 fresh + 1,000 cached input, 500 output: 0.003 + 0.00025 + 0.002 dollars.
    assert FAST.revenue_usd(4000, 1000, 500) == pytest.approx(0.00525)


def test_slo_needs_every_promise():
    assert FAST.slo_met(0.4, 0.04, 100.0)
    assert not FAST.slo_met(0.6, 0.04, 1.0)
    assert not FAST.slo_met(0.4, 0.06, 1.0)
    assert Tier("best-effort").slo_met(1e9, 1e9, 1e9)


@given(
    st.lists(
        st.tuples(
            st.integers(1, 10**5),
            st.floats(0, 1),
            st.integers(0, 10**4),
            st.floats(0, 2),
            st.floats(0, 0.2),
        ),
        min_size=1,
        max_size=50,
    )
)
def test_frame_expressions_match_scalar_rules(rows):
    records = pl.DataFrame(
        {
            "tier": ["fast"] * len(rows),
            "prompt_tokens": [r[0] for r in rows],
            "cached_tokens": [int(r[0] * r[1]) for r in rows],
            "output_tokens": [r[2] for r in rows],
            "ttft_s": [r[3] for r in rows],
            "tpot_s": [r[4] for r in rows],
            "e2e_s": [r[3] + r[4] * r[2] for r in rows],
        }
    )
    joined = records.join(tier_table([FAST]), on="tier").with_columns(
        revenue_usd=revenue_expr(), slo_met=slo_met_expr()
    )
    for row in joined.iter_rows(named=True):
        assert row["revenue_usd"] == pytest.approx(
            FAST.revenue_usd(row["prompt_tokens"], row["cached_tokens"], row["output_tokens"])
        )
        assert row["slo_met"] == FAST.slo_met(row["ttft_s"], row["tpot_s"], row["e2e_s"])


@pytest.mark.parametrize(
    "kwargs",
    [{"usd_per_mtoken_output": -1.0}, {"ttft_slo_s": -0.1}, {"deferred": True}],
)
def test_bad_tiers_are_user_errors(kwargs):
    with pytest.raises(UserError):
        Tier("batch", **kwargs)
