"""Per-tenant (or per-tier) token buckets for requests/min and tokens/min, and client retries.

A bucket holds up to one minute of its limit and refills continuously, the way API gateways
enforce RPM/TPM: a burst of a minute's worth passes, then requests pass at the sustained rate.
A request counts `prompt + output` tokens against TPM (providers charge max_tokens up front).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tokenfleet.errors import UserError, require_non_negative


class TokenBucket:
    """A continuously refilling bucket; `take` succeeds only if the whole amount is there."""

    __slots__ = ("capacity", "rate_per_s", "level", "updated_s")

    def __init__(self, per_minute: float) -> None:
        self.capacity = float(per_minute)
        self.rate_per_s = per_minute / 60.0
        self.level = self.capacity
        self.updated_s = 0.0

    def _refill(self, now_s: float) -> None:
        if now_s > self.updated_s:
            self.level = min(self.capacity, self.level + (now_s - self.updated_s) * self.rate_per_s)
            self.updated_s = now_s

    def can_take(self, now_s: float, amount: float) -> bool:
        self._refill(now_s)
        return self.level >= amount

    def take(self, amount: float) -> None:
        self.level -= amount


@dataclass(frozen=True)
class RateLimit:
    """Limits for one key (a tenant or a tier); 0 means unlimited."""

    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0

    def __post_init__(self) -> None:
        require_non_negative(
            "rate limit",
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Client retries after a rejection: exponential back-off with full jitter, up to N times."""

    max_retries: int = 0
    base_backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or not self.base_backoff_s >= 0 or not self.max_backoff_s >= 0:
            raise UserError("retries: max_retries, base_backoff_s and max_backoff_s must be >= 0")

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number `attempt` (1-based): uniform in [0, min(cap, base*2^(n-1))]."""
        ceiling = min(self.max_backoff_s, self.base_backoff_s * 2.0 ** (attempt - 1))
        return rng.uniform(0.0, ceiling)


class RateLimiter:
    """Buckets keyed by tenant (or tier); keys without a configured limit always pass."""

    def __init__(self, limits: dict[str, RateLimit], default: RateLimit | None = None) -> None:
        self._limits = limits
        self._default = default
        self._buckets: dict[str, tuple[TokenBucket | None, TokenBucket | None]] = {}

    def _buckets_for(self, key: str) -> tuple[TokenBucket | None, TokenBucket | None]:
        pair = self._buckets.get(key)
        if pair is None:
            limit = self._limits.get(key, self._default)
            if limit is None:
                pair = (None, None)
            else:
                pair = (
                    TokenBucket(limit.requests_per_minute) if limit.requests_per_minute else None,
                    TokenBucket(limit.tokens_per_minute) if limit.tokens_per_minute else None,
                )
            self._buckets[key] = pair
        return pair

    def allows(self, key: str, now_s: float, tokens: int) -> bool:
        """Whether the key's buckets hold one request and `tokens` tokens now (takes nothing)."""
        requests_bucket, tokens_bucket = self._buckets_for(key)
        if requests_bucket is not None and not requests_bucket.can_take(now_s, 1.0):
            return False
        return tokens_bucket is None or tokens_bucket.can_take(now_s, tokens)

    def charge(self, key: str, tokens: int) -> None:
        """Take one request and `tokens` tokens (after `allows` said yes)."""
        requests_bucket, tokens_bucket = self._buckets_for(key)
        if requests_bucket is not None:
            requests_bucket.take(1.0)
        if tokens_bucket is not None:
            tokens_bucket.take(tokens)
