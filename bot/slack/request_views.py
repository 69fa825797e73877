"""How the Slack layer reads requests without the service that changes them.

The notifier needs to read the request it is telling people about (to render the approval
message and the DMs) and to remember where it posted the approval message. Reading through
the RequestService made a loop at run time: RequestService -> SlackNotifier ->
DbSlackServices -> RequestService. These two small ports break it: `RequestViews` is
read-only, `ApprovalMessages` records one message location; `DbRequestViews` implements
both over the database alone, so a notifier can be built before the service it serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from bot.catalog import Catalog
from bot.config import ApprovalRouter, IdentityCenter
from bot.db import SessionFactory
from bot.models import AccessRequest, Grant, load_request
from bot.slack.services import (
    HistoryItem,
    RequesterHistory,
    RequestView,
    ServiceError,
    VoteRecord,
    brief,
    catalog_entry,
    persistent_effects_of,
)
from bot.states import DENIED, FAILED, IRREVOCABLE, LIVE_STATES, RequestState
from bot.targets import AccessRoute, TargetError, access_route

# What approvers see of the requester's other requests (the approval message stays short).
HISTORY_ITEMS = 5

# Why a grant ended, in the words the approval message and the DM use ("expired" is the
# word the Block Kit builders look for).
REVOKE_NOTES = {
    "done": "ended by requester",
    "approver": "revoked by an approver",
    "expiry": "expired",
}


class RequestViews(Protocol):
    """Read-only: a request as Slack shows it."""

    def request_view(self, request_id: int) -> RequestView:
        """Raises ServiceError when there is no such request."""
        ...


class ApprovalMessages(Protocol):
    def set_approval_message(self, request_id: int, channel: str, ts: str) -> None:
        """Remember where the request's approval message was posted."""
        ...


class DbRequestViews:
    """RequestViews and ApprovalMessages over the database, the catalog and the routing."""

    def __init__(self, sessions: SessionFactory, catalog: Catalog, router: ApprovalRouter,
                 identity_center: IdentityCenter | None = None) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.router = router
        self.identity_center = identity_center

    def request_view(self, request_id: int) -> RequestView:
        with self.sessions() as session:
            request = load_request(session, request_id)
            if request is None:
                raise ServiceError(f"There is no request #{request_id}.")
            return replace(self.view_of(request), history=self._history(session, request))

    def _history(self, session: Session, request: AccessRequest) -> RequesterHistory:
        """The requester's other live grants and their recent requests for the same entry,
        for the approvers."""
        others = session.execute(
            select(AccessRequest)
            .where(AccessRequest.requester == request.requester, AccessRequest.id != request.id)
            .options(selectinload(AccessRequest.grants))
            .order_by(AccessRequest.id.desc())
            .limit(50)
        ).scalars().all()
        items = [(r, HistoryItem(
            id=r.id,
            entry_name=(self.catalog.entries[r.entry_id].name
                        if r.entry_id in self.catalog.entries else r.entry_id),
            state=RequestState(r.state), created_at=r.created_at,
            expires_at=r.grants[-1].expires_at if r.grants else None)) for r in others]
        return RequesterHistory(
            other_active=tuple(i for _, i in items if i.state in LIVE_STATES)[:HISTORY_ITEMS],
            recent_same_entry=tuple(i for r, i in items
                                    if r.entry_id == request.entry_id)[:HISTORY_ITEMS],
        )

    def views(self, *conditions: object, limit: int = 50) -> Sequence[RequestView]:
        """Requests matching `conditions`, newest first."""
        with self.sessions() as session:
            rows = session.execute(
                select(AccessRequest)
                .where(*conditions)  # type: ignore[arg-type]
                .options(selectinload(AccessRequest.votes), selectinload(AccessRequest.grants))
                .order_by(AccessRequest.id.desc())
                .limit(limit)
            ).scalars().all()
            return tuple(self.view_of(r) for r in rows)

    def set_approval_message(self, request_id: int, channel: str, ts: str) -> None:
        # Two columns only Slack writes; no state changes with them, so no lock or
        # transition is needed (and the request's version is left to the lifecycle).
        with self.sessions.begin() as session:
            session.execute(update(AccessRequest).where(AccessRequest.id == request_id)
                            .values(approval_channel=channel, approval_ts=ts))

    def view_of(self, request: AccessRequest) -> RequestView:
        entry = self.catalog.entries.get(request.entry_id)
        route = self.router.route_for(entry) if entry else None
        grant: Grant | None = request.grants[-1] if request.grants else None
        votes = tuple(
            VoteRecord(v.approver, v.decision == "approve", v.comment or "", v.at)
            for v in request.votes
            if v.approval_round == request.approval_round
        )
        note = None
        if request.state == FAILED:
            # A plan that could not be built leaves no grant row; the audit trail has the
            # error, the requester gets the generic sentence.
            note = grant.last_error if grant is not None else None
        elif request.state == DENIED:
            denial = next((v for v in votes if not v.approve), None)
            note = denial.comment if denial is not None and denial.comment else None
        elif grant is not None and grant.revoke_reason:
            note = REVOKE_NOTES.get(grant.revoke_reason, grant.revoke_reason)
            if request.state == IRREVOCABLE and grant.last_error:
                note = grant.last_error
        extension = (
            timedelta(seconds=request.extension_seconds)
            if request.extension_seconds is not None
            else None
        )
        return RequestView(
            id=request.id,
            requester=request.requester,
            entry=brief(entry) if entry else brief(catalog_entry(self.catalog, request.entry_id)),
            instance_alias=request.instance_alias or "",
            duration=timedelta(seconds=request.duration_seconds),
            reason=request.reason,
            state=RequestState(request.state),
            approvers=route.approvers if route else (),
            approvals_needed=request.required_approvals,
            votes=votes,
            created_at=request.created_at,
            expires_at=grant.expires_at if grant is not None else None,
            # Before the approval message is posted, the channel it goes to is the route's.
            channel=request.approval_channel or (route.channel if route else None),
            message_ts=request.approval_ts,
            note=note,
            extension=extension,
            persistent_effects=persistent_effects_of(self.catalog, request.entry_id),
            access=self._access(request, grant),
        )

    def _access(self, request: AccessRequest, grant: Grant | None) -> AccessRoute | None:
        try:
            return access_route(
                request.principal_arn, request.instance_arn,
                portal_url=self.identity_center.access_portal if self.identity_center
                else None,
                grant_name=grant.policy_names[0] if grant is not None and grant.policy_names
                else None,
                group_members=request.group_members)
        except TargetError:
            return None  # a row from a mapping since refused: shown without the route
