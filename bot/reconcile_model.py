"""What reconcile compares and reports, as plain data: the grants the database holds as
live, the findings, and the store port. The database side (bot.reconcile_store) and the
AWS side (bot.aws.reconcile) both speak these, so the core needs nothing from bot.aws."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from bot.evidence import document_hash
from bot.ports import GrantPlan, PolicyKind
from bot.states import RequestState

FindingKind = Literal["ok", "orphan", "missing", "tampered", "stranded", "unchecked"]


@dataclass(frozen=True)
class ReconcileProgress:
    """How far a run has got, for the command line: `stage` is "reading" (IAM, after each
    page or principal read) or "done" (every repair made); `done` of `total` principals."""

    stage: str
    done: int
    total: int
    unchecked: int = 0


ProgressCallback = Callable[[ReconcileProgress], None]
GrantState = Literal[RequestState.ACTIVE, RequestState.GRANTING]


@dataclass(frozen=True)
class ExpectedGrant(GrantPlan):
    """A grant the database holds as live: the plan it put on the principal (so restoring
    it is attaching it again), and the state it is in."""

    state: GrantState = RequestState.ACTIVE
    state_since: datetime | None = None  # when it entered `state`; used for `granting`

    @property
    def policy_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.policies)

    def expected_hash(self, name: str) -> str:
        return next(document_hash(p.document) for p in self.policies if p.name == name)


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    principal_arn: str
    policy_kind: PolicyKind
    policy_name: str
    grant_id: str | None
    action: str  # what was (or, in dry-run, would be) done
    applied: bool
    error: str = ""  # set when the repair itself failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "finding": self.kind,
            "principal_arn": self.principal_arn,
            "policy_kind": self.policy_kind,
            "policy_name": self.policy_name,
            "grant_id": self.grant_id,
            "action": self.action,
            "applied": self.applied,
            "error": self.error,
        }


class ReconcileStore(Protocol):
    """The database side of reconcile (implemented by the lead over models/audit)."""

    def expected_grants(self) -> Sequence[ExpectedGrant]:
        """Grants in `active` or `granting`."""
        ...

    def principals_ever_granted(self) -> Sequence[str]:
        """Every principal ARN the bot has ever granted to."""
        ...

    def record_finding(self, finding: Finding) -> None:
        """Append the finding as an audit event (called for every non-ok finding)."""
        ...

    def is_live(self, grant_id: str) -> bool:
        """Whether the grant is `granting` or `active` now (read fresh, not from the
        snapshot `expected_grants` took at the start of the run)."""
        ...

    def mark_failed(self, grant_id: str, reason: str) -> None:
        """Move the grant to `failed` (from `active` or `granting`) with the reason."""
        ...
