"""Autoscaling of a pool: replicas follow the load between min and max.

Every `interval_s` the autoscaler measures its pool over the ready replicas, either the
utilisation (requests queued or running per batch slot) or the queued tokens (prompt + output
still to go) per replica, and sizes the pool the way Kubernetes' HPA does:
desired = ceil(load / target), clamped to [min, max]. More replicas are asked for at once; a
new one is provisioned (it costs money) for `provisioning_delay_s` before it serves. Fewer are
kept only once `cooldown_s` has passed since the last change: replicas still provisioning are
cancelled first, then the least loaded ready ones stop taking requests and are released when
they have drained. A later scale-up takes a draining replica back before provisioning a new one.

A pool's replicas are created up front (max of them), those beyond the starting count not yet
provisioned; each replica's timeline recorder keeps its provisioned spans, from which the
timeline and cost.py charge it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tokenfleet.replay.loop import EventQueue
from tokenfleet.replay.scenario import AutoscaleConfig


class Autoscaler:
    """Scales one pool (`indices` are its replicas in the fleet, the first `start` ready)."""

    def __init__(
        self,
        config: AutoscaleConfig,
        replicas: list,
        indices: list[int],
        start: int,
        slots: int,
        set_ready: Callable[[list[int]], None],
        active: Callable[[], bool],
        events: EventQueue,
    ) -> None:
        self.config = config
        self.replicas = replicas
        self.indices = indices
        self.slots = slots
        self.set_ready = set_ready
        self.active = active
        self.events = events
        self.ready = list(indices[:start])
        self.provisioning: list[int] = []
        self.draining: list[int] = []
        self.last_change_s = 0.0
        self.scale_ups = 0
        self.scale_downs = 0
        set_ready(self.ready)
        events.push_timer(config.interval_s, self.tick)

    @property
    def provisioned(self) -> int:
        return len(self.ready) + len(self.provisioning)

    def desired(self, now: float) -> int:
        c = self.config
        reps = [self.replicas[i] for i in self.ready]
        if c.metric == "utilisation":
            load = sum(r.outstanding[r.index] for r in reps) / (self.slots * c.target)
        else:
            load = sum(r.tokens_left_at(now) for r in reps) / c.target
        return min(c.max_replicas, max(c.min_replicas, math.ceil(load - 1e-9)))

    def tick(self, now: float, _=None) -> None:
        self._release_drained(now)
        want = self.desired(now)
        have = self.provisioned
        if want > have:
            self._scale_up(now, want - have)
        elif want < have and now - self.last_change_s >= self.config.cooldown_s:
            self._scale_down(now, have - want)
        if self.active() or self.draining:
            self.events.push_timer(now + self.config.interval_s, self.tick)

    def _scale_up(self, now: float, n: int) -> None:
        self.last_change_s = now
        self.scale_ups += 1
        changed = False
        while n and self.draining:  # still provisioned and loaded: take it back at once
            self.ready.append(self.draining.pop())
            changed = True
            n -= 1
        busy = set(self.ready) | set(self.provisioning) | set(self.draining)
        for i in self.indices:
            if n == 0:
                break
            if i in busy:
                continue
            self.replicas[i].timeline.provision(now)
            self.provisioning.append(i)
            n -= 1
            if self.config.provisioning_delay_s > 0:
                self.events.push_timer(
                    now + self.config.provisioning_delay_s, self._ready, (i, now)
                )
            else:
                self._ready(now, (i, now))
        if changed:
            self.set_ready(sorted(self.ready))

    def _ready(self, now: float, asked: tuple[int, float]) -> None:
        i, since = asked
        if (
            i in self.provisioning and self.replicas[i].timeline.provisioned_since() == since
        ):  # not cancelled
            self.provisioning.remove(i)
            self.ready.append(i)
            self.set_ready(sorted(self.ready))

    def _scale_down(self, now: float, n: int) -> None:
        self.last_change_s = now
        self.scale_downs += 1
        while n and self.provisioning:
            self._close(self.provisioning.pop(), now)
            n -= 1
        if n:
            out = self.replicas[self.ready[0]].outstanding
            order = sorted(self.ready, key=lambda i: (out[i], -i))
            for i in order[:n]:
                self.ready.remove(i)
                self.draining.append(i)
            self.set_ready(sorted(self.ready))
        self._release_drained(now)

    def _release_drained(self, now: float) -> None:
        for i in list(self.draining):
            if self.replicas[i].outstanding[i] == 0:
                self.draining.remove(i)
                self._close(i, now)

    def _close(self, i: int, now: float) -> None:
        self.replicas[i].timeline.release(now)
