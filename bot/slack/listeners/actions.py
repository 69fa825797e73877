"""Buttons: Request, Choose, Approve, Deny, Extend, I'm done, Cancel."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App

from bot.decisions import Refusal, may_extend
from bot.slack.blocks import answers, approval, dms, home, modals, primitives
from bot.slack.escape import escape, mention
from bot.slack.listeners.common import (
    Incoming,
    LazyHandler,
    SlackDeps,
    lazy,
    parse_request_id,
    say,
    tell_user,
)
from bot.slack.services import RequestView, ServiceError, vote_decision


def ack_action(ack: Ack) -> None:
    ack()


def _value(incoming: Incoming) -> str:
    actions: list[dict[str, Any]] = incoming.body.get("actions") or [{}]
    return str(actions[0].get("value") or "")


def _request_id(incoming: Incoming) -> int:
    request_id = parse_request_id(_value(incoming))
    if request_id is None:
        raise ServiceError("That button no longer points at a request; run the command again.")
    return request_id


def _from_home(incoming: Incoming) -> bool:
    return (incoming.body.get("container") or {}).get("type") == "view" and (
        (incoming.body.get("view") or {}).get("type") == "home"
    )


def refresh_home(deps: SlackDeps, incoming: Incoming) -> None:
    summary = deps.services.home(incoming.user_id)
    incoming.client.views_publish(user_id=incoming.user_id, view=home.home_view(summary))


def run_open_request_modal(deps: SlackDeps, incoming: Incoming) -> None:
    description = deps.services.describe_entry(_value(incoming))
    if not description.instances:
        raise ServiceError("No Amazon Connect instance is configured; ask the bot's operator.")
    incoming.client.views_open(
        trigger_id=incoming.body["trigger_id"], view=modals.request_modal(description)
    )


def run_pick_entry(deps: SlackDeps, incoming: Incoming) -> None:
    description = deps.services.describe_entry(_value(incoming))
    preview = answers.entry_preview(description)
    if incoming.respond is not None and incoming.body.get("response_url"):
        incoming.respond(
            text=description.entry.name,
            blocks=preview,
            replace_original=True,
            response_type="ephemeral",
        )
    else:
        deps.dms.send(incoming.user_id, description.entry.name, preview)


def voter_view(deps: SlackDeps, incoming: Incoming) -> RequestView | None:
    """The request a vote button points at, when its clicker may vote on it now
    (bot.decisions.may_vote, which the lifecycle applies again to the vote itself); else
    None, after telling the clicker the decision's reason, without touching state (and
    before opening the Deny modal)."""
    view = deps.services.request_view(_request_id(incoming))
    decision = vote_decision(view, incoming.user_id, deps.approvers)
    if decision.allowed:
        return view
    refusal = escape(decision.reason)
    if decision.refusal is Refusal.NOT_APPROVER:
        # The core does not format mentions; these are ids from the config, validated.
        refusal += " Approvers: " + (", ".join(mention(a) for a in view.approvers) or "nobody")
    tell_user(deps, incoming, refusal, primitives.notice(f":no_entry_sign: {refusal}"))
    return None


def run_approve(deps: SlackDeps, incoming: Incoming) -> None:
    view = voter_view(deps, incoming)
    if view is None:
        return
    deps.services.vote(view.id, incoming.user_id, True, "")
    if _from_home(incoming):
        refresh_home(deps, incoming)


def run_open_deny_modal(deps: SlackDeps, incoming: Incoming) -> None:
    view = voter_view(deps, incoming)
    if view is None:
        return
    incoming.client.views_open(
        trigger_id=incoming.body["trigger_id"], view=modals.deny_modal(view.id)
    )


def run_open_extend_modal(deps: SlackDeps, incoming: Incoming) -> None:
    view = deps.services.request_view(_request_id(incoming))
    decision = may_extend(view.facts, incoming.user_id)
    if not decision.allowed:
        raise ServiceError(decision.reason)
    maximum = deps.services.describe_entry(view.entry.id).max_duration
    incoming.client.views_open(
        trigger_id=incoming.body["trigger_id"], view=modals.extend_modal(view, maximum)
    )


def run_end_grant(deps: SlackDeps, incoming: Incoming) -> None:
    view = deps.services.revoke(_request_id(incoming), incoming.user_id)
    say(deps, incoming, answers.ending_access(view))
    if _from_home(incoming):
        refresh_home(deps, incoming)


def run_cancel_request(deps: SlackDeps, incoming: Incoming) -> None:
    view = deps.services.cancel(_request_id(incoming), incoming.user_id)
    say(deps, incoming, answers.cancelled(view))
    if _from_home(incoming):
        refresh_home(deps, incoming)


def register(app: App, deps: SlackDeps) -> None:
    """Every button but See permissions (bot.slack.listeners.permissions): acked at once,
    handled in a lazy listener."""
    handlers: dict[str, LazyHandler] = {
        answers.REQUEST_BUTTON: run_open_request_modal,
        answers.PICK_ENTRY: run_pick_entry,
        approval.APPROVE: run_approve,
        approval.DENY: run_open_deny_modal,
        dms.EXTEND: run_open_extend_modal,
        dms.DONE: run_end_grant,
        home.CANCEL: run_cancel_request,
    }
    for action_id, handler in handlers.items():
        app.action(action_id)(ack=ack_action, lazy=[lazy(handler, deps)])
