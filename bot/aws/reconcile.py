"""Reconcile: compare what IAM holds with what the database says is granted, and repair it.

The database is the intent, IAM the fact. A crash between an IAM call and the commit, a
revoke that never finished, or a person editing a policy by hand all show up here as
findings:

- orphan:   a connect-access policy that no live grant accounts for -> removed;
- missing:  an active grant whose policy is gone -> re-attached (or the grant marked failed);
- tampered: an active grant whose document differs from what was granted -> restored;
- stranded: a grant left in `granting` (the process died mid-attach) -> whatever reached IAM
            is removed and the grant marked failed, since its requester was never told it
            worked;
- unchecked: a principal IAM would not let us read (throttled past botocore's retries,
            access denied) -> nothing about it is changed, and the run says so;
- ok.

IAM is read account by account with GetAccountAuthorizationDetails (every page): a thousand
principals per call, inline documents and managed versions included, so 5,000 principals
take a handful of calls rather than three or more each. Where that call fails (not allowed
by an older bot policy, or still throttled), the account's principals are read one by one,
and a principal that cannot be read is reported as unchecked while the rest go on.

`reconcile(...)` is the whole job; the CLI only builds its arguments and prints
`format_summary`. In dry-run nothing is changed, in IAM or in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.aws.granter import POLICY_PREFIX, IamGranter, decode_document, document_hash
from bot.aws.principals import parse_principal_arn
from bot.ports import (
    GrantError,
    Notification,
    NotificationEvent,
    Notifier,
    PolicyKind,
    PrincipalError,
)
from bot.reconcile_model import (
    ExpectedGrant,
    Finding,
    FindingKind,
    ProgressCallback,
    ReconcileProgress,
    ReconcileStore,
)
from bot.states import RequestState
from bot.targets import TargetError, parse_target

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _Present:
    principal_arn: str
    kind: PolicyKind
    name: str
    hash: str


def reconcile(
    granter: IamGranter,
    store: ReconcileStore,
    *,
    now: datetime,
    dry_run: bool = False,
    extra_principals: Iterable[str] = (),
    granting_grace: timedelta = timedelta(minutes=5),
    notifier: Notifier | None = None,
    progress: ProgressCallback | None = None,
) -> list[Finding]:
    """Scan every principal the bot has granted to (plus `extra_principals`, e.g. the
    tagged ones from principals.tagged_principals) and repair what differs from the store.

    Grants in `granting` for less than `granting_grace` are left alone: an attach may be
    running right now.
    """
    everything = list(store.expected_grants())
    # Permission sets (Identity Center users) are reconciled by their own module below.
    permission_sets = [g for g in everything if g.kind == "permission_set"]
    expected = [g for g in everything if g.kind != "permission_set"]
    # Keyed by the IAM principal holding the policies: a shared role's grants (one per
    # person's session) all sit on the role.
    principals = sorted(
        {holder for ref in (*store.principals_ever_granted(), *extra_principals,
                            *(g.principal_arn for g in expected))
         if (holder := _holder(ref)) is not None}
    )
    in_flight = {
        g.grant_id
        for g in expected
        if g.state == RequestState.GRANTING and g.state_since
        and now - g.state_since < granting_grace
    }
    by_policy: dict[tuple[str, PolicyKind, str], ExpectedGrant] = {
        (_holder(g.principal_arn) or "", g.kind, name): g
        for g in expected for name in g.policy_names
    }
    # Every read happens before any change. What could not be read is reported unchecked
    # and left alone (its grants are neither restored nor its policies removed).
    expected_managed = {name for (_, kind, name) in by_policy if kind == "managed"}
    snapshot = read_iam(granter, principals, progress)
    present = snapshot.present
    detached = [item for item in snapshot.detached if item.name not in expected_managed]
    findings: list[Finding] = [
        Finding("unchecked", principal, "inline", "*", None,
                "none: IAM could not be read for this principal", applied=False, error=reason)
        for principal, reason in sorted(snapshot.unchecked.items())
    ]

    def act(finding: Finding) -> None:
        findings.append(finding)
        if finding.kind != "ok" and finding.applied:
            store.record_finding(finding)
            if notifier is not None:
                notifier.notify(Notification(NotificationEvent.RECONCILE_FINDING, None,
                                             finding.as_dict()))

    # Policies in IAM that no live grant explains. A grant made after our snapshot of the
    # database looks like an orphan here, so ask again before removing its policy.
    # And a grant revoked while we ran had its policy removed by the lifecycle meanwhile:
    # read the policy again, so that is not reported (and alerted) as an orphan.
    for key, item in sorted(present.items()):
        if (key not in by_policy and not store.is_live(grant_id_of(item.name))
                and _still_present(granter, item)):
            act(_remove(granter, item, None, "orphan", dry_run))
    # Managed policies left behind detached (a revoke that died between detach and delete).
    for item in detached:
        act(_remove(granter, item, None, "orphan", dry_run))

    # Live grants, checked against IAM.
    for grant in expected:
        if grant.grant_id in in_flight or _holder(grant.principal_arn) in snapshot.unchecked:
            continue
        if grant.state == RequestState.GRANTING:
            act_all = _resolve_stranded(granter, store, grant, present, dry_run)
            for finding in act_all:
                act(finding)
            continue
        for policy in grant.policies:
            key = (_holder(grant.principal_arn) or "", grant.kind, policy.name)
            held = present.get(key)
            drifted = held is None or held.hash != grant.expected_hash(policy.name)
            if drifted and not store.is_live(grant.grant_id):
                # Revoked while we ran (expiry, "I'm done"): putting it back would grant
                # what was just taken away.
                continue
            if held is None:
                act(_restore(granter, store, grant, policy.name, "missing", now, dry_run))
            elif held.hash != grant.expected_hash(policy.name):
                act(_restore(granter, store, grant, policy.name, "tampered", now, dry_run))
            else:
                act(
                    Finding(
                        "ok",
                        grant.principal_arn,
                        grant.kind,
                        policy.name,
                        grant.grant_id,
                        "none",
                        applied=False,
                    )
                )
    _reconcile_identity_center(granter, store, permission_sets, now=now, dry_run=dry_run,
                               granting_grace=granting_grace, act=act)
    if progress is not None:
        progress(ReconcileProgress("done", len(principals), len(principals),
                                   len(snapshot.unchecked)))
    return findings


def _reconcile_identity_center(granter: IamGranter, store: ReconcileStore,
                               expected: list[ExpectedGrant], **options: Any) -> None:
    from bot.aws.identity_center_reconcile import reconcile_permission_sets
    from bot.aws.target_granter import TargetGranter

    if isinstance(granter, TargetGranter) and granter.identity_center is not None:
        reconcile_permission_sets(granter.identity_center, store, expected, **options)
    elif expected:
        log.warning("%d Identity Center grant(s) not reconciled: no identity_center config",
                    len(expected))


def _holder(ref: str) -> str | None:
    """The IAM principal a target reference's policies sit on (None: Identity Center)."""
    try:
        return parse_target(ref).policy_holder
    except TargetError:
        return ref  # scanned as it is; the IAM granter reports what is wrong with it


def grant_id_of(policy_name: str) -> str:
    """`connect-access-<grant id>` or, for split managed plans, `...-<grant id>-<n>`."""
    grant_part = policy_name.removeprefix(POLICY_PREFIX)
    head, sep, tail = grant_part.rpartition("-")
    return head if sep and tail.isdigit() else grant_part


def _still_present(granter: IamGranter, item: _Present) -> bool:
    try:
        if item.kind == "inline":
            return granter.inline_document(item.principal_arn, item.name) is not None
        return any(arn.rsplit("/", 1)[-1] == item.name
                   for arn in granter.attached_managed_arns(item.principal_arn))
    except GrantError:
        return True  # cannot tell: act on what the scan found


@dataclass
class IamSnapshot:
    """What reconcile read from IAM: the bot's policies on each principal, its managed
    policies attached to nothing, and the principals it could not read (with why)."""

    present: dict[tuple[str, PolicyKind, str], _Present] = field(default_factory=dict)
    detached: list[_Present] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)
    calls: int = 0  # GetAccountAuthorizationDetails pages read


def read_iam(granter: IamGranter, principals: Sequence[str],
             progress: ProgressCallback | None = None) -> IamSnapshot:
    """Read the bot's policies on `principals`, account by account (see the module doc)."""
    snapshot = IamSnapshot()
    by_account: dict[str, list[str]] = {}
    for arn in principals:
        by_account.setdefault(arn.split(":")[4], []).append(arn)
    done = 0

    def report() -> None:
        if progress is not None:
            progress(ReconcileProgress("reading", done, len(principals),
                                       len(snapshot.unchecked)))

    for account, members in sorted(by_account.items()):
        try:
            details = _account_details(granter, members[0], snapshot, report)
        except GrantError as exc:
            log.warning("reading account %s in one pass failed (%s); reading its %d "
                        "principal(s) one by one", account, exc.code, len(members))
            details = None
        if details is not None:
            entities, policies = details
            for principal in members:
                _from_details(granter, principal, entities, policies, snapshot)
                done += 1
            for policy in policies.values():
                if (policy.get("AttachmentCount", 0) == 0
                        and str(policy.get("Path", "")).startswith(granter.managed_path)):
                    name = str(policy["Arn"]).rsplit("/", 1)[-1]
                    if name.startswith(POLICY_PREFIX):
                        snapshot.detached.append(_Present(members[0], "managed", name, ""))
            report()
            continue
        for principal in members:
            try:
                for item in _scan(granter, principal):
                    snapshot.present[(item.principal_arn, item.kind, item.name)] = item
            except GrantError as exc:
                snapshot.unchecked[principal] = str(exc)
            done += 1
            report()
        try:
            snapshot.detached.extend(
                _Present(members[0], "managed", name, "")
                for name in granter.unattached_managed_names(members[0])
                if name.startswith(POLICY_PREFIX))
        except GrantError as exc:
            # Only leftovers of interrupted revokes are missed; say so, change nothing.
            snapshot.unchecked[f"account {account}: detached managed policies"] = str(exc)
    return snapshot


_DETAIL_LISTS = {"role": ("RoleDetailList", "RoleName", "RolePolicyList"),
                 "user": ("UserDetailList", "UserName", "UserPolicyList"),
                 "group": ("GroupDetailList", "GroupName", "GroupPolicyList")}


def _account_details(
    granter: IamGranter, some_principal: str, snapshot: IamSnapshot, report: Callable[[], None]
) -> tuple[dict[tuple[str, str], Mapping[str, Any]], dict[str, Mapping[str, Any]]]:
    """(kind, name) -> role/user/group detail, and policy ARN -> managed policy detail."""
    entities: dict[tuple[str, str], Mapping[str, Any]] = {}
    policies: dict[str, Mapping[str, Any]] = {}
    for page in granter.authorization_details(some_principal):
        snapshot.calls += 1
        for kind, (list_key, name_key, _) in _DETAIL_LISTS.items():
            for detail in page.get(list_key, []):
                entities[(kind, str(detail[name_key]))] = detail
        for policy in page.get("Policies", []):
            policies[str(policy["Arn"])] = policy
        report()
    return entities, policies


def _from_details(
    granter: IamGranter,
    principal_arn: str,
    entities: Mapping[tuple[str, str], Mapping[str, Any]],
    policies: Mapping[str, Mapping[str, Any]],
    snapshot: IamSnapshot,
) -> None:
    try:
        principal = parse_principal_arn(principal_arn)
    except PrincipalError as exc:
        snapshot.unchecked[principal_arn] = str(exc)
        return
    detail = entities.get((principal.kind, principal.name))
    if detail is None:  # the principal itself is gone: nothing to hold access
        return
    for inline in detail.get(_DETAIL_LISTS[principal.kind][2], []):
        name = str(inline["PolicyName"])
        if name.startswith(POLICY_PREFIX):
            document = decode_document(inline["PolicyDocument"])
            snapshot.present[(principal_arn, "inline", name)] = _Present(
                principal_arn, "inline", name, document_hash(document))
    for attached in detail.get("AttachedManagedPolicies", []):
        arn = str(attached["PolicyArn"])
        name = arn.rsplit("/", 1)[-1]
        if not name.startswith(POLICY_PREFIX) or f":policy{granter.managed_path}" not in arn:
            continue
        policy = policies.get(arn)
        versions = [] if policy is None else policy.get("PolicyVersionList", [])
        default = next((v for v in versions if v.get("IsDefaultVersion")), None)
        if default is not None:
            snapshot.present[(principal_arn, "managed", name)] = _Present(
                principal_arn, "managed", name,
                document_hash(decode_document(default["Document"])))


def _scan(granter: IamGranter, principal_arn: str) -> list[_Present]:
    found: list[_Present] = []
    try:
        names = granter.inline_policy_names(principal_arn)
    except GrantError as exc:
        if exc.code == "NoSuchEntity":  # the principal itself is gone: nothing to hold access
            return []
        raise
    for name in names:
        if name.startswith(POLICY_PREFIX):
            document = granter.inline_document(principal_arn, name)
            if document is not None:
                found.append(_Present(principal_arn, "inline", name, document_hash(document)))
    for arn in granter.attached_managed_arns(principal_arn):
        name = arn.rsplit("/", 1)[-1]
        if name.startswith(POLICY_PREFIX):
            document = granter.managed_document(principal_arn, arn)
            if document is not None:
                found.append(_Present(principal_arn, "managed", name, document_hash(document)))
    return found


def _remove(
    granter: IamGranter,
    item: _Present,
    grant_id: str | None,
    kind: FindingKind,
    dry_run: bool,
) -> Finding:
    action = f"remove {item.kind} policy"
    error = ""
    if not dry_run:
        try:
            granter.revoke(item.principal_arn, item.kind, [item.name])
        except GrantError as exc:
            error = str(exc)
    return Finding(
        kind, item.principal_arn, item.kind, item.name, grant_id, action, not dry_run, error
    )


def _restore(
    granter: IamGranter,
    store: ReconcileStore,
    grant: ExpectedGrant,
    name: str,
    kind: FindingKind,
    now: datetime,
    dry_run: bool,
) -> Finding:
    if grant.expires_at <= now:
        # Past its expiry the policy should be gone anyway; the sweep closes the grant.
        return Finding(
            kind,
            grant.principal_arn,
            grant.kind,
            name,
            grant.grant_id,
            "none: grant has expired, left to the expiry sweep",
            applied=False,
        )
    action = "re-attach the granted document" if kind == "missing" else "restore the document"
    error = ""
    if not dry_run:
        try:
            granter.attach(grant)
        except GrantError as exc:
            error = str(exc)
            action += "; failed, grant marked failed"
            store.mark_failed(grant.grant_id, f"reconcile could not {action}: {exc}")
    return Finding(
        kind, grant.principal_arn, grant.kind, name, grant.grant_id, action, not dry_run, error
    )


def _resolve_stranded(
    granter: IamGranter,
    store: ReconcileStore,
    grant: ExpectedGrant,
    present: Mapping[tuple[str, PolicyKind, str], _Present],
    dry_run: bool,
) -> list[Finding]:
    findings: list[Finding] = []
    for name in grant.policy_names:
        item = present.get((_holder(grant.principal_arn) or "", grant.kind, name))
        if item is not None:
            finding = _remove(granter, item, grant.grant_id, "stranded", dry_run)
        elif grant.kind == "managed":
            # The crash may have come between create_policy and attach: the policy exists,
            # attached to nothing. Revoke is idempotent, so just run it.
            leftover = _Present(grant.principal_arn, "managed", name, "")
            finding = _remove(granter, leftover, grant.grant_id, "stranded", dry_run)
        else:
            finding = Finding(
                "stranded",
                grant.principal_arn,
                grant.kind,
                name,
                grant.grant_id,
                "nothing reached IAM",
                applied=not dry_run,
            )
        findings.append(finding)
    if not dry_run and not any(f.error for f in findings):
        store.mark_failed(
            grant.grant_id,
            "the bot stopped while attaching this grant; reconcile removed whatever reached "
            "IAM, so nothing is granted. Request it again.",
        )
    return findings


def summary_rows(findings: Sequence[Finding]) -> list[tuple[str, ...]]:
    return [
        (
            f.kind,
            f.principal_arn,
            f"{f.policy_kind}:{f.policy_name}",
            f.grant_id or "-",
            f.action + ("" if f.applied or f.kind in ("ok", "unchecked") else " (dry-run)"),
            f.error or "",
        )
        for f in findings
    ]


def format_summary(findings: Sequence[Finding]) -> str:
    """A plain-text table of the findings plus a count per kind, for the CLI."""
    header = ("FINDING", "PRINCIPAL", "POLICY", "GRANT", "ACTION", "ERROR")
    rows = [header, *summary_rows(findings)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    lines.append("")
    lines.append(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing found")
    return "\n".join(lines)
