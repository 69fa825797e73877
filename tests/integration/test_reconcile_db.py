"""Reconcile over the real database (SQLite and PostgreSQL) and moto: DbReconcileStore
rebuilds what each active grant put in IAM, and orphan, missing and tampered policies are
repaired with an audit event each; `connect-access reconcile` prints the summary.

Grants are made through the lifecycle with the real IAM granter and the real policy
compiler: the `flow` fixture of conftest.py, as in test_grant_flow_aws.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aws_testkit import REGION, Fault
from grant_flow_kit import (
    ALICE_ROLE,
    CAROL_USER,
    MANAGED_ENTRY,
    READ_ENTRY,
    Flow,
    operator_config_data,
)
from sqlalchemy import func, select
from typer.testing import CliRunner

from bot.aws.granter import document_hash
from bot.aws.reconcile import format_summary, reconcile
from bot.cli import build_cli
from bot.lifecycle import GrantContext
from bot.models import AuditEvent, Grant
from bot.ports import GrantPlan, PolicyDocument
from bot.reconcile_model import Finding
from bot.reconcile_store import RECONCILE_ACTOR, DbReconcileStore

SECOND_READ_ENTRY = "telephony/view-telephony-options"
STRAY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "connect:*", "Resource": "*"}]}


def widened(document: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    changed["Statement"][0]["Action"] = "connect:*"
    changed["Statement"][0].pop("Condition", None)
    return changed


def grant_hashes(flow: Flow) -> dict[str, str | None]:
    with flow.sessions() as session:
        return {g.id: g.document_hash for g in session.execute(select(Grant)).scalars()}


def audit_count(flow: Flow) -> int:
    with flow.sessions() as session:
        return int(session.execute(select(func.count()).select_from(AuditEvent)).scalar_one())


def reconcile_events(flow: Flow) -> list[tuple[str, int | None, str]]:
    with flow.sessions() as session:
        return [
            (e.action, e.request_id, e.details["policy_name"])
            for e in session.execute(
                select(AuditEvent).where(AuditEvent.actor == RECONCILE_ACTOR,
                                         AuditEvent.action.like("reconcile_%"))
                .order_by(AuditEvent.seq)
            ).scalars()
        ]


def managed_document(flow: Flow, user: str) -> dict[str, Any]:
    (attached,) = flow.iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]
    policy = flow.iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
    document: dict[str, Any] = flow.iam.get_policy_version(
        PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"]
    )["PolicyVersion"]["Document"]
    return document


def iam_snapshot(flow: Flow) -> dict[str, Any]:
    return {
        "alice": flow.inline(),
        "carol": flow.iam.list_attached_user_policies(UserName="carol")["AttachedPolicies"],
        "local": flow.local_policies(),
    }


class Drift:
    """Three active grants, then drift made by hand in IAM:
    - `ok`: alice's second grant, untouched;
    - `tampered`: alice's first grant, widened to connect:* without a time box;
    - `missing`: carol's managed policy detached and deleted;
    - `orphan`: a connect-access-* policy on alice that no grant explains;
    plus the operators' own policy on alice, which reconcile must never touch."""

    def __init__(self, flow: Flow) -> None:
        self.tampered_id = self._grant(flow, "U0ALICE", READ_ENTRY)
        self.ok_id = self._grant(flow, "U0ALICE", SECOND_READ_ENTRY)
        self.missing_id = self._grant(flow, "U0CAROL", MANAGED_ENTRY)
        grants = {g.request_id: g for g in (flow.grant_of(r) for r in
                                            (self.tampered_id, self.ok_id, self.missing_id))}
        self.tampered = grants[self.tampered_id]
        self.ok = grants[self.ok_id]
        self.missing = grants[self.missing_id]
        self.tampered_name = self.tampered.policy_names[0]
        self.granted_document = flow.inline()[self.tampered_name]
        flow.iam.put_role_policy(RoleName="alice-admin", PolicyName=self.tampered_name,
                                 PolicyDocument=json.dumps(widened(self.granted_document)))
        (attached,) = flow.iam.list_attached_user_policies(UserName="carol")["AttachedPolicies"]
        flow.iam.detach_user_policy(UserName="carol", PolicyArn=attached["PolicyArn"])
        flow.iam.delete_policy(PolicyArn=attached["PolicyArn"])
        flow.iam.put_role_policy(RoleName="alice-admin", PolicyName="connect-access-leftover",
                                 PolicyDocument=json.dumps(self.granted_document))
        flow.iam.put_role_policy(RoleName="alice-admin", PolicyName="operators-own",
                                 PolicyDocument=json.dumps(widened(self.granted_document)))

    @staticmethod
    def _grant(flow: Flow, requester: str, entry: str) -> int:
        request_id = flow.submit(requester, entry)
        flow.service.approve(request_id, "U0LEAD01")
        assert flow.request(request_id).state == "active"
        return request_id


def kinds(findings: list[Finding]) -> dict[str, str]:
    return {f.policy_name: f.kind for f in findings}


@pytest.fixture
def drift(flow: Flow) -> Drift:
    return Drift(flow)


def test_the_store_rebuilds_exactly_what_each_active_grant_attached(
    flow: Flow, drift: Drift
) -> None:
    store = DbReconcileStore(flow.service)

    expected = {g.grant_id: g for g in store.expected_grants()}

    assert store.unverifiable == []
    assert set(expected) == {drift.tampered.id, drift.ok.id, drift.missing.id}
    ok = expected[drift.ok.id]
    assert ok.state == "active" and ok.kind == "inline"
    assert ok.expected_hash(ok.policy_names[0]) == drift.ok.document_hash
    assert document_hash(flow.inline()[ok.policy_names[0]]) == drift.ok.document_hash
    assert expected[drift.missing.id].kind == "managed"
    assert expected[drift.missing.id].policy_names == tuple(drift.missing.policy_names)
    assert sorted(store.principals_ever_granted()) == [ALICE_ROLE, CAROL_USER]


def test_dry_run_reports_every_drift_and_changes_nothing(flow: Flow, drift: Drift) -> None:
    before = iam_snapshot(flow)
    events_before = audit_count(flow)
    hashes_before = grant_hashes(flow)

    findings = reconcile(flow.granter, DbReconcileStore(flow.service), now=flow.clock.now(),
                         dry_run=True, notifier=flow.notifier)

    assert kinds(findings) == {
        drift.ok.policy_names[0]: "ok",
        drift.tampered_name: "tampered",
        drift.missing.policy_names[0]: "missing",
        "connect-access-leftover": "orphan",
    }
    assert not any(f.applied for f in findings)
    assert iam_snapshot(flow) == before
    assert audit_count(flow) == events_before
    assert grant_hashes(flow) == hashes_before
    assert "reconcile_finding" not in [n.event for n in flow.notifier.sent]
    assert "(dry-run)" in format_summary(findings)


def test_reconcile_removes_orphans_restores_missing_and_tampered_policies(
    flow: Flow, drift: Drift
) -> None:
    findings = reconcile(flow.granter, DbReconcileStore(flow.service), now=flow.clock.now(),
                         notifier=flow.notifier)

    assert sorted(kinds(findings).values()) == ["missing", "ok", "orphan", "tampered"]
    assert all(f.applied and not f.error for f in findings if f.kind != "ok")
    held = flow.inline()
    assert sorted(held) == sorted([drift.tampered_name, drift.ok.policy_names[0],
                                   "operators-own"])
    assert held[drift.tampered_name] == drift.granted_document
    assert document_hash(held[drift.tampered_name]) == drift.tampered.document_hash
    assert held["operators-own"] == widened(drift.granted_document)  # not the bot's
    assert document_hash(managed_document(flow, "carol")) == drift.missing.document_hash
    # Every repair is an audit event, tied to its request when a grant explains it.
    assert sorted(reconcile_events(flow)) == sorted([
        ("reconcile_orphan", None, "connect-access-leftover"),
        ("reconcile_tampered", drift.tampered_id, drift.tampered_name),
        ("reconcile_missing", drift.missing_id, drift.missing.policy_names[0]),
    ])
    assert sorted(n.detail["finding"] for n in flow.notifier.sent
                  if n.event == "reconcile_finding") == ["missing", "orphan", "tampered"]
    for request_id in (drift.tampered_id, drift.ok_id, drift.missing_id):
        assert flow.request(request_id).state == "active"
    assert flow.chain_ok()
    # The next run finds everything in order and records nothing.
    events = audit_count(flow)
    again = reconcile(flow.granter, DbReconcileStore(flow.service), now=flow.clock.now())
    assert {f.kind for f in again} == {"ok"}
    assert audit_count(flow) == events


def test_an_active_grant_whose_policy_cannot_be_restored_ends_and_its_owner_is_told(
    flow: Flow,
) -> None:
    request_id = flow.submit()
    flow.service.approve(request_id, "U0LEAD01")
    grant = flow.grant_of(request_id)
    flow.iam.delete_role_policy(RoleName="alice-admin", PolicyName=grant.policy_names[0])
    flow.inject("PutRolePolicy", Fault("PutRolePolicy", "LimitExceeded").error_response)

    findings = reconcile(flow.granter, DbReconcileStore(flow.service), now=flow.clock.now())

    (finding,) = findings
    assert finding.kind == "missing" and "LimitExceeded" in finding.error
    assert flow.inline() == {}
    ended = flow.grant_of(request_id)
    assert ended.state == "failed" and "LimitExceeded" in (ended.last_error or "")
    assert ended.revoked_by == RECONCILE_ACTOR
    # active -> revoking -> revoked: the only way out of `active` the lifecycle allows.
    assert flow.request(request_id).state == "revoked"
    assert flow.actions(request_id)[-3:] == ["revoking", "revoked", "reconcile_missing"]
    told = [n for n in flow.notifier.sent if n.event == "revoked"]
    assert len(told) == 1 and told[0].request_id == request_id
    assert told[0].detail["reason"] == "reconcile"
    assert "LimitExceeded" in told[0].detail["error"]
    assert flow.chain_ok()
    # Nothing is left for the expiry sweep, and the requester may simply ask again.
    flow.clock.advance(timedelta(hours=2))
    assert flow.service.due_for_revocation() == []
    assert flow.submit() != request_id


def test_a_grant_that_cannot_be_rebuilt_as_granted_is_reported_and_left_alone(
    flow: Flow,
) -> None:
    request_id = flow.submit()
    flow.service.approve(request_id, "U0LEAD01")
    name = flow.grant_of(request_id).policy_names[0]
    edited = widened(flow.inline()[name])
    flow.iam.put_role_policy(RoleName="alice-admin", PolicyName=name,
                             PolicyDocument=json.dumps(edited))
    # As if the catalog entry had changed since the grant: the compiler now builds
    # something else, so the bot can no longer tell what was approved.
    compile_now = flow.service.plan_builder

    def changed_catalog(context: GrantContext) -> GrantPlan:
        plan = compile_now(context)
        (policy,) = plan.policies
        document = copy.deepcopy(dict(policy.document))
        document["Statement"][0]["Action"].append("connect:ListQueues")
        return GrantPlan(plan.grant_id, plan.principal_arn, plan.kind,
                         (PolicyDocument(policy.name, document),), plan.expires_at,
                         plan.instance_arn)

    flow.service.plan_builder = changed_catalog
    store = DbReconcileStore(flow.service)

    findings = reconcile(flow.granter, store, now=flow.clock.now())

    assert findings == []  # neither "tampered" (restore) nor "orphan" (remove)
    assert flow.inline() == {name: edited}
    assert [u.grant_id for u in store.unverifiable] == [flow.grant_of(request_id).id]
    assert "differs from the one granted" in store.unverifiable[0].reason
    assert flow.request(request_id).state == "active"


def test_a_grant_that_moved_on_meanwhile_is_reported_not_forced(flow: Flow) -> None:
    request_id = flow.submit()
    flow.service.approve(request_id, "U0LEAD01")
    grant_id = flow.grant_of(request_id).id
    flow.service.revoke(request_id, "U0ALICE", "done")  # while reconcile was deciding
    store = DbReconcileStore(flow.service)
    events = audit_count(flow)

    store.mark_failed(grant_id, "reconcile could not re-attach")

    assert store.conflicts == [
        f"grant {grant_id} was not marked failed: it is revoked now, and reconcile only "
        "fails grants that are granting or active"]
    assert flow.grant_of(request_id).state == "revoked"
    assert audit_count(flow) == events


# -- the command ----------------------------------------------------------------------


@pytest.fixture
def cli_env(flow: Flow, database_url: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    config = tmp_path / "connect-access.yaml"
    config.write_text(yaml.safe_dump(operator_config_data()))
    yield {"DATABASE_URL": database_url, "CONNECT_ACCESS_CONFIG": str(config),
           "AWS_REGION": REGION}


def test_the_command_prints_the_summary_and_repairs(
    flow: Flow, drift: Drift, cli_env: dict[str, str]
) -> None:
    runner = CliRunner()
    before = iam_snapshot(flow)

    dry = runner.invoke(build_cli(), ["reconcile", "--dry-run"], env=cli_env)

    assert dry.exit_code == 0, dry.output
    assert "FINDING" in dry.stdout and "dry run: nothing was changed" in dry.stdout
    for word in ("orphan", "missing", "tampered", "connect-access-leftover", "(dry-run)"):
        assert word in dry.stdout
    assert "missing: 1, ok: 1, orphan: 1, tampered: 1" in dry.stdout
    assert iam_snapshot(flow) == before

    real = runner.invoke(build_cli(), ["reconcile"], env=cli_env)

    assert real.exit_code == 0, real.output
    assert "missing: 1, ok: 1, orphan: 1, tampered: 1" in real.stdout
    assert "(dry-run)" not in real.stdout
    assert "connect-access-leftover" not in flow.inline()
    assert flow.inline()[drift.tampered_name] == drift.granted_document
    assert len(reconcile_events(flow)) == 3
    assert flow.chain_ok()
    again = runner.invoke(build_cli(), ["reconcile"], env=cli_env)
    assert again.exit_code == 0 and "ok: 3" in again.stdout


def test_the_command_exits_1_when_a_repair_fails(flow: Flow, cli_env: dict[str, str]) -> None:
    request_id = flow.submit()
    flow.service.approve(request_id, "U0LEAD01")
    name = flow.grant_of(request_id).policy_names[0]
    # The principal itself is deleted out of band: its policy cannot be put back.
    flow.iam.delete_role_policy(RoleName="alice-admin", PolicyName=name)
    flow.iam.delete_role(RoleName="alice-admin")

    result = CliRunner().invoke(build_cli(), ["reconcile"], env=cli_env)

    assert result.exit_code == 1, result.output
    assert "missing" in result.stdout and "NoSuchEntity" in result.stdout
    assert "1 repair(s) failed" in result.stderr
    assert flow.request(request_id).state == "revoked"
    assert flow.grant_of(request_id).state == "failed"


def test_the_command_refuses_a_bad_config_without_a_trace(
    flow: Flow, cli_env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("principals: [not, a, mapping]\n")

    result = CliRunner().invoke(build_cli(), ["reconcile"],
                                env={**cli_env, "CONNECT_ACCESS_CONFIG": str(bad)})

    assert result.exit_code == 2
    assert "Traceback" not in result.output and result.stderr.startswith("error:")


def test_the_command_also_scans_tagged_principals(
    flow: Flow, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # No grant ever went to dave, but he carries the bot's tag, so a connect-access policy
    # on him is the bot's business.
    flow.iam.create_role(RoleName="dave", AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": []}),
        Tags=[{"Key": "connect-access:slack-user", "Value": "U0DAVE"}])
    flow.iam.put_role_policy(RoleName="dave", PolicyName="connect-access-stray",
                             PolicyDocument=json.dumps(STRAY))
    config = tmp_path / "tagged.yaml"
    config.write_text(yaml.safe_dump({**operator_config_data(),
                                      "principal_tag_lookup": True}))

    result = CliRunner().invoke(build_cli(), ["reconcile"],
                                env={**cli_env, "CONNECT_ACCESS_CONFIG": str(config)})

    assert result.exit_code == 0, result.output
    assert "orphan" in result.stdout and "connect-access-stray" in result.stdout
    assert flow.iam.list_role_policies(RoleName="dave")["PolicyNames"] == []


def test_the_command_scans_mapped_principals_that_never_had_a_grant(
        flow: Flow, cli_env: dict[str, str]) -> None:
    # carol is mapped in the operator config but was never granted anything.
    flow.iam.put_user_policy(UserName="carol", PolicyName="connect-access-stray",
                             PolicyDocument=json.dumps(STRAY))

    result = CliRunner().invoke(build_cli(), ["reconcile"], env=cli_env)

    assert result.exit_code == 0, result.output
    assert "orphan" in result.stdout and CAROL_USER in result.stdout
    assert flow.iam.list_user_policies(UserName="carol")["PolicyNames"] == []
