"""Scenario: what is simulated. A TOML file read with tomllib into frozen dataclasses.

Every setting has a default, so an empty file (or none) is a valid scenario: Llama-3.1-8B on
H100-SXM behind a least-requests balancer, vLLM batching, a fleet sized to the trace's rate. An
unknown key is refused with its name; CLI flags override the common settings.

Layout (every key optional)::

    seed = 0
    interval_s = 10.0            # timeline interval
    [model]                      # name = "llama-3.1-8b" | path to TOML / HF config.json
    [balancer]                   # policy = "least-requests", plus the policy's settings
    [[pools]]                    # one table per pool of identical replicas
    [pools.batcher]              # policy = "vllm", plus the policy's settings
    [pools.pricing]              # kind = "rented" (on demand / reserved) or "owned"
    [pools.autoscale]            # enabled = true: min/max replicas, target, delays
    [[tiers]]                    # latency tiers: prices, SLOs, priority, deferral, pools
    [gateway]                    # latency, unknown tiers, deferral, retries
    [[gateway.limits]]           # RPM/TPM per tenant (or "*") or per tier

A policy's settings are checked against the policy's own Settings dataclass, so plugins get the
same unknown-key errors as built-ins. New sections are added as dataclass fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenfleet.errors import SettingError, UserError
from tokenfleet.replay.balancer import balancer_class
from tokenfleet.replay.batcher import batcher_class
from tokenfleet.replay.cost import GENERIC_USD_PER_GPU_HOUR, OwnedPricing, RentedPricing
from tokenfleet.replay.plugins import PolicyConfig, build_settings
from tokenfleet.replay.ratelimit import RateLimit, RetryPolicy
from tokenfleet.replay.tables import build_config
from tokenfleet.replay.tiers import Tier
from tokenfleet.tomlfile import read_toml

AUTO = "auto"
PRICING_KINDS = ("rented", "owned")
AUTOSCALE_METRICS = ("utilisation", "queued_tokens")
UNKNOWN_TIER_POLICIES = ("default", "reject")
SAMPLING_MODES = (AUTO, "filtered", "plain")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "llama-3.1-8b"
    dtype: str = "bf16"
    kv_dtype: str = ""  # empty: same as dtype (bf16 or fp16)
    # Longest prompt + output served (vLLM's --max-model-len); 0: the model's context.
    max_model_len: int = 0
    # Whether the requests' sampling runs a top-p/top-k filter, which costs per step (engine
    # presets' sampler_filter_* keys): "auto" as the model's generation_config.json asks
    # (vLLM's default), "filtered" or "plain" as the requests set it.
    sampling: str = AUTO


@dataclass(frozen=True)
class PricingConfig:
    """How a pool is paid for: rented (cost.RentedPricing) or owned (cost.OwnedPricing).

    Only the keys of the chosen kind apply; the defaults are cost.py's, except two that depend
    on the GPU and are left unset (NaN) until the pool's profile is known (`for_gpu`): the rent
    (the profile's `rent_usd_per_gpu_hour`) and an owned GPU's TDP (its datasheet's)."""

    kind: str = "rented"
    usd_per_gpu_hour: float = field(default=math.nan, metadata={"example": 2.95})
    commitment: str = RentedPricing.commitment
    billing_granularity_s: float = RentedPricing.billing_granularity_s
    capex_usd_per_gpu: float = OwnedPricing.capex_usd_per_gpu
    lifetime_years: float = OwnedPricing.lifetime_years
    opex_fraction_per_year: float = OwnedPricing.opex_fraction_per_year
    gpu_tdp_w: float = field(default=math.nan, metadata={"example": 700.0})
    gpu_idle_w: float = OwnedPricing.gpu_idle_w
    server_w_per_gpu: float = OwnedPricing.server_w_per_gpu
    pue: float = OwnedPricing.pue
    usd_per_kwh: float = OwnedPricing.usd_per_kwh

    def for_gpu(self, rent_usd_per_gpu_hour: float, tdp_w: float) -> PricingConfig:
        """These prices with the GPU's defaults in place of the unset ones (a profile without a
        rent gets cost.GENERIC_USD_PER_GPU_HOUR, one without a TDP, such as a calibrated CPU,
        OwnedPricing's 700 W)."""
        rent = rent_usd_per_gpu_hour or GENERIC_USD_PER_GPU_HOUR
        tdp = tdp_w if tdp_w > 0 else OwnedPricing.gpu_tdp_w  # 0: the profile does not know
        return dataclasses.replace(
            self,
            usd_per_gpu_hour=rent if math.isnan(self.usd_per_gpu_hour) else self.usd_per_gpu_hour,
            gpu_tdp_w=tdp if math.isnan(self.gpu_tdp_w) else self.gpu_tdp_w,
        )

    def build(self, where: str) -> RentedPricing | OwnedPricing:
        """The cost model; its own checks refuse negative prices and the like."""
        if self.kind not in PRICING_KINDS:
            raise UserError(f"{where}: kind = {self.kind!r}; use 'rented' or 'owned'")
        cls = RentedPricing if self.kind == "rented" else OwnedPricing
        names = [f.name for f in dataclasses.fields(cls)]
        try:
            return cls(**{n: getattr(self, n) for n in names})
        except UserError as err:
            raise UserError(f"{where}: {err}") from None


@dataclass(frozen=True)
class AutoscaleConfig:
    """Replicas follow the load between min and max. A new replica costs money from the moment
    it is asked for and serves only after `provisioning_delay_s` (GPU acquisition + model load);
    a replica is removed (drained first) only `cooldown_s` after the last change."""

    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 8
    metric: str = "utilisation"  # or "queued_tokens"
    target: float = 0.7  # utilisation: requests / batch slots; queued_tokens: per replica
    provisioning_delay_s: float = 300.0
    cooldown_s: float = 600.0
    interval_s: float = 15.0  # how often the autoscaler looks


# vLLM's default KV block (tokens); the sglang batcher's `page_size` replaces it.
DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True)
class PoolConfig:
    name: str = "default"
    gpu: str = "h100-sxm"
    tp: int = 1
    replicas: int | str = field(default=AUTO, metadata={"accepts": (int, str)})  # or "auto"
    engine: str = ""  # engine preset of overheads; empty: the GPU profile's default
    gpu_memory_utilization: float = 0.9
    block_size: int = DEFAULT_BLOCK_SIZE  # a batcher with a page_size (sglang) uses that
    batcher: PolicyConfig = field(default_factory=lambda: PolicyConfig("vllm"))
    pricing: PricingConfig = field(default_factory=PricingConfig)
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)

    def __post_init__(self) -> None:
        if isinstance(self.replicas, str) and self.replicas != AUTO:
            raise UserError(f'pool {self.name!r}: replicas = {self.replicas!r}: a count or "auto"')


@dataclass(frozen=True)
class LimitConfig:
    """One rate limit: for a tenant ("*": every tenant without its own entry) or a tier."""

    tenant: str = ""
    tier: str = ""
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int = RetryPolicy.max_retries
    base_backoff_s: float = RetryPolicy.base_backoff_s
    max_backoff_s: float = RetryPolicy.max_backoff_s


@dataclass(frozen=True)
class GatewayConfig:
    latency_s: float = 0.0  # auth + tokenisation, added to every request's TTFT
    unknown_tier: str = "default"  # trace tiers missing from [[tiers]]: "default" or "reject"
    default_tier: str = "standard"  # what unknown tiers are served (and billed) as
    deferred_max_utilisation: float = 0.5  # release deferred work while the pool is below
    deferred_margin: float = 0.25  # force release when this share of the deadline is left
    tick_s: float = 1.0  # how often deferred work is looked at
    retries: RetryConfig = field(default_factory=RetryConfig)
    limits: tuple[LimitConfig, ...] = field(default=(), metadata={"item": LimitConfig})


DEFAULT_TIERS = (Tier("standard"),)


@dataclass(frozen=True)
class Scenario:
    seed: int = 0
    interval_s: float = 10.0
    model: ModelConfig = field(default_factory=ModelConfig)
    balancer: PolicyConfig = field(default_factory=lambda: PolicyConfig("least-requests"))
    pools: tuple[PoolConfig, ...] = field(default=(PoolConfig(),), metadata={"item": PoolConfig})
    tiers: tuple[Tier, ...] = field(default=DEFAULT_TIERS, metadata={"item": Tier})
    gateway: GatewayConfig = field(default_factory=GatewayConfig)

    def __post_init__(self) -> None:
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise UserError(f"interval_s = {self.interval_s} must be a finite number > 0")
        if not self.pools:
            raise UserError("a scenario needs at least one [[pools]] table")
        names = [p.name for p in self.pools]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UserError(f"pool name {sorted(dup)[0]!r} is used twice; give each pool its own")


def load_scenario(path: str | Path | None) -> Scenario:
    """Read a scenario file (None: the defaults), refusing unknown keys and wrong types."""
    if path is None:
        return validate(Scenario())
    return validate(scenario_from_dict(read_toml(path), str(path)))


def scenario_from_dict(doc: dict[str, Any], where: str = "scenario") -> Scenario:
    return build_config(Scenario, doc, where)


def validate(scenario: Scenario) -> Scenario:
    """Check the plugin names and their settings now, before any work is done."""
    if scenario.model.sampling not in SAMPLING_MODES:
        raise UserError(
            f"[model] sampling = {scenario.model.sampling!r}; "
            f"use one of {', '.join(SAMPLING_MODES)}"
        )
    balancer_cls = balancer_class(scenario.balancer.policy)
    build_settings(
        balancer_cls.Settings, scenario.balancer.settings, f"balancer {scenario.balancer.policy!r}"
    )
    for pool in scenario.pools:
        where = f"pool {pool.name!r}"
        if pool.tp < 1:
            raise UserError(f"{where}: tp = {pool.tp} must be >= 1")
        if pool.replicas != AUTO and pool.replicas < 1:
            raise UserError(f"{where}: replicas = {pool.replicas} must be >= 1")
        cls = batcher_class(pool.batcher.policy)
        batcher = cls(build_settings(cls.Settings, pool.batcher.settings, f"{where} batcher"))
        page = getattr(batcher, "page_size", None)  # a batcher whose page is the KV block
        if page is not None and pool.block_size not in (page, DEFAULT_BLOCK_SIZE):
            raise UserError(
                f"{where}: block_size = {pool.block_size} but the {pool.batcher.policy} "
                f"batcher's page_size = {page} is its KV block; set page_size in the batcher "
                "table and drop block_size"
            )
        # The GPU's own defaults are checked with the profile (fleet.py); stand-ins here that
        # cannot fail on their own, so an error names the user's key.
        idle = pool.pricing.gpu_idle_w
        tdp = max(OwnedPricing.gpu_tdp_w, idle) if math.isfinite(idle) else OwnedPricing.gpu_tdp_w
        pool.pricing.for_gpu(GENERIC_USD_PER_GPU_HOUR, tdp).build(f"{where} pricing")
        _check_autoscale(pool, where)
    _check_tiers(scenario)
    _check_gateway(scenario)
    return scenario


def _check_autoscale(pool: PoolConfig, where: str) -> None:
    a = pool.autoscale
    if not a.enabled:
        return
    where = f"{where} autoscale"
    if a.min_replicas < 1:
        raise UserError(f"{where}: min_replicas = {a.min_replicas} must be >= 1")
    if a.min_replicas > a.max_replicas:
        raise UserError(
            f"{where}: min_replicas = {a.min_replicas} is above max_replicas = {a.max_replicas}"
        )
    if a.metric not in AUTOSCALE_METRICS:
        raise UserError(f"{where}: metric = {a.metric!r}; use {' or '.join(AUTOSCALE_METRICS)}")
    if not a.target > 0:
        raise UserError(f"{where}: target = {a.target} must be > 0")
    for key in ("provisioning_delay_s", "cooldown_s"):
        if not getattr(a, key) >= 0:
            raise UserError(f"{where}: {key} = {getattr(a, key)} must be >= 0")
    if not a.interval_s > 0:
        raise UserError(f"{where}: interval_s = {a.interval_s} must be > 0")
    if pool.replicas != AUTO and not a.min_replicas <= pool.replicas <= a.max_replicas:
        raise UserError(
            f"pool {pool.name!r}: replicas = {pool.replicas} is outside autoscale "
            f"[{a.min_replicas}, {a.max_replicas}]; it is the starting count"
        )


def _check_tiers(scenario: Scenario) -> None:
    names = [t.name for t in scenario.tiers]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserError(f"tier name {sorted(dup)[0]!r} is used twice; give each tier its own")
    if not scenario.tiers:
        raise UserError("[[tiers]] is empty; leave it out for the default 'standard' tier")
    pools = [p.name for p in scenario.pools]
    for tier in scenario.tiers:
        for name in tier.pools:
            if name not in pools:
                raise UserError(
                    f"tier {tier.name!r}: pool {name!r} is not in the scenario "
                    f"(pools: {', '.join(pools)})"
                )


def _check_gateway(scenario: Scenario) -> None:
    g = scenario.gateway
    tiers = [t.name for t in scenario.tiers]
    if g.unknown_tier not in UNKNOWN_TIER_POLICIES:
        raise UserError(f"gateway: unknown_tier = {g.unknown_tier!r}; use 'default' or 'reject'")
    if g.default_tier not in tiers:
        raise UserError(
            f"gateway: default_tier = {g.default_tier!r} is not a tier (tiers: {', '.join(tiers)})"
        )
    if not (g.latency_s >= 0 and math.isfinite(g.latency_s)):
        raise UserError(f"gateway: latency_s = {g.latency_s} must be a finite number >= 0")
    if not g.deferred_max_utilisation > 0:
        raise UserError(
            f"gateway: deferred_max_utilisation = {g.deferred_max_utilisation} must be > 0"
        )
    if not 0 <= g.deferred_margin < 1:
        raise UserError(f"gateway: deferred_margin = {g.deferred_margin} must be in [0, 1)")
    if not g.tick_s > 0:
        raise UserError(f"gateway: tick_s = {g.tick_s} must be > 0")
    RetryPolicy(**dataclasses.asdict(g.retries))
    for i, limit in enumerate(g.limits):
        where = f"gateway: limits[{i}]"
        if bool(limit.tenant) == bool(limit.tier):
            raise UserError(f'{where}: give exactly one of tenant = "name" (or "*") and tier')
        if limit.tier and limit.tier not in tiers:
            raise UserError(f"{where}: tier {limit.tier!r} is not a tier ({', '.join(tiers)})")
        try:
            RateLimit(limit.requests_per_minute, limit.tokens_per_minute)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None


def with_overrides(
    scenario: Scenario,
    *,
    model: str | None = None,
    gpu: str | None = None,
    tp: int | None = None,
    replicas: int | None = None,
    batcher: str | None = None,
    balancer: str | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    enable_prefix_caching: bool | None = None,
    seed: int | None = None,
    interval_s: float | None = None,
    unknown_tier: str | None = None,
    engine: str | None = None,
    max_model_len: int | None = None,
    usd_per_gpu_hour: float | None = None,
    client_timeout_s: float | None = None,
) -> Scenario:
    """The scenario with these settings changed (the CLI's flags); pool-level ones apply to
    every pool.

    A new batcher or balancer drops the file's settings for the old policy (they belong to
    it); a batcher setting the chosen batcher does not have is refused.
    """
    top: dict[str, Any] = {}
    if seed is not None:
        top["seed"] = seed
    if interval_s is not None:
        top["interval_s"] = interval_s
    if unknown_tier is not None:
        top["gateway"] = dataclasses.replace(scenario.gateway, unknown_tier=unknown_tier)
    if client_timeout_s is not None:  # every tier's clients
        top["tiers"] = tuple(
            dataclasses.replace(t, client_timeout_s=client_timeout_s) for t in scenario.tiers
        )
    model_changes = {"name": model, "max_model_len": max_model_len}
    model_changes = {k: v for k, v in model_changes.items() if v is not None}
    if model_changes:
        top["model"] = dataclasses.replace(scenario.model, **model_changes)
    if balancer is not None and balancer != scenario.balancer.policy:
        top["balancer"] = PolicyConfig(balancer)
    flags = {
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        "enable_prefix_caching": enable_prefix_caching,
    }
    pools = []
    for pool in scenario.pools:
        changes: dict[str, Any] = {}
        if gpu is not None:
            changes["gpu"] = gpu
        if tp is not None:
            changes["tp"] = tp
        if engine is not None:
            changes["engine"] = engine
        if replicas is not None:
            changes["replicas"] = replicas
        if usd_per_gpu_hour is not None:
            changes["pricing"] = dataclasses.replace(
                pool.pricing, usd_per_gpu_hour=usd_per_gpu_hour
            )
        policy = pool.batcher
        if batcher is not None and batcher != policy.policy:
            policy = PolicyConfig(batcher)
        settings = dict(policy.settings)
        known = {f.name for f in dataclasses.fields(batcher_class(policy.policy).Settings)}
        for key, value in flags.items():
            if value is None:
                continue
            if key not in known:
                raise SettingError(
                    key,
                    f"{key} does not apply to the {policy.policy!r} batcher "
                    f"(its settings: {', '.join(sorted(known))})",
                )
            settings[key] = value
        changes["batcher"] = PolicyConfig(policy.policy, settings)
        pools.append(dataclasses.replace(pool, **changes))
    return validate(dataclasses.replace(scenario, pools=tuple(pools), **top))


def scenario_to_dict(scenario: Scenario) -> dict[str, Any]:
    """The scenario as a TOML-ready table (policy settings flattened back into their tables)."""

    def policy(p: PolicyConfig) -> dict[str, Any]:
        return {"policy": p.policy, **p.settings}

    return {
        "seed": scenario.seed,
        "interval_s": scenario.interval_s,
        "model": dataclasses.asdict(scenario.model),
        "balancer": policy(scenario.balancer),
        "pools": [
            {
                **{
                    f.name: getattr(p, f.name)
                    for f in dataclasses.fields(p)
                    if f.name not in ("batcher", "pricing", "autoscale")
                },
                # Prices left to the GPU (NaN until resolved) are left out: unset, as read.
                "pricing": {
                    k: v
                    for k, v in dataclasses.asdict(p.pricing).items()
                    if not (isinstance(v, float) and math.isnan(v))
                },
                "autoscale": dataclasses.asdict(p.autoscale),
                "batcher": policy(p.batcher),
            }
            for p in scenario.pools
        ],
        "tiers": [{**dataclasses.asdict(t), "pools": list(t.pools)} for t in scenario.tiers],
        "gateway": {
            **{
                f.name: getattr(scenario.gateway, f.name)
                for f in dataclasses.fields(GatewayConfig)
                if f.name not in ("retries", "limits")
            },
            "retries": dataclasses.asdict(scenario.gateway.retries),
            "limits": [dataclasses.asdict(lim) for lim in scenario.gateway.limits],
        },
    }
