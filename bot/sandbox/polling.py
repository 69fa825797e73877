"""Waiting for a condition: the one polling loop the fakes, the demo and the tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

POLL_SECONDS = 0.05


def wait_until(found: Callable[[], Any], timeout: float, what: str,
               timeout_error: type[Exception] = AssertionError,
               changed: threading.Condition | None = None) -> Any:
    """Return `found()` once it is truthy, re-checking every 50 ms (and, given `changed`,
    whenever it is notified); raise `timeout_error` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = found()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timeout_error(f"timed out after {timeout}s waiting for {what}")
        if changed is None:
            time.sleep(min(remaining, POLL_SECONDS))
        else:
            with changed:
                changed.wait(min(remaining, POLL_SECONDS))
