"""`connect-access demo --identity-center`: the same end-to-end run with alice as an IAM
Identity Center user on moto. She gets a permission set of her own, assigned on the
instance's account and time-boxed, that the scheduler process removes at expiry."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from bot.sandbox.demo import run_demo

pytestmark = pytest.mark.slow  # starts moto, a fake Slack, the app and a scheduler

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_the_identity_center_demo_grants_a_permission_set_and_removes_it() -> None:
    out = io.StringIO()
    result = run_demo(grant_seconds=4, out=out, identity_center=True)
    output = out.getvalue()

    assert result.ok, output
    assert [s.title for s in result.steps][5] == (
        "the permission set and its assignment are read back from Identity Center")
    facts = result.facts
    assert facts.grant_id is not None
    name = f"connect-access-{facts.grant_id}"
    assert list(facts.policies_while_active) == [name]
    expires = facts.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if facts.expires_at else ""
    for statement in facts.policies_while_active[name]["Statement"]:
        assert statement["Condition"]["DateLessThan"]["aws:CurrentTime"] == expires
    assert facts.iam_after_expiry == []
    assert facts.revoke_reason == "expiry"
    assert f"then permission set `{name}`" in (facts.approval_message_active or "")
    assert "Sign in to the AWS access portal" in output
    assert facts.audit_ok


def test_the_command_takes_the_flag() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--help"], cwd=PROJECT_ROOT,
        capture_output=True, text=True, check=False, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "--identity-center" in completed.stdout
