"""Waiting on a fake's records: the one polling loop the fakes share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def wait_until(found: Callable[[], Any], changed: threading.Condition, timeout: float,
               what: str, timeout_error: type[Exception]) -> Any:
    """Return `found()` once it is truthy, re-checking whenever `changed` is notified (and
    at least every 50 ms); raise `timeout_error` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = found()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timeout_error(f"timed out after {timeout}s waiting for {what}")
        with changed:
            changed.wait(min(remaining, 0.05))
