"""The fleet a scenario describes: per pool, a StepTime, a memory plan and its replicas.

A pool whose replica count is "auto" is sized to carry the trace's mean rate at about 70% of an
estimated capacity (prefill of the mean prompt plus the mean output decoded at a moderate batch),
so a default run is loaded but not overloaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from tokenfleet.calibrate.profile import load_profile
from tokenfleet.models import get_model
from tokenfleet.replay.balancer import make_balancer
from tokenfleet.replay.batcher import make_batcher
from tokenfleet.replay.kvcache import KVCache
from tokenfleet.replay.memory import plan_memory
from tokenfleet.replay.pricing import RunPricer
from tokenfleet.replay.replica import Replica
from tokenfleet.replay.scenario import AUTO, Scenario
from tokenfleet.replay.steptime import StepTime

TARGET_UTILISATION = 0.7
SIZING_BATCH = 32  # decode batch assumed when estimating a replica's capacity


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
    replicas: list[Replica]
    balancer: object
    outstanding: list[int]
    finished: list
    pools: list[dict]  # name, gpu, tp, replicas, batcher, kv_blocks per pool
    pool_of: list[str]  # pool name of each replica
    kv_blocks: list[int]  # KV capacity of each replica

    @property
    def gpus(self) -> int:
        return sum(p["replicas"] * p["tp"] for p in self.pools)


def replica_seconds_per_request(step_time: StepTime, stats: TraceStats, max_seqs: int) -> float:
    """Estimated GPU time one mean request takes on one replica."""
    p = max(stats.mean_prompt_tokens, 1.0)
    o = stats.mean_output_tokens
    b = max(1, min(max_seqs, SIZING_BATCH))
    prefill = step_time.step_s(round(p), p * (p + 1) / 2, 0, 0)
    decode = step_time.step_s(0, 0.0, b, round(b * (p + o / 2))) / b
    return prefill + o * decode


def build_fleet(
    scenario: Scenario, stats: TraceStats | None, step_by_step: bool = False
) -> tuple[Fleet, Scenario]:
    """Replicas for every pool (auto counts resolved), the balancer, and the resolved scenario.

    Raises UserError (from the model, profile or memory plan) before anything is simulated.
    """
    model = get_model(scenario.model.name)
    dtype = scenario.model.dtype
    kv_dtype = scenario.model.kv_dtype or None
    outstanding: list[int] = []
    finished: list = []
    replicas: list[Replica] = []
    pools: list[dict] = []
    resolved = []
    n_auto = sum(1 for p in scenario.pools if p.replicas == AUTO)
    for pool in scenario.pools:
        gpu = load_profile(pool.gpu)
        step_time = StepTime(model, gpu, pool.tp, dtype, kv_dtype, pool.engine or None)
        plan = plan_memory(
            model, gpu, pool.tp, dtype, kv_dtype, pool.gpu_memory_utilization, pool.block_size
        )
        count = pool.replicas
        if count == AUTO:
            max_seqs = getattr(
                make_batcher(pool.batcher.policy, pool.batcher.settings), "max_num_seqs", 256
            )
            per_request = replica_seconds_per_request(step_time, stats, max_seqs)
            load = stats.rate_per_s / n_auto * per_request
            count = max(1, math.ceil(load / TARGET_UTILISATION))
        resolved.append(dataclasses.replace(pool, replicas=count))
        pricer = RunPricer(step_time)
        for _ in range(count):
            batcher = make_batcher(
                pool.batcher.policy, pool.batcher.settings, f"pool {pool.name!r} batcher"
            )
            outstanding.append(0)
            replicas.append(
                Replica(
                    len(replicas),
                    pool.name,
                    step_time,
                    KVCache(plan.kv_blocks, plan.block_size),
                    batcher,
                    outstanding,
                    finished,
                    scenario.interval_s,
                    step_by_step,
                    pricer,
                )
            )
        pools.append(
            {
                "name": pool.name,
                "gpu": gpu.name,
                "tp": pool.tp,
                "replicas": count,
                "batcher": pool.batcher.policy,
                "kv_blocks": plan.kv_blocks,
                "kv_capacity_tokens": plan.kv_capacity_tokens,
            }
        )
    balancer = make_balancer(
        scenario.balancer.policy, scenario.balancer.settings, replicas, outstanding, scenario.seed
    )
    fleet = Fleet(
        replicas,
        balancer,
        outstanding,
        finished,
        pools,
        [r.pool for r in replicas],
        [r.kv.capacity_blocks for r in replicas],
    )
    return fleet, dataclasses.replace(scenario, pools=tuple(resolved))
