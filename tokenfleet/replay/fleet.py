"""The fleet a scenario describes: per pool, a StepTime, a memory plan and its replicas.

A pool whose replica count is "auto" is sized to carry the trace's mean rate at about 70% of an
estimated capacity (prefill of the mean prompt plus the mean output decoded at a moderate batch),
so a default run is loaded but not overloaded. An autoscaled pool starts there (clamped to its
bounds) and has its maximum of replicas created, the rest unprovisioned.

Tiers are routed to their pools by one Router per distinct set of pools. The gateway (a
pass-through when the scenario asks nothing of it), the autoscalers and the event queue their
timers go to are built here too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from tokenfleet.errors import SettingError, UserError, notify
from tokenfleet.hardware.profile import load_profile
from tokenfleet.models import ModelSpec, get_model
from tokenfleet.perf.memory import plan_memory
from tokenfleet.perf.steptime import StepTime
from tokenfleet.replay.autoscale import Autoscaler
from tokenfleet.replay.balancer import Router
from tokenfleet.replay.batcher import make_batcher
from tokenfleet.replay.cost import cost_rates
from tokenfleet.replay.gateway import Gateway, needs_gateway
from tokenfleet.replay.kvcache import KVCache
from tokenfleet.replay.loop import EventQueue
from tokenfleet.replay.records.timeline import ReplicaTimeline
from tokenfleet.replay.replica import Replica
from tokenfleet.replay.scenario import AUTO, PoolConfig, PricingConfig, Scenario

TARGET_UTILISATION = 0.7
SIZING_BATCH = 32  # decode batch assumed when estimating a replica's capacity
# Sizing clips each request's lengths at this percentile, so that a handful of huge requests
# cannot size the fleet (one 10^9-token output asked for 44,551 replicas); it warns when the
# clipped tokens are more than DOMINANT_SHARE of the trace's.
CLIP_PERCENTILE = 99.9
DOMINANT_SHARE = 0.05


@dataclass(frozen=True)
class TraceLengths:
    """What the trace holds for sizing and caching: its request count, span, every request's
    lengths, and the tokens per prefix-hash block (None: no prefix hashes)."""

    requests: int
    span_s: float
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_block_size: int | None = None


@dataclass(frozen=True)
class TraceStats:
    """What sizing needs from a trace: its rate and mean lengths."""

    requests: int
    span_s: float
    mean_prompt_tokens: float
    mean_output_tokens: float

    @property
    def rate_per_s(self) -> float:
        return self.requests / self.span_s if self.span_s > 0 else float(self.requests)


@dataclass
class Fleet:
    """The replicas of every pool, what they cost, and the parts in front of them."""

    replicas: list[Replica] = field(default_factory=list)
    outstanding: list[int] = field(default_factory=list)  # requests queued or running, each
    ended: list = field(default_factory=list)  # ended requests, until the loop writes them
    pools: list[dict] = field(default_factory=list)  # name, gpu, tp, replicas, ... per pool
    pricing: dict = field(default_factory=dict)  # pool name -> RentedPricing | OwnedPricing
    rates: list = field(default_factory=list)  # cost.CostRates of each replica
    billers: list = field(default_factory=list)  # on demand: seconds billed for a span
    events: EventQueue = field(default_factory=EventQueue)
    gateway: Gateway | None = None
    autoscalers: dict = field(default_factory=dict)  # pool name -> Autoscaler
    max_model_len: int | None = None  # longest prompt + output served (None: the KV's)

    @property
    def gpus(self) -> int:
        return sum(p["replicas"] * p["tp"] for p in self.pools)

    @property
    def pool_of(self) -> list[str]:
        """Pool name of each replica."""
        return [r.pool for r in self.replicas]

    @property
    def kv_blocks(self) -> list[int]:
        """KV capacity of each replica."""
        return [r.kv.capacity_blocks for r in self.replicas]


def sizing_stats(lengths: TraceLengths, max_request_tokens: int, pool: str) -> TraceStats:
    """The rate and mean lengths a pool is sized by: requests it cannot serve (prompt + output
    over its context or KV cache: they end as too_long) left out, and each length clipped at
    the CLIP_PERCENTILE-th percentile, so that one absurd request moves the count by at most
    one replica. Says so (a Notice) when either changes the estimate much."""
    prompt, output = lengths.prompt_tokens, lengths.output_tokens
    fits = prompt.astype(np.int64) + output <= max_request_tokens
    refused = int(prompt.size - fits.sum())
    if refused:
        notify(
            f"pool {pool!r}: {refused:,} request{'s' * (refused != 1)} longer than "
            f"{max_request_tokens:,} tokens (prompt + output) left out of its sizing; "
            "they will end as too_long here"
        )
    prompt, output = prompt[fits], output[fits]
    if prompt.size == 0:
        return TraceStats(0, lengths.span_s, 0.0, 0.0)
    clipped = [
        np.minimum(x, np.percentile(x, CLIP_PERCENTILE, method="lower")) for x in (prompt, output)
    ]
    total = float(prompt.sum(dtype=np.int64) + output.sum(dtype=np.int64))
    kept = float(sum(c.sum(dtype=np.float64) for c in clipped))
    if total > 0 and 1 - kept / total > DOMINANT_SHARE:
        notify(
            f"pool {pool!r}: {1 - kept / total:.0%} of the trace's tokens lie beyond the "
            f"{CLIP_PERCENTILE:g}th-percentile prompt or output length; its size counts those "
            "few requests at that length (set replicas to a count to choose)"
        )
    return TraceStats(
        int(prompt.size), lengths.span_s, float(clipped[0].mean()), float(clipped[1].mean())
    )


def replica_seconds_per_request(step_time: StepTime, stats: TraceStats, max_seqs: int) -> float:
    """Estimated GPU time one mean request takes on one replica."""
    p = max(stats.mean_prompt_tokens, 1.0)
    o = stats.mean_output_tokens
    b = max(1, min(max_seqs, SIZING_BATCH))
    prefill = step_time.step_s(round(p), p * (p + 1) / 2, 0, 0)
    decode = step_time.step_s(0, 0.0, b, round(b * (p + o / 2))) / b
    return prefill + o * decode


def context_limit(model: ModelSpec, max_model_len: int) -> int | None:
    """The longest prompt + output served: `max_model_len` if set, else the model's context
    (None when unknown). As vLLM (vllm/config.py, `_get_and_verify_max_len`), a length above
    the model's is refused; vLLM then refuses any request whose prompt plus max_tokens exceeds
    it, which is the too_long status here."""
    if max_model_len < 0:
        raise SettingError(
            "max_model_len", f"max_model_len = {max_model_len} must be >= 0 (0: the model's)"
        )
    known = model.max_position_embeddings
    if max_model_len and known and max_model_len > known:
        raise SettingError(
            "max_model_len",
            f"max_model_len = {max_model_len:,} exceeds {model.name}'s context of {known:,} "
            "tokens (its max_position_embeddings); choose a length up to it",
        )
    return max_model_len or known or None


def with_sampling(model: ModelSpec, sampling: str) -> ModelSpec:
    """The model with the scenario's `[model] sampling` ("filtered" or "plain", checked by
    scenario.validate) in place of its generation config's; "auto" keeps that."""
    if sampling == AUTO:
        return model
    return dataclasses.replace(model, filtered_sampling=sampling == "filtered")


def build_fleet(
    scenario: Scenario, lengths: TraceLengths, step_by_step: bool = False
) -> tuple[Fleet, Scenario]:
    """Replicas for every pool (auto counts resolved), the routing in front of them, and the
    resolved scenario.

    Raises UserError (from the model, profile or memory plan) before anything is simulated.
    """
    model = with_sampling(get_model(scenario.model.name), scenario.model.sampling)
    limit = context_limit(model, scenario.model.max_model_len)
    fleet = Fleet(max_model_len=limit)
    resolved = []
    indices: dict[str, list[int]] = {}
    n_auto = sum(1 for p in scenario.pools if p.replicas == AUTO)
    for pool in scenario.pools:
        count, indices[pool.name], prices = _add_pool(
            fleet, pool, model, scenario, lengths, limit, n_auto, step_by_step
        )
        if limit is not None:  # longer requests end as too_long (loop.py's dispatch)
            for i in indices[pool.name]:
                rep = fleet.replicas[i]
                rep.max_request_tokens = min(rep.max_request_tokens, limit)
        resolved.append(dataclasses.replace(pool, replicas=count, pricing=prices))
    resolved_scenario = dataclasses.replace(scenario, pools=tuple(resolved))
    _route(fleet, resolved_scenario, indices)
    return fleet, resolved_scenario


def _add_pool(
    fleet: Fleet,
    pool: PoolConfig,
    model: ModelSpec,
    scenario: Scenario,
    lengths: TraceLengths,
    limit: int | None,
    n_auto: int,
    step_by_step: bool,
) -> tuple[int, list[int], PricingConfig]:
    """Add a pool's replicas (an autoscaled pool's maximum); return its starting count, the
    replicas' indices and its prices with the GPU's defaults filled in."""
    dtype = scenario.model.dtype
    kv_dtype = scenario.model.kv_dtype or None
    gpu = load_profile(pool.gpu)
    if gpu.measured_on_cpu:  # a CPU profile is legitimate input, but never silently a GPU
        notify(f"pool {pool.name!r}: gpu = {pool.gpu} describes a CPU (calibrated with NumPy)")
    step_time = StepTime(model, gpu, pool.tp, dtype, kv_dtype, pool.engine or None)
    batcher_table = (pool.batcher.policy, pool.batcher.settings, f"pool {pool.name!r} batcher")
    # A batcher with its own KV page size (sglang's page_size) sets the pool's block size.
    policy = make_batcher(*batcher_table)
    block_size = getattr(policy, "page_size", None) or pool.block_size
    if any(t.client_timeout_s for t in scenario.tiers) and not hasattr(policy, "remove"):
        raise UserError(
            f"pool {pool.name!r}: batcher {pool.batcher.policy!r} has no remove(queue, seq), "
            "which client timeouts need; set client_timeout_s = 0 in [[tiers]]"
        )
    plan = plan_memory(
        model, gpu, pool.tp, dtype, kv_dtype, pool.gpu_memory_utilization, block_size
    )
    count = pool.replicas
    sizing = None
    if count == AUTO:
        max_seqs = getattr(
            make_batcher(pool.batcher.policy, pool.batcher.settings), "max_num_seqs", 256
        )
        longest = min(plan.kv_blocks * plan.block_size, limit or math.inf)
        stats = sizing_stats(lengths, longest, pool.name)
        per_request = replica_seconds_per_request(step_time, stats, max_seqs)
        load = stats.rate_per_s / n_auto * per_request
        count = max(1, math.ceil(load / TARGET_UTILISATION))
        sizing = {"target_load": TARGET_UTILISATION, "estimated_load": load / count}
    scale = pool.autoscale
    if scale.enabled:
        count = min(scale.max_replicas, max(scale.min_replicas, count))
    prices = pool.pricing.for_gpu(gpu.rent_usd_per_gpu_hour, gpu.tdp_w)
    if prices.kind == "owned" and math.isnan(pool.pricing.gpu_tdp_w) and gpu.tdp_w <= 0:
        notify(
            f"pool {pool.name!r}: profile {gpu.name} has no TDP; owned power assumes "
            f"gpu_tdp_w = {prices.gpu_tdp_w:g} (set it under [pools.pricing])"
        )
    price = fleet.pricing[pool.name] = prices.build(f"pool {pool.name!r} pricing")
    rate = cost_rates(price, pool.tp)
    biller = getattr(price, "billed_seconds", None) if rate.provisioned_usd_per_s else None
    first = len(fleet.replicas)
    members = list(range(first, first + (scale.max_replicas if scale.enabled else count)))
    new_cache = getattr(make_batcher(*batcher_table), "new_prefix_cache", None)
    caching = False
    for i in members:
        fleet.outstanding.append(0)
        prefix = (
            new_cache(plan.kv_blocks, plan.block_size, lengths.prefix_block_size)
            if new_cache
            else None
        )
        caching = prefix is not None and not getattr(prefix, "disabled", False)
        fleet.replicas.append(
            Replica(
                i,
                pool.name,
                step_time,
                KVCache(plan.kv_blocks, plan.block_size),
                make_batcher(*batcher_table),
                fleet.outstanding,
                fleet.ended,
                # An autoscaled pool's replicas beyond its start wait to be provisioned.
                ReplicaTimeline(scenario.interval_s, provisioned=i - first < count),
                step_by_step,
                pool.tp,
                prefix,
            )
        )
        fleet.rates.append(rate)
        fleet.billers.append(biller)
    fleet.pools.append(
        {
            "name": pool.name,
            "gpu": gpu.name,
            "tp": pool.tp,
            "engine": step_time.engine.name,
            "replicas": count,
            "batcher": pool.batcher.policy,
            "kv_blocks": plan.kv_blocks,
            "kv_capacity_tokens": plan.kv_capacity_tokens,
            "max_replicas": len(members),
            "max_num_seqs": slots_of(fleet.replicas[first]),
            "max_num_batched_tokens": getattr(
                fleet.replicas[first].batcher.settings, "max_num_batched_tokens", None
            ),
            "prefix_caching": caching,
            # "auto" sizing: the estimated load it aimed at and reached (README, sizing rule).
            "sizing": sizing,
            "pricing": pool.pricing.kind,
            "usd_per_gpu_hour": prices.usd_per_gpu_hour if prices.kind == "rented" else None,
            # Figures the scenario left to the GPU's defaults (summary and README say so).
            "default_prices": [
                key
                for key in ("usd_per_gpu_hour", "gpu_tdp_w")
                if math.isnan(getattr(pool.pricing, key))
                and (key == "usd_per_gpu_hour") == (prices.kind == "rented")
            ],
            "autoscaled": scale.enabled,
        }
    )
    return count, members, prices


def slots_of(replica: Replica) -> int:
    """Batch slots of a replica: its batcher's sequence cap (256 when a plugin has none)."""
    batcher = replica.batcher
    return getattr(batcher, "max_num_seqs", None) or getattr(
        getattr(batcher, "settings", None), "max_num_seqs", 256
    )


def _route(fleet: Fleet, scenario: Scenario, indices: dict[str, list[int]]) -> None:
    """Routers per set of pools a tier uses; the gateway and autoscalers if needed."""
    all_pools = tuple(p.name for p in scenario.pools)
    routers: dict[tuple, Router] = {}
    by_tier: dict[str, Router] = {}
    for tier in scenario.tiers:
        key = tuple(p for p in all_pools if not tier.pools or p in tier.pools)
        if key not in routers:
            routers[key] = Router(
                scenario.balancer.policy,
                scenario.balancer.settings,
                fleet.replicas,
                fleet.outstanding,
                scenario.seed,
            )
        by_tier[tier.name] = routers[key]
    ready = {p.name: indices[p.name][: p.replicas] for p in scenario.pools}

    def refresh(pool: str | None = None) -> None:
        for key, router in routers.items():
            if pool is None or pool in key:
                router.set_members(sorted(i for p in key for i in ready[p]))

    refresh()
    autoscaled = [p for p in scenario.pools if p.autoscale.enabled]
    gateway = Gateway(
        scenario.gateway,
        scenario.tiers,
        by_tier,
        lambda i: slots_of(fleet.replicas[i]),
        fleet.ended,
        fleet.outstanding,
        fleet.events,
        scenario.seed,
        passthrough=not needs_gateway(scenario, bool(autoscaled)),
    )
    fleet.gateway = gateway

    def active() -> bool:
        return not gateway.trace_done or gateway.pending > 0 or any(fleet.outstanding)

    for pool in autoscaled:

        def set_ready(members: list[int], name: str = pool.name) -> None:
            ready[name] = members
            refresh(name)

        fleet.autoscalers[pool.name] = Autoscaler(
            pool.autoscale,
            fleet.replicas,
            indices[pool.name],
            pool.replicas,
            slots_of(fleet.replicas[indices[pool.name][0]]),
            set_ready,
            active,
            fleet.events,
        )
