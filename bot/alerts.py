"""Alerts: failures that need a person, sent to the operator config's alerts channel.

Any process can raise one through the `Alerter` port: the scheduler (irrevocable grants, a
request stuck between approval and grant), scheduled and command-line reconcile (every
finding), the audit anchoring. An alert is plain data that says what happened, to which
request, requester and principal, which policies, and what a person should do next; the
Slack adapter (bot.slack.alerter) renders and posts it, the logging one writes one line.

Where alerts go is decided once per process by `alert_destination`: `alerts.channel`, or
when that is not set the critical tier's approval channel (the people who approve the
riskiest access are the closest to owning its failures), or, with neither, the log only.
The composition root says which, once, at start.

Core module: no Slack, no boto3.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from bot.config import OperatorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertRef:
    """Where an alert was posted, so a later alert can follow it up in its thread."""

    channel: str
    ts: str


@dataclass(frozen=True)
class Alert:
    """One thing a person must know about. `kind` is a short stable tag for filtering
    (irrevocable, irrevocable_resolved, stuck_request, reconcile_finding, ...); `summary`
    says what happened in one sentence; `next_step` what to do about it."""

    kind: str
    summary: str
    next_step: str
    request_id: int | None = None
    requester: str | None = None  # Slack user id
    principal_arn: str | None = None
    policy_names: tuple[str, ...] = ()
    details: Mapping[str, str] = field(default_factory=dict)
    # Post as a reply in this earlier alert's thread (a follow-up: resolved, retried).
    follows_up: AlertRef | None = None

    def one_line(self) -> str:
        parts = [f"[{self.kind}] {self.summary}"]
        if self.request_id is not None:
            parts.append(f"request #{self.request_id}")
        if self.requester:
            parts.append(f"requester {self.requester}")
        if self.principal_arn:
            parts.append(f"principal {self.principal_arn}")
        if self.policy_names:
            parts.append(f"policies {', '.join(self.policy_names)}")
        parts.extend(f"{key}: {value}" for key, value in self.details.items())
        parts.append(f"next: {self.next_step}")
        return "; ".join(parts)


class Alerter(Protocol):
    def alert(self, alert: Alert) -> AlertRef | None:
        """Deliver the alert; returns where it was posted (None when only logged or when
        delivery failed). Never raises for delivery problems: it logs them, because the
        failure being alerted about has already happened and must not be made worse."""
        ...


class LoggingAlerter:
    """Alerts when no Slack token or channel is configured: one WARNING line each."""

    def alert(self, alert: Alert) -> AlertRef | None:
        log.warning("ALERT %s", alert.one_line())
        return None


@dataclass(frozen=True)
class AlertDestination:
    channel: str | None
    explanation: str  # said once at start


def alert_destination(config: OperatorConfig, *, slack: bool) -> AlertDestination:
    """Where this process's alerts go, and the sentence that says so."""
    if not slack:
        return AlertDestination(None, "alerts are written to this process's log "
                                      "(no SLACK_BOT_TOKEN, so no Slack)")
    if config.alerts.channel:
        return AlertDestination(config.alerts.channel,
                                f"alerts go to Slack channel {config.alerts.channel} "
                                "(alerts.channel)")
    critical = config.router.tiers["critical"].channel
    if critical:
        return AlertDestination(critical,
                                "alerts.channel is not set in the operator config; alerts go "
                                f"to the critical tier's approval channel {critical} instead")
    return AlertDestination(None, "alerts.channel is not set in the operator config and the "
                                  "critical tier has no channel; alerts are written to this "
                                  "process's log only")
