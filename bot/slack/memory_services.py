"""An in-memory SlackServices with the same guards as the lifecycle: no self-approval, only
listed approvers, one vote each, deny wins, n of m approvals. Used by the Slack layer's
tests and by anyone who wants to drive the Slack app without a database.

Notifications go to the given Notifier after the state change and outside the lock, the way
the database implementation sends them after its transaction commits.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

from bot.catalog import Catalog
from bot.iamref import IamReference
from bot.ports import (
    ApproverDirectory,
    Clock,
    Notification,
    NotificationEvent,
    Notifier,
    SystemClock,
)
from bot.resolve import Resolver
from bot.slack.services import (
    ApprovalRoute,
    EntryDescription,
    EntryListing,
    HomeSummary,
    InstanceChoice,
    PermissionsView,
    RequestView,
    Resolved,
    ServiceError,
    VoteRecord,
    brief,
    catalog_entry,
    describe,
    format_duration,
    list_catalog,
    permissions_view,
    persistent_effects_of,
    preview_instance,
    resolve_text,
    route_for,
)
from bot.states import ACTIVE, CANCELLED, DENIED, FAILED, LIVE_STATES, PENDING, REVOKED

REASON_MIN = 10
REASON_MAX = 1000


class _NoNotifier:
    def notify(self, notification: Notification) -> None:
        return None


@dataclass
class MemoryServices:
    catalog: Catalog
    tiers: Mapping[str, ApprovalRoute]
    instances: Sequence[InstanceChoice]
    approver_directory: ApproverDirectory
    overrides: Mapping[str, ApprovalRoute] = field(default_factory=dict)
    clock: Clock = field(default_factory=SystemClock)
    notifier: Notifier = field(default_factory=_NoNotifier)
    # Set to a message to make the next grants fail, as an IAM attach failure would.
    fail_grants_with: str | None = None
    # Slack user id -> IAM principal ARN, for the permissions views.
    principals: Mapping[str, str] = field(default_factory=dict)
    iam: IamReference = field(default_factory=IamReference)
    _requests: dict[int, RequestView] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _resolver: Resolver = field(init=False)

    def __post_init__(self) -> None:
        self._resolver = Resolver(self.catalog)

    # -- catalog ------------------------------------------------------------------------

    def resolve(self, text: str) -> Resolved:
        return resolve_text(self._resolver, text)

    def _route(self, entry_id: str) -> ApprovalRoute:
        return route_for(catalog_entry(self.catalog, entry_id), self.tiers, self.overrides)

    def describe_entry(self, entry_id: str) -> EntryDescription:
        return describe(self.catalog, entry_id, self._route(entry_id), self.instances)

    def list_entries(self, page: str | None) -> EntryListing:
        return list_catalog(self.catalog, page)

    # -- requests -----------------------------------------------------------------------

    def submit_request(
        self,
        requester: str,
        entry_id: str,
        instance_alias: str,
        duration: timedelta,
        reason: str,
    ) -> RequestView:
        entry = catalog_entry(self.catalog, entry_id)
        route = self._route(entry_id)
        if instance_alias not in {i.alias for i in self.instances}:
            raise ServiceError(f"There is no instance `{instance_alias}`; pick one from the list.")
        if not timedelta(0) < duration <= route.max_duration:
            raise ServiceError(
                f"{entry.name} may be granted for at most {format_duration(route.max_duration)}."
            )
        if not REASON_MIN <= len(reason.strip()) <= REASON_MAX:
            raise ServiceError(f"Give a reason of {REASON_MIN} to {REASON_MAX} characters.")
        events: list[NotificationEvent] = ["submitted"]
        with self._lock:
            request_id = len(self._requests) + 1
            view = RequestView(
                id=request_id,
                requester=requester,
                entry=brief(entry),
                instance_alias=instance_alias,
                duration=duration,
                reason=reason.strip(),
                state=PENDING,
                approvers=route.approvers,
                approvals_needed=route.approvals,
                votes=(),
                created_at=self.clock.now(),
                channel=route.channel,
                persistent_effects=persistent_effects_of(self.catalog, entry.id),
            )
            if route.auto_approve:
                view, granted = self._grant(view)
                events += ["approved", granted]
            self._requests[request_id] = view
        self._emit(request_id, events)
        return self.request_view(request_id)

    def vote(self, request_id: int, approver: str, approve: bool, comment: str) -> RequestView:
        allowed = self.approver_directory.members(self.request_view(request_id).approvers)
        events: list[NotificationEvent] = []
        with self._lock:
            view = self._get(request_id)
            if approver == view.requester:
                raise ServiceError("You cannot approve or deny your own request.")
            if approver not in allowed:
                raise ServiceError(
                    f"You are not an approver for request #{request_id}; "
                    "only the approvers listed on it can vote."
                )
            if view.has_voted(approver):
                raise ServiceError(f"You have already voted on request #{request_id}.")
            if not view.open_for_votes:
                raise ServiceError(
                    f"Request #{request_id} is already {view.state.replace('_', ' ')}; "
                    "votes are closed."
                )
            record = VoteRecord(approver, approve, comment.strip(), self.clock.now())
            view = replace(view, votes=(*view.votes, record))
            events.append("vote")
            if not approve:
                view = replace(view, state=DENIED, note=comment.strip() or None)
                events.append("denied")
            elif view.approvals >= view.approvals_needed:
                if view.extension is not None:
                    view = self._apply_extension(view)
                    events.append("extended")
                else:
                    view, granted = self._grant(view)
                    events += ["approved", granted]
            self._requests[request_id] = view
        self._emit(request_id, events)
        return self.request_view(request_id)

    def _grant(self, view: RequestView) -> tuple[RequestView, NotificationEvent]:
        if self.fail_grants_with:
            return replace(view, state=FAILED, note=self.fail_grants_with), "failed"
        now = self.clock.now()
        return replace(view, state=ACTIVE, expires_at=now + view.duration), "granted"

    def _apply_extension(self, view: RequestView) -> RequestView:
        assert view.extension is not None and view.expires_at is not None
        return replace(
            view, state=ACTIVE, expires_at=view.expires_at + view.extension, extension=None
        )

    def cancel(self, request_id: int, user: str) -> RequestView:
        with self._lock:
            view = self._owned(request_id, user)
            if view.state != PENDING:
                raise ServiceError(
                    f"Request #{request_id} is {view.state.replace('_', ' ')}; only pending "
                    "requests can be cancelled (use `revoke` to end active access)."
                )
            self._requests[request_id] = replace(
                view, state=CANCELLED, note="cancelled by requester"
            )
        self._emit(request_id, ["cancelled"])
        return self.request_view(request_id)

    def revoke(self, request_id: int, user: str) -> RequestView:
        with self._lock:
            view = self._owned(request_id, user)
            if view.state != ACTIVE:
                raise ServiceError(
                    f"Request #{request_id} is {view.state.replace('_', ' ')}, not active; "
                    "there is no access to end."
                )
            self._requests[request_id] = replace(view, state=REVOKED, note="ended by requester")
        self._emit(request_id, ["revoked"])
        return self.request_view(request_id)

    def extend(self, request_id: int, user: str, duration: timedelta) -> RequestView:
        route = self._route(self.request_view(request_id).entry.id)
        with self._lock:
            view = self._owned(request_id, user)
            if view.state != ACTIVE or view.expires_at is None:
                raise ServiceError(
                    f"Request #{request_id} is not active; only active access can be extended."
                )
            if view.extension is not None:
                raise ServiceError(
                    f"An extension of request #{request_id} is already waiting for approval."
                )
            remaining = view.expires_at - self.clock.now()
            if remaining + duration > route.max_duration:
                raise ServiceError(
                    f"Access may last at most {format_duration(route.max_duration)} at a time; "
                    f"{format_duration(max(remaining, timedelta(0)))} remain, so extend by less."
                )
            view = replace(view, extension=duration)
            if route.auto_approve:
                view = self._apply_extension(view)
                event: NotificationEvent = "extended"
            else:
                # Re-approval: the extension opens a fresh vote on the same request.
                view = replace(view, votes=())
                event = "extension_requested"
            self._requests[request_id] = view
        self._emit(request_id, [event])
        return self.request_view(request_id)

    # -- the scheduler's side, for tests and the sandbox --------------------------------

    def expire(self, request_id: int) -> RequestView:
        """What the scheduler does at expires_at."""
        with self._lock:
            view = self._get(request_id)
            if view.state in LIVE_STATES:
                self._requests[request_id] = replace(view, state=REVOKED, note="expired")
        self._emit(request_id, ["revoked"])
        return self.request_view(request_id)

    def remind(self, request_id: int) -> None:
        self._emit(request_id, ["expiring_soon"])

    # -- reads --------------------------------------------------------------------------

    def status(self, user: str) -> tuple[RequestView, ...]:
        with self._lock:
            mine = [v for v in self._requests.values() if v.requester == user]
        return tuple(sorted(mine, key=lambda v: -v.id))

    def home(self, user: str) -> HomeSummary:
        with self._lock:
            everything = list(self._requests.values())
        pending_votes = [v for v in everything if v.open_for_votes and v.requester != user]
        awaiting = tuple(
            v
            for v in pending_votes
            if not v.has_voted(user) and user in self.approver_directory.members(v.approvers)
        )
        mine = [v for v in everything if v.requester == user]
        return HomeSummary(
            now=self.clock.now(),
            active=tuple(v for v in mine if v.state == ACTIVE),
            pending=tuple(v for v in mine if v.state == PENDING),
            awaiting_my_approval=awaiting,
        )

    def request_view(self, request_id: int) -> RequestView:
        with self._lock:
            return self._get(request_id)

    def set_approval_message(self, request_id: int, channel: str, ts: str) -> None:
        with self._lock:
            view = self._get(request_id)
            self._requests[request_id] = replace(view, channel=channel, message_ts=ts)

    # -- permissions --------------------------------------------------------------------

    def _principal(self, user: str) -> tuple[str, bool]:
        if user in self.principals:
            return self.principals[user], True
        account = self.instances[0].arn.split(":")[4] if self.instances else "111122223333"
        return f"arn:aws:iam::{account}:role/your-principal", False

    def entry_permissions(self, entry_id: str, user: str,
                          instance_alias: str | None = None) -> PermissionsView:
        principal, known = self._principal(user)
        instance, is_default = preview_instance(self.instances, instance_alias)
        return permissions_view(
            self.catalog, self.iam, entry_id, principal_arn=principal, principal_known=known,
            instance=instance, start=self.clock.now(),
            duration=self._route(entry_id).max_duration, instance_is_default=is_default,
        )

    def request_permissions(self, request_id: int) -> PermissionsView:
        view = self.request_view(request_id)
        principal, known = self._principal(view.requester)
        instance = next((i for i in self.instances if i.alias == view.instance_alias), None)
        return permissions_view(
            self.catalog, self.iam, view.entry.id, principal_arn=principal,
            principal_known=known, instance=instance, start=view.created_at,
            duration=view.duration, request_id=view.id,
        )

    # -- helpers ------------------------------------------------------------------------

    def _get(self, request_id: int) -> RequestView:
        try:
            return self._requests[request_id]
        except KeyError:
            raise ServiceError(f"There is no request #{request_id}.") from None

    def _owned(self, request_id: int, user: str) -> RequestView:
        view = self._get(request_id)
        if view.requester != user:
            raise ServiceError(
                f"Request #{request_id} is not yours; only its requester can do that."
            )
        return view

    def _emit(self, request_id: int, events: Sequence[NotificationEvent]) -> None:
        for event in events:
            self.notifier.notify(Notification(event, request_id))
