"""`connect-access audit verify` and `audit export`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import typer
from sqlalchemy.exc import SQLAlchemyError

from bot.alerts import LoggingAlerter
from bot.anchors import AnchorError
from bot.audit import export_lines
from bot.audit_runtime import Anchoring, build_anchoring, verify_configured
from bot.aws.sessions import AwsSessions
from bot.commands.db_cmds import open_database, settings_or_exit
from bot.config import ConfigError, OperatorConfig, load_config
from bot.db import SessionFactory
from bot.evidence import RequestStory, StoryNotFound, request_story
from bot.ports import SystemClock
from bot.request_ids import MAX_REQUEST_ID
from bot.runtime import DEFAULT_REGION
from bot.settings import Settings
from bot.signing import write_new_key
from bot.times import TimeInputError, parse_utc


class Format(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


def _parse_time(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        # A time without zone is read as UTC, like every time the bot records.
        return parse_utc(value)
    except TimeInputError as exc:
        typer.echo(f"error: {option}: expected an ISO date or time like 2026-11-01 or "
                   f"2026-11-01T12:00:00Z, got {value!r} ({exc})", err=True)
        raise typer.Exit(2) from None


def _config_or_exit(settings: Settings) -> OperatorConfig:
    try:
        return load_config(settings.connect_access_config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _anchoring_or_exit(settings: Settings) -> Anchoring | None:
    config = _config_or_exit(settings)
    aws = AwsSessions(settings.aws_region or DEFAULT_REGION, settings.aws_endpoint_url)
    try:
        return build_anchoring(config.audit, aws, slack_token=settings.slack_bot_token,
                               slack_api_url=settings.slack_api_url)
    except AnchorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def _audit_trail() -> Iterator[SessionFactory]:
    """The database for one command; a database error ends it with exit 2, and the engine
    is disposed of however the command ends."""
    engine, sessions = open_database()
    try:
        yield sessions
    except SQLAlchemyError as exc:
        typer.echo(f"error: could not read the audit trail: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s"


def story_lines(story: RequestStory) -> list[str]:
    """`audit show` as text: one fact per line, times in UTC."""
    m = story.milestones()
    lines = [
        f"request #{story.id}: {story.entry_id} ({story.tier}), now {story.state}",
        f"  asked by {story.requester} at {m['submitted'] or story.created_at.isoformat()} for "
        f"{story.duration_seconds // 60} min on {story.instance or '-'}",
        f"  principal: {story.principal_arn}",
        f"  reason: {story.reason}",
        "votes:",
        *([f"  {v['at']}  {v['approver']}  {v['decision']}"
           + (f"  \"{v['comment']}\"" if v["comment"] else "")
           + (f"  (extension round {v['round']})" if v["round"] else "")
           for v in story.votes] or ["  none"]),
        f"approved: {m['approved'] or '-'}   denied: {m['denied'] or '-'}   "
        f"granted: {m['granted'] or '-'}   extended: {m['extended'] or '-'}   "
        f"revoked: {m['revoked'] or '-'}   failed: {m['failed'] or '-'}",
        "grants:",
        *([f"  {g.id}: {g.state}, {g.kind} on {g.principal_arn}; attached "
           f"{g.attached_at.isoformat() if g.attached_at else '-'}, expires "
           f"{g.expires_at.isoformat()}, revoked "
           f"{g.revoked_at.isoformat() if g.revoked_at else '-'}"
           f" ({g.revoke_reason or '-'} by {g.revoked_by or '-'}), revocation lag "
           f"{_duration(g.revocation_lag_seconds)}, {g.revoke_attempts} revoke attempt(s)"
           + (f", last error: {g.last_error}" if g.last_error else "")
           for g in story.grants] or ["  none"]),
        "policies as attached:",
    ]
    for p in story.policies:
        verdict = "hash matches audit event" if p.hash_matches else "HASH DOES NOT MATCH"
        lines.append(f"  {p.name} ({p.kind}) attached {p.attached_at.isoformat()}, "
                     f"sha256 {p.document_hash} ({verdict} {p.audit_seq})")
        lines.extend("    " + line for line in json.dumps(p.document, indent=2).splitlines())
    if not story.policies:
        lines.append("  none recorded")
    lines.append("notifications sent:")
    lines.extend([f"  {n['at']}  {n['event']}" for n in story.notifications] or ["  none"])
    lines.append("audit events:")
    lines.extend(f"  {e['seq']:>6}  {e['at']}  {e['actor']}  {e['action']}"
                 for e in story.events)
    return lines


def register(app: typer.Typer) -> None:
    audit_app = typer.Typer(help="Check and export the tamper-evident audit trail.")
    app.add_typer(audit_app, name="audit")

    @audit_app.command("verify")
    def audit_verify(
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Check the hash chain against the signed anchors (audit: in the operator config)
        and cross-check requests and grants with their events; exit 1 naming the first
        inconsistency, with what was expected and what was found."""
        settings = settings_or_exit()
        anchoring = _anchoring_or_exit(settings)
        with _audit_trail() as sessions:
            try:
                with sessions() as session:
                    report = verify_configured(session, anchoring)
            except AnchorError as exc:
                typer.echo(f"error: could not read the anchors: {exc}", err=True)
                raise typer.Exit(2) from None
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        else:
            lines = report.lines()
            typer.echo(lines[0], err=not report.ok)
            for line in lines[1:]:
                typer.echo(line, err=not report.ok or line.startswith("note:"))
        if not report.ok:
            raise typer.Exit(1)

    @audit_app.command("checkpoint")
    def audit_checkpoint(
        as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
    ) -> None:
        """Sign the chain's head now and write it to the anchor stores."""
        settings = settings_or_exit()
        anchoring = _anchoring_or_exit(settings)
        if anchoring is None:
            typer.echo("error: no anchors are configured: set audit.kms_key_id or "
                       "audit.signing_key_file, and audit.anchor_bucket, in the operator "
                       "config (CONNECT_ACCESS_CONFIG)", err=True)
            raise typer.Exit(2)
        config = _config_or_exit(settings)
        with _audit_trail() as sessions:
            try:
                # A failure is printed (and the exit code says so): no alert from a command.
                outcome = anchoring.writer(sessions, SystemClock(), config.audit,
                                           LoggingAlerter()).write_now()
            except AnchorError as exc:
                typer.echo(f"error: checkpoint not written: {exc}", err=True)
                raise typer.Exit(1) from None
        assert outcome.written is not None
        c = outcome.written.checkpoint
        stores = [s.name for s in anchoring.stores]
        if as_json:
            typer.echo(json.dumps({"seq": c.seq, "head_hash": c.head_hash,
                                   "event_count": c.event_count, "at": c.at.isoformat(),
                                   "key_id": c.key_id, "stores": stores,
                                   "failures": list(outcome.failures)}, indent=2))
        else:
            typer.echo(f"checkpoint written: event {c.seq}, head {c.head_hash}, signed by "
                       f"{c.key_id}, stored in {', '.join(stores)}")
        for failure in outcome.failures:
            typer.echo(f"warning: {failure}", err=True)

    @audit_app.command("show")
    def audit_show(
        request_id: int = typer.Argument(..., help="The request id (#12 -> 12).",
                                         min=1, max=MAX_REQUEST_ID),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """The whole story of one request: who asked and why, the votes, the policy
        documents as attached, grant, extensions, revocation and its lag, notifications."""
        with _audit_trail() as sessions:
            try:
                with sessions() as session:
                    story = request_story(session, request_id)
            except StoryNotFound as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps(story.to_dict(), indent=2, ensure_ascii=False))
            return
        for line in story_lines(story):
            typer.echo(line)

    @audit_app.command("keygen")
    def audit_keygen(
        path: Path = typer.Argument(..., help="Where to write the new private key (PEM)."),
        as_json: bool = typer.Option(False, "--json", help="Print the key id as JSON."),
    ) -> None:
        """Make an Ed25519 signing key for audit.signing_key_file (mode 0600)."""
        try:
            signer = write_new_key(path)
        except AnchorError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps({"path": str(path), "key_id": signer.key_id}))
            return
        typer.echo(f"wrote {path} (key id {signer.key_id}); keep it away from the database "
                   "host and its administrators")

    @audit_app.command("export")
    def audit_export(
        fmt: Format = typer.Option(..., "--format", help="csv or jsonl."),
        since: str | None = typer.Option(None, "--since", help="Events at or after (ISO, UTC)."),
        until: str | None = typer.Option(None, "--until", help="Events before (ISO, UTC)."),
        requester: str | None = typer.Option(None, "--requester", help="Slack user id."),
        entry: str | None = typer.Option(None, "--entry", help="Catalog entry id."),
    ) -> None:
        """Stream audit events to stdout, oldest first."""
        start, end = _parse_time("--since", since), _parse_time("--until", until)
        if start is not None and end is not None and start >= end:
            # As the auditors' `since:`/`until:` filter says: an empty window is a typo,
            # not an export with nothing in it.
            typer.echo(f"error: --since ({start.isoformat()}) must be before --until "
                       f"({end.isoformat()})", err=True)
            raise typer.Exit(2)
        filters = {"since": start, "until": end, "requester": requester, "entry_id": entry}
        out = sys.stdout
        with _audit_trail() as sessions, sessions() as session:
            for line in export_lines(session, fmt.value, **filters):
                out.write(line)
        out.flush()
