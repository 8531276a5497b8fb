"""Helpers for the replay tests: build a small fleet directly and run the engine on rows.

(No tests here; pytest collects the file and finds none.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from tokenfleet.hardware.profile import load_engine, load_profile
from tokenfleet.models import get_model
from tokenfleet.replay.balancer import Router
from tokenfleet.replay.batcher import make_batcher
from tokenfleet.replay.fleet import slots_of
from tokenfleet.replay.gateway import Gateway
from tokenfleet.replay.kvcache import KVCache
from tokenfleet.replay.loop import EventQueue, simulate
from tokenfleet.replay.records.timeline import ReplicaTimeline, Timeline
from tokenfleet.replay.replica import Replica
from tokenfleet.replay.request import RECORD_FIELDS
from tokenfleet.replay.scenario import GatewayConfig
from tokenfleet.replay.tiers import Tier

GPU = "h100-sxm"


class LinearStepTime:
    """A hand-checkable step time: fixed cost plus per-token and per-context terms."""

    def step_s(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_context_tokens):
        return (
            0.01
            + 1e-4 * prefill_tokens
            + 1e-9 * prefill_attn_pairs
            + 1e-3 * decode_seqs
            + 1e-6 * decode_context_tokens
        )

    def step_s_array(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_context_tokens):
        return np.asarray(
            self.step_s(
                np.asarray(prefill_tokens, np.float64),
                np.asarray(prefill_attn_pairs, np.float64),
                np.asarray(decode_seqs, np.float64),
                np.asarray(decode_context_tokens, np.float64),
            )
        )


def engine_only(name: str = "vllm-v1"):
    """An engine preset without its frontend terms: these tests check the engine's own
    schedule to the float, where a request starts when another finishes (the frontend's lag
    to the client has its tests in test_replay_frontend.py)."""
    return dataclasses.replace(load_engine(name), frontend_in_ms=0.0, frontend_out_ms=0.0)


def real_step_time(model: str = "llama-3.1-8b"):
    from tokenfleet.perf.steptime import StepTime

    return StepTime(get_model(model), load_profile(GPU), engine=engine_only())


def batches_of(rows: list[tuple], batch_rows: int = 7) -> list[pa.RecordBatch]:
    """rows: (arrival_s, prompt_tokens, output_tokens[, session_id[, tier[, tenant[,
    prefix_hashes]]]]) sorted by arrival."""
    out = []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        out.append(
            pa.RecordBatch.from_pydict(
                {
                    "arrival_s": pa.array([r[0] for r in chunk], pa.float64()),
                    "prompt_tokens": pa.array([r[1] for r in chunk], pa.int32()),
                    "output_tokens": pa.array([r[2] for r in chunk], pa.int32()),
                    "request_id": pa.array(range(start, start + len(chunk)), pa.int64()),
                    "tenant": pa.array([r[5] if len(r) > 5 else None for r in chunk], pa.string()),
                    "tier": pa.array(
                        [r[4] if len(r) > 4 else "standard" for r in chunk], pa.string()
                    ),
                    "session_id": pa.array(
                        [r[3] if len(r) > 3 else None for r in chunk], pa.int64()
                    ),
                    "prefix_hashes": pa.array(
                        [r[6] if len(r) > 6 else None for r in chunk], pa.list_(pa.int64())
                    ),
                }
            )
        )
    return out


def run_rows(
    rows: list[tuple],
    *,
    batcher: str = "vllm",
    settings: dict | None = None,
    balancer: str = "round-robin",
    balancer_settings: dict | None = None,
    replicas: int = 1,
    kv_blocks: int = 100_000,
    block_size: int = 16,
    step_time=None,
    step_by_step: bool = False,
    seed: int = 0,
    interval_s: float = 1.0,
    tiers: tuple | None = None,
    gateway=None,
    prefix_block_size: int | None = None,
):
    """Run the loop on `rows`; return (ended requests by row, timeline rows, replicas).

    With `gateway` (a GatewayConfig) and `tiers`, requests pass a gateway whose tiers all route
    to the whole fleet; without, the gateway is a pass-through."""
    step_time = step_time or LinearStepTime()
    outstanding: list[int] = []
    ended: list = []
    reps = []
    for i in range(replicas):
        outstanding.append(0)
        policy = make_batcher(batcher, settings or {})
        new_cache = getattr(policy, "new_prefix_cache", None)
        prefix = new_cache(kv_blocks, block_size, prefix_block_size) if new_cache else None
        reps.append(
            Replica(
                i,
                "p",
                step_time,
                KVCache(kv_blocks, block_size),
                policy,
                outstanding,
                ended,
                ReplicaTimeline(interval_s),
                step_by_step,
                1,
                prefix,
            )
        )
    router = Router(balancer, balancer_settings or {}, reps, outstanding, seed)
    router.set_members(list(range(replicas)))
    tiers = tiers or (Tier("standard"),)
    events = EventQueue()
    gw = Gateway(
        gateway or GatewayConfig(),
        tiers,
        {t.name: router for t in tiers},
        lambda i: slots_of(reps[i]),
        ended,
        outstanding,
        events,
        seed,
        passthrough=gateway is None,
    )
    written: list = []
    timeline = _Rows()
    simulate(
        batches_of(rows),
        reps,
        gw,
        events,
        Timeline(reps, interval_s, timeline),
        ended,
        written.extend,
    )
    return sorted(written, key=lambda s: s.row), timeline.rows, reps


class _Rows:
    """A timeline writer that keeps the rows: (interval, replica, IntervalRow, provisioned)."""

    def __init__(self) -> None:
        self.rows: list = []

    def write(self, rows: list, run_end: float) -> None:
        self.rows.extend(rows)


def record(seq) -> tuple:
    """Everything requests.parquet is built from about a request, with its row."""
    return (seq.row, *(getattr(seq, name) for name in RECORD_FIELDS))


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))
