"""What a pool of GPUs costs: rented by the hour, or owned and paid for whether busy or idle.

The asymmetry between the two is the point of the tool: a rented GPU costs money only while it
is provisioned (on demand) or for the whole term (reserved); an owned GPU costs its amortised
capital, its yearly opex and its power every second of its life, so idle hours are pure loss
unless backfilled with work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tokenfleet.errors import UserError, require_non_negative

# The rent of a GPU whose profile names none (a user's profile): the H100 median of 2026.
GENERIC_USD_PER_GPU_HOUR = 2.50
SECONDS_PER_HOUR = 3600.0
HOURS_PER_YEAR = 8760.0
JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class RentedPricing:
    """Cloud GPUs. On demand bills provisioned time in whole `billing_granularity_s` units;
    reserved bills every reserved GPU for the whole run, used or not."""

    usd_per_gpu_hour: float = GENERIC_USD_PER_GPU_HOUR
    commitment: Literal["on_demand", "reserved"] = "on_demand"
    billing_granularity_s: float = 1.0

    def __post_init__(self) -> None:
        require_non_negative(
            "rented pricing",
            usd_per_gpu_hour=self.usd_per_gpu_hour,
            billing_granularity_s=self.billing_granularity_s,
        )
        if self.commitment not in ("on_demand", "reserved"):
            raise UserError(
                f"rented pricing: commitment = {self.commitment!r}; use 'on_demand' or 'reserved'"
            )

    def billed_seconds(self, provisioned_s: float) -> float:
        """One provisioned interval as billed: rounded up to the billing granularity."""
        if self.billing_granularity_s <= 0:
            return provisioned_s
        units = math.ceil(provisioned_s / self.billing_granularity_s - 1e-9)
        return units * self.billing_granularity_s

    def cost_usd(
        self,
        gpus_per_replica: int,
        replica_intervals_s: list[float],
        duration_s: float,
        peak_replicas: int,
    ) -> float:
        """Cost of a pool. `replica_intervals_s` are the lengths of each replica's provisioned
        spans (on demand); reserved capacity is the peak replica count for the whole run."""
        rate_per_s = self.usd_per_gpu_hour / SECONDS_PER_HOUR
        if self.commitment == "reserved":
            return peak_replicas * gpus_per_replica * duration_s * rate_per_s
        billed = sum(self.billed_seconds(span) for span in replica_intervals_s)
        return billed * gpus_per_replica * rate_per_s


@dataclass(frozen=True)
class OwnedPricing:
    """Owned GPUs: capital over a lifetime, yearly opex as a share of capital, and power.

    Power per GPU moves between `gpu_idle_w` and `gpu_tdp_w` with its busy fraction; the server's
    share (CPUs, NICs, fans) is constant; the facility multiplies all of it by the PUE.
    """

    capex_usd_per_gpu: float = 35_000.0
    lifetime_years: float = 5.0
    opex_fraction_per_year: float = 0.05
    gpu_tdp_w: float = 700.0
    gpu_idle_w: float = 100.0
    server_w_per_gpu: float = 250.0
    pue: float = 1.3
    usd_per_kwh: float = 0.08

    def __post_init__(self) -> None:
        require_non_negative(
            "owned pricing",
            capex_usd_per_gpu=self.capex_usd_per_gpu,
            opex_fraction_per_year=self.opex_fraction_per_year,
            gpu_tdp_w=self.gpu_tdp_w,
            gpu_idle_w=self.gpu_idle_w,
            server_w_per_gpu=self.server_w_per_gpu,
            usd_per_kwh=self.usd_per_kwh,
        )
        if not self.lifetime_years > 0:
            raise UserError(f"owned pricing: lifetime_years = {self.lifetime_years} must be > 0")
        if not self.pue >= 1.0:
            raise UserError(f"owned pricing: pue = {self.pue} must be >= 1.0")
        if self.gpu_idle_w > self.gpu_tdp_w:
            raise UserError(
                f"owned pricing: gpu_idle_w = {self.gpu_idle_w} exceeds "
                f"gpu_tdp_w = {self.gpu_tdp_w}"
            )

    @property
    def fixed_usd_per_gpu_hour(self) -> float:
        """Amortised capital plus opex: paid every hour whether the GPU works or not."""
        capital = self.capex_usd_per_gpu / (self.lifetime_years * HOURS_PER_YEAR)
        opex = self.capex_usd_per_gpu * self.opex_fraction_per_year / HOURS_PER_YEAR
        return capital + opex

    def energy_usd(self, gpu_s: float, busy_gpu_s: float) -> float:
        """Facility energy for `gpu_s` GPU-seconds of which `busy_gpu_s` were busy."""
        joules = (self.gpu_idle_w + self.server_w_per_gpu) * gpu_s
        joules += (self.gpu_tdp_w - self.gpu_idle_w) * busy_gpu_s
        return joules / JOULES_PER_KWH * self.pue * self.usd_per_kwh

    def cost_usd(self, gpus: int, duration_s: float, busy_gpu_s: float) -> float:
        """Cost of `gpus` owned GPUs over `duration_s` seconds, `busy_gpu_s` of it busy."""
        gpu_s = gpus * duration_s
        return gpu_s * self.fixed_usd_per_gpu_hour / SECONDS_PER_HOUR + self.energy_usd(
            gpu_s, busy_gpu_s
        )

    def components_usd(self, gpu_s: float, busy_gpu_s: float) -> dict[str, float]:
        """`cost_usd` split into what it pays for (capital, opex, power): the report's money
        figure. `gpu_s` is GPUs x seconds owned."""
        hours = gpu_s / SECONDS_PER_HOUR
        return {
            "capital": hours * self.capex_usd_per_gpu / (self.lifetime_years * HOURS_PER_YEAR),
            "opex": hours * self.capex_usd_per_gpu * self.opex_fraction_per_year / HOURS_PER_YEAR,
            "power": self.energy_usd(gpu_s, busy_gpu_s),
        }


@dataclass(frozen=True)
class CostRates:
    """A replica's cost spread over time, for the timeline: $ per second always (owned capital
    and idle power, reserved capacity), per provisioned second (on demand) and per busy second
    (owned power above idle). Summed over a run they give `pool_cost_usd` (on-demand billing
    rounding is added where each provisioned span ends)."""

    always_usd_per_s: float
    provisioned_usd_per_s: float
    busy_usd_per_s: float


def cost_rates(pricing: RentedPricing | OwnedPricing, tp: int) -> CostRates:
    """The rates of one replica of `tp` GPUs."""
    if isinstance(pricing, OwnedPricing):
        per_kwh = pricing.pue * pricing.usd_per_kwh / JOULES_PER_KWH
        idle = pricing.fixed_usd_per_gpu_hour / SECONDS_PER_HOUR
        idle += (pricing.gpu_idle_w + pricing.server_w_per_gpu) * per_kwh
        busy = (pricing.gpu_tdp_w - pricing.gpu_idle_w) * per_kwh
        return CostRates(idle * tp, 0.0, busy * tp)
    rate = pricing.usd_per_gpu_hour / SECONDS_PER_HOUR * tp
    if pricing.commitment == "reserved":
        return CostRates(rate, 0.0, 0.0)
    return CostRates(0.0, rate, 0.0)


def pool_cost_usd(
    pricing: RentedPricing | OwnedPricing,
    tp: int,
    replicas: int,
    spans_s: list[float],
    duration_s: float,
    busy_s: float,
) -> float:
    """What a pool of `replicas` replicas (the most it may have: owned or reserved) of `tp` GPUs
    costs over `duration_s`: on demand, its provisioned spans; reserved and owned, every replica for
    the whole run (owned power at the observed busy replica-seconds `busy_s`)."""
    if isinstance(pricing, OwnedPricing):
        return pricing.cost_usd(replicas * tp, duration_s, busy_s * tp)
    return pricing.cost_usd(tp, spans_s, duration_s, replicas)
