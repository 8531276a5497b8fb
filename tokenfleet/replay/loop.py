"""The event loop: arrivals streamed from the trace, timers and replica events from one heap.

Events are processed in time order, with one ordering key: (time, kind, tie-break). At equal
times the trace's arrivals come first (so requests arriving together share a step), then the
gateway's and autoscalers' timers (retries, delayed dispatch, deferral and autoscaler ticks) in
the order they were set, then replicas by index. Each replica keeps a version number, so an
event superseded by a later decision is skipped. A run is a pure function of its inputs and
seed.

Every request enters through the gateway, with its tier resolved once (an unknown trace tier
is the scenario's default tier); a gateway with nothing to do is a pass-through to the
routers.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from heapq import heappop, heappush, heapreplace
from itertools import chain, repeat

import pyarrow as pa

from tokenfleet.replay.records.timeline import Timeline
from tokenfleet.replay.replica import Replica
from tokenfleet.replay.request import ROUTING, TOO_LONG, WAITING, Seq
from tokenfleet.replay.timeouts import ClientTimeouts

TRACE_COLUMNS = [
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "request_id",
    "tenant",
    "tier",
    "session_id",
    "prefix_hashes",
]
# Finished requests go to the writer in batches this small, while their objects are still in
# the CPU cache (a batch of 65,536 took 50% longer to convert); it writes whole row groups.
FLUSH_ROWS = 8_192
TIMER, REPLICA = 0, 1  # the kinds of heap entry, in their order at equal times
INF = float("inf")
END_OF_TRACE = (INF, 0, 0, None, None, None, None, None)  # a last "arrival", after every event


class EventQueue:
    """The loop's heap: (time, TIMER, order set, (callback, arg)) and (time, REPLICA, replica
    index, version). The gateway and the autoscalers set timers here."""

    def __init__(self) -> None:
        self.heap: list = []
        self.count = 0

    def push_timer(self, t: float, fn: Callable[[float, object], None], arg=None) -> None:
        """Call `fn(t, arg)` at `t` (after the arrivals at `t`, before the replicas). From
        inside a replica's event at `now`, `t` must be later than `now`: `simulate` replaces
        the heap's top (that event) with the replica's next one."""
        self.count += 1
        heappush(self.heap, (t, TIMER, self.count, (fn, arg)))

    def push_replica(self, t: float, rep: Replica) -> None:
        """The replica's next event is at `t` (the loop's own pushes on the hot path write
        the entry inline)."""
        heappush(self.heap, (t, REPLICA, rep.index, rep.version))


def _request_columns(batch: pa.RecordBatch) -> tuple[Iterable, ...]:
    """A batch's trace columns as Python lists, converted once per batch, not per request
    (the prefix hashes row by row, see `_hash_lists`)."""
    return tuple(
        batch.column(name).to_numpy().tolist()
        if name in ("arrival_s", "prompt_tokens", "output_tokens")
        else _hash_lists(batch.column(name))
        if name == "prefix_hashes"
        else batch.column(name).to_pylist()
        for name in TRACE_COLUMNS
    )


def _hash_lists(column: pa.Array) -> Iterable[list[int] | None]:
    """Each row's prefix ids as a list of ints, made as the row is read: a batch's ids made
    at once weigh about 36 bytes each as Python ints and list slots (8,192 Mooncake prompts
    10x longer, 300 ids each: 88 MB, for requests mostly not yet in flight); as one NumPy
    array, 8."""
    if column.null_count == len(column):  # a trace without hashes: no per-row work
        return repeat(None, len(column))
    ids = column.values.to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy().tolist()
    valid = column.is_valid().to_numpy(zero_copy_only=False).tolist()
    return (
        ids[a:b].tolist() if ok else None
        for a, b, ok in zip(offsets, offsets[1:], valid, strict=False)
    )


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


def _flush(ended: list[Seq], write_requests: Callable, timeline: Timeline) -> None:
    """Hand the ended requests to the writer, and fold arrival and finish times into their
    interval rows, so that neither grows with the length of the run."""
    write_requests(ended)
    ended.clear()
    timeline.fold_counts()


def _dispatcher(gateway, replicas: list[Replica], events: EventQueue, ended: list[Seq]):
    """`dispatch(seq, now)`: send an admitted request to a replica of its tier's pools (or end
    it as too long for that replica's KV cache), through the engine's frontend where it takes
    time (`Replica.frontend_in_s`)."""
    heap = events.heap
    routers = gateway.routers
    # A pass-through gateway has one router for every tier, never rebuilt: no lookup per request.
    only = next(iter(routers.values())) if gateway.passthrough else None

    def dispatch(seq: Seq, now: float) -> None:
        seq.routed_s = now
        pick = (only or routers[seq.tier]).pick  # an attribute read, then a call (not a method)
        r = pick(seq, now)
        rep = replicas[r]
        if seq.prompt_tokens + seq.output_tokens > rep.max_request_tokens:
            seq.replica = r
            seq.status = TOO_LONG
            ended.append(seq)
            return
        # One more request at r, as the balancers count, from its routing on (written out here
        # and in Replica._finish, not as a method: a call per arrival and per finish was 1.5%
        # of a replay's instructions).
        rep.outstanding[r] += 1
        for view, i in rep.views:
            view[i] += 1
        for index, i in rep.load_indexes:
            index.up(i)
        if rep.frontend_in_s:  # the engine's frontend holds it first (HTTP, tokenisation)
            seq.replica = r
            seq.status = ROUTING
            events.push_timer(now + rep.frontend_in_s, reach_engine, seq)
            return
        nt = rep.on_arrival(seq, now)
        if nt is not None:
            heappush(heap, (nt, REPLICA, r, rep.version))

    def reach_engine(now: float, seq: Seq) -> None:
        if seq.status is not ROUTING:  # its client gave up on the way (replay/timeouts.py)
            return
        seq.status = WAITING
        r = seq.replica
        rep = replicas[r]
        nt = rep.on_arrival(seq, now)
        if nt is not None:
            heappush(heap, (nt, REPLICA, r, rep.version))

    return dispatch


@_cyclic_gc_paused()
def simulate(
    batches: Iterable[pa.RecordBatch],
    replicas: list[Replica],
    gateway,
    events: EventQueue,
    timeline: Timeline,
    ended: list[Seq],
    write_requests: Callable[[list[Seq]], None],
) -> float:
    """Replay the batches through the fleet; return the end of the run (its last event).

    Requests that end (in the replicas, the gateway, the too-long check) are appended to
    `ended`, which goes to `write_requests` every FLUSH_ROWS rows; timeline rows are written
    once every replica has moved past their interval. Where both are checked is kept as it
    always was, since those points decide the files' row groups and the rounding of the
    in-system sums: after every event when the gateway acts between arrivals, otherwise at
    arrivals (and the timeline through the drain)."""
    heap = events.heap
    eager = not gateway.passthrough  # timers, too, exist only then
    dispatch = _dispatcher(gateway, replicas, events, ended)
    gateway.dispatch = dispatch
    if gateway.client_timeouts:
        gateway.timeouts = ClientTimeouts(events, replicas, gateway, ended)
    arrive = gateway.arrive if eager else dispatch
    tier_named = gateway.tiers.get
    default_tier = gateway.default
    # The trace's rows, then END_OF_TRACE: its arrival at inf drains every event left.
    arrivals = chain(
        chain.from_iterable(zip(*_request_columns(b), strict=True) for b in batches),
        (END_OF_TRACE,),
    )
    next_emit = timeline.interval_s
    row = 0
    last = 0.0
    draining = False
    for now, prompt, output, rid, tenant, tier_name, session, hashes in arrivals:
        if now == INF:
            draining = gateway.trace_done = True
        while heap and heap[0][0] < now:
            t, kind, i, version = heap[0]
            if kind == TIMER:
                heappop(heap)
                version[0](t, version[1])  # alone, neither extends the run nor moves the timeline
            else:
                rep = replicas[i]
                if version != rep.version:  # superseded
                    heappop(heap)
                    continue
                nt = rep.on_event(t)
                if nt is None:
                    heappop(heap)
                else:
                    heapreplace(heap, (nt, REPLICA, i, version))  # one sift instead of two
                last = t
                if (eager or draining) and t >= next_emit:
                    next_emit = timeline.tick(t)
            if eager and len(ended) >= FLUSH_ROWS:
                _flush(ended, write_requests, timeline)
        if draining:
            break
        if now >= next_emit:
            next_emit = timeline.tick(now)
        last = now
        tier = tier_named(tier_name) or default_tier
        seq = Seq(row, now, prompt, output, rid, tenant, tier.name, session, -tier.priority, hashes)
        arrive(seq, now)
        row += 1
        if len(ended) >= FLUSH_ROWS:
            _flush(ended, write_requests, timeline)
    _flush(ended, write_requests, timeline)
    return timeline.emit(INF, last)
