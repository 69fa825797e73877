"""SlackAlerter: bot.alerts.Alerter over the Slack Web API.

Each alert is one message in the alerts channel (a follow-up is a reply in the first one's
thread), with the request, requester, principal and policy names as fields and what to do
next in its own line, so the person on call can act on it without opening the database.
Every piece of text is escaped: a reason or an AWS error message cannot ping a channel.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.alerts import Alert, AlertRef, LoggingAlerter
from bot.slack.escape import escape, mention

logger = logging.getLogger(__name__)

# Slack's limit on a section's text; AWS error messages can be long.
_SECTION_LIMIT = 3000


def _clip(text: str, limit: int = _SECTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def alert_message(alert: Alert) -> tuple[str, list[dict[str, Any]]]:
    """The fallback text and the blocks of one alert."""
    icon = ":white_check_mark:" if alert.kind.endswith("_resolved") else ":rotating_light:"
    summary = escape(alert.summary)
    text = f"{icon} {summary}"
    fields: list[str] = []
    if alert.request_id is not None:
        fields.append(f"*Request*\n#{alert.request_id}")
    if alert.requester:
        fields.append(f"*Requester*\n{mention(alert.requester)}")
    if alert.principal_arn:
        fields.append(f"*Principal*\n`{escape(alert.principal_arn)}`")
    if alert.policy_names:
        fields.append("*Policies*\n" + ", ".join(f"`{escape(n)}`" for n in alert.policy_names))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text)}}]
    if fields:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": _clip(f, 2000)} for f in fields[:10]]})
    for key, value in alert.details.items():
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": _clip(f"*{escape(key)}*: {escape(value)}")}})
    blocks.append({"type": "context", "elements": [{
        "type": "mrkdwn", "text": _clip(f"*What to do:* {escape(alert.next_step)}", 2000)}]})
    return text, blocks


class SlackAlerter:
    """Posts alerts to one channel; without one (or when Slack refuses) they are logged."""

    def __init__(self, client: WebClient, channel: str | None) -> None:
        self._client = client
        self.channel = channel
        self._log = LoggingAlerter()

    def alert(self, alert: Alert) -> AlertRef | None:
        channel = alert.follows_up.channel if alert.follows_up else self.channel
        if not channel:
            return self._log.alert(alert)
        text, blocks = alert_message(alert)
        try:
            response = self._client.chat_postMessage(
                channel=channel, text=text, blocks=blocks,
                thread_ts=alert.follows_up.ts if alert.follows_up else None)
        except (SlackApiError, OSError) as exc:
            logger.error("could not post alert to %s (%s); logging it instead", channel, exc)
            return self._log.alert(alert)
        return AlertRef(str(response["channel"]), str(response["ts"]))
