"""Anchors: signed checkpoints of the audit chain kept where the database administrator
cannot rewrite them.

The hash chain alone proves only that nobody edited the log carelessly: whoever can write
to the database can recompute every later hash, move the chain head back after cutting
the tail, or empty the table. A checkpoint (sequence number, head hash, event count, time)
signed with a key the database does not hold (AWS KMS, or a local Ed25519 key) and written
to a store the administrator does not control (S3 with Object Lock in compliance mode)
pins the chain as it was: `audit verify` then detects a recomputed chain (a checkpoint's
head no longer matches), a cut tail, a restored older copy or a wipe (fewer events than a
checkpoint counted), and a forged checkpoint (its signature does not verify).

Core module: the signer and the stores are ports (Protocols); their adapters live in
bot.aws.anchors (KMS, S3), bot.signing (Ed25519) and bot.slack.anchor_channel.

Who writes checkpoints: the scheduler leader, from its loop (CheckpointWriter.tick), so
no web request ever waits on KMS or S3; `connect-access audit checkpoint` writes one at
once. A failed write is retried on the next tick (the checkpoint stays due) and alerted
(bot.alerts) once per run of failures, with a follow-up when it recovers; it never touches
the request path, which only appends events.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.alerts import Alert, Alerter, AlertRef
from bot.db import SessionFactory
from bot.models import GENESIS_HASH, AuditChainHead, AuditEvent
from bot.ports import Clock

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
CHAIN_HEAD_ID = 1


class AnchorError(Exception):
    """A checkpoint could not be signed, written or read; the message says which store or
    key and what to check."""


@dataclass(frozen=True)
class Checkpoint:
    """What is signed: the chain as it stood at `at`."""

    seq: int
    head_hash: str
    event_count: int
    at: datetime
    key_id: str

    def payload(self) -> bytes:
        """The exact bytes signed: canonical JSON, so any store or reader agrees on them."""
        return json.dumps(
            {"v": CHECKPOINT_VERSION, "seq": self.seq, "head_hash": self.head_hash,
             "event_count": self.event_count,
             "at": self.at.astimezone(UTC).isoformat(timespec="microseconds"),
             "key_id": self.key_id},
            sort_keys=True, separators=(",", ":"),
        ).encode()


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    algorithm: str
    signature: bytes

    def to_json(self) -> str:
        c = self.checkpoint
        return json.dumps({
            "v": CHECKPOINT_VERSION, "seq": c.seq, "head_hash": c.head_hash,
            "event_count": c.event_count,
            "at": c.at.astimezone(UTC).isoformat(timespec="microseconds"),
            "key_id": c.key_id, "algorithm": self.algorithm,
            "signature": base64.b64encode(self.signature).decode(),
        }, sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedCheckpoint:
        """Parse a stored checkpoint; AnchorError when it is not one."""
        try:
            raw: Any = json.loads(text)
            if not isinstance(raw, dict) or raw.get("v") != CHECKPOINT_VERSION:
                raise ValueError(f"not a version {CHECKPOINT_VERSION} checkpoint")
            checkpoint = Checkpoint(
                seq=_int(raw["seq"]), head_hash=str(raw["head_hash"]),
                event_count=_int(raw["event_count"]),
                at=datetime.fromisoformat(str(raw["at"])).astimezone(UTC),
                key_id=str(raw["key_id"]))
            return cls(checkpoint, str(raw["algorithm"]),
                       base64.b64decode(str(raw["signature"]), validate=True))
        except (ValueError, KeyError, TypeError) as exc:
            raise AnchorError(f"not a readable checkpoint ({exc})") from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


class CheckpointVerifier(Protocol):
    """Checks checkpoints signed by one key: the signing key, or a retired one
    (`audit.previous_keys`) whose checkpoints must still verify after a rotation."""

    @property
    def key_id(self) -> str: ...

    def verify(self, payload: bytes, signature: bytes) -> bool:
        """True only for a signature this key made over exactly `payload`."""
        ...


class CheckpointSigner(Protocol):
    """Signs checkpoints with a key the database does not hold."""

    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    def sign(self, payload: bytes) -> bytes:
        """Raises AnchorError when the key cannot be used."""
        ...

    def verify(self, payload: bytes, signature: bytes) -> bool:
        """True only for a signature this key made over exactly `payload`."""
        ...


class AnchorStore(Protocol):
    """Somewhere a checkpoint is written and cannot be changed afterwards."""

    @property
    def name(self) -> str:
        """For messages: s3://bucket/prefix, slack:#channel."""
        ...

    def put(self, signed: SignedCheckpoint) -> None:
        """Raises AnchorError."""
        ...


@dataclass(frozen=True)
class StoredAnchor:
    """One object found in a readable store: a checkpoint, or why it could not be read."""

    location: str
    signed: SignedCheckpoint | None
    error: str | None = None


@runtime_checkable
class AnchorReader(AnchorStore, Protocol):
    """A store `audit verify` reads back."""

    def list(self) -> list[StoredAnchor]:
        """Every checkpoint stored, in sequence order. Raises AnchorError."""
        ...

    def latest(self) -> SignedCheckpoint | None:
        """The checkpoint with the highest sequence number. Raises AnchorError."""
        ...


@dataclass(frozen=True)
class ChainHead:
    seq: int
    hash: str


def read_chain_head(session: Session) -> ChainHead:
    """The chain head as the database records it, checked against the event it names
    (a head that does not match its event is not signed: something is already wrong)."""
    head = session.get(AuditChainHead, CHAIN_HEAD_ID)
    if head is None:
        raise AnchorError("the audit chain head row is missing: run `connect-access db upgrade`")
    if head.seq == 0:
        if head.hash != GENESIS_HASH:
            raise AnchorError("the audit chain head is at 0 events but not at genesis")
        return ChainHead(0, GENESIS_HASH)
    stored = session.execute(
        select(AuditEvent.hash).where(AuditEvent.seq == head.seq)).scalar_one_or_none()
    if stored != head.hash:
        raise AnchorError(
            f"the audit chain head names event {head.seq} with hash {head.hash[:12]}…, but "
            f"that event {'is missing' if stored is None else 'has ' + stored[:12] + '…'}; "
            "run `connect-access audit verify`")
    return ChainHead(head.seq, head.hash)


def sign_checkpoint(signer: CheckpointSigner, head: ChainHead, at: datetime
                    ) -> SignedCheckpoint:
    checkpoint = Checkpoint(seq=head.seq, head_hash=head.hash, event_count=head.seq,
                            at=at, key_id=signer.key_id)
    return SignedCheckpoint(checkpoint, signer.algorithm, signer.sign(checkpoint.payload()))


@dataclass(frozen=True)
class CheckpointOutcome:
    written: SignedCheckpoint | None
    skipped: str | None = None  # why nothing was written (not due, no new events)
    failures: tuple[str, ...] = ()  # stores (or the signer) that failed


class CheckpointWriter:
    """Decides when a checkpoint is due and writes it to every store.

    Due when at least `every_events` events arrived since the last checkpoint, or any
    arrived and `interval` has passed since it. The first store is the primary (S3 when
    configured, else the audit channel; the writer reads the last checkpoint from it): its
    failure leaves the checkpoint due, so the next tick retries it.
    Each store is tried `attempts` times with a short backoff before it counts as failed;
    the first failure of a run is alerted, and so is the recovery.
    """

    def __init__(self, *, sessions: SessionFactory, signer: CheckpointSigner,
                 stores: Sequence[AnchorStore], clock: Clock, alerter: Alerter,
                 interval: timedelta, every_events: int, attempts: int = 3,
                 backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> None:
        if not stores:
            raise ValueError("a CheckpointWriter needs at least one anchor store")
        self.sessions = sessions
        self.signer = signer
        self.stores = tuple(stores)
        self.clock = clock
        self.alerter = alerter
        self.interval = interval
        self.every_events = every_events
        self.attempts = attempts
        self.backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last: Checkpoint | None = None
        self._last_known = False
        self._failing: AlertRef | bool | None = False  # the alert of a failure run

    def _last_checkpoint(self) -> Checkpoint | None:
        if not self._last_known:
            primary = self.stores[0]
            latest = primary.latest() if isinstance(primary, AnchorReader) else None
            if (latest is not None and not self._signed_here(latest)
                    and isinstance(primary, AnchorReader)):
                # Only a checkpoint this key signed may steer the writer: anyone who can
                # post in the audit channel could otherwise claim a higher sequence and
                # stop checkpoints ("the chain went backwards"). `audit verify` names the
                # forgery; the writer keeps anchoring from the last genuine checkpoint.
                genuine = [a.signed for a in primary.list()
                           if a.signed is not None and self._signed_here(a.signed)]
                latest = max(genuine, key=lambda s: s.checkpoint.seq, default=None)
            self._last = None if latest is None else latest.checkpoint
            self._last_known = True
        return self._last

    def _signed_here(self, signed: SignedCheckpoint) -> bool:
        return (signed.checkpoint.key_id == self.signer.key_id
                and self.signer.verify(signed.checkpoint.payload(), signed.signature))

    def due(self, head: ChainHead, now: datetime) -> str | None:
        """None when a checkpoint is due, else why not."""
        last = self._last_checkpoint()
        if last is None:
            return None if head.seq > 0 else "no events yet"
        if head.seq < last.seq:
            return None  # the chain went backwards: write() refuses and alerts
        new = head.seq - last.seq
        if new == 0:
            return "no new events since the last checkpoint"
        if new >= self.every_events or now - last.at >= self.interval:
            return None
        return f"{new} new event(s), next checkpoint at {self.every_events} or after the interval"

    def tick(self) -> CheckpointOutcome:
        """From the scheduler leader's loop: write a checkpoint if one is due. Never raises."""
        try:
            return self._run(force=False)
        except Exception as exc:
            log.exception("checkpoint tick failed")
            self._failed([f"checkpoint: {exc}"])
            return CheckpointOutcome(None, failures=(str(exc),))

    def write_now(self) -> CheckpointOutcome:
        """`audit checkpoint`: sign the current head whether due or not. Raises AnchorError
        when the primary store or the signer fails."""
        outcome = self._run(force=True)
        if outcome.written is None and outcome.failures:
            raise AnchorError("; ".join(outcome.failures))
        return outcome

    def _run(self, *, force: bool) -> CheckpointOutcome:
        with self._lock:
            now = self.clock.now()
            with self.sessions() as session:
                head = read_chain_head(session)
            try:
                last = self._last_checkpoint()
            except AnchorError as exc:
                self._failed([str(exc)])
                return CheckpointOutcome(None, failures=(str(exc),))
            if last is not None and head.seq < last.seq:
                message = (f"the audit chain has {head.seq} events but the last checkpoint "
                           f"({self.stores[0].name}, {last.at.isoformat()}) counted {last.seq}: "
                           "events were removed or an older database restored. No checkpoint "
                           "was written; run `connect-access audit verify`.")
                self._failed([message])
                return CheckpointOutcome(None, failures=(message,))
            if not force:
                reason = self.due(head, now)
                if reason is not None:
                    return CheckpointOutcome(None, skipped=reason)
            try:
                signed = sign_checkpoint(self.signer, head, now)
            except AnchorError as exc:
                self._failed([f"signing with {self.signer.key_id}: {exc}"])
                return CheckpointOutcome(None, failures=(str(exc),))
            failures: list[str] = []
            primary_ok = False
            for index, store in enumerate(self.stores):
                error = self._put(store, signed)
                if error is None:
                    primary_ok = primary_ok or index == 0
                else:
                    failures.append(f"{store.name}: {error}")
            if failures:
                self._failed(failures)
            elif self._failing is not False:
                first = self._failing
                self._failing = False
                self.alerter.alert(Alert(
                    kind="audit_checkpoint_resolved",
                    summary=f"Audit checkpoints are being written again (event {head.seq} "
                            f"anchored in {self.stores[0].name}).",
                    next_step="Nothing; run `connect-access audit verify` to check the log.",
                    follows_up=first if isinstance(first, AlertRef) else None))
            if not primary_ok:
                return CheckpointOutcome(None, failures=tuple(failures))
            self._last = signed.checkpoint
            log.info("audit checkpoint at event %d written to %s", head.seq,
                     ", ".join(s.name for s in self.stores))
            return CheckpointOutcome(signed, failures=tuple(failures))

    def _put(self, store: AnchorStore, signed: SignedCheckpoint) -> str | None:
        error = ""
        for attempt in range(self.attempts):
            try:
                store.put(signed)
                return None
            except AnchorError as exc:
                error = str(exc)
            except Exception as exc:  # an adapter bug must not stop the other stores
                log.exception("anchor store %s failed unexpectedly", store.name)
                error = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < self.attempts:
                self._sleep(self.backoff * 2 ** attempt)
        return error

    def _failed(self, failures: Sequence[str]) -> None:
        # A store that failed may have half-written; re-read what it holds next time.
        self._last_known = False
        log.error("audit checkpoint failed: %s", "; ".join(failures))
        if self._failing is False:
            ref = self.alerter.alert(Alert(
                kind="audit_checkpoint_failed",
                summary="An audit checkpoint could not be written: " + "; ".join(failures),
                next_step=("Check the signing key and the anchor store named above (the "
                           "bot's IAM policy, Object Lock, the bot in the audit channel); it "
                           "is retried on every scheduler "
                           "tick and requests are not affected meanwhile."),
                details={"signing_key": self.signer.key_id,
                         "stores": ", ".join(store.name for store in self.stores)}))
            self._failing = ref if ref is not None else True



def run_checkpoint_loop(writer: CheckpointWriter, stop: threading.Event,
                        leading: Callable[[], bool], poll_seconds: float = 5.0) -> None:
    """The scheduler process's checkpoint thread: while this process leads, tick every
    `poll_seconds`. Its own thread, so a slow KMS or S3 never delays a revocation."""
    while not stop.wait(poll_seconds):
        if leading():
            writer.tick()
