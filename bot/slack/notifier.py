"""SlackNotifier: bot.ports.Notifier over the Slack Web API.

The approval message in the tier's channel is the record people see: it is posted when a
request is submitted and updated in place on every vote and outcome. The requester gets a
DM at each outcome and before expiry (with Extend and I'm done buttons). Delivery problems
are logged, never raised: the state change already happened and must not be undone by a
Slack outage.

It reads requests through the read-only `RequestViews` port and records the approval
message through `ApprovalMessages` (bot.slack.request_views), never through the service
that notifies it, so every process (web, scheduler, reconcile) builds it the same way
before its RequestService exists. Alerts for people on call are not its job: the lifecycle
and reconcile send those through bot.alerts.Alerter.
"""

from __future__ import annotations

import logging

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.ports import Clock, Notification, NotificationEvent, SystemClock
from bot.slack.blocks import approval, dms
from bot.slack.request_views import ApprovalMessages, RequestViews
from bot.slack.services import RequestView, ServiceError
from bot.slack.webapi import DirectMessages

logger = logging.getLogger(__name__)

# Events after which the requester hears from us directly.
DM_EVENTS = frozenset({
    NotificationEvent.DENIED, NotificationEvent.CANCELLED, NotificationEvent.TIMED_OUT,
    NotificationEvent.GRANTED, NotificationEvent.FAILED, NotificationEvent.REVOKED,
    NotificationEvent.EXTENDED, NotificationEvent.IRREVOCABLE, NotificationEvent.GRANT_QUEUED,
})


class SlackNotifier:
    def __init__(
        self,
        client: WebClient,
        views: RequestViews,
        messages: ApprovalMessages,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._views = views
        self._messages = messages
        self._dms = DirectMessages(client)
        self._clock = clock or SystemClock()

    def notify(self, notification: Notification) -> None:
        try:
            self._deliver(notification)
        except (SlackApiError, ServiceError, OSError) as exc:
            logger.error(
                "could not deliver %s for request %s: %s",
                notification.event,
                notification.request_id,
                exc,
            )
        except Exception:
            logger.exception(
                "unexpected failure delivering %s for request %s",
                notification.event,
                notification.request_id,
            )

    def _deliver(self, notification: Notification) -> None:
        if notification.request_id is None:
            # Findings without a request (reconcile's orphans) are alerts, sent by whoever
            # found them through bot.alerts; there is no requester or message to tell.
            return
        view = self._views.request_view(notification.request_id)
        event = notification.event
        if event == "submitted":
            self._post_approval_message(view)
        elif event == "expiring_soon":
            text, dm_blocks = dms.expiry_reminder(view, self._clock.now())
            self._dms.send(view.requester, text, dm_blocks)
            return
        elif event == "pending_reminder":
            self._remind_approvers(view)
            return
        else:
            self.update_approval_message(view)
        if event in DM_EVENTS:
            text, dm_blocks = dms.outcome_dm(view, event, self._clock.now())
            self._dms.send(view.requester, text, dm_blocks)

    def _post_approval_message(self, view: RequestView) -> None:
        if not view.channel:
            logger.warning("request %s has no approval channel configured for its tier", view.id)
            return
        text, message_blocks = approval.approval_message(view, self._clock.now())
        response = self._client.chat_postMessage(
            channel=view.channel, text=text, blocks=message_blocks
        )
        self._messages.set_approval_message(view.id, str(response["channel"]),
                                            str(response["ts"]))

    def update_approval_message(self, view: RequestView) -> None:
        if not view.channel or not view.message_ts:
            # Auto-approved requests and tiers without a channel have no message to update.
            return
        text, message_blocks = approval.approval_message(view, self._clock.now())
        self._client.chat_update(
            channel=view.channel, ts=view.message_ts, text=text, blocks=message_blocks
        )

    def _remind_approvers(self, view: RequestView) -> None:
        if view.channel and view.message_ts:
            self._client.chat_postMessage(
                channel=view.channel,
                thread_ts=view.message_ts,
                text=f"Request #{view.id} is still waiting for "
                f"{view.approvals_needed - view.approvals} more approval(s).",
            )
