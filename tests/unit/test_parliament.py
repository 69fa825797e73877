"""parliament (an outside IAM linter) over every compiled document: every entry; role, user
and group; with and without an instance. Any finding not accepted, with a reason, in
catalog/parliament-accepted.yaml fails the test."""

from __future__ import annotations

import fnmatch
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.catalog import load_catalog
from bot.iamref import IamReference
from bot.policy import compile_policy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from least_privilege_report import Finding, parliament_findings_of  # noqa: E402

ACCEPTED_FILE = ROOT / "catalog" / "parliament-accepted.yaml"
ACCOUNT = "111122223333"
INSTANCE = f"arn:aws:connect:us-east-1:{ACCOUNT}:instance/0a1b2c3d-1111-2222-3333-444455556666"
PRINCIPALS = {
    "role": f"arn:aws:iam::{ACCOUNT}:role/connect/alice-admin",
    "user": f"arn:aws:iam::{ACCOUNT}:user/alice",
    "group": f"arn:aws:iam::{ACCOUNT}:group/connect-admins",
}


def _rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(ACCEPTED_FILE.read_text(encoding="utf-8"))["accepted"]
    for rule in rules:
        assert str(rule.get("reason", "")).strip(), f"accepted rule without a reason: {rule}"
        assert rule.get("actions") or rule.get("detail"), f"rule matches nothing: {rule}"
    return list(rules)


def accepted_by(rules: list[dict[str, Any]], finding: Finding, variant: str) -> dict[str, Any] | None:
    for rule in rules:
        if rule["issue"] != finding.issue or rule.get("variant", variant) != variant:
            continue
        if rule.get("detail") and rule["detail"] in finding.detail:
            return rule
        patterns = rule.get("actions") or []
        if finding.actions and patterns and all(
            any(fnmatch.fnmatchcase(a, p) for p in patterns) for a in finding.actions
        ):
            return rule
    return None


def _documents() -> dict[tuple[str, str], dict[str, Any]]:
    catalog, iam = load_catalog(), IamReference()
    documents: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in catalog:
        for _kind, principal in PRINCIPALS.items():
            for variant, instance in (("instance", INSTANCE), ("no-instance", None)):
                compiled = compile_policy(
                    catalog, entry.id, principal, grant_id="parliament", iam=iam,
                    start=datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
                    duration=timedelta(minutes=30), max_duration=None, instance_arn=instance,
                )
                for policy in compiled.policies:
                    text = json.dumps(policy.document, sort_keys=True)
                    documents.setdefault((variant, text), policy.document)
    return documents


@pytest.fixture(scope="module")
def findings() -> list[tuple[str, Finding]]:
    return [(variant, f) for (variant, _), document in _documents().items()
            for f in parliament_findings_of(document)]


def test_every_parliament_finding_is_an_accepted_exception(
    findings: list[tuple[str, Finding]],
) -> None:
    rules = _rules()
    unaccepted = [f"{variant} {f.sid}: {f.issue} {f.actions or f.detail[:200]}"
                  for variant, f in findings if accepted_by(rules, f, variant) is None]
    assert not unaccepted, "parliament findings not in parliament-accepted.yaml:\n" + "\n".join(
        unaccepted)


def test_every_accepted_rule_is_still_needed(findings: list[tuple[str, Finding]]) -> None:
    """A rule nothing matches any more is removed, so the file stays a true record."""
    rules = _rules()
    used = {id(accepted_by(rules, f, variant)) for variant, f in findings}
    stale = [r["issue"] + " " + str(r.get("actions") or r.get("detail")) for r in rules
             if id(r) not in used]
    assert not stale, f"accepted rules that match no finding: {stale}"


def test_the_acceptance_file_does_not_accept_what_it_should_not() -> None:
    """The matcher itself: an unreviewed finding (a new RESOURCE_STAR on an S3 write, a
    RESOURCE_STAR on a connect action with an instance) is not accepted."""
    rules = _rules()
    s3_star = Finding("RESOURCE_STAR", ("s3:PutBucketPolicy",), "[]", "SupportingServices")
    assert accepted_by(rules, s3_star, "instance") is None
    assert accepted_by(rules, s3_star, "no-instance") is None
    connect_star = Finding("RESOURCE_STAR", ("connect:DeleteInstance",), "[]", "ConnectAccountWide")
    assert accepted_by(rules, connect_star, "instance") is None
    assert accepted_by(rules, connect_star, "no-instance") is not None
    # And parliament does find the problems the compiler guards against, when they exist.
    raw = {"Version": "2012-10-17", "Statement": [{
        "Sid": "Raw", "Effect": "Allow", "Action": ["s3:PutBucketPolicy"], "Resource": "*"}]}
    assert {f.issue for f in parliament_findings_of(raw)} & {
        "RESOURCE_STAR", "RESOURCE_POLICY_PRIVILEGE_ESCALATION"}
