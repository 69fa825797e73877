"""Composition of the audit anchors from the operator config's `audit:` section: the signer
(KMS or a local Ed25519 key), the retired keys whose checkpoints still verify
(`previous_keys`), the stores (S3 Object Lock and/or the audit Slack channel), the
checkpoint writer, and `audit verify` against every store.

`build_anchoring` checks everything at start (the key can sign, the bucket has Object Lock,
the bot can read the channel's history, each retired key's public key can be read) and
raises AnchorError naming the setting, so a
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
    CheckpointVerifier,
    CheckpointWriter,
    StoredAnchor,
)
from bot.audit_verify import AuditReport, store_gaps, verify_audit
from bot.aws.anchors import KmsSigner, KmsVerifier, S3AnchorStore
from bot.aws.sessions import AwsSessions
from bot.config import AuditConfig
from bot.db import SessionFactory
from bot.ports import Clock
from bot.signing import Ed25519Signer, Ed25519Verifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Anchoring:
    signer: CheckpointSigner
    reader: AnchorReader  # the primary store (S3 when configured, else the channel)
    stores: tuple[AnchorStore, ...]
    readers: tuple[AnchorReader, ...] = ()  # every store verify reads (primary first)
    retired: tuple[CheckpointVerifier, ...] = ()  # audit.previous_keys

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


def build_retired(config: AuditConfig, aws: AwsSessions) -> tuple[CheckpointVerifier, ...]:
    """`audit.previous_keys`: KMS key ARNs and Ed25519 public-key PEM files."""
    retired: list[CheckpointVerifier] = []
    for key in config.previous_keys:
        if isinstance(key, str):
            kms = KmsVerifier(aws.client("kms"), key)
            kms.check()
            retired.append(kms)
        else:
            try:
                retired.append(Ed25519Verifier.from_file(key))
            except AnchorError as exc:
                raise AnchorError(f"audit.previous_keys: {exc}") from None
    return tuple(retired)


def build_anchoring(config: AuditConfig, aws: AwsSessions, *, slack_token: str | None = None,
                    slack_api_url: str | None = None) -> Anchoring | None:
    """None when no anchors are configured. Raises AnchorError for a setting that cannot
    work (checked now, not at the first checkpoint)."""
    if not config.anchored:
        return None
    signer = build_signer(config, aws)
    retired = build_retired(config, aws)
    readers: list[AnchorReader] = []
    if config.anchor_bucket is not None:
        s3 = S3AnchorStore(aws.client("s3"), config.anchor_bucket,
                           retention=config.anchor_retention)
        s3.check()
        readers.append(s3)
    if config.anchor_channel is not None:
        if not slack_token:
            raise AnchorError("audit.anchor_channel is set but SLACK_BOT_TOKEN is not: the "
                              "bot cannot post checkpoints to Slack or read them back")
        from bot.slack.anchor_channel import SlackAnchorChannel
        from bot.slack.webapi import build_web_client

        channel = SlackAnchorChannel(build_web_client(slack_token, slack_api_url),
                                     config.anchor_channel)
        channel.check()
        readers.append(channel)
    return Anchoring(signer=signer, reader=readers[0], stores=tuple(readers),
                     readers=tuple(readers), retired=retired)


def verify_configured(session: Session, anchoring: Anchoring | None) -> AuditReport:
    """`audit verify`: against every configured anchor store. Raises AnchorError when a
    store cannot be read (that is not a verdict on the log)."""
    if anchoring is None:
        return verify_audit(session)
    readers = anchoring.readers or (anchoring.reader,)
    listings: list[tuple[str, list[StoredAnchor]]] = [(r.name, r.list()) for r in readers]
    return verify_audit(session, signer=anchoring.signer,
                        anchors=[a for _name, anchors in listings for a in anchors],
                        anchor_store=" and ".join(name for name, _ in listings),
                        retired_keys=anchoring.retired, gaps=store_gaps(listings))
