"""Reconcile as a process runs it: which principals to check, the run, and the alerts.

`connect-access reconcile` and the scheduler leader (every `timings.reconcile_interval`,
and once when it starts leading) both call `run_reconcile`, so they check the same
principals: every one the operator config maps, every one the tag lookup finds (when it is
on), and every one the bot ever granted to, which includes principals that never had a
grant (an orphan `connect-access-*` policy on such a principal is found too). *How* IAM is
listed is bot.aws.reconcile's business; this module decides *when* and *what*.

Every finding that was acted on, every grant that could not be checked, every conflict and
a run that could not read IAM at all becomes an alert (bot.alerts): the request, requester,
principal, policy and what to do next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from bot.alerts import Alert
from bot.aws.granter import IamGranter
from bot.aws.principals import tagged_principals
from bot.aws.reconcile import grant_id_of, reconcile
from bot.models import AccessRequest, Grant
from bot.ports import GrantError
from bot.reconcile_model import Finding, ProgressCallback
from bot.reconcile_store import DbReconcileStore, Unverifiable
from bot.runtime import Runtime

log = logging.getLogger(__name__)

NEXT_STEPS = {
    "orphan": "Nothing to undo: the bot removed a connect-access policy no live grant "
              "accounts for. Check CloudTrail for who put it there if the bot did not.",
    "missing": "The bot put the granted policy back. Check CloudTrail for who removed it.",
    "tampered": "The bot restored the granted document. Check CloudTrail for who edited "
                "it, and whether the edit was used.",
    "stranded": "The bot stopped while attaching this grant; whatever reached IAM was "
                "removed and the requester was told. They may simply ask again.",
}


@dataclass
class ReconcileRun:
    findings: list[Finding] = field(default_factory=list)
    unverifiable: list[Unverifiable] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.kind != "ok"]


def principals_to_check(runtime: Runtime) -> list[str]:
    """Mapped principals, and tagged ones when the tag lookup is on (the bot's account and
    every account it assumes a role in)."""
    found = set(runtime.config.principals.values())
    if runtime.config.principal_tag_lookup:
        found.update(_tagged(runtime))
    return sorted(found)


def _tagged(runtime: Runtime) -> Iterator[str]:
    accounts = (None, *sorted({i.account for i in runtime.config.instances
                               if i.assume_role_arn}))
    for account in accounts:
        for arn, _tags in tagged_principals(runtime.aws.iam_for_account(account)):
            yield arn


def run_reconcile(runtime: Runtime, *, dry_run: bool = False,
                  progress: ProgressCallback | None = None) -> ReconcileRun:
    """One reconcile over every principal in scope. Raises GrantError (IAM could not be
    read: nothing was changed), BotoCoreError/ClientError (the tag lookup failed) or
    SQLAlchemyError, for the caller to report."""
    granter = runtime.granter
    if not isinstance(granter, IamGranter):
        raise TypeError("reconcile needs the IAM granter")
    store = DbReconcileStore(runtime.service)
    findings = reconcile(granter, store, now=runtime.clock.now(), dry_run=dry_run,
                         extra_principals=principals_to_check(runtime), progress=progress)
    return ReconcileRun(findings, list(store.unverifiable), list(store.conflicts))


def alert_run(runtime: Runtime, run: ReconcileRun) -> int:
    """Alert on everything the run found or could not settle; returns how many alerts."""
    sent = 0
    for finding in run.problems:
        if finding.kind == "unchecked":
            runtime.alerter.alert(Alert(
                kind="reconcile_unchecked",
                summary=f"Reconcile could not read {finding.principal_arn} from IAM and "
                        f"left it unchecked: {finding.error}",
                next_step="Usually IAM's rate limit: nothing to do if the next run reads "
                          "it. If it repeats, check the bot's IAM permissions and "
                          "iam.requests_per_second.",
                principal_arn=finding.principal_arn))
            sent += 1
            continue
        if not finding.applied:
            continue  # dry run, or an expired grant left to the sweep: nothing to act on
        request_id, requester = _request_of(runtime, finding.grant_id
                                            or grant_id_of(finding.policy_name))
        if finding.error:
            what = (f"Reconcile found a {finding.kind} policy and could not repair it "
                    f"({finding.action}): {finding.error}")
            next_step = ("Fix the cause named in the error (the bot's IAM permissions, a "
                         "deleted principal) and run `connect-access reconcile`, or remove "
                         "the policy by hand.")
        else:
            what = f"Reconcile found a {finding.kind} policy and did: {finding.action}."
            next_step = NEXT_STEPS.get(finding.kind, "Check the principal by hand.")
        runtime.alerter.alert(Alert(
            kind="reconcile_finding", summary=what, next_step=next_step,
            request_id=request_id, requester=requester,
            principal_arn=finding.principal_arn, policy_names=(finding.policy_name,),
            details={"finding": finding.kind, "policy kind": finding.policy_kind}))
        sent += 1
    for item in run.unverifiable:
        runtime.alerter.alert(Alert(
            kind="reconcile_unverifiable",
            summary=f"Reconcile could not check grant {item.grant_id}: {item.reason}",
            next_step="Compare the principal's connect-access policies with the request by "
                      "hand, or revoke the grant and have it requested again.",
            request_id=item.request_id, requester=_request_of(runtime, item.grant_id)[1],
            principal_arn=item.principal_arn))
        sent += 1
    for conflict in run.conflicts:
        runtime.alerter.alert(Alert(
            kind="reconcile_conflict", summary=f"Reconcile: {conflict}.",
            next_step="Nothing unless it repeats: the next run starts from the new state."))
        sent += 1
    return sent


def _request_of(runtime: Runtime, grant_id: str | None) -> tuple[int | None, str | None]:
    if not grant_id:
        return None, None
    with runtime.sessions() as session:
        row = session.execute(
            select(AccessRequest.id, AccessRequest.requester)
            .join(Grant, Grant.request_id == AccessRequest.id).where(Grant.id == grant_id)
        ).first()
    return (row[0], row[1]) if row is not None else (None, None)


class ScheduledReconcile:
    """What the scheduler leader runs every timings.reconcile_interval: reconcile, repair
    what is safe, alert on everything found. Never raises: a run that fails is alerted
    and the next one tries again."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __call__(self, now: datetime) -> int:
        try:
            run = run_reconcile(self.runtime)
        except (GrantError, BotoCoreError, ClientError, SQLAlchemyError) as exc:
            log.error("scheduled reconcile could not run: %s", exc)
            self.runtime.alerter.alert(Alert(
                kind="reconcile_failed",
                summary=f"Scheduled reconcile could not read IAM or the database; nothing "
                        f"was changed: {exc}",
                next_step="Check the scheduler's AWS credentials and the bot's IAM "
                          "permissions (deploy/bot-iam-policy.json); the next run is in "
                          f"{self.runtime.config.timings.reconcile_interval}."))
            return 0
        alerts = alert_run(self.runtime, run)
        if run.problems:
            log.info("scheduled reconcile: %d finding(s), %d alert(s)", len(run.problems),
                     alerts)
        return len(run.problems)
