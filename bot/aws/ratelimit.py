"""A client-side request rate limit for IAM, so the bot spends IAM's budget instead of
fighting it.

IAM throttles per account, and the budget is shared with everything else in that account.
botocore's retries (standard or adaptive mode) recover from a throttle after the fact; this
limiter keeps the bot below the rate the operator gives it (`iam.requests_per_second` in
the operator config), so a mass expiry queues here, in order, instead of provoking a
`Throttling` answer per grant.

It hooks every HTTP attempt of a client (`before-send`), retries included, and is shared by
every client of one account in the process. Requests are served in the order they arrive:
each takes the next free slot and sleeps until it (a virtual token bucket: `burst` slots up
front, then one every 1/rate seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class RequestRateLimiter:
    """At most `rate` requests a second on average, `burst` at once after a quiet spell."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        burst = max(1.0, rate / 4) if burst is None else burst
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        # Tokens in the bucket at `_at`; negative when requests are queued for later slots.
        self._tokens = self.burst
        self._at = clock()
        self.requests = 0
        self.waited_s = 0.0  # total time requests spent queued here

    def _refill_locked(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def reserve(self) -> float:
        """Take the next slot; returns how long the caller must wait for it (seconds)."""
        with self._lock:
            now = self._clock()
            self._refill_locked(now)
            self._tokens -= 1
            self.requests += 1
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            self.waited_s += wait
            return wait

    def acquire(self) -> float:
        """Block until this request may be sent; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def expected_wait(self) -> float:
        """How long a request made now would wait for its slot."""
        with self._lock:
            self._refill_locked(self._clock())
            return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def attach(self, client: Any, service: str) -> None:
        """Pace every HTTP attempt `client` makes to `service` (retries included)."""
        client.meta.events.register(f"before-send.{service}", self._before_send)

    def _before_send(self, **_: Any) -> None:
        # Returning None lets botocore send the request; anything else would replace it.
        self.acquire()
