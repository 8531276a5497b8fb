"""The gateway in front of the balancers: tiers, rate limits, client retries, deferral.

Every request first takes the gateway's fixed latency (auth, tokenisation), then passes its
tenant's and its tier's token buckets (ratelimit.py). Over a limit it is rejected as
`rate_limited`, or, with client retries, comes back after a jittered exponential back-off
(each attempt is load on the gateway and is counted). Admitted, it goes to a replica of its
tier's pools with its tier's priority, except for a deferred tier: that work waits here and is
released into its pools only while they have headroom (requests per batch slot below
`deferred_max_utilisation`), or unconditionally once only `deferred_margin` of its deadline is
left. With no margin it may wait out its deadline here and is then `expired`. A tier with a
client timeout has each request watched from its arrival (replay/timeouts.py); one whose
client gives up while it is held here is dropped (`abandon`).

Every request enters through the gateway. Without limits, latency, deferral, client timeouts,
autoscaling, priorities or tier routing it is a pass-through (`passthrough`): the loop sends
requests straight to the one router.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from tokenfleet.replay.loop import EventQueue
from tokenfleet.replay.ratelimit import RateLimit, RateLimiter, RetryPolicy
from tokenfleet.replay.request import DEFERRED, EXPIRED, RATE_LIMITED, TIMED_OUT, WAITING, Seq
from tokenfleet.replay.scenario import GatewayConfig
from tokenfleet.replay.tiers import Tier

ALL_TENANTS = "*"


def needs_gateway(scenario, autoscaled: bool) -> bool:
    """Whether any request can be treated other than 'straight to the one balancer'."""
    g: GatewayConfig = scenario.gateway
    tiers = scenario.tiers
    return (
        autoscaled
        or bool(g.limits)
        or g.latency_s > 0
        or any(t.deferred or t.client_timeout_s > 0 for t in tiers)
        or len({t.priority for t in tiers}) > 1
        or any(t.pools and set(t.pools) != {p.name for p in scenario.pools} for t in tiers)
    )


class Gateway:
    """Admission in front of the routers. `dispatch(seq, now)` (set by the loop) sends a
    request to a replica; refused and expired requests go to `ended`."""

    def __init__(
        self,
        config: GatewayConfig,
        tiers: tuple[Tier, ...],
        routers_by_tier: dict[str, object],
        slots_of: Callable[[int], int],
        ended: list,
        outstanding: list[int],
        events: EventQueue,
        seed: int,
        passthrough: bool = False,
    ) -> None:
        self.config = config
        self.tiers = {t.name: t for t in tiers}
        self.default = self.tiers[config.default_tier]
        self.routers = routers_by_tier
        self.slots_of = slots_of
        self.ended = ended
        self.outstanding = outstanding
        self.events = events
        self.passthrough = passthrough  # nothing to do: the loop dispatches at once
        self.rng = random.Random(seed)
        self.retry = RetryPolicy(**vars(config.retries))
        tenant_limits = {
            lim.tenant: RateLimit(lim.requests_per_minute, lim.tokens_per_minute)
            for lim in config.limits
            if lim.tenant and lim.tenant != ALL_TENANTS
        }
        every = [
            RateLimit(lim.requests_per_minute, lim.tokens_per_minute)
            for lim in config.limits
            if lim.tenant == ALL_TENANTS
        ]
        self.by_tenant = (
            RateLimiter(tenant_limits, every[-1] if every else None)
            if tenant_limits or every
            else None
        )
        tier_limits = {
            lim.tier: RateLimit(lim.requests_per_minute, lim.tokens_per_minute)
            for lim in config.limits
            if lim.tier
        }
        self.by_tier = RateLimiter(tier_limits) if tier_limits else None
        self.deferred: dict[str, deque] = {t.name: deque() for t in tiers if t.deferred}
        self.pending = 0  # requests held here: in latency, back-off or deferral
        self.ticking = False
        self.trace_done = False
        self.dispatch: Callable[[Seq, float], None] = None  # set by the loop
        self.retries = 0
        # Each tier's client timeout (none: no entry), and their watch (set by the loop).
        self.client_timeouts = {t.name: t.client_timeout_s for t in tiers if t.client_timeout_s}
        self.timeouts = None

    # ------------------------------------------------------------------ arrivals

    def arrive(self, seq: Seq, now: float) -> None:
        """A request from the trace enters the gateway at `now` (its tier already resolved)."""
        tier = self.tiers[seq.tier]
        if tier.deferred:
            seq.deadline_at = seq.arrival_s + tier.deadline_s
        if tier.client_timeout_s:
            self.timeouts.watch(seq, tier.client_timeout_s)
        if self.config.latency_s > 0:
            self.pending += 1
            self.events.push_timer(now + self.config.latency_s, self._after_latency, seq)
        else:
            self._admit(seq, now)

    def _after_latency(self, now: float, seq: Seq) -> None:
        if seq.status is TIMED_OUT:  # its client gave up meanwhile (`abandon`)
            return
        self.pending -= 1
        self._admit(seq, now)

    _retry = _after_latency  # a back-off ends as the latency does
    resend = _after_latency  # a client's retry after a timeout (replay/timeouts.py)

    def abandon(self, seq: Seq) -> None:
        """Its client gave up while it was held here (latency, back-off or deferral); the
        caller ends it or lets its client retry (replay/timeouts.py)."""
        self.pending -= 1
        seq.status = TIMED_OUT
        seq.finish_s = seq.timeout_at

    def _admit(self, seq: Seq, now: float) -> None:
        if not self._within_limits(seq, now):
            if seq.attempts <= self.retry.max_retries:
                self.retries += 1
                self.pending += 1
                delay = self.retry.backoff_s(seq.attempts, self.rng)
                seq.attempts += 1
                self.events.push_timer(now + delay, self._retry, seq)
            else:
                seq.status = RATE_LIMITED
                self.ended.append(seq)
            return
        queue = self.deferred.get(seq.tier)
        if queue is None:
            self.dispatch(seq, now)
            return
        seq.status = DEFERRED
        self.pending += 1
        queue.append(seq)
        tier = self.tiers[seq.tier]
        margin = self.config.deferred_margin
        if margin > 0:
            self.events.push_timer(seq.arrival_s + tier.deadline_s * (1 - margin), self._force, seq)
        else:
            self.events.push_timer(seq.deadline_at, self._expire, seq)
        self.release(now)
        self._tick_later(now)

    def _within_limits(self, seq: Seq, now: float) -> bool:
        """Both the tenant's and the tier's buckets must allow it; only then is either charged."""
        tokens = seq.prompt_tokens + seq.output_tokens
        tenant = "" if seq.tenant is None else str(seq.tenant)
        by_tenant, by_tier = self.by_tenant, self.by_tier
        if by_tenant is not None and not by_tenant.allows(tenant, now, tokens):
            return False
        if by_tier is not None and not by_tier.allows(seq.tier, now, tokens):
            return False
        if by_tenant is not None:
            by_tenant.charge(tenant, tokens)
        if by_tier is not None:
            by_tier.charge(seq.tier, tokens)
        return True

    # ------------------------------------------------------------------ deferral

    def utilisation(self, tier: str) -> float:
        """Requests queued or running per batch slot over the ready replicas of a tier's pools."""
        members = self.routers[tier].members
        if not members:
            return float("inf")
        out = self.outstanding
        slots = self.slots_of
        return sum(out[i] for i in members) / sum(slots(i) for i in members)

    def release(self, now: float) -> None:
        """Release deferred work, oldest first, while its pools have headroom."""
        limit = self.config.deferred_max_utilisation
        for tier, queue in self.deferred.items():
            while queue:
                seq = queue[0]
                if seq.status != DEFERRED:  # forced out or expired already
                    queue.popleft()
                    continue
                if self.utilisation(tier) >= limit:
                    break
                queue.popleft()
                self._release(seq, now)

    def _release(self, seq: Seq, now: float) -> None:
        self.pending -= 1
        seq.status = WAITING
        self.dispatch(seq, now)

    def _force(self, now: float, seq: Seq) -> None:
        """Its deadline is near: release whatever the load."""
        if seq.status == DEFERRED:
            self._release(seq, now)

    def _expire(self, now: float, seq: Seq) -> None:
        if seq.status == DEFERRED:
            self.pending -= 1
            seq.status = EXPIRED
            self.ended.append(seq)

    def _tick_later(self, now: float) -> None:
        if not self.ticking:
            self.ticking = True
            self.events.push_timer(now + self.config.tick_s, self._tick)

    def _tick(self, now: float, _=None) -> None:
        self.ticking = False
        self.release(now)
        if any(queue for queue in self.deferred.values()):
            self._tick_later(now)
