"""Balancers: which replica of the pool a request goes to.

A balancer is a class with a `Settings` dataclass and `pick(seq, now_s) -> int` (an index into
the replicas it was built with). It is built as `cls(settings, replicas, outstanding, seed)`,
where `outstanding[i]` is the number of requests queued or running on replica i, kept current by
the replicas. Views that change every step (KV use, tokens left) are read from the replicas at
`now_s`, which costs a look at every replica per request, so those policies are O(replicas).
`least-requests` and `session` keep a `LoadIndex` instead (a balancer with a `load_index`
attribute is told of every change to `outstanding` by the replicas, through `Router`), so their
picks cost O(log R) and O(1) plus the ring walk.

Found by name among the built-ins and the `tokenfleet.balancers` entry-point group (see
`tokenfleet.replay.plugins`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from bisect import bisect_left, bisect_right, insort
from typing import Any, ClassVar, Protocol

from tokenfleet.errors import UserError
from tokenfleet.replay.cache_routing import CACHE_BALANCERS
from tokenfleet.replay.plugins import build_settings, find_plugin

ENTRY_POINT_GROUP = "tokenfleet.balancers"


class Balancer(Protocol):
    name: ClassVar[str]
    Settings: ClassVar[type]

    def __init__(self, settings: Any, replicas: list, outstanding: list[int], seed: int): ...
    def pick(self, seq: Any, now_s: float) -> int: ...


@dataclasses.dataclass(frozen=True)
class NoSettings:
    pass


class _Base:
    Settings: ClassVar[type] = NoSettings

    def __init__(self, settings, replicas: list, outstanding: list[int], seed: int) -> None:
        self.settings = settings
        self.replicas = replicas
        self.outstanding = outstanding
        self.n = len(replicas)
        self.rng = random.Random(seed)
        self.next = 0


class RoundRobin(_Base):
    """Each replica in turn, whatever its load."""

    name: ClassVar[str] = "round-robin"

    def pick(self, seq, now_s: float) -> int:
        i = self.next
        self.next = i + 1 if i + 1 < self.n else 0
        return i


class RandomChoice(_Base):
    """A replica drawn uniformly with the scenario's seed."""

    name: ClassVar[str] = "random"

    def pick(self, seq, now_s: float) -> int:
        return self.rng.randrange(self.n)


class _LeastOf(_Base):
    """The replica with the least of some load; ties go round-robin so no replica is favoured."""

    def _least(self, loads: list) -> int:
        low = min(loads)
        start = self.next
        try:
            i = loads.index(low, start)
        except ValueError:
            i = loads.index(low)
        self.next = i + 1 if i + 1 < self.n else 0
        return i


class LoadIndex:
    """The positions of `loads` bucketed by their value, each bucket sorted, the lowest value
    with a position, and the total: the least-loaded pick, ties round-robin, and the mean load
    without a scan.

    `up(i)` / `down(i)` are called right after `loads[i]` went up or down by one (the replicas
    do it, see `Replica.load_indexes`). A scan (`min` then `list.index`) over 4,096 replicas was
    a third of a 4,096-replica replay's time; a bucket move is two bisects and a memmove.
    """

    __slots__ = ("loads", "buckets", "low", "total")

    def __init__(self, loads: list[int]) -> None:
        self.loads = loads
        self.buckets: list[list[int]] = [[] for _ in range(max(loads, default=0) + 2)]
        for i, load in enumerate(loads):
            self.buckets[load].append(i)
        self.low = min(loads, default=0)
        self.total = sum(loads)

    def up(self, i: int) -> None:
        self.total += 1
        load = self.loads[i]
        buckets = self.buckets
        was = buckets[load - 1]
        del was[bisect_left(was, i)]
        if load + 1 >= len(buckets):
            buckets.append([])
        insort(buckets[load], i)
        if not was and load - 1 == self.low:
            self.low = load  # the last position at the lowest load went up: now this is it

    def down(self, i: int) -> None:
        self.total -= 1
        load = self.loads[i]
        was = self.buckets[load + 1]
        del was[bisect_left(was, i)]
        insort(self.buckets[load], i)
        if load < self.low:
            self.low = load

    def least(self, start: int) -> int:
        """The first position at or after `start` with the lowest load, else the first."""
        bucket = self.buckets[self.low]
        k = bisect_left(bucket, start)
        return bucket[k] if k < len(bucket) else bucket[0]


class LeastRequests(_Base):
    """Fewest requests queued or running (the usual least-connections policy); ties go
    round-robin as in `_LeastOf._least`, read from a `LoadIndex` kept current by the replicas."""

    name: ClassVar[str] = "least-requests"

    def __init__(self, settings, replicas: list, outstanding: list[int], seed: int) -> None:
        super().__init__(settings, replicas, outstanding, seed)
        self.load_index = LoadIndex(outstanding)

    def pick(self, seq, now_s: float) -> int:
        i = self.load_index.least(self.next)
        self.next = i + 1 if i + 1 < self.n else 0
        return i


class LeastTokens(_LeastOf):
    """Fewest tokens still to go: prompt plus output not yet generated, over its requests."""

    name: ClassVar[str] = "least-tokens"

    def pick(self, seq, now_s: float) -> int:
        return self._least([r.tokens_left_at(now_s) for r in self.replicas])


class LeastKV(_LeastOf):
    """Lowest KV-cache use (fraction of blocks), as KV-aware routers do."""

    name: ClassVar[str] = "least-kv"

    def pick(self, seq, now_s: float) -> int:
        return self._least([r.kv_used_at(now_s) for r in self.replicas])


class PowerOfTwo(_Base):
    """Two replicas drawn at random; the one with fewer requests wins (the first on a tie)."""

    name: ClassVar[str] = "power-of-two"

    def pick(self, seq, now_s: float) -> int:
        n = self.n
        if n == 1:
            return 0
        a = self.rng.randrange(n)
        b = self.rng.randrange(n - 1)
        if b >= a:
            b += 1
        out = self.outstanding
        return b if out[b] < out[a] else a


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    load_factor: float = 1.25
    virtual_nodes: int = 100


class SessionAffinity(_Base):
    """Consistent hashing of the session id with bounded load (Mirrokni et al. 2018).

    A session sticks to its replica (so its prefix stays cached there) unless that replica holds
    more than `load_factor` times the mean load; then the ring is walked to the next one that
    does not. Requests without a session hash their request id.
    """

    name: ClassVar[str] = "session"
    Settings: ClassVar[type] = SessionSettings

    def __init__(self, settings, replicas: list, outstanding: list[int], seed: int) -> None:
        super().__init__(settings, replicas, outstanding, seed)
        if not settings.load_factor >= 1:
            raise UserError(f"session: load_factor = {settings.load_factor} must be >= 1")
        if settings.virtual_nodes < 1:
            raise UserError(f"session: virtual_nodes = {settings.virtual_nodes} must be >= 1")
        points = sorted(
            (_hash(f"{seed}/{i}/{v}"), i)
            for i in range(self.n)
            for v in range(settings.virtual_nodes)
        )
        self.ring_keys = [p for p, _ in points]
        self.ring_nodes = [i for _, i in points]
        self.load_index = LoadIndex(outstanding)  # its total: the mean load without a sum

    def pick(self, seq, now_s: float) -> int:
        key = seq.session_id if seq.session_id is not None else seq.request_id
        out = self.outstanding
        bound = math.ceil(self.settings.load_factor * (self.load_index.total + 1) / self.n)
        keys = self.ring_keys
        nodes = self.ring_nodes
        j = bisect_right(keys, _hash(str(key)))
        size = len(keys)
        for step in range(size):
            i = nodes[(j + step) % size]
            if out[i] < bound:
                return i
        return nodes[j % size]


def _hash(text: str) -> int:
    """A stable hash (Python's own is salted per process, which would break determinism)."""
    return zlib.crc32(text.encode())


BUILTIN_BALANCERS: dict[str, type] = {
    cls.name: cls
    for cls in (RoundRobin, RandomChoice, LeastRequests, LeastTokens, LeastKV, PowerOfTwo)
}
BUILTIN_BALANCERS[SessionAffinity.name] = SessionAffinity
BUILTIN_BALANCERS.update(CACHE_BALANCERS)  # cache_routing.py imports nothing from here


def balancer_class(name: str) -> type:
    return find_plugin(name, BUILTIN_BALANCERS, ENTRY_POINT_GROUP, "balancer")


def make_balancer(
    name: str, settings: dict[str, Any], replicas: list, outstanding: list[int], seed: int
):
    cls = balancer_class(name)
    built = build_settings(cls.Settings, settings, f"balancer {name!r}")
    return cls(built, replicas, outstanding, seed)


class Router:
    """A balancer over some of the fleet's replicas (a tier's pools, the replicas an autoscaler
    has ready), rebuilt when that set changes. Over the whole, unchanging fleet it is the plain
    balancer on the fleet's own counts, so the default path pays nothing for it."""

    def __init__(
        self, policy: str, settings: dict[str, Any], replicas: list, outstanding: list[int], seed
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.all = replicas
        self.fleet_outstanding = outstanding
        self.seed = seed
        self.rebuilds = 0
        self.members: list[int] = []
        self.view: list[int] = []
        self.pick = None
        self.balancer = None  # the balancer behind `pick` (None: no replica)
        self.load_index = None  # the balancer's LoadIndex, which the replicas keep current

    def set_members(self, members: list[int]) -> None:
        """Route over these replica indices from now on (their order is the balancer's); a
        balancer that learns (the cache-aware ones) keeps what it knew of staying replicas."""
        for i in self.members:
            rep = self.all[i]
            rep.views = [v for v in rep.views if v[0] is not self.view]
            if self.load_index is not None:
                rep.load_indexes = [w for w in rep.load_indexes if w[0] is not self.load_index]
        before, previous = self.members, self.balancer
        self.members = list(members)
        self.rebuilds += 1
        if self.members == list(range(len(self.all))):
            self.view = self.fleet_outstanding
            balancer = make_balancer(
                self.policy, self.settings, self.all, self.view, self.seed + self.rebuilds - 1
            )
            self._carry_over(previous, before, balancer)
            self._watch(balancer, self.all)
            self.pick = balancer.pick
            return
        self.view = [self.fleet_outstanding[i] for i in self.members]
        reps = [self.all[i] for i in self.members]
        for pos, rep in enumerate(reps):
            rep.views.append((self.view, pos))
        if not reps:
            self.pick = self.balancer = None
            return
        balancer = make_balancer(
            self.policy, self.settings, reps, self.view, self.seed + self.rebuilds - 1
        )
        self._carry_over(previous, before, balancer)
        self._watch(balancer, reps)
        members_ = self.members

        def pick(seq, now_s: float) -> int:
            return members_[balancer.pick(seq, now_s)]

        self.pick = pick

    def _watch(self, balancer, reps: list) -> None:
        """Have `reps` (in the balancer's order) tell its LoadIndex, if it keeps one, of each
        change to their counts."""
        self.load_index = getattr(balancer, "load_index", None)
        if self.load_index is not None:
            for pos, rep in enumerate(reps):
                rep.load_indexes.append((self.load_index, pos))

    def _carry_over(self, previous, before: list[int], balancer) -> None:
        """Hand `previous`'s state to its replacement, if both learn (`inherit`)."""
        self.balancer = balancer
        if previous is None or not hasattr(balancer, "inherit"):
            return
        position = {r: k for k, r in enumerate(self.members)}
        moved = {j: position[r] for j, r in enumerate(before) if r in position}
        balancer.inherit(previous, moved)
