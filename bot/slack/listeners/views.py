"""Modal submissions: the request form, the deny reason, the extension.

Field validation happens in the ack (pure, reported under the field with
`response_action: errors`); the service call happens afterwards in a lazy listener.
"""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App

from bot.slack.blocks import answers, forms, modals
from bot.slack.escape import escape
from bot.slack.listeners.common import Incoming, SlackDeps, lazy, say
from bot.slack.services import ServiceError, format_duration


def ack_request_modal(ack: Ack, view: dict[str, Any]) -> None:
    form = forms.read_request_form(view)
    if isinstance(form, dict):
        ack(response_action="errors", errors=form)
    else:
        # Keep the modal open with a progress note; the lazy handler replaces it with the
        # outcome, so a refusal from the core is shown where the person is looking.
        ack(
            response_action="update",
            view=modals.progress_view("Request access", ":hourglass: Sending your request…"),
        )


def run_request_modal(deps: SlackDeps, incoming: Incoming) -> None:
    view = incoming.body["view"]
    form = forms.read_request_form(view)
    if isinstance(form, dict):
        return  # the ack already showed the errors on the fields
    try:
        request = deps.services.submit_request(
            incoming.user_id, form.entry_id, form.instance_alias, form.duration, form.reason
        )
    except ServiceError as exc:
        incoming.client.views_update(view_id=view["id"], view=modals.failure_view(exc.message))
        return
    incoming.client.views_update(view_id=view["id"], view=modals.submitted_view(request))


def _ack_form(ack: Ack, form: object) -> None:
    """Errors go back under their fields; a valid form closes its modal."""
    if isinstance(form, dict):
        ack(response_action="errors", errors=form)
    else:
        ack()


def ack_deny_modal(ack: Ack, view: dict[str, Any]) -> None:
    _ack_form(ack, forms.read_deny_form(view))


def run_deny_modal(deps: SlackDeps, incoming: Incoming) -> None:
    form = forms.read_deny_form(incoming.body["view"])
    if isinstance(form, dict):
        return
    request_id, reason = form
    view = deps.services.vote(request_id, incoming.user_id, False, reason)
    say(deps, incoming, f"You denied request *#{view.id}* ({escape(view.entry.name)}).")


def ack_extend_modal(ack: Ack, view: dict[str, Any]) -> None:
    _ack_form(ack, forms.read_extend_form(view))


def run_extend_modal(deps: SlackDeps, incoming: Incoming) -> None:
    form = forms.read_extend_form(incoming.body["view"])
    if isinstance(form, dict):
        return
    request_id, duration = form
    view = deps.services.extend(request_id, incoming.user_id, duration)
    if view.extension is not None:
        message = (
            f"Asked the approvers to extend *#{view.id}* by {format_duration(view.extension)}."
        )
    else:
        message = answers.extended(view)
    say(deps, incoming, message)


def register(app: App, deps: SlackDeps) -> None:
    app.view(modals.REQUEST_MODAL)(ack=ack_request_modal, lazy=[lazy(run_request_modal, deps)])
    app.view(modals.DENY_MODAL)(ack=ack_deny_modal, lazy=[lazy(run_deny_modal, deps)])
    app.view(modals.EXTEND_MODAL)(ack=ack_extend_modal, lazy=[lazy(run_extend_modal, deps)])
