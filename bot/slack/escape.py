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


def escape(text: str) -> str:
    """Make arbitrary text safe inside a mrkdwn (or fallback `text`) field."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
