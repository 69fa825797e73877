"""Evidence per request: the policy documents as attached are stored and hash-matched to
their audit events, and `connect-access audit show ID [--json]` tells the whole story."""

from __future__ import annotations

import json
from datetime import timedelta

from doubles import FakeClock, InMemoryGranter, RecordingNotifier
from sqlalchemy import select
from typer.testing import CliRunner

from bot.cli import build_cli
from bot.db import SessionFactory
from bot.evidence import NotificationRecorder, document_hash
from bot.lifecycle import RequestService
from bot.models import AuditEvent, PolicyEvidence

WRITE = "telephony/enable-disable-telephony-options"


def test_the_attached_document_is_stored_and_matches_its_event(
        request_service: RequestService, session_factory: SessionFactory,
        granter: InMemoryGranter) -> None:
    request = request_service.submit(requester="U0ALICE", entry_id=WRITE, reason="incident INC-7",
                                     duration=timedelta(hours=1))
    request_service.approve(request.id, "U0LEAD01")
    with session_factory() as session:
        (evidence,) = session.execute(select(PolicyEvidence)).scalars()
        event = session.get_one(AuditEvent, evidence.audit_seq)
    grant = request_service.get(request.id).grants[0]
    attached = granter.policies[grant.principal_arn][grant.policy_names[0]]
    assert evidence.document == attached  # exactly what IAM holds
    assert evidence.document_hash == document_hash(attached)
    assert event.action == "granted" and event.request_id == request.id
    assert event.details["policies"] == [{"name": grant.policy_names[0],
                                          "document_hash": evidence.document_hash}]


def test_audit_show_tells_the_whole_story(
        database_url: str, request_service: RequestService, session_factory: SessionFactory,
        notifier: RecordingNotifier, clock: FakeClock) -> None:
    request_service.notifier = NotificationRecorder(notifier, session_factory, clock)
    request = request_service.submit(requester="U0ALICE", entry_id=WRITE,
                                     reason="INC-7 <!channel>", duration=timedelta(hours=1))
    clock.advance(timedelta(minutes=2))
    request_service.approve(request.id, "U0LEAD01", comment="ok")
    request_service.request_extension(request.id, "U0ALICE", timedelta(minutes=30))
    request_service.approve(request.id, "U0LEAD02")
    clock.advance(timedelta(hours=2))
    request_service.revoke_due_batch()
    runner = CliRunner()
    env = {"DATABASE_URL": database_url}
    result = runner.invoke(build_cli(), ["audit", "show", str(request.id), "--json"], env=env)
    assert result.exit_code == 0, result.output
    story = json.loads(result.stdout)
    assert story["requester"] == "U0ALICE" and story["reason"] == "INC-7 <!channel>"
    assert [(v["approver"], v["decision"], v["round"]) for v in story["votes"]] == [
        ("U0LEAD01", "approve", 0), ("U0LEAD02", "approve", 1)]
    assert len(story["policies"]) == 2  # as granted, then as re-attached by the extension
    assert all(p["hash_matches"] for p in story["policies"])
    first, extended = story["policies"]
    assert first["document"] != extended["document"]  # the aws:CurrentTime bound moved
    (grant,) = story["grants"]
    assert grant["state"] == "revoked" and grant["revoke_reason"] == "expiry"
    # Expiry was 1h30m after the grant; the sweep ran 2h after it: 30 minutes late.
    assert grant["revocation_lag_seconds"] == 30 * 60
    milestones = story["milestones"]
    assert milestones["submitted"] and milestones["granted"] and milestones["revoked"]
    assert milestones["extended"]
    sent = [n["event"] for n in story["notifications"]]
    assert sent[:3] == ["submitted", "vote", "approved"] and "revoked" in sent
    assert [n.event for n in notifier.sent] == sent  # every one was handed to Slack's notifier
    actions = [e["action"] for e in story["events"]]
    assert actions[0] == "submitted" and actions[-1] == "revoked" and "extended" in actions
    text_result = runner.invoke(build_cli(), ["audit", "show", str(request.id)], env=env)
    assert text_result.exit_code == 0
    assert "hash matches audit event" in text_result.output
    assert "revocation lag 1800.0s" in text_result.output


def test_audit_show_of_an_unknown_request(database_url: str) -> None:
    result = CliRunner().invoke(build_cli(), ["audit", "show", "999"],
                                env={"DATABASE_URL": database_url})
    assert result.exit_code == 1 and "There is no request #999." in result.output


def test_audit_show_of_an_id_no_request_can_have(database_url: str) -> None:
    """Past access_requests.id's range the database driver itself fails (SQLite:
    OverflowError; PostgreSQL: integer out of range): refused as bad input first."""
    for text in ("99999999999999999999999", "2147483648", "0"):
        result = CliRunner().invoke(build_cli(), ["audit", "show", text],
                                    env={"DATABASE_URL": database_url})
        assert result.exit_code == 2, (text, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "request_id" in result.output
