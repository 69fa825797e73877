"""Reconcile for Identity Center grants: the instance's `connect-access-*` permission sets
and their assignments, against the grants the database holds as live. Same findings as
for IAM policies (bot.aws.reconcile):

- orphan:   a connect-access-* permission set no live grant accounts for -> its
            assignments and the set removed;
- missing:  an active grant whose set or assignment is gone -> attached again;
- tampered: an active grant whose set holds another policy, or lost the required
            permissions boundary -> restored;
- stranded: a grant left in `granting` -> whatever reached Identity Center removed, the
            grant marked failed;
- ok.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bot.aws.granter import document_hash
from bot.aws.identity_center import IdentityCenterGranter, PermissionSetInfo
from bot.ports import GrantError, PolicyKind
from bot.states import GRANTING
from bot.targets import IdentityCenterTarget, parse_target

if TYPE_CHECKING:
    from bot.reconcile_model import ExpectedGrant, Finding, FindingKind, ReconcileStore

KIND: PolicyKind = "permission_set"


def reconcile_permission_sets(
    granter: IdentityCenterGranter,
    store: ReconcileStore,
    expected: Sequence[ExpectedGrant],
    *,
    now: datetime,
    dry_run: bool,
    granting_grace: timedelta,
    act: Callable[[Finding], None],
) -> None:
    """Compare and repair; every finding goes to `act` (which records and notifies).
    All reads happen first: when Identity Center cannot be read, one `unchecked` finding
    says so and nothing of it is changed (like an IAM principal that cannot be read)."""
    from bot.aws.reconcile import grant_id_of
    from bot.reconcile_model import Finding

    try:
        present = {ps.name: ps for ps in granter.managed_permission_sets()}
        accounts_of = {ps.name: {a.account for a in granter.assignments(ps.arn)}
                       for ps in present.values()}
    except GrantError as exc:
        act(Finding("unchecked", granter.instance_arn, KIND, "*", None,
                    "none: Identity Center could not be read", applied=False,
                    error=str(exc)))
        return
    by_name = {name: grant for grant in expected for name in grant.policy_names}

    def remove(ps: PermissionSetInfo, grant_id: str | None, kind: FindingKind,
               principal: str) -> Finding:
        error = ""
        if not dry_run:
            try:
                granter.remove(ps.arn, ps.name)
            except GrantError as exc:
                error = str(exc)
        return Finding(kind, principal, KIND, ps.name, grant_id,
                       "remove the permission set and its assignments", not dry_run, error)

    def restore(grant: ExpectedGrant, name: str, kind: FindingKind, why: str
                ) -> Finding | None:
        if not store.is_live(grant.grant_id):
            return None  # revoked while we ran: putting it back would undo the revoke
        if grant.expires_at <= now:
            return Finding(kind, grant.principal_arn, KIND, name, grant.grant_id,
                           "none: grant has expired, left to the expiry sweep", applied=False)
        action = f"attach the grant again ({why})"
        error = ""
        if not dry_run:
            try:
                granter.attach(grant)
            except GrantError as exc:
                error = str(exc)
                action += "; failed, grant marked failed"
                store.mark_failed(grant.grant_id, f"reconcile could not {action}: {exc}")
        return Finding(kind, grant.principal_arn, KIND, name, grant.grant_id, action,
                       not dry_run, error)

    for name, orphan in sorted(present.items()):
        if name not in by_name and not store.is_live(grant_id_of(name)):
            act(remove(orphan, None, "orphan", orphan.arn))

    def restore_and_act(grant: ExpectedGrant, name: str, kind: FindingKind, why: str) -> None:
        finding = restore(grant, name, kind, why)
        if finding is not None:
            act(finding)

    for grant in expected:
        name = grant.policy_names[0]
        ps = present.get(name)
        if grant.state == GRANTING:
            if grant.state_since and now - grant.state_since < granting_grace:
                continue  # an attach may be running right now
            if ps is not None:
                act(remove(ps, grant.grant_id, "stranded", grant.principal_arn))
            else:
                act(Finding("stranded", grant.principal_arn, KIND, name, grant.grant_id,
                            "nothing reached Identity Center", applied=not dry_run))
            if not dry_run:
                store.mark_failed(
                    grant.grant_id,
                    "the bot stopped while granting this permission set; reconcile removed "
                    "whatever reached Identity Center, so nothing is granted. Request it "
                    "again.")
            continue
        account = grant.instance_arn.split(":")[4] if grant.instance_arn else None
        if ps is None:
            restore_and_act(grant, name, "missing", "the permission set is gone")
        elif account not in accounts_of.get(name, set()):
            restore_and_act(grant, name, "missing", f"no assignment on account {account}")
        else:
            try:
                document = granter.inline_document(ps.arn)
                bounded = granter.has_required_boundary(ps.arn)
                assigned = _assigned_to_user(granter, grant, ps)
            except GrantError as exc:
                act(Finding("unchecked", grant.principal_arn, KIND, name, grant.grant_id,
                            "none: Identity Center could not be read", applied=False,
                            error=str(exc)))
                continue
            if document is None or document_hash(document) != grant.expected_hash(name):
                restore_and_act(grant, name, "tampered", "its inline policy was changed")
            elif not bounded:
                restore_and_act(grant, name, "tampered",
                                "its permissions boundary was removed or changed")
            elif not assigned:
                restore_and_act(grant, name, "missing", "not assigned to the user")
            else:
                act(Finding("ok", grant.principal_arn, KIND, name, grant.grant_id, "none",
                            applied=False))


def _assigned_to_user(granter: IdentityCenterGranter, grant: ExpectedGrant,
                      ps: PermissionSetInfo) -> bool:
    target = parse_target(grant.principal_arn)
    if not isinstance(target, IdentityCenterTarget):
        return False
    user_id = granter.user_id(target.user)
    return any(a.principal_id == user_id for a in granter.assignments(ps.arn))
