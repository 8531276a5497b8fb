"""The event loop: arrivals streamed from the trace, replica events from one heap.

Events are processed in time order. At equal times arrivals come first (so requests arriving
together share a step), then replicas by index; each replica keeps a version number so an event
superseded by a later decision is skipped. A run is a pure function of its inputs and seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from heapq import heappop, heappush

import pyarrow as pa

from tokenfleet.replay.replica import Replica, Seq

TRACE_COLUMNS = [
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "request_id",
    "tenant",
    "tier",
    "session_id",
]
TOO_LONG = "too_long"  # status of a request whose prompt + output cannot fit in the KV cache
FLUSH_ROWS = 65_536
PROGRESS_EVERY = 4096


def simulate(
    batches: Iterable[pa.RecordBatch],
    replicas: list[Replica],
    balancer,
    finished: list[Seq],
    write_requests: Callable[[list[Seq]], None],
    write_timeline: Callable[[list], None],
    interval_s: float,
    progress: Callable[[float], None] | None = None,
) -> None:
    """Replay the batches through the fleet; records go out through the two writers.

    `finished` is the list the replicas append finished requests to; it is flushed through
    `write_requests` every FLUSH_ROWS rows. Timeline rows are emitted once every replica has
    moved past their interval.
    """
    heap: list = []
    pick = balancer.pick
    timeline = _TimelineEmitter(replicas, interval_s, write_timeline)
    next_emit = interval_s
    row = 0
    for batch in batches:
        arrivals = batch.column("arrival_s").to_numpy().tolist()
        prompts = batch.column("prompt_tokens").to_numpy().tolist()
        outputs = batch.column("output_tokens").to_numpy().tolist()
        ids = batch.column("request_id").to_pylist()
        tenants = batch.column("tenant").to_pylist()
        tiers = batch.column("tier").to_pylist()
        sessions = batch.column("session_id").to_pylist()
        for i in range(len(arrivals)):
            now = arrivals[i]
            while heap and heap[0][0] < now:
                t, r, version = heappop(heap)
                rep = replicas[r]
                if version == rep.version:
                    nt = rep.on_event(t)
                    if nt is not None:
                        heappush(heap, (nt, r, version))
            if now >= next_emit:
                timeline.emit(now)
                next_emit = (int(now // interval_s) + 1) * interval_s
                if progress is not None:
                    progress(now)
            seq = Seq(row, now, prompts[i], outputs[i], ids[i], tenants[i], tiers[i], sessions[i])
            row += 1
            r = pick(seq, now)
            rep = replicas[r]
            if seq.prompt_tokens + seq.output_tokens > rep.max_request_tokens:
                seq.replica = r
                seq.status = TOO_LONG
                finished.append(seq)
                continue
            nt = rep.on_arrival(seq, now)
            if nt is not None:
                heappush(heap, (nt, r, rep.version))
            if len(finished) >= FLUSH_ROWS:
                write_requests(finished)
                finished.clear()
    while heap:
        t, r, version = heappop(heap)
        rep = replicas[r]
        if version == rep.version:
            nt = rep.on_event(t)
            if nt is not None:
                heappush(heap, (nt, r, version))
            if t >= next_emit:
                timeline.emit(t)
                next_emit = (int(t // interval_s) + 1) * interval_s
                if progress is not None:
                    progress(t)
    write_requests(finished)
    finished.clear()
    timeline.emit(float("inf"))


class _TimelineEmitter:
    """Writes interval rows (all replicas, in interval then replica order) once they are final."""

    def __init__(self, replicas: list[Replica], interval_s: float, write: Callable) -> None:
        self.replicas = replicas
        self.interval_s = interval_s
        self.write = write
        self.done = 0  # intervals before this one are written

    def emit(self, now: float) -> None:
        reps = self.replicas
        horizon = min(now, min(rep.busy_since() for rep in reps))
        if horizon == float("inf"):
            last = max((max(rep.acc) for rep in reps if rep.acc), default=self.done - 1)
            limit = last + 1
        else:
            limit = int(horizon // self.interval_s)
            for rep in reps:
                rep.settle(limit * self.interval_s)
        rows = []
        for iv in range(self.done, limit):
            for rep in reps:
                acc = rep.acc.pop(iv, None)
                rows.append((iv, rep.index, acc or [0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0]))
        self.done = max(self.done, limit)
        for rep in reps:
            rep.cur_iv = -1  # its cached row may have been written out
        self.write(rows)
