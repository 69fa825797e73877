"""Test doubles: in-memory implementations of the ports in bot.ports and of reconcile's
ReconcileStore, for tests/ and bench/ (both put tests/ on sys.path: pytest through
tests/conftest.py, bench/ by hand). The demo uses none of them, so they live here and not
in the bot package.

They behave like the real adapters where it matters to the core (idempotent attach and
revoke, failures as GrantError) and record what was asked of them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.evidence import document_hash
from bot.ports import (
    AttachedPolicy,
    GrantError,
    GrantPlan,
    Notification,
    PolicyKind,
    PrincipalError,
)
from bot.reconcile_model import ExpectedGrant, Finding
from bot.targets import ApproverMapping


class RecordingNotifier:
    """Keeps every notification, in order."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []
        self._lock = threading.Lock()

    def notify(self, notification: Notification) -> None:
        with self._lock:
            self.sent.append(notification)

    def events(self, request_id: int | None = None) -> list[str]:
        return [n.event for n in self.sent if request_id is None or n.request_id == request_id]


class StaticApproverDirectory:
    """Approver ids resolve through a fixed map of user groups (S...) to members."""

    def __init__(self, groups: Mapping[str, Iterable[str]] | None = None) -> None:
        self.groups = {group: frozenset(members) for group, members in (groups or {}).items()}

    def members(self, approver_ids: Sequence[str]) -> frozenset[str]:
        people: set[str] = set()
        for approver_id in approver_ids:
            people |= self.groups.get(approver_id, {approver_id}
                                      if approver_id.startswith(("U", "W")) else set())
        return frozenset(people)


class StaticPrincipalDirectory:
    def __init__(self, principals: Mapping[str, str],
                 group_members: Mapping[str, int] | None = None) -> None:
        self.principals = dict(principals)
        self.group_members = dict(group_members or {})

    def group_member_count(self, group_arn: str) -> int:
        try:
            return self.group_members[group_arn]
        except KeyError:
            raise PrincipalError(f"The IAM group {group_arn} does not exist.") from None

    def approver_mapping(self, slack_user_id: str) -> ApproverMapping:
        return ApproverMapping(self.principals.get(slack_user_id))

    def principal_for(self, slack_user_id: str) -> str:
        try:
            return self.principals[slack_user_id]
        except KeyError:
            raise PrincipalError(
                f"No IAM principal is mapped to Slack user {slack_user_id}; ask an operator "
                "to add you under `principals` in the bot's config."
            ) from None


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment


@dataclass
class _Failure:
    error: GrantError
    times: int | None  # None: every time


@dataclass
class InMemoryGranter:
    """Policies per principal in memory. `fail_attach`/`fail_revoke` make the next calls
    raise GrantError (n times or always) so failure paths can be exercised."""

    policies: dict[str, dict[str, Mapping[str, object]]] = field(default_factory=dict)
    attach_calls: list[GrantPlan] = field(default_factory=list)
    revoke_calls: list[tuple[str, PolicyKind, tuple[str, ...]]] = field(default_factory=list)
    _attach_failure: _Failure | None = None
    _revoke_failure: _Failure | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail_attach(self, message: str = "attach failed", *, transient: bool = False,
                    times: int | None = None, code: str = "") -> None:
        self._attach_failure = _Failure(GrantError(message, transient=transient, code=code),
                                        times)

    def fail_revoke(self, message: str = "throttled", *, transient: bool = True,
                    times: int | None = None, code: str = "Throttling") -> None:
        self._revoke_failure = _Failure(GrantError(message, transient=transient, code=code),
                                        times)

    def heal(self) -> None:
        self._attach_failure = self._revoke_failure = None

    @staticmethod
    def _take(failure: _Failure | None) -> tuple[_Failure | None, GrantError | None]:
        if failure is None:
            return None, None
        if failure.times is None:
            return failure, failure.error
        remaining = failure.times - 1
        return (None if remaining <= 0 else _Failure(failure.error, remaining)), failure.error

    def attach(self, plan: GrantPlan) -> tuple[AttachedPolicy, ...]:
        with self._lock:
            self.attach_calls.append(plan)
            self._attach_failure, error = self._take(self._attach_failure)
            if error is not None:
                raise error
            held = self.policies.setdefault(plan.principal_arn, {})
            for policy in plan.policies:
                held[policy.name] = policy.document
            return tuple(
                AttachedPolicy(name=p.name, arn=None, document_hash=document_hash(p.document))
                for p in plan.policies
            )

    def revoke(self, principal_arn: str, kind: PolicyKind, policy_names: Sequence[str]) -> None:
        with self._lock:
            self.revoke_calls.append((principal_arn, kind, tuple(policy_names)))
            self._revoke_failure, error = self._take(self._revoke_failure)
            if error is not None:
                raise error
            held = self.policies.get(principal_arn, {})
            for name in policy_names:
                held.pop(name, None)

    def inline_usage(self, principal_arn: str, exclude: Sequence[str] = ()) -> int:
        with self._lock:
            held = self.policies.get(principal_arn, {})
            return sum(
                len("".join(json.dumps(doc).split()))
                for name, doc in held.items() if name not in exclude
            )

    def held(self, principal_arn: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self.policies.get(principal_arn, {}))


@dataclass
class InMemoryReconcileStore:
    """ReconcileStore over plain lists."""

    grants: list[ExpectedGrant] = field(default_factory=list)
    principals: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def expected_grants(self) -> Sequence[ExpectedGrant]:
        return [g for g in self.grants if g.grant_id not in self.failed]

    def principals_ever_granted(self) -> Sequence[str]:
        return list(self.principals)

    def record_finding(self, finding: Finding) -> None:
        self.findings.append(finding)

    def mark_failed(self, grant_id: str, reason: str) -> None:
        self.failed[grant_id] = reason

    def is_live(self, grant_id: str) -> bool:
        return any(g.grant_id == grant_id and grant_id not in self.failed for g in self.grants)
