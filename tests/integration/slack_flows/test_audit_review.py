"""Audit review in Slack, end to end: an auditor's `/connect-access audit` gets the summary
and the export as a file (files.getUploadURLExternal + upload + completeUploadExternal on
the fake Slack), a non-auditor is refused, App Home shows auditors the chain's status and
last anchor, and every view and export is itself an audit event. The web process is built
by bot.slack.wsgi with anchors in moto's S3 (Object Lock) and a local Ed25519 key."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from slack_flows_harness import ALICE, BOB, DAVE, ERIN, REGION, Flows, operator_config
from sqlalchemy import select

from bot.alerts import LoggingAlerter
from bot.anchors import CheckpointWriter
from bot.audit_runtime import build_anchoring
from bot.audit_verify import verify_audit
from bot.config import load_config
from bot.models import AuditEvent
from bot.signing import write_new_key

AUDITOR = "U0AUDIT"
BUCKET = "flows-audit-anchors"


@pytest.fixture
def config_path(tmp_path: Path, aws_env: str) -> Path:
    boto3.client("s3", region_name=REGION, endpoint_url=aws_env).create_bucket(
        Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    write_new_key(tmp_path / "audit.pem")
    config = operator_config()
    config["auditors"] = [AUDITOR, "S0AUDITORS"]
    config["audit"] = {"signing_key_file": str(tmp_path / "audit.pem"), "anchor_bucket": BUCKET}
    path = tmp_path / "connect-access.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def audited(flows: Flows) -> Iterator[Flows]:
    flows.fake.set_usergroup("S0AUDITORS", [ERIN])
    yield flows


def events(flows: Flows, action: str) -> list[AuditEvent]:
    with flows.web.runtime.sessions() as session:
        return list(session.execute(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.seq)).scalars())


def granted(flows: Flows) -> int:
    message = flows.request(reason="INC-9 <!channel> fix")
    flows.click(BOB, message, "approve_request")
    flows.driver.wait_for_dm(ALICE, "is active until")
    return 1


def test_auditor_gets_summary_and_export_file(audited: Flows) -> None:
    request_id = granted(audited)
    answer = audited.command(AUDITOR, f"audit requester:<@{ALICE}> format:csv")
    shown = json.dumps(answer.body["blocks"])
    assert "Audit review" in shown and f"*#{request_id}*" in shown
    assert "active: 1" in shown and "requester U0ALICE" in shown
    assert "&lt;!channel&gt;" in shown and "<!channel>" not in shown  # reasons escaped
    assert "granted" in shown and "submitted" in shown  # the timeline
    (upload,) = audited.fake.wait_for(lambda f: f.uploads(f.dm_channel(AUDITOR)),
                                      what="the export in the auditor's DM")
    assert upload.filename.endswith(".csv") and upload.length == len(upload.content)
    rows = list(csv.DictReader(io.StringIO(upload.content.decode())))
    assert {r["request_id"] for r in rows} == {str(request_id)}
    assert [r["action"] for r in rows][:1] == ["submitted"]
    methods = [c.method for c in audited.fake.calls()]
    assert methods.index("files.getUploadURLExternal") < methods.index(
        "files.completeUploadExternal")
    # The view and the export are audit events, and the chain still verifies.
    (viewed,) = audited.fake.wait_for(lambda f: events(audited, "audit_viewed"),
                                      what="the audit_viewed event")
    assert viewed.actor == AUDITOR and viewed.details["filter"]["requester"] == ALICE
    (exported,) = audited.fake.wait_for(lambda f: events(audited, "audit_exported"),
                                        what="the audit_exported event")
    assert exported.details["file_id"] == upload.id
    assert exported.details["bytes"] == upload.length
    with audited.web.runtime.sessions() as session:
        assert verify_audit(session).ok


def test_a_user_group_auditor_can_review_as_jsonl(audited: Flows) -> None:
    granted(audited)
    answer = audited.command(ERIN, "audit request:1 format:jsonl")
    assert "Audit review" in json.dumps(answer.body["blocks"])
    (upload,) = audited.fake.wait_for(lambda f: f.uploads(f.dm_channel(ERIN)),
                                      what="the jsonl export")
    lines = [json.loads(line) for line in upload.content.decode().splitlines()]
    assert lines and {line["request_id"] for line in lines} == {1}


def test_a_non_auditor_is_refused_and_the_refusal_is_audited(audited: Flows) -> None:
    granted(audited)
    for user in (ALICE, BOB, DAVE):
        answer = audited.command(user, "audit")
        assert "Only auditors can review the audit trail" in json.dumps(answer.body)
    assert audited.fake.uploads() == []
    assert [e.actor for e in events(audited, "audit_refused")] == [ALICE, BOB, DAVE]
    assert events(audited, "audit_viewed") == []


def test_bad_filters_get_a_clear_message(audited: Flows) -> None:
    answer = audited.command(AUDITOR, "audit since:yesterday")
    assert "is not a date or time" in json.dumps(answer.body)
    answer = audited.command(AUDITOR, "audit colour:blue")
    assert "`colour` is not a filter" in json.dumps(answer.body)
    answer = audited.command(AUDITOR, "audit until:0001-01-01T00:00:00+05:00")
    assert "is not a date or time (outside 1970-8999)" in json.dumps(answer.body)
    for word in ("request:99999999999999999999999", "request:\u00b2"):
        answer = audited.command(AUDITOR, f"audit {word}")
        assert "a request id is a number from 1 to 2147483647" in json.dumps(answer.body)


def test_auditor_app_home_shows_chain_status_and_last_anchor(audited: Flows) -> None:
    granted(audited)
    runtime = audited.web.runtime
    anchoring = build_anchoring(load_config(runtime.settings.connect_access_config).audit,
                                runtime.aws)
    assert anchoring is not None
    writer = CheckpointWriter(sessions=runtime.sessions, signer=anchoring.signer,
                              stores=anchoring.stores, clock=runtime.clock, alerter=LoggingAlerter(),
                              interval=runtime.config.audit.checkpoint_interval,
                              every_events=runtime.config.audit.checkpoint_events)
    written = writer.write_now().written
    assert written is not None
    audited.client.open_home(AUDITOR)
    home = audited.fake.wait_for(lambda f: f.home(AUDITOR), what="the auditor's App Home")
    shown = json.dumps(home.view["blocks"])
    assert "Audit chain:" in shown and "consistent with the last anchor" in shown
    assert f"last anchor: event {written.checkpoint.seq}" in shown
    assert "Recent requests" in shown and "*#1*" in shown
    assert len(home.view["blocks"]) <= 100
    (viewed,) = audited.fake.wait_for(lambda f: events(audited, "audit_viewed"),
                                      what="the App Home view event")
    assert viewed.details["surface"] == "app_home" and viewed.actor == AUDITOR
    # Everyone else's App Home has no audit section.
    audited.client.open_home(ALICE)
    alice_home = audited.fake.wait_for(lambda f: f.home(ALICE), what="Alice's App Home")
    assert "Audit chain:" not in json.dumps(alice_home.view["blocks"])


