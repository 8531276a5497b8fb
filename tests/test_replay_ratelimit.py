"""Token buckets give exactly the rejections their limits imply."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenfleet.errors import UserError
from tokenfleet.replay.ratelimit import RateLimit, RateLimiter, RetryPolicy


def admit(limiter: RateLimiter, key: str, now_s: float, tokens: int) -> bool:
    """Check then charge, as the gateway does with each limiter."""
    if not limiter.allows(key, now_s, tokens):
        return False
    limiter.charge(key, tokens)
    return True


def test_burst_over_rpm_rejects_exactly_the_excess():
    limiter = RateLimiter({"acme": RateLimit(requests_per_minute=60)})
    admitted = [admit(limiter, "acme", 0.0, tokens=100) for _ in range(100)]
    assert sum(admitted) == 60
    assert admitted[:60] == [True] * 60 and not any(admitted[60:])


def test_bucket_refills_at_the_sustained_rate():
    limiter = RateLimiter({"acme": RateLimit(requests_per_minute=60)})
    for _ in range(60):
        assert admit(limiter, "acme", 0.0, tokens=1)
    assert not admit(limiter, "acme", 0.5, tokens=1)  # half a token refilled
    assert admit(limiter, "acme", 1.0, tokens=1)  # one whole token after a second
    assert not admit(limiter, "acme", 1.0, tokens=1)


def test_tpm_counts_tokens_and_a_refused_request_takes_nothing():
    limiter = RateLimiter({"acme": RateLimit(requests_per_minute=10, tokens_per_minute=1000)})
    assert admit(limiter, "acme", 0.0, tokens=900)
    assert not admit(limiter, "acme", 0.0, tokens=200)  # over TPM: the RPM bucket is untouched
    assert admit(limiter, "acme", 0.0, tokens=100)
    assert limiter._buckets["acme"][0].level == pytest.approx(8.0)


def test_tenants_without_limits_always_pass():
    limiter = RateLimiter({"acme": RateLimit(requests_per_minute=1)})
    assert all(admit(limiter, "other", 0.0, tokens=10**9) for _ in range(1000))


@given(
    rpm=st.integers(1, 600),
    gaps=st.lists(st.floats(0.0, 5.0, allow_nan=False), min_size=1, max_size=300),
)
def test_admissions_never_exceed_burst_plus_refill(rpm, gaps):
    limiter = RateLimiter({"t": RateLimit(requests_per_minute=rpm)})
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        admitted += admit(limiter, "t", now, tokens=1)
    assert admitted <= rpm + now * rpm / 60.0 + 1e-9


def test_backoff_is_bounded_and_seeded():
    policy = RetryPolicy(max_retries=5, base_backoff_s=0.5, max_backoff_s=4.0)
    draws = [policy.backoff_s(n, random.Random(7)) for n in range(1, 8)]
    assert draws == [policy.backoff_s(n, random.Random(7)) for n in range(1, 8)]
    assert all(0 <= d <= min(4.0, 0.5 * 2 ** (n - 1)) for n, d in enumerate(draws, start=1))


def test_negative_limit_is_a_user_error():
    with pytest.raises(UserError, match="requests_per_minute"):
        RateLimit(requests_per_minute=-5)
