"""The Slack Web API client, built from settings, and the few calls the bot makes often."""

from __future__ import annotations

import logging
import threading

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

SLACK_API_URL = "https://slack.com/api/"

logger = logging.getLogger(__name__)


def build_web_client(
    bot_token: str,
    api_url: str | None = None,
    *,
    rate_limit_retries: int = 3,
    timeout: int = 10,
) -> WebClient:
    """A WebClient that waits out Slack's 429s (Retry-After) and retries dropped
    connections, pointed at `api_url` (a fake Slack in tests and the demo)."""
    base_url = api_url or SLACK_API_URL
    if not base_url.endswith("/"):
        base_url += "/"  # slack_sdk joins method names onto the base URL
    return WebClient(
        token=bot_token,
        base_url=base_url,
        timeout=timeout,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=1),
            RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
        ],
    )


class DirectMessages:
    """Opens (and remembers) the bot's DM channel with each user."""

    def __init__(self, client: WebClient) -> None:
        self._client = client
        self._channels: dict[str, str] = {}
        self._lock = threading.Lock()

    def channel_for(self, user_id: str) -> str:
        with self._lock:
            known = self._channels.get(user_id)
        if known:
            return known
        response = self._client.conversations_open(users=user_id)
        channel = response["channel"]
        channel_id = str(channel["id"] if isinstance(channel, dict) else channel)
        with self._lock:
            self._channels[user_id] = channel_id
        return channel_id

    def send(self, user_id: str, text: str, blocks: list[dict[str, object]]) -> str:
        """Post a DM; returns its ts."""
        response = self._client.chat_postMessage(
            channel=self.channel_for(user_id), text=text, blocks=blocks
        )
        return str(response["ts"])
