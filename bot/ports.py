"""The small interfaces through which the core (lifecycle, scheduler logic) reaches the
outside world. Each has a real adapter (bot/aws, bot/slack) and an in-memory one for tests.

The core never imports boto3 or slack_bolt; it only sees these Protocols and plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # bot.targets imports bot.policy, which imports these ports
    from bot.targets import ApproverMapping

# permission_set: an IAM Identity Center permission set made for the grant (bot.targets).
PolicyKind = Literal["inline", "managed", "permission_set"]


@dataclass(frozen=True)
class PolicyDocument:
    """One IAM policy to put on a principal: its name and its JSON document."""

    name: str
    document: Mapping[str, Any]


@dataclass(frozen=True)
class GrantPlan:
    """What the granter must attach for one grant (made by the policy compiler)."""

    grant_id: str
    principal_arn: str
    kind: PolicyKind
    policies: tuple[PolicyDocument, ...]
    expires_at: datetime
    instance_arn: str | None = None


@dataclass(frozen=True)
class AttachedPolicy:
    name: str
    arn: str | None  # managed policies only
    document_hash: str  # sha256 of the canonical document as read back from IAM


class GrantError(Exception):
    """An IAM call for a grant failed. `transient` faults (throttling, service failure,
    time-outs) may succeed when retried; permanent ones (limits, access denied, malformed
    policy) will not, and need a person. `throttled` faults are transient ones where IAM
    only refused the caller's request rate: they say nothing about the grant, so they never
    count towards giving up on it."""

    def __init__(
        self, message: str, *, transient: bool, code: str = "", throttled: bool = False
    ) -> None:
        super().__init__(message)
        self.transient = transient or throttled
        self.code = code
        self.throttled = throttled


class Granter(Protocol):
    def attach(self, plan: GrantPlan) -> tuple[AttachedPolicy, ...]:
        """Put the plan's policies on the principal; attaching the same plan twice is a
        no-op. Raises GrantError."""
        ...

    def revoke(self, principal_arn: str, kind: PolicyKind, policy_names: Sequence[str]) -> None:
        """Remove the named policies; already gone is success. Raises GrantError."""
        ...

    def inline_usage(self, principal_arn: str, exclude: Sequence[str] = ()) -> int:
        """Characters (whitespace not counted) the principal's other inline policies use,
        so the compiler can tell whether one more fits the aggregate quota."""
        ...


class PrincipalDirectory(Protocol):
    def principal_for(self, slack_user_id: str) -> str:
        """The IAM principal ARN that receives grants for this Slack user.
        Raises PrincipalError with a message for the user when there is none.
        The answer is a grant-target reference (bot.targets): an IAM ARN, a shared role
        with a session name, or an Identity Center user."""
        ...

    def group_member_count(self, group_arn: str) -> int:
        """How many IAM users a group target reaches (shown to approvers).
        Raises PrincipalError when the group cannot be read."""
        ...

    def approver_mapping(self, slack_user_id: str) -> ApproverMapping:
        """Every target this person's own mapping names (config, and tags when tag lookup
        is on), to judge self-approval. Never raises: a lookup that fails says so in
        `lookup_error`. No checks that only granting needs (managed tag, boundary)."""
        ...


class PrincipalError(Exception):
    """No usable IAM principal for a Slack user; the message says why and what to do."""


class ApproverDirectory(Protocol):
    def members(self, approver_ids: Sequence[str]) -> frozenset[str]:
        """Slack user ids named directly or through user groups (S...) in approver_ids."""
        ...


class NotificationEvent(StrEnum):
    """What the lifecycle tells the notifier (Slack DMs, message updates): a vocabulary of
    its own beside the states and the audit actions, though many names are shared."""

    SUBMITTED = "submitted"
    VOTE = "vote"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    GRANTED = "granted"
    FAILED = "failed"
    REVOKED = "revoked"
    EXTENSION_REQUESTED = "extension_requested"
    EXTENDED = "extended"
    EXPIRING_SOON = "expiring_soon"
    IRREVOCABLE = "irrevocable"
    PENDING_REMINDER = "pending_reminder"
    RECONCILE_FINDING = "reconcile_finding"
    # The grant is approved but waits behind IAM's request rate limit (detail:
    # waited_seconds, expected_wait_seconds); GRANTED follows.
    GRANT_QUEUED = "grant_queued"


@dataclass(frozen=True)
class Notification:
    event: NotificationEvent
    request_id: int | None
    detail: Mapping[str, Any] = field(default_factory=dict)


class Notifier(Protocol):
    def notify(self, notification: Notification) -> None:
        """Tell the people concerned. Must not raise for delivery problems: log them."""
        ...


class Pacing(Protocol):
    """How far behind IAM's request rate limit the bot is running (bot.aws.sessions)."""

    def expected_grant_wait(self, principal_arn: str) -> float:
        """Seconds a grant to this principal started now would spend queued behind the
        IAM requests already waiting for the rate limit (0 when none wait)."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
