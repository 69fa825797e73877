"""The client-side IAM rate limit (bot.aws.ratelimit) and its `iam:` config section."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.aws.ratelimit import RequestRateLimiter
from bot.config import ConfigError, IamLimits, parse_config


class ManualTime:
    """A clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_requests_beyond_the_burst_wait_for_their_slot_in_arrival_order() -> None:
    time = ManualTime()
    limiter = RequestRateLimiter(10, burst=2, clock=time.clock, sleep=time.sleep)

    waits = [limiter.reserve() for _ in range(5)]

    # Two at once, then one slot every 1/10 s, each request behind the one before it.
    assert waits == pytest.approx([0, 0, 0.1, 0.2, 0.3])
    assert limiter.expected_wait() == pytest.approx(0.4)
    assert limiter.requests == 5 and limiter.waited_s == pytest.approx(0.6)


def test_a_quiet_spell_refills_the_bucket_up_to_the_burst_only() -> None:
    time = ManualTime()
    limiter = RequestRateLimiter(4, burst=2, clock=time.clock, sleep=time.sleep)
    for _ in range(3):
        limiter.acquire()
    assert time.slept == pytest.approx([0.25])

    time.now += 60  # a minute of nothing: two tokens, not 240
    waits = [limiter.reserve() for _ in range(3)]

    assert waits == pytest.approx([0, 0, 0.25])


def test_the_default_burst_is_a_quarter_second_and_at_least_one() -> None:
    assert RequestRateLimiter(100).burst == 25
    assert RequestRateLimiter(2).burst == 1
    with pytest.raises(ValueError):
        RequestRateLimiter(0)
    with pytest.raises(ValueError):
        RequestRateLimiter(5, burst=0.5)


def test_the_iam_section_parses() -> None:
    config = parse_config({"iam": {"requests_per_second": 15, "burst": 3,
                                   "retry_mode": "adaptive", "max_attempts": 8,
                                   "queued_notice_after": "10s"}})

    assert config.iam == IamLimits(requests_per_second=15.0, burst=3.0, retry_mode="adaptive",
                                   max_attempts=8, queued_notice_after=timedelta(seconds=10))
    assert parse_config({}).iam == IamLimits()


@pytest.mark.parametrize(("raw", "message"), [
    ({"requests_per_second": 0}, "iam.requests_per_second: must be a finite number above 0"),
    ({"requests_per_second": "fast"}, "iam.requests_per_second: must be a finite number"),
    # YAML .nan/.inf: a NaN rate would let every request through, as would infinity.
    ({"requests_per_second": float("nan")}, "iam.requests_per_second: must be a finite"),
    ({"requests_per_second": float("inf")}, "iam.requests_per_second: must be a finite"),
    ({"burst": float("nan")}, "iam.burst: must be a finite number"),
    ({"burst": float("inf")}, "iam.burst: must be a finite number"),
    ({"burst": 0.5}, "iam.burst: must be at least 1"),
    ({"retry_mode": "legacy"}, "iam.retry_mode: must be standard or adaptive"),
    ({"max_attempts": 0}, "iam.max_attempts: must be a whole number 1-20"),
    ({"queued_notice_after": "soon"}, "iam.queued_notice_after"),
    ({"rate": 5}, "iam.rate: unknown key"),
])
def test_iam_section_errors_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"iam": raw})
    assert message in str(caught.value)
