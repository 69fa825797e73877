from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.slack.escape import channel_link, escape, mention, quote, slack_date
from bot.slack.render import mrkdwn_to_text


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("<!channel>", "&lt;!channel&gt;"),
        ("<@U123>", "&lt;@U123&gt;"),
        ("<!subteam^S1>", "&lt;!subteam^S1&gt;"),
        ("a & b", "a &amp; b"),
        ("&lt;", "&amp;lt;"),  # already-escaped text is shown as typed, not unescaped
        ("plain text", "plain text"),
    ],
)
def test_escape_neutralises_control_sequences(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped
    # What a reader sees is exactly what was typed.
    assert mrkdwn_to_text(escape(raw)) == raw


def test_quote_escapes_every_line() -> None:
    assert quote("one <!here>\ntwo") == ">one &lt;!here&gt;\n>two"
    assert quote("") == ">"


def test_mention_only_for_real_ids() -> None:
    assert mention("U012ABC") == "<@U012ABC>"
    assert mention("W012ABC") == "<@W012ABC>"
    assert mention("S0LEADS") == "<!subteam^S0LEADS>"
    assert mention("!channel") == "!channel"
    assert mention("U1> <!channel") == "U1&gt; &lt;!channel"
    assert channel_link("C0APPROVALS") == "<#C0APPROVALS>"
    assert channel_link("<!here>") == "&lt;!here&gt;"


def test_slack_date_has_a_utc_fallback() -> None:
    moment = datetime(2026, 11, 27, 14, 30, tzinfo=UTC)
    token = slack_date(moment)
    assert token.startswith(f"<!date^{int(moment.timestamp())}^")
    assert mrkdwn_to_text(token) == "2026-11-27 14:30 UTC"
