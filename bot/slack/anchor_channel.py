"""The audit Slack channel (`audit.anchor_channel`) as an anchor store: each signed
checkpoint is posted there (people outside the database see the chain's head as it was),
and `audit verify` reads them back (conversations.history, every page) and checks their
signatures like the S3 anchors. (Checkpoint failures go to the operators' alerts channel,
bot.alerts.)

Weaker than S3 Object Lock: workspace admins (and owners, with message-deletion rights)
can delete a channel's messages, and the bot token can delete its own. Deleting the
checkpoints that cover a rewrite hides it from a channel-only install; forging one
cannot work (it would need the signing key). With both stores `verify` uses both and
reports a checkpoint one holds and the other lacks.

Every message in the channel that carries a checkpoint (the code block the bot posts, or
text starting "Audit checkpoint") counts as a claim, whoever posted it: one that does not
parse, or whose signature does not verify, fails `verify`. Other messages (people talking
in the channel) are ignored.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.anchors import AnchorError, SignedCheckpoint, StoredAnchor

logger = logging.getLogger(__name__)

CHECKPOINT_TEXT = "Audit checkpoint"
HISTORY_PAGE = 200  # Slack recommends at most 200 per conversations.history page
_CODE_BLOCK = re.compile(r"```(.*?)```", re.DOTALL)
# Scopes conversations.history needs: public channels C..., private channels G... (or C
# ids of private channels; Slack says which in `needed`).
HISTORY_SCOPES = ("channels:history", "groups:history")


def _unescape(text: str) -> str:
    """Slack escapes &, < and > in message text."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _texts(message: dict[str, Any]) -> list[str]:
    texts = [str(message.get("text") or "")]
    for block in message.get("blocks") or []:
        if isinstance(block, dict) and isinstance(block.get("text"), dict):
            texts.append(str(block["text"].get("text") or ""))
    return texts


def parse_message(location: str, message: dict[str, Any]) -> StoredAnchor | None:
    """The checkpoint a channel message carries, a StoredAnchor with the error when it
    claims to carry one but it cannot be read, None for any other message."""
    texts = _texts(message)
    claims = texts[0].startswith(CHECKPOINT_TEXT)
    for text in texts:
        for body in _CODE_BLOCK.findall(_unescape(text)):
            try:
                raw = json.loads(body)
            except ValueError:
                continue
            if isinstance(raw, dict) and ("signature" in raw or "head_hash" in raw):
                try:
                    return StoredAnchor(location, SignedCheckpoint.from_json(body))
                except AnchorError as exc:
                    return StoredAnchor(location, None, str(exc))
    if claims:
        return StoredAnchor(location, None, "a checkpoint message without its signed "
                                            "checkpoint (the JSON code block)")
    return None


class SlackAnchorChannel:
    """bot.anchors.AnchorReader over one channel: checkpoints posted there and read back."""

    def __init__(self, client: WebClient, channel: str) -> None:
        self._client = client
        self.channel = channel

    @property
    def name(self) -> str:
        return f"slack:{self.channel}"

    def _fault(self, what: str, exc: SlackApiError | OSError) -> AnchorError:
        if isinstance(exc, SlackApiError):
            error = str(exc.response.get("error") or exc)
            hint = {
                "missing_scope": f"; add {' and '.join(HISTORY_SCOPES)} to the bot token's "
                                 "scopes (slack-manifest.yaml) and reinstall the app",
                "not_in_channel": f"; invite the bot to {self.channel}",
                "channel_not_found": f"; check audit.anchor_channel {self.channel} and invite "
                                     "the bot to it",
            }.get(error, "")
            return AnchorError(f"{what} {self.name}: {error}{hint}")
        return AnchorError(f"{what} {self.name}: {exc}")

    def check(self) -> None:
        """AnchorError unless the bot can read the channel's history (at start)."""
        try:
            self._client.conversations_history(channel=self.channel, limit=1)
        except (SlackApiError, OSError) as exc:
            raise self._fault("reading", exc) from None

    def put(self, signed: SignedCheckpoint) -> None:
        c = signed.checkpoint
        text = (f"{CHECKPOINT_TEXT}: event {c.seq}, head {c.head_hash[:16]}…, "
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
            raise self._fault("posting to", exc) from None

    def list(self) -> list[StoredAnchor]:
        """Every checkpoint message in the channel (every page), in sequence order."""
        found: list[StoredAnchor] = []
        cursor: str | None = None
        while True:
            try:
                page = self._client.conversations_history(
                    channel=self.channel, limit=HISTORY_PAGE, cursor=cursor)
            except (SlackApiError, OSError) as exc:
                raise self._fault("reading", exc) from None
            for message in page.get("messages") or []:
                if not isinstance(message, dict) or message.get("subtype") in (
                        "channel_join", "channel_leave"):
                    continue
                poster = message.get("user") or message.get("bot_id") or "unknown"
                location = f"{self.name}/{message.get('ts')} (posted by {poster})"
                anchor = parse_message(location, message)
                if anchor is not None:
                    found.append(anchor)
            cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                break

        def order(anchor: StoredAnchor) -> tuple[int, str]:
            return (-1 if anchor.signed is None else anchor.signed.checkpoint.seq,
                    anchor.location)
        return sorted(found, key=order)

    def latest(self) -> SignedCheckpoint | None:
        readable = [a.signed for a in self.list() if a.signed is not None]
        return max(readable, key=lambda s: s.checkpoint.seq) if readable else None
