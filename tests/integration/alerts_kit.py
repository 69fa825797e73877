"""An Alerter that keeps what it was given, for tests of the core that alerts (the Slack
one is tested against the fake Slack)."""

from __future__ import annotations

import itertools
import threading

from bot.alerts import Alert, AlertRef


class RecordingAlerter:
    def __init__(self, channel: str = "C0ALERTS") -> None:
        self.channel = channel
        self.sent: list[Alert] = []
        self._ts = itertools.count(1)
        self._lock = threading.Lock()

    def alert(self, alert: Alert) -> AlertRef | None:
        with self._lock:
            self.sent.append(alert)
            return alert.follows_up or AlertRef(self.channel, f"{next(self._ts)}.000")

    def kinds(self) -> list[str]:
        return [a.kind for a in self.sent]
