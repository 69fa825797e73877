"""The audit Slack channel as an anchor store (`audit.anchor_channel`): checkpoints posted
there are read back by `connect-access audit verify` (conversations.history, every page,
from the fake Slack over real HTTP) and checked like the S3 anchors. Channel-only must
catch a recomputed chain and a cut tail; a message forged into the channel is a fault;
with S3 as well, a checkpoint one store lacks is reported. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from doubles import FakeClock
from sqlalchemy import Engine
from test_audit_anchors import (
    BUCKET,
    RecordingAlerts,
    cut_tail,
    forge_checkpoint,
    granted_and_revoked,
    make_locked_bucket,
    pending,
    rewrite_as_mallory,
    write_config,
)
from typer.testing import CliRunner, Result

from bot.anchors import CheckpointWriter, SignedCheckpoint
from bot.cli import build_cli
from bot.config import parse_config
from bot.db import SessionFactory
from bot.lifecycle import RequestService
from bot.sandbox.fake_slack import FakeSlack
from bot.signing import Ed25519Signer, write_new_key
from bot.slack.anchor_channel import SlackAnchorChannel
from bot.slack.webapi import build_web_client

CHANNEL = "C0AUDIT"


@dataclass
class ChannelAnchored:
    database_url: str
    config_path: Path
    signer: Ed25519Signer
    slack: FakeSlack
    channel: SlackAnchorChannel
    writer: CheckpointWriter

    def _run(self, *args: str) -> Result:
        return CliRunner().invoke(build_cli(), list(args), env={
            "DATABASE_URL": self.database_url, "CONNECT_ACCESS_CONFIG": str(self.config_path),
            "SLACK_BOT_TOKEN": self.slack.bot_token, "SLACK_API_URL": self.slack.api_url})

    def cli(self, *args: str) -> tuple[int, str]:
        result = self._run(*args)
        return result.exit_code, result.output  # stdout and stderr, as a terminal shows

    def verify(self) -> tuple[int, dict[str, Any]]:
        result = self._run("audit", "verify", "--json")
        assert result.exit_code in (0, 1), result.output
        return result.exit_code, json.loads(result.stdout)

    def checkpoint_messages(self) -> list[str]:
        return [m.ts for m in self.slack.messages(CHANNEL)
                if m.text.startswith("Audit checkpoint")]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def _anchored(database_url: str, session_factory: SessionFactory, clock: FakeClock,
              tmp_path: Path, slack: FakeSlack, extra: dict[str, Any]) -> ChannelAnchored:
    key_path = tmp_path / "audit-ed25519.pem"
    signer = write_new_key(key_path)
    config_path = write_config(tmp_path / "config.yaml", {
        "signing_key_file": str(key_path), "anchor_channel": CHANNEL,
        "checkpoint_events": 5, **extra})
    channel = SlackAnchorChannel(build_web_client(slack.bot_token, slack.api_url), CHANNEL)
    writer = CheckpointWriter(sessions=session_factory, signer=signer, stores=[channel],
                              clock=clock, alerter=RecordingAlerts(),
                              interval=timedelta(minutes=5), every_events=5,
                              sleep=lambda _s: None)
    return ChannelAnchored(database_url, config_path, signer, slack, channel, writer)


@pytest.fixture
def anchored(database_url: str, session_factory: SessionFactory, clock: FakeClock,
             tmp_path: Path, slack: FakeSlack) -> ChannelAnchored:
    """Channel only: no bucket, no AWS at all."""
    return _anchored(database_url, session_factory, clock, tmp_path, slack, {})


@pytest.fixture
def history(anchored: ChannelAnchored, request_service: RequestService,
            clock: FakeClock) -> int:
    request_id = granted_and_revoked(request_service, clock)
    pending(request_service)
    code, output = anchored.cli("audit", "checkpoint")
    assert code == 0, output
    return request_id


def post_forged(slack: FakeSlack, forged: SignedCheckpoint) -> str:
    """Mallory posts a checkpoint in the channel, formatted as the bot formats them; its ts."""
    return slack.post_as("U0MALLORY", CHANNEL, f"Audit checkpoint: event {forged.checkpoint.seq}",
                         [{"type": "section", "text": {"type": "mrkdwn",
                                                       "text": f"```{forged.to_json()}```"}}])


def test_channel_only_anchoring_is_accepted() -> None:
    config = parse_config({"audit": {"signing_key_file": "/k", "anchor_channel": CHANNEL}})
    assert config.audit.anchored and config.audit.anchor_bucket is None
    with pytest.raises(ValueError, match="no anchor_bucket or anchor_channel"):
        parse_config({"audit": {"signing_key_file": "/k"}})


def test_untouched_log_verifies_against_the_channel_across_pages(
        anchored: ChannelAnchored, history: int, request_service: RequestService) -> None:
    # The checkpoint the CLI wrote is a message in the channel, read back through
    # conversations.history; 250 later messages push it onto the second page.
    [first] = anchored.checkpoint_messages()
    message = anchored.slack.message(CHANNEL, first)
    assert '"signature"' in message.blocks[1]["text"]["text"]
    for n in range(250):
        anchored.slack.post_as("U0AUDITOR", CHANNEL, f"looked at checkpoint, all fine ({n})")
    pending(request_service, requester="U0ALICE")
    assert anchored.writer.write_now().written is not None
    code, report = anchored.verify()
    assert code == 0 and report["ok"] and report["anchored"], report
    assert report["checkpoints"] == 2 and report["anchor_store"] == f"slack:{CHANNEL}"
    assert report["store_gaps"] == [] and report["retired_keys"] == {}
    pages = [c for c in anchored.slack.calls("conversations.history") if c.params.get("cursor")]
    assert pages, "the second page was never asked for"
    code, output = anchored.cli("audit", "verify")
    assert code == 0 and f"against 2 checkpoint(s) in slack:{CHANNEL}" in output


def test_channel_only_anchors_catch_a_recomputed_chain(anchored: ChannelAnchored, history: int,
                                                       engine: Engine) -> None:
    rewrite_as_mallory(engine, votes=True)
    code, report = anchored.verify()
    assert code == 1 and report["fault"]["kind"] == "checkpoint_mismatch"
    assert report["fault"]["seq"] == report["last_checkpoint_seq"]


def test_channel_only_anchors_catch_a_truncation(anchored: ChannelAnchored, history: int,
                                                 engine: Engine) -> None:
    last = cut_tail(engine, 2)
    code, report = anchored.verify()
    assert code == 1 and report["fault"]["kind"] == "truncated"
    assert report["fault"]["expected"] == f"at least {last} events"
    assert report["fault"]["found"] == f"{last - 2} events"


def test_a_checkpoint_forged_into_the_channel_is_a_fault(
        anchored: ChannelAnchored, history: int, engine: Engine, tmp_path: Path,
        clock: FakeClock) -> None:
    # Mallory rewrites the chain and posts a checkpoint for it, as the bot formats them,
    # with the real key's id but her own key.
    rewrite_as_mallory(engine)
    mallory = write_new_key(tmp_path / "mallory.pem")
    ts = post_forged(anchored.slack,
                     forge_checkpoint(engine, mallory, anchored.signer.key_id, clock.now()))
    code, report = anchored.verify()
    assert code == 1 and report["fault"]["kind"] == "forged_checkpoint"
    assert "does not verify" in report["fault"]["message"]
    assert ts in report["fault"]["message"] and "U0MALLORY" in report["fault"]["message"]


def test_a_forged_checkpoint_in_the_channel_does_not_stop_the_writer(
        anchored: ChannelAnchored, history: int, request_service: RequestService,
        engine: Engine, tmp_path: Path, clock: FakeClock) -> None:
    # Mallory posts a well-formed checkpoint far ahead of the chain, signed by her key.
    mallory = write_new_key(tmp_path / "mallory.pem")
    forged = forge_checkpoint(engine, mallory, anchored.signer.key_id, clock.now(), ahead=1000)
    post_forged(anchored.slack, forged)
    seq = forged.checkpoint.seq - 1000  # the genuine head
    before = len(anchored.checkpoint_messages())
    pending(request_service, requester="U0ALICE")  # new events to anchor

    outcome = anchored.writer.write_now()  # refused "the chain went backwards" before

    assert outcome.written is not None and not outcome.failures, outcome
    assert outcome.written.checkpoint.seq > seq  # anchored from the last genuine one
    assert len(anchored.checkpoint_messages()) == before + 1


def test_a_checkpoint_message_without_a_readable_checkpoint_is_a_fault(
        anchored: ChannelAnchored, history: int) -> None:
    anchored.slack.post_as("U0MALLORY", CHANNEL, "Audit checkpoint: event 99, trust me")
    code, report = anchored.verify()
    assert code == 1 and report["fault"]["kind"] == "unreadable_checkpoint"


def test_without_history_scope_verify_says_which_scope(anchored: ChannelAnchored,
                                                       history: int) -> None:
    anchored.slack.bot_scopes = tuple(s for s in anchored.slack.bot_scopes
                                      if s != "channels:history")
    code, output = anchored.cli("audit", "verify")
    assert code == 2
    assert "missing_scope" in output and "channels:history" in output


@pytest.fixture
def both(fake_aws: None, database_url: str, session_factory: SessionFactory, clock: FakeClock,
         tmp_path: Path, slack: FakeSlack) -> ChannelAnchored:
    make_locked_bucket()
    return _anchored(database_url, session_factory, clock, tmp_path, slack,
                     {"anchor_bucket": BUCKET})


def test_with_both_stores_a_checkpoint_deleted_from_the_channel_is_reported(
        both: ChannelAnchored, request_service: RequestService, clock: FakeClock,
        engine: Engine) -> None:
    granted_and_revoked(request_service, clock)
    code, output = both.cli("audit", "checkpoint")
    assert code == 0, output
    pending(request_service)
    code, output = both.cli("audit", "checkpoint")
    assert code == 0, output
    code, report = both.verify()
    assert code == 0 and report["checkpoints"] == 2 and report["store_gaps"] == []
    assert report["anchor_store"] == f"s3://{BUCKET}/checkpoints/ and slack:{CHANNEL}"
    # A workspace admin deletes the first checkpoint message: S3 still holds it.
    first, _second = both.checkpoint_messages()
    first_seq = json.loads(both.slack.message(CHANNEL, first).blocks[1]["text"]["text"]
                           .strip("`"))["seq"]
    both.slack.delete_message(CHANNEL, first)
    code, report = both.verify()
    assert code == 0 and report["checkpoints"] == 2
    assert report["store_gaps"] == [{"seq": first_seq,
                                     "present_in": f"s3://{BUCKET}/checkpoints/",
                                     "missing_from": f"slack:{CHANNEL}"}]
    code, output = both.cli("audit", "verify")
    assert (f"warning: checkpoint at event {first_seq} is in s3://{BUCKET}/checkpoints/ but "
            f"missing from slack:{CHANNEL}") in output
    # ... and the S3 copy still anchors the chain: a rewrite up to it is caught.
    rewrite_as_mallory(engine, "seq = 1")
    code, report = both.verify()
    assert code == 1 and report["fault"]["kind"] == "checkpoint_mismatch"
    assert report["fault"]["seq"] == first_seq
