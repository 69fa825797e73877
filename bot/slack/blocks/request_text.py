"""How a request, its entry and its access read in mrkdwn, the same on every surface
(command answers, the approval message, DMs, App Home, audit review)."""

from __future__ import annotations

from datetime import datetime, timedelta

from bot.slack.escape import escape
from bot.slack.services import EntryBrief, RequestView, format_duration
from bot.states import RequestState
from bot.targets import AccessRoute

STATE_LABELS: dict[str, str] = {
    RequestState.PENDING: ":hourglass_flowing_sand: Waiting for approval",
    RequestState.APPROVED: ":white_check_mark: Approved, granting access",
    RequestState.GRANTING: ":gear: Granting access",
    RequestState.ACTIVE: ":large_green_circle: Granted",
    RequestState.REVOKING: ":gear: Removing access",
    RequestState.REVOKED: ":white_circle: Revoked",
    RequestState.DENIED: ":no_entry: Denied",
    RequestState.CANCELLED: ":heavy_multiplication_x: Cancelled",
    RequestState.TIMED_OUT: ":zzz: Timed out without enough approvals",
    RequestState.FAILED: ":x: Granting failed, nothing was attached",
    RequestState.IRREVOCABLE: ":rotating_light: Could not remove access yet, retrying",
}


def entry_title(entry: EntryBrief) -> str:
    where = entry.page + (f" / {entry.section}" if entry.section else "")
    return f"*{escape(entry.name)}*\n{escape(where)}"


def time_left(expires_at: datetime | None, now: datetime) -> str:
    if expires_at is None:
        return "not started"
    remaining = expires_at - now
    if remaining <= timedelta(0):
        return "expired"
    if remaining < timedelta(minutes=1):
        # A minute rounded up would overstate a few seconds; "0m" would say it is over.
        return "under a minute left"
    # Round up to the minute so "0m left" never shows while access still works.
    minutes = -(-int(remaining.total_seconds()) // 60)
    return f"{format_duration(timedelta(minutes=minutes))} left"


def request_line(view: RequestView, now: datetime) -> str:
    state = STATE_LABELS.get(view.state, view.state)
    extra = ""
    if view.state == RequestState.ACTIVE:
        extra = f" — {time_left(view.expires_at, now)}"
    elif view.note:
        extra = f" — {escape(view.note)}"
    return (
        f"*#{view.id}* {escape(view.entry.name)} on `{escape(view.instance_alias)}` "
        f"({format_duration(view.duration)}): {state}{extra}"
    )


def access_lines(access: AccessRoute | None) -> list[str]:
    """Who receives the grant and how they reach it, in mrkdwn (values escaped)."""
    if access is None:
        return []
    account = f"account `{escape(access.account)}`"
    if access.kind == "identity_center":
        portal = (f"<{escape(access.portal_url)}|AWS access portal>" if access.portal_url
                  else "AWS access portal")
        permission_set = (f"`{escape(access.permission_set)}`" if access.permission_set
                          else "`connect-access-…` (named when it is granted)")
        return [f"*Access* {escape(access.target)}, through a permission set of its own "
                "that is assigned only until the grant ends.",
                f"Sign in to the {portal}, choose {account}, then permission set "
                f"{permission_set}."]
    lines = [f"*Access* {escape(access.target)} ({account})"]
    if access.kind == "shared_role" and access.session_name:
        lines.append(f"Only sessions named `{escape(access.session_name)}` of this role "
                     "get it: assume the role with that session name.")
    if access.group_members is not None:
        users = f"{access.group_members} IAM user{'s' if access.group_members != 1 else ''}"
        lines.append(f":warning: This is an IAM group: the grant reaches all {users} in it.")
    return lines
