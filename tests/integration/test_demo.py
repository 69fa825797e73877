"""`connect-access demo` end to end: Alembic-migrated SQLite, moto over HTTP, the fake Slack
Web API, the real Bolt app on 127.0.0.1 and the real scheduler, driven by signed requests.

One in-process run (shared by the tests that read its result) shows every step happened;
the command itself runs once as a real process with hostile AWS/Slack settings in its
environment; and two runs break something on purpose to see the failing step named."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import update

from bot.models import AuditEvent
from bot.sandbox.demo import DemoResult, Sandbox, run_demo

pytestmark = pytest.mark.slow  # every test starts moto, a fake Slack, the app and a scheduler

GRANT_SECONDS = 4  # long enough to read the policy while active, short enough to wait for
STEPS = 9
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DemoRun:
    result: DemoResult
    output: str
    environment_before: dict[str, str]
    environment_after: dict[str, str]


@pytest.fixture(scope="module")
def demo_run() -> Iterator[DemoRun]:
    before = dict(os.environ)
    out = io.StringIO()
    result = run_demo(grant_seconds=GRANT_SECONDS, out=out)
    yield DemoRun(result, out.getvalue(), before, dict(os.environ))


def test_every_step_ran_in_order_and_the_demo_exits_zero(demo_run: DemoRun) -> None:
    result = demo_run.result
    assert [(s.number, s.ok) for s in result.steps] == [(n, True) for n in range(1, STEPS + 1)]
    assert result.failed_step is None
    assert result.exit_code == 0
    for number in range(1, STEPS + 1):
        assert f"[{number}/{STEPS}] " in demo_run.output
    assert f"all {STEPS} steps ok" in demo_run.output


def test_each_step_shows_what_the_slack_user_saw(demo_run: DemoRun) -> None:
    shown = {s.number: s.shown for s in demo_run.result.steps}
    assert "[Request access]" in shown[2]  # the preview's button, rendered from Block Kit
    assert "For how long: <select: 4s = 4s>" in shown[3]  # the modal offers the demo grant
    assert "Approvals: 0 of 1" in shown[4] and "[Approve] [Deny]" in shown[4]
    assert "Approvals: 1 of 1" in shown[5] and "is active until" in shown[5]
    assert "aws:CurrentTime" in shown[6]


def test_the_policy_was_in_iam_with_the_time_box_while_active(demo_run: DemoRun) -> None:
    facts = demo_run.result.facts
    assert facts.instance_created_by_moto
    assert list(facts.policies_while_active) == [f"connect-access-{facts.grant_id}"]
    document = facts.policies_while_active[f"connect-access-{facts.grant_id}"]
    assert facts.expires_at is not None
    expires = facts.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert document["Statement"]
    for statement in document["Statement"]:
        assert statement["Condition"]["DateLessThan"]["aws:CurrentTime"] == expires
        assert "aws:CurrentTime" in statement["Condition"]["DateGreaterThan"]
    text = json.dumps(document)
    assert "connect:UpdateInstanceStorageConfig" in text  # Edit chat transcripts
    assert facts.instance_arn in text  # scoped to the Connect instance moto created


def test_the_scheduler_revoked_it_at_expiry_and_iam_is_empty(demo_run: DemoRun) -> None:
    facts = demo_run.result.facts
    assert facts.iam_after_expiry == []
    assert facts.revoke_reason == "expiry"
    assert facts.revoked_at is not None and facts.expires_at is not None
    assert facts.revoked_at >= facts.expires_at


def test_the_approval_message_shows_the_outcome(demo_run: DemoRun) -> None:
    facts = demo_run.result.facts
    assert "Granted until" in facts.approval_message_active
    assert "Expired" in facts.approval_message_final
    assert "[Approve]" not in facts.approval_message_final
    assert facts.final_request_state == "revoked"


def test_the_audit_trail_is_complete_and_its_chain_verifies(demo_run: DemoRun) -> None:
    facts = demo_run.result.facts
    assert facts.audit_actions == [
        "submitted", "vote", "approved", "granting", "granted", "revoking", "revoked"]
    assert facts.audit_ok and facts.audit_checked == len(facts.audit_actions)
    assert f"audit chain intact: {facts.audit_checked} events verified" in demo_run.output
    # ... and anchored: a signed checkpoint in moto's S3 (Object Lock), verified against.
    assert facts.anchored_seq == facts.audit_checked
    assert "with Object Lock COMPLIANCE" in demo_run.output
    assert "against 1 checkpoint(s) in s3://demo-connect-access-audit/" in demo_run.output


def test_the_demo_leaves_nothing_behind(demo_run: DemoRun) -> None:
    database = Path(demo_run.result.facts.database_url.removeprefix("sqlite:///"))
    assert database.name == "connect-access.db"
    assert not database.parent.exists()
    assert demo_run.result.kept_folder is None
    assert demo_run.environment_after == demo_run.environment_before


def test_the_command_runs_end_to_end_ignoring_real_aws_and_slack_settings(
    tmp_path: Path,
) -> None:
    # Settings that would point a careless demo at real (or broken) services.
    environment = {
        **os.environ,
        "AWS_PROFILE": "production",
        "AWS_ENDPOINT_URL": "http://192.0.2.1:9",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE",
        "SLACK_BOT_TOKEN": "xoxb-real-looking",
        "SLACK_API_URL": "http://192.0.2.1:9/api/",
        "DATABASE_URL": "postgresql://nobody@192.0.2.1:9/prod",
        "CONNECT_ACCESS_CONFIG": str(tmp_path / "missing.yaml"),
    }
    command = Path(sys.executable).with_name("connect-access")
    finished = subprocess.run(
        [str(command), "demo", "--grant-seconds", str(GRANT_SECONDS), "--keep"],
        capture_output=True, text=True, timeout=120, env=environment, cwd=tmp_path,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"all {STEPS} steps ok" in finished.stdout
    kept = [line for line in finished.stdout.splitlines() if "audit export --format csv" in line]
    assert len(kept) == 1
    database_url = kept[0].split()[0].removeprefix("DATABASE_URL=")
    verified = subprocess.run(
        [str(command), "audit", "verify"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATABASE_URL": database_url},
    )
    assert verified.returncode == 0, verified.stderr
    assert "7 events verified" in verified.stdout
    shutil.rmtree(Path(database_url.removeprefix("sqlite:///")).parent)


def _run_breaking(step: int, breaker: object) -> tuple[DemoResult, str]:
    def before_step(number: int, sandbox: Sandbox) -> None:
        if number == step:
            breaker(sandbox)  # type: ignore[operator]

    out = io.StringIO()
    result = run_demo(grant_seconds=GRANT_SECONDS, out=out, before_step=before_step)
    return result, out.getvalue()


def test_aws_going_away_fails_the_approval_step_by_name() -> None:
    result, output = _run_breaking(5, Sandbox.stop_moto)

    assert result.exit_code == 1
    failed = result.failed_step
    assert failed is not None and failed.number == 5 and failed.title.startswith("bob approves")
    # bob is found by tag lookup, so with IAM gone the bot cannot rule out that he is the
    # requester: his vote is refused (safe), and the step says so instead of timing out.
    assert "bob's vote was refused" in (failed.error or "")
    assert "could not confirm that you are not the requester" in (failed.error or "")
    assert len(result.steps) == 5  # nothing after the failed step ran
    assert "demo FAILED at step 5/9 (bob approves" in output
    assert "everything the demo started has been stopped" in output


def test_a_tampered_audit_trail_fails_the_last_step() -> None:
    def tamper(sandbox: Sandbox) -> None:
        assert sandbox.runtime is not None
        with sandbox.runtime.sessions.begin() as session:
            session.execute(update(AuditEvent).where(AuditEvent.seq == 2)
                            .values(actor="U0MALLORY"))

    result, output = _run_breaking(9, tamper)

    assert result.exit_code == 1
    failed = result.failed_step
    assert failed is not None and failed.number == 9
    assert "BROKEN at event 2" in (failed.error or "")
    assert "demo FAILED at step 9/9 (the audit trail is printed and verified)" in output
