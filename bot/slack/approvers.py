"""Who may approve: Slack user ids as listed, user groups (S...) expanded through
`usergroups.users.list`, cached briefly so a burst of clicks costs one API call."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

logger = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 60.0


class ApproverLookupError(Exception):
    """A user group could not be read from Slack; the message says which and why."""


class SlackApproverDirectory:
    """bot.ports.ApproverDirectory over the Slack Web API."""

    def __init__(
        self,
        client: WebClient,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def members(self, approver_ids: Sequence[str]) -> frozenset[str]:
        users: set[str] = set()
        for approver in approver_ids:
            if approver.startswith("S"):
                users |= self._group(approver)
            else:
                users.add(approver)
        return frozenset(users)

    def _group(self, group_id: str) -> frozenset[str]:
        now = self._monotonic()
        with self._lock:
            cached = self._groups.get(group_id)
        if cached and now - cached[0] < self._ttl:
            return cached[1]
        try:
            response = self._client.usergroups_users_list(usergroup=group_id)
        except SlackApiError as exc:
            error = exc.response.get("error", "unknown error")
            if cached:
                # Better a minute-old list than refusing every approver while Slack hiccups.
                logger.warning(
                    "usergroups.users.list %s failed (%s); using cached list", group_id, error
                )
                return cached[1]
            raise ApproverLookupError(
                f"Could not read the members of user group {group_id} from Slack ({error}); "
                "check the group id in the routing config and the usergroups:read scope."
            ) from None
        members = frozenset(str(u) for u in response.get("users") or [])
        with self._lock:
            self._groups[group_id] = (now, members)
        return members
