"""Audit anchors: signed checkpoints in S3 Object Lock (moto) with a local Ed25519 key or a
KMS key (moto), and `connect-access audit verify` against them. Every tampering case of
issue 16 runs on SQLite and PostgreSQL: an attacker with write access to the database,
using the project's own hash function, must not get "intact"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from doubles import FakeClock
from sqlalchemy import Engine, delete, insert, select, text, update
from typer.testing import CliRunner

from bot.alerts import Alert, AlertRef
from bot.anchors import AnchorError, Checkpoint, CheckpointWriter, SignedCheckpoint
from bot.audit import event_hash
from bot.aws.anchors import KmsSigner, S3AnchorStore
from bot.cli import build_cli
from bot.config import parse_config
from bot.db import SessionFactory
from bot.lifecycle import RequestService
from bot.models import GENESIS_HASH, AuditChainHead, AuditEvent, Base
from bot.signing import Ed25519Signer, write_new_key

BUCKET = "acme-connect-access-audit"
WRITE = "telephony/enable-disable-telephony-options"
READ = "home/list-instance"


class RecordingAlerts:
    """An Alerter (bot.alerts) that keeps what it was given, and posts as Slack would."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def alert(self, alert: Alert) -> AlertRef | None:
        self.alerts.append(alert)
        return AlertRef("C0ALERTS", f"{len(self.alerts)}.000")

    @property
    def texts(self) -> list[str]:
        return [a.summary for a in self.alerts]


def make_locked_bucket(name: str = BUCKET) -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(
        Bucket=name, ObjectLockEnabledForBucket=True)


@dataclass
class Anchored:
    """A database with a real log, a local key, an Object Lock bucket and a config file."""

    database_url: str
    config_path: Path
    key_path: Path
    signer: Ed25519Signer
    store: S3AnchorStore
    writer: CheckpointWriter
    alerts: RecordingAlerts

    def cli(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(build_cli(), list(args), env={
            "DATABASE_URL": self.database_url, "CONNECT_ACCESS_CONFIG": str(self.config_path)})
        return result.exit_code, result.output

    def verify(self) -> tuple[int, dict[str, Any]]:
        code, output = self.cli("audit", "verify", "--json")
        return code, json.loads(output)


def write_config(path: Path, audit: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"audit": audit}))
    return path


@pytest.fixture
def anchored(fake_aws: None, database_url: str, session_factory: SessionFactory,
             clock: FakeClock, tmp_path: Path) -> Anchored:
    make_locked_bucket()
    key_path = tmp_path / "audit-ed25519.pem"
    signer = write_new_key(key_path)
    config_path = write_config(tmp_path / "config.yaml", {
        "signing_key_file": str(key_path), "anchor_bucket": BUCKET,
        "checkpoint_interval": "5m", "checkpoint_events": 5})
    store = S3AnchorStore(boto3.client("s3", region_name="us-east-1"), BUCKET,
                          retention=timedelta(days=1))
    alerts = RecordingAlerts()
    writer = CheckpointWriter(sessions=session_factory, signer=signer, stores=[store],
                              clock=clock, alerter=alerts, interval=timedelta(minutes=5),
                              every_events=5, sleep=lambda _s: None)
    return Anchored(database_url, config_path, key_path, signer, store, writer, alerts)


def granted_and_revoked(service: RequestService, clock: FakeClock,
                        requester: str = "U0ALICE") -> int:
    request = service.submit(requester=requester, entry_id=WRITE, reason="INC-1 fix routing",
                             duration=timedelta(hours=1))
    service.approve(request.id, "U0LEAD01")
    clock.advance(timedelta(minutes=10))
    service.revoke(request.id, requester, "done")
    return request.id


def pending(service: RequestService, requester: str = "U0BOB") -> int:
    return service.submit(requester=requester, entry_id=READ, reason="look at queues",
                          duration=timedelta(hours=1)).id


def recompute_chain(engine: Engine) -> None:
    """What a careful attacker does after editing: rehash every event with the project's
    own function, renumbering from 1, and move the chain head to the new end."""
    with engine.begin() as connection:
        rows = connection.execute(select(AuditEvent.__table__).order_by(AuditEvent.seq)).all()
        connection.execute(delete(AuditEvent.__table__))
        prev = GENESIS_HASH
        for new_seq, row in enumerate(rows, start=1):
            digest = event_hash(new_seq, row.at, row.actor, row.action, row.request_id,
                                row.details, prev)
            connection.execute(insert(AuditEvent.__table__).values(
                seq=new_seq, at=row.at, actor=row.actor, action=row.action,
                request_id=row.request_id, details=row.details, prev_hash=prev, hash=digest))
            prev = digest
        connection.execute(update(AuditChainHead.__table__).values(seq=len(rows), hash=prev))


def rewrite_as_mallory(engine: Engine, where: str = "action = 'vote'", *,
                       votes: bool = False) -> None:
    """Put U0MALLORY on the events `where` picks (with `votes`, in the votes table too, so
    the tables agree), then rehash the chain as recompute_chain does."""
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE audit_events SET actor = 'U0MALLORY' WHERE {where}"))
        if votes:
            connection.execute(text("UPDATE votes SET approver = 'U0MALLORY'"))
    recompute_chain(engine)


def cut_tail(engine: Engine, events: int = 2) -> int:
    """Delete the last `events` events and move the chain head back to the new end; the
    number of events there were."""
    with engine.begin() as connection:
        last: int = connection.execute(text("SELECT max(seq) FROM audit_events")).scalar_one()
        kept = last - events
        connection.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": kept})
        prev = connection.execute(text("SELECT hash FROM audit_events WHERE seq = :s"),
                                  {"s": kept}).scalar_one()
        connection.execute(text("UPDATE audit_chain_head SET seq = :s, hash = :h"),
                           {"s": kept, "h": prev})
    return last


def forge_checkpoint(engine: Engine, forger: Ed25519Signer, key_id: str, at: datetime,
                     ahead: int = 1) -> SignedCheckpoint:
    """A well-formed checkpoint `ahead` events past the chain head that claims `key_id`
    but is signed with `forger` (an attacker has the database, not the real key)."""
    with engine.connect() as connection:
        seq, head = connection.execute(text("SELECT seq, hash FROM audit_chain_head")).one()
    forged = Checkpoint(seq=seq + ahead, head_hash=head, event_count=seq + ahead, at=at,
                        key_id=key_id)
    return SignedCheckpoint(forged, "ED25519", forger.sign(forged.payload()))


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as connection:
        return {table.name: [dict(row._mapping) for row in connection.execute(select(table))]
                for table in Base.metadata.sorted_tables}


def restore(engine: Engine, copy: dict[str, list[dict[str, Any]]]) -> None:
    """Put the whole database back as it was in `copy` (a restored older backup)."""
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(delete(table))
        for table in Base.metadata.sorted_tables:
            if copy[table.name]:
                connection.execute(insert(table), copy[table.name])


@pytest.fixture
def history(anchored: Anchored, request_service: RequestService, clock: FakeClock) -> int:
    """A log with a granted-and-revoked request and a pending one, checkpointed."""
    request_id = granted_and_revoked(request_service, clock)
    pending(request_service)
    assert anchored.writer.write_now().written is not None
    return request_id


# -- the untouched log passes ------------------------------------------------------------

def test_untouched_anchored_log_verifies(anchored: Anchored, history: int) -> None:
    code, output = anchored.cli("audit", "verify")
    assert code == 0, output
    assert "audit chain intact" in output and "against 1 checkpoint(s)" in output
    assert f"s3://{BUCKET}/checkpoints/" in output
    assert "only detects careless edits" not in output
    code, report = anchored.verify()
    assert code == 0 and report["ok"] and report["anchored"]
    assert report["checkpoints"] == 1 and report["last_checkpoint_seq"] == report["events"]


def test_without_anchors_verify_says_it_only_catches_careless_edits(
        database_url: str, request_service: RequestService, clock: FakeClock) -> None:
    granted_and_revoked(request_service, clock)
    result = CliRunner().invoke(build_cli(), ["audit", "verify"],
                                env={"DATABASE_URL": database_url})
    assert result.exit_code == 0
    assert "audit chain intact" in result.output
    assert "only detects careless edits" in result.output


# -- tampering ---------------------------------------------------------------------------

def test_edit_and_recompute_is_caught_by_the_checkpoint(anchored: Anchored, history: int,
                                                        engine: Engine) -> None:
    rewrite_as_mallory(engine, votes=True)
    code, report = anchored.verify()
    assert code == 1 and not report["ok"]
    fault = report["fault"]
    assert fault["kind"] == "checkpoint_mismatch"
    assert fault["seq"] == report["last_checkpoint_seq"]
    assert fault["expected"] != fault["found"]
    code, output = anchored.cli("audit", "verify")
    assert code == 1 and "BROKEN at event" in output and "rewritten" in output
    assert "expected:" in output and "found:" in output


def test_deleting_the_tail_and_moving_the_head_is_caught(anchored: Anchored, history: int,
                                                         engine: Engine) -> None:
    last = cut_tail(engine, 2)
    code, report = anchored.verify()
    assert code == 1
    assert report["fault"]["kind"] == "truncated"
    assert report["fault"]["expected"] == f"at least {last} events"
    assert report["fault"]["found"] == f"{last - 2} events"


def test_wiping_every_event_is_caught(anchored: Anchored, history: int, engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events"))
        connection.execute(text("UPDATE audit_chain_head SET seq = 0, hash = :h"),
                           {"h": GENESIS_HASH})
    code, report = anchored.verify()
    assert code == 1
    assert report["fault"]["kind"] == "truncated"
    assert "every event was deleted" in report["fault"]["message"]
    assert report["events"] == 0


def test_wiping_every_event_without_anchors_is_caught_by_the_tables(
        database_url: str, request_service: RequestService, clock: FakeClock,
        engine: Engine) -> None:
    request_id = granted_and_revoked(request_service, clock)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events"))
        connection.execute(text("UPDATE audit_chain_head SET seq = 0, hash = :h"),
                           {"h": GENESIS_HASH})
    result = CliRunner().invoke(build_cli(), ["audit", "verify", "--json"],
                                env={"DATABASE_URL": database_url})
    assert result.exit_code == 1
    fault = json.loads(result.stdout)["fault"]
    assert fault["kind"] == "missing_submitted"
    assert f"request #{request_id}" in fault["message"]


def test_deleting_one_requests_events_is_caught_by_the_cross_check(
        anchored: Anchored, history: int, request_service: RequestService,
        engine: Engine) -> None:
    # A request made after the last checkpoint: only the tables can tell its events went.
    victim = pending(request_service, requester="U0NOBODY")
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE request_id = :r"),
                           {"r": victim})
    recompute_chain(engine)
    code, report = anchored.verify()
    assert code == 1
    assert report["fault"]["kind"] == "missing_submitted"
    assert f"request #{victim}" in report["fault"]["message"]
    assert report["fault"]["expected"] == f"a submitted event for request #{victim}"


def test_deleting_a_grants_revoked_event_is_caught(anchored: Anchored, history: int,
                                                   request_service: RequestService,
                                                   clock: FakeClock, engine: Engine) -> None:
    # Granted and revoked after the last checkpoint: the tables tell the event is gone.
    granted_and_revoked(request_service, clock, requester="U0BOB")
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE action = 'revoked' AND seq > "
                                "(SELECT min(seq) FROM audit_events WHERE action = 'revoked')"))
    recompute_chain(engine)
    code, report = anchored.verify()
    assert code == 1
    assert report["fault"]["kind"] == "missing_revoked"
    assert "is revoked but has no `revoked` event" in report["fault"]["message"]


def test_deleting_an_anchored_event_is_caught(anchored: Anchored, history: int,
                                              engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE action = 'revoked'"))
    recompute_chain(engine)
    code, report = anchored.verify()
    assert code == 1
    # One event fewer: the chain no longer reaches the checkpoint's count.
    assert report["fault"]["kind"] == "truncated"


def test_a_forged_checkpoint_is_caught(anchored: Anchored, history: int, engine: Engine,
                                       tmp_path: Path, clock: FakeClock) -> None:
    # The attacker rewrites the chain and plants a checkpoint for it, with the configured
    # key's id but their own key (they do not have the real one).
    rewrite_as_mallory(engine)
    mallory = write_new_key(tmp_path / "mallory.pem")
    anchored.store.put(forge_checkpoint(engine, mallory, anchored.signer.key_id, clock.now()))
    code, report = anchored.verify()
    assert code == 1
    assert report["fault"]["kind"] == "forged_checkpoint"
    assert "does not verify" in report["fault"]["message"]


def test_restoring_an_older_copy_of_the_database_is_caught(
        anchored: Anchored, request_service: RequestService, clock: FakeClock,
        engine: Engine) -> None:
    granted_and_revoked(request_service, clock)
    older = snapshot(engine)
    pending(request_service)
    clock.advance(timedelta(minutes=1))
    assert anchored.writer.write_now().written is not None
    restore(engine, older)
    code, report = anchored.verify()
    assert code == 1
    assert report["fault"]["kind"] == "truncated"
    assert "older copy of the database" in report["fault"]["message"]


def test_editing_a_stored_policy_document_is_caught(anchored: Anchored, history: int,
                                                    engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("UPDATE policy_evidence SET document = :d"),
                           {"d": json.dumps({"Version": "2012-10-17", "Statement": []})})
    code, report = anchored.verify()
    assert code == 1 and report["fault"]["kind"] == "evidence_altered"


# -- writing checkpoints -----------------------------------------------------------------

def test_checkpoint_and_keygen_report_as_json(anchored: Anchored, tmp_path: Path,
                                              request_service: RequestService) -> None:
    pending(request_service)
    code, output = anchored.cli("audit", "checkpoint", "--json")
    assert code == 0, output
    written = json.loads(output)
    assert written["seq"] == written["event_count"] == 1
    assert written["key_id"] == anchored.signer.key_id and written["failures"] == []
    assert written["stores"] == [f"s3://{BUCKET}/checkpoints/"]
    code, output = anchored.cli("audit", "keygen", str(tmp_path / "next.pem"), "--json")
    assert code == 0, output
    made = json.loads(output)
    assert made["path"] == str(tmp_path / "next.pem") and (tmp_path / "next.pem").exists()
    assert made["key_id"] and made["key_id"] != anchored.signer.key_id


def test_checkpoint_command_writes_a_locked_object(anchored: Anchored,
                                                   request_service: RequestService) -> None:
    pending(request_service)
    code, output = anchored.cli("audit", "checkpoint")
    assert code == 0, output
    assert "checkpoint written: event 1" in output
    s3 = boto3.client("s3", region_name="us-east-1")
    key = "checkpoints/00000000000000000001.json"
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=300)
    body = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert body["seq"] == 1 and body["key_id"] == anchored.signer.key_id
    # Compliance mode: not even the bucket owner can delete the checkpoint.
    version = head["VersionId"]
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version)


def test_checkpoints_are_due_every_n_events_or_after_the_interval(
        anchored: Anchored, request_service: RequestService, clock: FakeClock) -> None:
    writer = anchored.writer
    assert writer.tick().skipped == "no events yet"
    pending(request_service)
    first = writer.tick().written  # the first event ever: nothing anchored yet
    assert first is not None and first.checkpoint.seq == 1
    assert writer.tick().skipped == "no new events since the last checkpoint"
    request_service.submit(requester="U0ALICE", entry_id=READ, reason="incident INC-3",
                           duration=timedelta(hours=1))
    assert writer.tick().written is None  # 1 new event: below 5, interval not over
    clock.advance(timedelta(minutes=5))
    interval = writer.tick().written
    assert interval is not None and interval.checkpoint.seq == 2
    for requester in ("U0NOBODY", "U0LEAD01"):
        pending(request_service, requester)
    assert writer.tick().written is None  # 2 new
    granted = request_service.submit(requester="U0ALICE", entry_id=WRITE, reason="incident INC-3",
                                     duration=timedelta(hours=1))
    request_service.approve(granted.id, "U0LEAD01")
    by_count = writer.tick().written
    assert by_count is not None and by_count.checkpoint.seq >= 7
    assert [a.signed.checkpoint.seq for a in anchored.store.list() if a.signed] == [
        1, 2, by_count.checkpoint.seq]


def test_a_failing_checkpoint_write_is_retried_and_alerted_and_requests_go_on(
        fake_aws: None, session_factory: SessionFactory, request_service: RequestService,
        clock: FakeClock, tmp_path: Path) -> None:
    signer = write_new_key(tmp_path / "k.pem")
    store = S3AnchorStore(boto3.client("s3", region_name="us-east-1"), "not-created-yet",
                          retention=timedelta(days=1))
    alerts, sleeps = RecordingAlerts(), []
    writer = CheckpointWriter(sessions=session_factory, signer=signer, stores=[store],
                              clock=clock, alerter=alerts, interval=timedelta(minutes=5),
                              every_events=1, sleep=sleeps.append)
    pending(request_service)
    outcome = writer.tick()
    assert outcome.written is None and "NoSuchBucket" in outcome.failures[0]
    assert len(alerts.texts) == 1 and "could not be written" in alerts.texts[0]
    assert alerts.alerts[0].kind == "audit_checkpoint_failed"
    # Requests are not held up, and a second failure is not alerted again.
    pending(request_service, "U0ALICE")
    assert writer.tick().written is None and len(alerts.texts) == 1
    assert sleeps == []  # the store could not even be listed: nothing to retry yet
    make_locked_bucket("not-created-yet")
    written = writer.tick().written
    assert written is not None and written.checkpoint.seq == 2
    assert "written again" in alerts.texts[-1]
    # The recovery follows up the failure's alert, in its thread.
    assert alerts.alerts[-1].kind == "audit_checkpoint_resolved"
    assert alerts.alerts[-1].follows_up == AlertRef("C0ALERTS", "1.000")


def test_each_store_write_is_tried_three_times_with_backoff(
        fake_aws: None, session_factory: SessionFactory, request_service: RequestService,
        clock: FakeClock, tmp_path: Path) -> None:
    # A bucket without Object Lock refuses writes that ask for a compliance lock.
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="unlocked")
    store = S3AnchorStore(boto3.client("s3", region_name="us-east-1"), "unlocked",
                          retention=timedelta(days=1))
    alerts, sleeps = RecordingAlerts(), []
    writer = CheckpointWriter(sessions=session_factory, signer=write_new_key(tmp_path / "k"),
                              stores=[store], clock=clock, alerter=alerts,
                              interval=timedelta(minutes=5), every_events=1,
                              sleep=sleeps.append)
    pending(request_service)
    outcome = writer.tick()
    assert outcome.written is None and outcome.failures
    assert sleeps == [0.5, 1.0] and len(alerts.texts) == 1


def test_a_chain_that_went_backwards_is_not_signed(anchored: Anchored, history: int,
                                                   engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events"))
        connection.execute(text("UPDATE audit_chain_head SET seq = 0, hash = :h"),
                           {"h": GENESIS_HASH})
    anchored.writer._last_known = False  # a freshly started scheduler
    outcome = anchored.writer.tick()
    assert outcome.written is None
    assert "events were removed" in anchored.alerts.texts[-1]


# -- KMS ---------------------------------------------------------------------------------

@pytest.fixture
def kms_key(fake_aws: None) -> str:
    kms = boto3.client("kms", region_name="us-east-1")
    return str(kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")
               ["KeyMetadata"]["Arn"])


def test_kms_signer_signs_with_kms_and_verifies(kms_key: str) -> None:
    signer = KmsSigner(boto3.client("kms", region_name="us-east-1"), kms_key)
    assert signer.key_id == kms_key and signer.algorithm == "ECDSA_SHA_256"
    signature = signer.sign(b"checkpoint payload")
    assert signer.verify(b"checkpoint payload", signature)
    assert not signer.verify(b"checkpoint payloaD", signature)
    kms = boto3.client("kms", region_name="us-east-1")
    assert kms.verify(KeyId=kms_key, Message=b"checkpoint payload", MessageType="RAW",
                      Signature=signature, SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]


def test_kms_key_that_cannot_sign_is_refused_at_start(fake_aws: None) -> None:
    kms = boto3.client("kms", region_name="us-east-1")
    symmetric = kms.create_key()["KeyMetadata"]["Arn"]
    with pytest.raises(AnchorError, match="not SIGN_VERIFY"):
        KmsSigner(kms, symmetric).check()


def test_kms_anchored_checkpoint_and_verify_through_the_cli(
        kms_key: str, database_url: str, request_service: RequestService, clock: FakeClock,
        tmp_path: Path, engine: Engine) -> None:
    make_locked_bucket()
    config = write_config(tmp_path / "c.yaml", {"kms_key_id": kms_key, "anchor_bucket": BUCKET})
    env = {"DATABASE_URL": database_url, "CONNECT_ACCESS_CONFIG": str(config)}
    granted_and_revoked(request_service, clock)
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["audit", "checkpoint"], env=env)
    assert result.exit_code == 0, result.output
    assert f"signed by {kms_key}" in result.output
    result = runner.invoke(build_cli(), ["audit", "verify"], env=env)
    assert result.exit_code == 0 and "against 1 checkpoint(s)" in result.output
    rewrite_as_mallory(engine, "seq = 1")
    result = runner.invoke(build_cli(), ["audit", "verify"], env=env)
    assert result.exit_code == 1 and "rewritten" in result.output


# -- configuration -----------------------------------------------------------------------

def test_a_bucket_without_object_lock_is_refused_at_start(fake_aws: None, database_url: str,
                                                          tmp_path: Path) -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="plain-bucket")
    write_new_key(tmp_path / "k.pem")
    config = write_config(tmp_path / "c.yaml", {"signing_key_file": str(tmp_path / "k.pem"),
                                                "anchor_bucket": "plain-bucket"})
    result = CliRunner().invoke(build_cli(), ["audit", "checkpoint"], env={
        "DATABASE_URL": database_url, "CONNECT_ACCESS_CONFIG": str(config)})
    assert result.exit_code == 2
    assert "audit.anchor_bucket plain-bucket: Object Lock is not enabled" in result.output


@pytest.mark.parametrize(("audit", "message"), [
    ({"kms_key_id": "arn:aws:kms:us-east-1:111122223333:key/abc", "signing_key_file": "/k"},
     "not both"),
    ({"signing_key_file": "/k"}, "no anchor_bucket"),
    ({"anchor_bucket": "acme-audit"}, "need a signing key"),
    ({"kms_key_id": "not a key", "anchor_bucket": "acme-audit"}, "a KMS key ARN"),
    ({"signing_key_file": "/k", "anchor_bucket": "Bad_Bucket"}, "an S3 bucket name"),
    ({"signing_key_file": "/k", "anchor_bucket": "b-1", "anchor_channel": "#audit"},
     "a Slack channel id"),
    ({"signing_key_file": "/k", "anchor_bucket": "b-1", "checkpoint_interval": "soon"},
     "audit.checkpoint_interval"),
    ({"signing_key_file": "/k", "anchor_bucket": "b-1", "checkpoint_events": 0},
     "audit.checkpoint_events"),
    ({"anchor": "x"}, "audit.anchor: unknown key"),
])
def test_audit_config_faults_name_the_key(audit: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config({"audit": audit}, "c.yaml")


def test_audit_config_as_the_issue_writes_it() -> None:
    config = parse_config({
        "audit": {"kms_key_id": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                  "anchor_bucket": "acme-connect-access-audit", "anchor_channel": "C0AUDIT",
                  "checkpoint_interval": "5m"},
        "auditors": ["U0AUDITOR", "S0AUDIT"]})
    assert config.audit.anchored and config.audit.checkpoint_interval == timedelta(minutes=5)
    assert config.auditors == ("U0AUDITOR", "S0AUDIT")
    with pytest.raises(ValueError, match=r"auditors\[0\]"):
        parse_config({"auditors": ["#auditors"]})


def test_a_bad_signing_key_file_is_refused_with_its_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(AnchorError, match=r"audit\.signing_key_file"):
        Ed25519Signer.from_file(bad)
    with pytest.raises(AnchorError, match="cannot read"):
        Ed25519Signer.from_file(tmp_path / "missing.pem")

