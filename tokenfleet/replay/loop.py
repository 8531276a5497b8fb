"""The event loop: arrivals streamed from the trace, replica events from one heap.

Events are processed in time order. At equal times arrivals come first (so requests arriving
together share a step), then replicas by index; each replica keeps a version number so an event
superseded by a later decision is skipped. A run is a pure function of its inputs and seed.

With a gateway (tiers, limits, deferral, autoscaling), requests enter through it, and its timed
callbacks (retries, delayed dispatch, deferral and autoscaler ticks) interleave with the
replicas' events: at equal times arrivals first, then timers, then replicas.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from heapq import heappop, heappush, heapreplace

import pyarrow as pa

from tokenfleet.replay.replica import (
    ARRIVED,
    BILLED_EXTRA,
    FINISHED,
    IN_SYSTEM,
    Replica,
    Seq,
    new_row,
)

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
# Finished requests go to the writer in batches this small, while their objects are still in the
# CPU cache (a batch of 65,536 took 50% longer to convert); it writes whole row groups.
FLUSH_ROWS = 8_192


def _request_columns(batch: pa.RecordBatch) -> tuple[list, ...]:
    """A batch's trace columns as Python lists, converted once per batch, not per request."""
    return tuple(
        batch.column(name).to_numpy().tolist()
        if name in ("arrival_s", "prompt_tokens", "output_tokens")
        else batch.column(name).to_pylist()
        for name in TRACE_COLUMNS
    )


def _flush(finished: list[Seq], write_requests: Callable, replicas: list[Replica]) -> None:
    """Hand the finished requests to the writer, and fold the replicas' arrival and finish
    times into their interval rows, so that neither grows with the length of the run."""
    write_requests(finished)
    finished.clear()
    for rep in replicas:
        rep.fold_counts()


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """The event loop allocates millions of small objects but makes no reference cycles, so the
    cyclic collector would only rescan the live requests, again and again (about 5% of the CPU
    of a long replay); reference counting still frees everything as it goes."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_cyclic_gc_paused()
def simulate(
    batches: Iterable[pa.RecordBatch],
    replicas: list[Replica],
    balancer,
    finished: list[Seq],
    write_requests: Callable[[list[Seq]], None],
    write_timeline: Callable[[list], None],
    interval_s: float,
    progress: Callable[[float], None] | None = None,
    gateway=None,
    billers: list | None = None,
) -> float:
    """Replay the batches through the fleet; records go out through the two writers.

    `finished` is the list the replicas append finished requests to; it is flushed through
    `write_requests` every FLUSH_ROWS rows. Timeline rows are emitted once every replica has
    moved past their interval. Returns the end of the run: the end of the last interval.
    """
    if gateway is not None:
        return _simulate_gateway(
            batches,
            replicas,
            gateway,
            finished,
            write_requests,
            write_timeline,
            interval_s,
            progress,
            billers,
        )
    heap: list = []
    pick = balancer.pick
    timeline = _TimelineEmitter(replicas, interval_s, write_timeline, billers, progress)
    next_emit = interval_s
    row = 0
    now = t = 0.0
    for batch in batches:
        for now, prompt, output, rid, tenant, tier, session in zip(
            *_request_columns(batch), strict=True
        ):
            while heap and heap[0][0] < now:
                t, r, version = heap[0]
                rep = replicas[r]
                if version == rep.version:
                    nt = rep.on_event(t)
                    if nt is not None:
                        heapreplace(heap, (nt, r, version))  # one sift instead of two
                        continue
                heappop(heap)
            if now >= next_emit:
                next_emit = timeline.tick(now)
            seq = Seq(row, now, prompt, output, rid, tenant, tier, session)
            row += 1
            r = pick(seq, now)
            rep = replicas[r]
            if prompt + output > rep.max_request_tokens:
                seq.replica = r
                seq.status = TOO_LONG
                finished.append(seq)
                continue
            nt = rep.on_arrival(seq, now)
            if nt is not None:
                heappush(heap, (nt, r, rep.version))
            if len(finished) >= FLUSH_ROWS:
                _flush(finished, write_requests, replicas)
    while heap:
        t, r, version = heappop(heap)
        rep = replicas[r]
        if version == rep.version:
            nt = rep.on_event(t)
            if nt is not None:
                heappush(heap, (nt, r, version))
            if t >= next_emit:
                next_emit = timeline.tick(t)
    _flush(finished, write_requests, replicas)
    return timeline.emit(float("inf"), max(now, t))


def _simulate_gateway(
    batches,
    replicas,
    gateway,
    finished,
    write_requests,
    write_timeline,
    interval_s,
    progress,
    billers,
) -> float:
    """The same loop with requests entering through the gateway and its timers interleaved."""
    heap: list = []
    timers = gateway.timers.heap
    timeline = _TimelineEmitter(replicas, interval_s, write_timeline, billers, progress)
    next_emit = interval_s
    last = 0.0

    def dispatch(seq: Seq, now: float) -> None:
        r = gateway.routers[seq.tier].pick(seq, now)
        rep = replicas[r]
        if seq.prompt_tokens + seq.output_tokens > rep.max_request_tokens:
            seq.replica = r
            seq.status = TOO_LONG
            finished.append(seq)
            return
        nt = rep.on_arrival(seq, now)
        if nt is not None:
            heappush(heap, (nt, r, rep.version))

    gateway.dispatch = dispatch

    def advance(until: float) -> None:
        """Process timers and replica events before `until`, in time order."""
        nonlocal next_emit, last
        while True:
            tt = timers[0][0] if timers else INF
            tr = heap[0][0] if heap else INF
            if tt <= tr:
                if tt >= until:
                    return
                t, _, fn, arg = heappop(timers)
                fn(t, arg)  # timers alone neither extend the run nor move the timeline on
                if len(finished) >= FLUSH_ROWS:
                    _flush(finished, write_requests, replicas)
                continue
            else:
                if tr >= until:
                    return
                t, r, version = heappop(heap)
                rep = replicas[r]
                if version != rep.version:
                    continue
                nt = rep.on_event(t)
                if nt is not None:
                    heappush(heap, (nt, r, version))
            last = t
            if t >= next_emit:
                next_emit = timeline.tick(t)
            if len(finished) >= FLUSH_ROWS:
                _flush(finished, write_requests, replicas)

    row = 0
    for batch in batches:
        for now, prompt, output, rid, tenant, tier, session in zip(
            *_request_columns(batch), strict=True
        ):
            advance(now)
            last = now
            if now >= next_emit:
                next_emit = timeline.tick(now)
            seq = Seq(row, now, prompt, output, rid, tenant, tier, session)
            row += 1
            gateway.arrive(seq, now)
            if len(finished) >= FLUSH_ROWS:
                _flush(finished, write_requests, replicas)
    gateway.trace_done = True
    advance(INF)
    _flush(finished, write_requests, replicas)
    return timeline.emit(INF, last)


INF = float("inf")


class _TimelineEmitter:
    """Writes interval rows (all replicas, in interval then replica order) once they are final.

    Each row carries the replica's provisioned seconds in the interval and the on-demand
    billing rounding of the provisioned spans that end in it (`billers[i]`: seconds billed for
    a span of replica i, None when not billed by span)."""

    def __init__(
        self,
        replicas: list[Replica],
        interval_s: float,
        write: Callable,
        billers=None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.replicas = replicas
        self.interval_s = interval_s
        self.write = write
        self.billers = billers or [None] * len(replicas)
        self.progress = progress
        self.done = 0  # intervals before this one are written

    def tick(self, now: float) -> float:
        """The run has reached `now`, past the last interval's end: write what is final, move
        the progress bar; return the next interval's end (the loops call back then)."""
        self.emit(now)
        if self.progress is not None:
            self.progress(now)
        return (int(now // self.interval_s) + 1) * self.interval_s

    def emit(self, now: float, last_s: float = 0.0) -> float:
        """Write the intervals every replica has moved past (all, when `now` is inf, up to the
        one holding `last_s` too); return the end of the last interval written."""
        reps = self.replicas
        size = self.interval_s
        horizon = min(now, min(rep.busy_since() for rep in reps))
        if horizon == INF:
            last = max((max(rep.acc) for rep in reps if rep.acc), default=self.done - 1)
            limit = max(last + 1, int(last_s // size) + 1)
            run_end = limit * size
        else:
            limit = int(horizon // size)
            run_end = INF
        rows = []
        billers = self.billers
        for iv in range(self.done, limit):
            start, end = iv * size, (iv + 1) * size
            for rep in reps:
                rep.fold_counts(end)
                acc = rep.acc.pop(iv, None) or new_row()
                # In-system integral: the requests here at its start, all through it, plus the
                # arrivals' and finishes' parts (Replica.fold_counts).
                acc[IN_SYSTEM] += rep.in_sys_n * size
                rep.in_sys_n += acc[ARRIVED] - acc[FINISHED]
                provisioned = 0.0
                for a, b in rep.spans:
                    if b == INF:
                        b = run_end
                    lo = a if a > start else start
                    hi = b if b < end else end
                    if hi > lo:
                        provisioned += hi - lo
                    billed = billers[rep.index]
                    if billed is not None and start < b <= end:
                        acc[BILLED_EXTRA] += billed(b - a) - (b - a)
                rows.append((iv, rep.index, acc, provisioned))
        self.done = max(self.done, limit)
        for rep in reps:
            rep.cur_iv = -1  # its cached row may have been written out
        self.write(rows)
        return self.done * size
