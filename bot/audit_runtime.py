"""Composition of the audit anchors from the operator config's `audit:` section: the signer
(KMS or a local Ed25519 key), the stores (S3 Object Lock, optionally the audit Slack
channel), the checkpoint writer, and `audit verify` against them.

`build_anchoring` checks everything at start (the key can sign, the bucket has Object Lock,
a Slack token exists for the channel) and raises AnchorError naming the setting, so a
process never runs with anchoring that would fail at its first checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from bot.alerts import Alerter
from bot.anchors import (
    AnchorError,
    AnchorReader,
    AnchorStore,
    CheckpointSigner,
    CheckpointWriter,
)
from bot.audit_verify import AuditReport, verify_audit
from bot.aws.anchors import KmsSigner, S3AnchorStore
from bot.aws.sessions import AwsSessions
from bot.config import AuditConfig
from bot.db import SessionFactory
from bot.ports import Clock
from bot.signing import Ed25519Signer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Anchoring:
    signer: CheckpointSigner
    reader: AnchorReader  # the primary store: the one verify reads
    stores: tuple[AnchorStore, ...]

    def writer(self, sessions: SessionFactory, clock: Clock, config: AuditConfig,
               alerter: Alerter) -> CheckpointWriter:
        return CheckpointWriter(sessions=sessions, signer=self.signer, stores=self.stores,
                                clock=clock, alerter=alerter,
                                interval=config.checkpoint_interval,
                                every_events=config.checkpoint_events)


def build_signer(config: AuditConfig, aws: AwsSessions) -> CheckpointSigner:
    if config.kms_key_id is not None:
        kms = KmsSigner(aws.client("kms"), config.kms_key_id)
        kms.check()
        return kms
    assert config.signing_key_file is not None
    return Ed25519Signer.from_file(config.signing_key_file)


def build_anchoring(config: AuditConfig, aws: AwsSessions, *, slack_token: str | None = None,
                    slack_api_url: str | None = None) -> Anchoring | None:
    """None when no anchors are configured. Raises AnchorError for a setting that cannot
    work (checked now, not at the first checkpoint)."""
    if not config.anchored:
        return None
    signer = build_signer(config, aws)
    assert config.anchor_bucket is not None
    s3 = S3AnchorStore(aws.client("s3"), config.anchor_bucket, retention=config.anchor_retention)
    s3.check()
    stores: list[AnchorStore] = [s3]
    if config.anchor_channel is not None:
        if not slack_token:
            raise AnchorError("audit.anchor_channel is set but SLACK_BOT_TOKEN is not: the "
                              "bot cannot post checkpoints to Slack")
        from bot.slack.anchor_channel import SlackAnchorChannel
        from bot.slack.webapi import build_web_client

        channel = SlackAnchorChannel(build_web_client(slack_token, slack_api_url),
                                     config.anchor_channel)
        stores.append(channel)
    return Anchoring(signer=signer, reader=s3, stores=tuple(stores))


def verify_configured(session: Session, anchoring: Anchoring | None) -> AuditReport:
    """`audit verify`: against the anchors when configured. Raises AnchorError when the
    anchor store cannot be read (that is not a verdict on the log)."""
    if anchoring is None:
        return verify_audit(session)
    return verify_audit(session, signer=anchoring.signer, anchors=anchoring.reader.list(),
                        anchor_store=anchoring.reader.name)
