"""The audit Slack channel (`audit.anchor_channel`): each signed checkpoint is posted
there too, so people outside the database see the chain's head as it was. A copy for
people: `audit verify` reads the S3 anchors. (Checkpoint failures go to the operators'
alerts channel, bot.alerts.)"""

from __future__ import annotations

import logging

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.anchors import AnchorError, SignedCheckpoint

logger = logging.getLogger(__name__)


class SlackAnchorChannel:
    """bot.anchors.AnchorStore (write-only) over one channel."""

    def __init__(self, client: WebClient, channel: str) -> None:
        self._client = client
        self.channel = channel

    @property
    def name(self) -> str:
        return f"slack:{self.channel}"

    def put(self, signed: SignedCheckpoint) -> None:
        c = signed.checkpoint
        text = (f"Audit checkpoint: event {c.seq}, head {c.head_hash[:16]}…, "
                f"{c.at.isoformat(timespec='seconds')}")
        try:
            self._client.chat_postMessage(
                channel=self.channel, text=text,
                blocks=[
                    {"type": "section", "text": {"type": "mrkdwn", "text": (
                        f"*Audit checkpoint* at event *{c.seq}* "
                        f"(<!date^{int(c.at.timestamp())}^{{date_short}} {{time_secs}}|"
                        f"{c.at.isoformat(timespec='seconds')}>), signed with "
                        f"`{c.key_id}`")}},
                    {"type": "section", "text": {"type": "mrkdwn",
                                                 "text": f"```{signed.to_json()}```"}},
                ])
        except (SlackApiError, OSError) as exc:
            raise AnchorError(f"posting to {self.name}: {exc}") from None
