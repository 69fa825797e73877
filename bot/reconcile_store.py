"""DbReconcileStore: the database side of `connect-access reconcile` (see
bot.aws.reconcile.ReconcileStore).

The grants table records policy names, kind, window and a hash of what was attached, not
the documents themselves. The documents are rebuilt with the same plan builder that made
them (the policy compiler is deterministic: same entry, principal, instance and window give
the same document) and the rebuild is checked against the recorded hash. A grant whose
rebuild does not match (the catalog entry or the compiler changed since it was granted) is
not compared or repaired at all: restoring it would put on the principal something nobody
approved, and removing it would cut access that was approved. It is listed in
`unverifiable` for the operator instead.

Outcomes, consistent with the lifecycle's state machine:

- a grant stuck in `granting` is settled with RequestService.finish_stuck_grant(attached=
  False): reconcile has already removed whatever reached IAM, and the requester was never
  told it worked, so it fails (audited, requester notified);
- an `active` grant whose policy is gone and cannot be put back has no access left on the
  principal: RequestService.end_active_by_reconcile ends it (request revoked, grant failed
  with the error, requester told), so every state change goes through the lifecycle.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import select, update

from bot.audit import append_event
from bot.evidence import combined_hash, document_hash
from bot.lifecycle import RECONCILE_ACTOR, LifecycleError, RequestService, rebuild_context
from bot.models import AccessRequest, Grant
from bot.ports import PolicyDocument, PolicyKind
from bot.reconcile_model import ExpectedGrant, Finding
from bot.states import ACTIVE, GRANTING

log = logging.getLogger(__name__)

__all__ = ["RECONCILE_ACTOR", "DbReconcileStore", "ReconcileStoreError", "Unverifiable"]
# A `granting` state_since that is always "just now" for reconcile, so it leaves the grant
# alone (its policy names still count as expected, so they are not orphans either).
_HOLD = datetime.max.replace(tzinfo=UTC)


class ReconcileStoreError(Exception):
    """A reconcile decision cannot be recorded (the grant changed meanwhile)."""


@dataclass(frozen=True)
class Unverifiable:
    grant_id: str
    request_id: int
    principal_arn: str
    reason: str




@dataclass
class DbReconcileStore:
    """ReconcileStore over the request service's database, plan builder, clock and
    notifier. `unverifiable` is filled by expected_grants(), `conflicts` by mark_failed
    when a grant changed state while reconcile ran."""

    service: RequestService
    unverifiable: list[Unverifiable] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    # -- reads ------------------------------------------------------------------------

    def expected_grants(self) -> Sequence[ExpectedGrant]:
        self.unverifiable = []
        with self.service.sessions() as session:
            rows = session.execute(
                select(Grant, AccessRequest)
                .join(AccessRequest, AccessRequest.id == Grant.request_id)
                .where(Grant.state.in_((ACTIVE, GRANTING)))
                .order_by(Grant.created_at)
            ).all()
        expected: list[ExpectedGrant] = []
        for grant, request in rows:
            if grant.state == GRANTING:
                expected.append(self._granting(grant, request))
            else:
                expected.append(self._active(grant, request))
        return expected

    def is_live(self, grant_id: str) -> bool:
        with self.service.sessions() as session:
            state = session.execute(select(Grant.state).where(Grant.id == grant_id)).scalar()
        return state in (ACTIVE, GRANTING)

    def principals_ever_granted(self) -> Sequence[str]:
        with self.service.sessions() as session:
            return list(session.execute(
                select(Grant.principal_arn).distinct().order_by(Grant.principal_arn)
            ).scalars())

    def _granting(self, grant: Grant, request: AccessRequest) -> ExpectedGrant:
        # For a grant in `granting` reconcile only uses the names (it removes whatever of
        # them reached IAM), so the documents are not rebuilt.
        return ExpectedGrant(
            grant_id=grant.id,
            principal_arn=grant.principal_arn,
            kind=cast(PolicyKind, grant.kind),
            policies=tuple(PolicyDocument(name, {}) for name in grant.policy_names),
            expires_at=grant.expires_at,
            state=GRANTING,
            state_since=request.granting_at or grant.created_at,
            instance_arn=request.instance_arn,
        )

    def _active(self, grant: Grant, request: AccessRequest) -> ExpectedGrant:
        kind = cast(PolicyKind, grant.kind)
        names = tuple(grant.policy_names)
        problem = ""
        policies: tuple[PolicyDocument, ...] = tuple(PolicyDocument(n, {}) for n in names)
        try:
            plan = self.service.plan_builder(rebuild_context(grant, request))
        except Exception as exc:  # any compiler refusal means: cannot rebuild
            problem = f"the policy cannot be rebuilt any more ({exc})"
        else:
            rebuilt_hash = combined_hash([document_hash(p.document) for p in plan.policies])
            if plan.kind != kind or tuple(p.name for p in plan.policies) != names:
                problem = (f"rebuilding gives {plan.kind} policies "
                           f"{[p.name for p in plan.policies]}, but {kind} {list(names)} "
                           "were granted")
            elif grant.document_hash is not None and rebuilt_hash != grant.document_hash:
                problem = ("the rebuilt policy differs from the one granted (the catalog "
                           "entry or the policy compiler changed since)")
            else:
                policies = plan.policies
        if problem:
            log.warning("reconcile leaves grant %s alone: %s", grant.id, problem)
            self.unverifiable.append(
                Unverifiable(grant.id, request.id, grant.principal_arn,
                             f"{problem}; left as it is in IAM. Check it by hand, or revoke "
                             "the grant and have it requested again.")
            )
            return ExpectedGrant(
                grant_id=grant.id, principal_arn=grant.principal_arn, kind=kind,
                policies=policies, expires_at=grant.expires_at, state=GRANTING,
                state_since=_HOLD, instance_arn=request.instance_arn,
            )
        return ExpectedGrant(
            grant_id=grant.id, principal_arn=grant.principal_arn, kind=kind,
            policies=policies, expires_at=grant.expires_at, state=ACTIVE,
            state_since=grant.attached_at, instance_arn=request.instance_arn,
        )

    # -- writes -----------------------------------------------------------------------

    def record_finding(self, finding: Finding) -> None:
        with self.service.sessions.begin() as session:
            request_id = None
            if finding.grant_id is not None:
                request_id = session.execute(
                    select(Grant.request_id).where(Grant.id == finding.grant_id)
                ).scalar_one_or_none()
            append_event(session, at=self.service.clock.now(), actor=RECONCILE_ACTOR,
                         action=f"reconcile_{finding.kind}", request_id=request_id,
                         details=finding.as_dict())

    def mark_failed(self, grant_id: str, reason: str) -> None:
        try:
            self._mark_failed(grant_id, reason)
        except (LifecycleError, ReconcileStoreError) as exc:
            # The grant moved on while reconcile ran (a slow attach finished, someone
            # revoked it). Raising would stop the run with the other repairs undone; the
            # next run starts from the new state, and the CLI says to run it.
            log.warning("reconcile could not fail grant %s: %s", grant_id, exc)
            self.conflicts.append(f"grant {grant_id} was not marked failed: {exc}")

    def _mark_failed(self, grant_id: str, reason: str) -> None:
        with self.service.sessions() as session:
            state = session.execute(
                select(Grant.state).where(Grant.id == grant_id)
            ).scalar_one_or_none()
        if state is None:
            raise ReconcileStoreError(f"there is no grant {grant_id}")
        if state == GRANTING:
            self.service.finish_stuck_grant(grant_id, attached=False, actor=RECONCILE_ACTOR)
            # finish_stuck_grant records a generic error; keep reconcile's precise one.
            with self.service.sessions.begin() as session:
                session.execute(update(Grant).where(Grant.id == grant_id)
                                .values(last_error=reason))
            return
        if state == ACTIVE:
            self.service.end_active_by_reconcile(grant_id, reason, actor=RECONCILE_ACTOR)
            return
        raise ReconcileStoreError(
            f"it is {state} now, and reconcile only fails grants that are granting or active")
