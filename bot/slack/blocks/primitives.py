"""Block Kit's building blocks, each cut to Slack's limit on its text.

Text given to `mrkdwn`, `section` and `context` is mrkdwn the caller escaped already; it is
cut with `escape.truncate`, so a cut never splits an escape, a mention or a link.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot import slacklimits
from bot.slack.escape import escape, truncate

Block = dict[str, Any]
View = dict[str, Any]

# Slack's limits on text fields.
PLAIN_TEXT_LIMIT = 75        # a button's or an option's text
HEADER_LIMIT = 150           # a header block's text, an input's hint
TITLE_LIMIT = 24             # a modal's title, submit and close labels
SECTION_LIMIT = slacklimits.TEXT_MAX


def plain(text: str, limit: int = PLAIN_TEXT_LIMIT) -> dict[str, Any]:
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text, "emoji": True}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": truncate(text, SECTION_LIMIT)}


def section(text: str) -> Block:
    return {"type": "section", "text": mrkdwn(text)}


def context(text: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(text)]}


def header(text: str) -> Block:
    return {"type": "header", "text": plain(text, HEADER_LIMIT)}


def divider() -> Block:
    return {"type": "divider"}


def button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "text": plain(text),
        "action_id": action_id,
        "value": value,
    }
    if style:
        element["style"] = style
    return element


def actions(block_id: str, *elements: dict[str, Any]) -> Block:
    return {"type": "actions", "block_id": block_id, "elements": list(elements)}


def notice(text: str) -> list[Block]:
    """One section of mrkdwn the caller built (user text in it already escaped)."""
    return [section(text)]


def error_notice(message: str) -> list[Block]:
    """A refusal or failure, in the core's words, escaped."""
    return [section(f":warning: {escape(message)}")]


def chunk_lines(lines: Sequence[str], limit: int = SECTION_LIMIT) -> list[str]:
    """Join lines into texts of at most `limit` characters, one per section; a single
    longer line is cut at the limit (with an ellipsis, never inside an escape), never
    dropped."""
    chunks: list[str] = []
    current = ""
    for line in lines:
        line = truncate(line, limit)
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks
