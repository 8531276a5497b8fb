"""Hand-computed costs of rented and owned pools."""

import pytest

from tokenfleet.errors import UserError
from tokenfleet.replay.cost import OwnedPricing, RentedPricing


def test_two_rented_gpus_at_two_dollars_for_an_hour_cost_four():
    pricing = RentedPricing(usd_per_gpu_hour=2.0)
    assert pricing.cost_usd(2, [3600.0], duration_s=3600.0, peak_replicas=1) == pytest.approx(4.0)


def test_on_demand_rounds_each_span_up_to_the_billing_granularity():
    pricing = RentedPricing(usd_per_gpu_hour=3.6, billing_granularity_s=60.0)
    # 61 s bills two minutes, 120 s bills two minutes: 240 s at $0.001/s on one GPU.
    assert pricing.cost_usd(1, [61.0, 120.0], duration_s=500.0, peak_replicas=2) == pytest.approx(
        0.24
    )


def test_reserved_pays_the_peak_for_the_whole_run_even_when_idle():
    pricing = RentedPricing(usd_per_gpu_hour=1.0, commitment="reserved")
    assert pricing.cost_usd(8, [10.0], duration_s=7200.0, peak_replicas=3) == pytest.approx(48.0)


def test_owned_cost_follows_its_formula():
    pricing = OwnedPricing(
        capex_usd_per_gpu=43_800.0,
        lifetime_years=5.0,
        opex_fraction_per_year=0.10,
        gpu_tdp_w=700.0,
        gpu_idle_w=100.0,
        server_w_per_gpu=200.0,
        pue=1.5,
        usd_per_kwh=0.10,
    )
    # Capital 43,800 / (5 * 8760) = $1.00/h; opex 4,380 / 8760 = $0.50/h.
    assert pricing.fixed_usd_per_gpu_hour == pytest.approx(1.5)
    # 4 GPUs for 1 h, each busy half the time: idle+server 300 W * 4 h = 1.2 kWh, busy extra
    # 600 W * 2 h = 1.2 kWh; 2.4 kWh * 1.5 PUE * $0.10 = $0.36. Fixed: 4 * 1.5 = $6.
    cost = pricing.cost_usd(gpus=4, duration_s=3600.0, busy_gpu_s=2 * 3600.0)
    assert cost == pytest.approx(6.36)


def test_owned_gpu_costs_money_when_idle():
    pricing = OwnedPricing()
    assert (
        pricing.cost_usd(gpus=1, duration_s=3600.0, busy_gpu_s=0.0) > pricing.fixed_usd_per_gpu_hour
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: RentedPricing(usd_per_gpu_hour=-1.0),
        lambda: RentedPricing(commitment="spot"),
        lambda: OwnedPricing(lifetime_years=0.0),
        lambda: OwnedPricing(pue=0.9),
        lambda: OwnedPricing(usd_per_kwh=float("nan")),
        lambda: OwnedPricing(gpu_idle_w=800.0, gpu_tdp_w=700.0),
    ],
)
def test_bad_prices_are_user_errors(make):
    with pytest.raises(UserError):
        make()
