"""Escaping for text that people typed (or that came from outside) before Slack shows it.

Slack's mrkdwn treats `<...>` as a control sequence: `<!channel>` pings a whole channel and
`<@U123>` mentions someone. Escaping `&`, `<` and `>` (exactly what Slack documents) makes
such text show literally. Only text we build ourselves (mentions of ids we validated, date
tokens) may contain raw control sequences.
"""

from __future__ import annotations

import re
from datetime import datetime

_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_ENTITY_START = re.compile(r"&(#?[A-Za-z0-9]*)")


def escape(text: str) -> str:
    """Make arbitrary text safe inside a mrkdwn (or fallback `text`) field."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int, ellipsis: str = "…") -> str:
    """`text` (mrkdwn, already escaped) cut to at most `limit` characters, never inside an
    escape (`&amp;`), a mention, a link or a date (`<@U…>`, `<url|text>`, `<!date^…>`), so
    Slack never shows half of one or reads the rest of the text into it."""
    if len(text) <= limit:
        return text
    cut = max(0, limit - len(ellipsis))
    # A control sequence still open at the cut: every raw `<` is one we built (people's
    # text is escaped), so the last `<` with no `>` after it starts one.
    opening = text.rfind("<", 0, cut)
    if opening != -1 and text.find(">", opening, cut) == -1:
        cut = opening
    # An entity still open at the cut: `&` then letters or `#` digits, no `;` yet.
    amp = text.rfind("&", max(0, cut - 8), cut)
    if amp != -1 and ";" not in text[amp:cut] and _ENTITY_START.fullmatch(text[amp:cut]):
        cut = amp
    return text[:cut] + ellipsis


def quote(text: str) -> str:
    """Escaped text as a mrkdwn block quote, one `>` per line."""
    return "\n".join(f">{line}" if line else ">" for line in escape(text).splitlines() or [""])


def mention(slack_id: str) -> str:
    """A mention of a user (U/W) or user group (S); anything else is shown escaped, so an
    id that did not come from Slack can never become a broadcast."""
    if _USER_ID.match(slack_id):
        return f"<@{slack_id}>"
    if _GROUP_ID.match(slack_id):
        return f"<!subteam^{slack_id}>"
    return escape(slack_id)


def channel_link(channel_id: str) -> str:
    return f"<#{channel_id}>" if _CHANNEL_ID.match(channel_id) else escape(channel_id)


def slack_date(moment: datetime, token: str = "{date_short_pretty} {time}") -> str:
    """A date Slack shows in each reader's own time zone; the fallback is UTC."""
    fallback = moment.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(moment.timestamp())}^{token}|{fallback}>"
