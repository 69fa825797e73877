"""`/connect-access audit [filters]` for auditors, and their App Home section.

The command acks empty at once; a lazy listener checks the user is an auditor (named in
`auditors:` directly or through a user group), answers with the summary through
response_url, and uploads the export of the same selection to the auditor's DM with the bot
(files.getUploadURLExternal, the upload, files.completeUploadExternal: `files:write`).
Everyone else is refused. Each view, export and refusal is an audit event.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App

from bot.anchors import AnchorReader, CheckpointSigner, CheckpointVerifier
from bot.audit_review import (
    EXPORTED,
    FILTER_HELP,
    REFUSED,
    VIEWED,
    ReviewError,
    auditor_home,
    chain_status,
    export_selection,
    is_auditor,
    parse_filter,
    record_review,
    summarize,
)
from bot.db import SessionFactory
from bot.ports import ApproverDirectory, Clock
from bot.slack.blocks import primitives
from bot.slack.blocks.audit import auditor_home_section, review_summary
from bot.slack.escape import escape
from bot.slack.listeners.common import Incoming, SlackDeps, lazy

logger = logging.getLogger(__name__)

VERB = "audit"
# An export past this many events is better made with `connect-access audit export`.
MAX_EXPORT_EVENTS = 200_000


@dataclass(frozen=True)
class AuditReviewDeps:
    """What audit review needs besides the Slack layer's usual deps."""

    sessions: SessionFactory
    clock: Clock
    auditors: tuple[str, ...]
    directory: ApproverDirectory
    signer: CheckpointSigner | None = None
    reader: AnchorReader | None = None
    retired: tuple[CheckpointVerifier, ...] = ()  # audit.previous_keys


def is_audit_command(command: dict[str, Any]) -> bool:
    text = str(command.get("text") or "").strip()
    return text.split(" ", 1)[0].lower() == VERB if text else False


def ack_audit_command(ack: Ack) -> None:
    ack()


def _reply(incoming: Incoming, text: str, reply_blocks: list[Any]) -> None:
    assert incoming.respond is not None, "slash commands always carry a response_url"
    incoming.respond(text=text, blocks=reply_blocks, response_type="ephemeral")


def run_audit_command(deps: SlackDeps, incoming: Incoming) -> None:
    audit = deps.audit
    user = incoming.user_id
    if audit is None or not audit.auditors:
        message = ("Audit review is not set up: an operator lists auditors (user or "
                   "user-group ids) under `auditors:` in the bot's config.")
        _reply(incoming, message, primitives.error_notice(message))
        return
    if not is_auditor(audit.directory, audit.auditors, user):
        record_review(audit.sessions, audit.clock, user, REFUSED, {"surface": "command"})
        message = "Only auditors can review the audit trail here."
        _reply(incoming, message, primitives.error_notice(message))
        return
    text = str(incoming.body.get("text") or "").strip()
    try:
        chosen = parse_filter(text[len(VERB):], audit.clock.now())
    except ReviewError as exc:
        _reply(incoming, escape(str(exc)), primitives.error_notice(str(exc)))
        return
    with audit.sessions() as session:
        summary = summarize(session, chosen)
    record_review(audit.sessions, audit.clock, user, VIEWED,
                  {"surface": "command", "filter": chosen.to_details(),
                   "requests": summary.total})
    if summary.events > MAX_EXPORT_EVENTS:
        note = (f"{summary.events} events is too many for a Slack file; narrow the filters "
                "or use `connect-access audit export`. " + FILTER_HELP)
        _reply(incoming, "Audit review", [*review_summary(summary, None),
                                          primitives.context(escape(note))])
        return
    export_name = _export_name(audit.clock, chosen.fmt)
    _reply(incoming, "Audit review", review_summary(summary, export_name))
    _upload_export(deps, audit, incoming, chosen, export_name)


def _export_name(clock: Clock, fmt: str) -> str:
    return f"connect-access-audit-{clock.now().strftime('%Y%m%dT%H%M%SZ')}.{fmt}"


def _upload_export(deps: SlackDeps, audit: AuditReviewDeps, incoming: Incoming,
                   chosen: Any, name: str) -> None:
    with audit.sessions() as session:
        content = "".join(export_selection(session, chosen)).encode()
    channel = deps.dms.channel_for(incoming.user_id)
    response = incoming.client.files_upload_v2(
        channel=channel, filename=name, content=content, title=name,
        initial_comment=escape(f"Audit export: {chosen.describe()}"))
    file_id = str((response.get("file") or {}).get("id", ""))
    record_review(audit.sessions, audit.clock, incoming.user_id, EXPORTED, {
        "surface": "command", "filter": chosen.to_details(), "file": name,
        "file_id": file_id, "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest()})


def register(app: App, deps: SlackDeps) -> None:
    """`audit ...` (auditors only) reads the database too: answered after the ack. Register
    it before bot.slack.listeners.commands, whose last listener takes every command."""
    app.command(deps.command, matchers=[is_audit_command])(
        ack=ack_audit_command, lazy=[lazy(run_audit_command, deps)]
    )


def auditor_home_blocks(deps: SlackDeps, user: str, room: int) -> list[Any]:
    """The auditor section of App Home (empty for everyone else); opening it is audited."""
    audit = deps.audit
    if audit is None or not is_auditor(audit.directory, audit.auditors, user):
        return []
    with audit.sessions() as session:
        status = chain_status(session, audit.signer, audit.reader, audit.retired)
        home = auditor_home(session, status, audit.clock.now())
    record_review(audit.sessions, audit.clock, user, VIEWED,
                  {"surface": "app_home", "chain_ok": status.ok})
    return auditor_home_section(home, room)
