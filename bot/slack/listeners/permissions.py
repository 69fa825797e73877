"""The "See permissions" button, on the entry card, in the request modal and on the
approval message: opens the modal of bot.slack.blocks.permissions.

From a message Slack wants `views.open`; from inside a modal (the request modal) a second
modal must be pushed onto the stack with `views.push`, or Slack refuses it.
"""

from __future__ import annotations

from typing import Any

from slack_bolt import App

from bot.slack.blocks.forms import read_instance_choice
from bot.slack.blocks.permissions import PERMISSIONS_BUTTON, parse_value, permissions_modal
from bot.slack.listeners.common import Incoming, SlackDeps, lazy
from bot.slack.services import ServiceError


def ack_permissions(ack: Any) -> None:
    ack()


def selected_instance(body: dict[str, Any]) -> str | None:
    """The instance alias chosen so far in the request modal the button sits in (Slack
    sends the open view's state values with every block action), or None."""
    view = body.get("view") or {}
    if (body.get("container") or {}).get("type") != "view" or view.get("type") != "modal":
        return None
    values = (view.get("state") or {}).get("values") or {}
    return read_instance_choice(values) or None


def run_open_permissions(deps: SlackDeps, incoming: Incoming) -> None:
    actions: list[dict[str, Any]] = incoming.body.get("actions") or [{}]
    parsed = parse_value(str(actions[0].get("value") or ""))
    if parsed is None:
        raise ServiceError("That button no longer points at a use case; run the command again.")
    kind, key = parsed
    if kind == "request":
        permissions = deps.services.request_permissions(int(key))
    else:
        permissions = deps.services.entry_permissions(key, incoming.user_id,
                                                      selected_instance(incoming.body))
    modal = permissions_modal(permissions)
    trigger = incoming.body["trigger_id"]
    if (incoming.body.get("container") or {}).get("type") == "view" and (
        (incoming.body.get("view") or {}).get("type") == "modal"
    ):
        incoming.client.views_push(trigger_id=trigger, view=modal)
    else:
        incoming.client.views_open(trigger_id=trigger, view=modal)


def register(app: App, deps: SlackDeps) -> None:
    app.action(PERMISSIONS_BUTTON)(ack=ack_permissions, lazy=[lazy(run_open_permissions, deps)])
