"""SlackServices over the real core: the request lifecycle and the database.

This adapter only translates: Slack's plain dataclasses in, lifecycle calls, views of
the stored request out, and every lifecycle refusal into a ServiceError whose message the
person sees as written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import or_

from bot.catalog import Catalog
from bot.config import Route
from bot.lifecycle import ACTIVE, PENDING, LifecycleError, RequestService
from bot.models import AccessRequest
from bot.resolve import Resolver
from bot.slack.request_views import DbRequestViews
from bot.slack.services import (
    ApprovalRoute,
    EntryDescription,
    EntryListing,
    HomeSummary,
    InstanceChoice,
    RequestView,
    Resolved,
    ServiceError,
    catalog_entry,
    describe,
    list_catalog,
    resolve_text,
)

T = TypeVar("T")
RECENT_REQUESTS = 10


@contextmanager
def _as_service_errors() -> Iterator[None]:
    try:
        yield
    except LifecycleError as exc:
        raise ServiceError(str(exc)) from None


def _approval_route(route: Route) -> ApprovalRoute:
    return ApprovalRoute(
        channel=route.channel,
        approvers=route.approvers,
        approvals=route.approvals,
        max_duration=route.max_duration,
        auto_approve=route.auto_approve,
    )


class DbSlackServices:
    """Implements bot.slack.services.SlackServices."""

    def __init__(self, service: RequestService, resolver: Resolver | None = None,
                 views: DbRequestViews | None = None) -> None:
        self.service = service
        self.catalog: Catalog = service.catalog
        self.resolver = resolver or Resolver(service.catalog)
        self.views = views or DbRequestViews(service.sessions, service.catalog,
                                             service.config.router)

    # --- catalog --------------------------------------------------------------------------

    def resolve(self, text: str) -> Resolved:
        return resolve_text(self.resolver, text)

    def describe_entry(self, entry_id: str) -> EntryDescription:
        entry = catalog_entry(self.catalog, entry_id)
        route = self.service.config.router.route_for(entry)
        instances = [InstanceChoice(i.alias, i.arn) for i in self.service.config.instances]
        return describe(self.catalog, entry.id, _approval_route(route), instances)

    def list_entries(self, page: str | None) -> EntryListing:
        return list_catalog(self.catalog, page)

    # --- requests -------------------------------------------------------------------------

    def _call(self, request_id: int, action: Callable[[], T]) -> RequestView:
        with _as_service_errors():
            action()
        return self.request_view(request_id)

    def submit_request(
        self,
        requester: str,
        entry_id: str,
        instance_alias: str,
        duration: timedelta,
        reason: str,
    ) -> RequestView:
        catalog_entry(self.catalog, entry_id)
        with _as_service_errors():
            request = self.service.submit(
                requester=requester,
                entry_id=entry_id,
                reason=reason,
                duration=duration,
                instance=instance_alias or None,
            )
        return self.request_view(request.id)

    def vote(self, request_id: int, approver: str, approve: bool, comment: str) -> RequestView:
        if approve:
            return self._call(
                request_id, lambda: self.service.approve(request_id, approver, comment or None)
            )
        return self._call(
            request_id, lambda: self.service.deny(request_id, approver, comment or None)
        )

    def cancel(self, request_id: int, user: str) -> RequestView:
        return self._call(request_id, lambda: self.service.cancel(request_id, user))

    def revoke(self, request_id: int, user: str) -> RequestView:
        return self._call(request_id, lambda: self.service.revoke(request_id, user, "done"))

    def extend(self, request_id: int, user: str, duration: timedelta) -> RequestView:
        return self._call(
            request_id, lambda: self.service.request_extension(request_id, user, duration)
        )

    def set_approval_message(self, request_id: int, channel: str, ts: str) -> None:
        with _as_service_errors():
            self.service.set_approval_message(request_id, channel, ts)

    # --- views ----------------------------------------------------------------------------

    def request_view(self, request_id: int) -> RequestView:
        return self.views.request_view(request_id)

    def _requests(self, *conditions: object) -> tuple[RequestView, ...]:
        return tuple(self.views.views(*conditions))

    def status(self, user: str) -> tuple[RequestView, ...]:
        return self._requests(AccessRequest.requester == user)[:RECENT_REQUESTS]

    def home(self, user: str) -> HomeSummary:
        mine = self._requests(AccessRequest.requester == user)
        active = tuple(v for v in mine if v.state in (ACTIVE, "revoking", "irrevocable"))
        pending = tuple(v for v in mine if v.state in (PENDING, "approved", "granting"))
        open_for_votes = self._requests(
            or_(
                AccessRequest.state == PENDING,
                (AccessRequest.state == ACTIVE) & AccessRequest.extension_seconds.is_not(None),
            ),
            AccessRequest.requester != user,
        )
        awaiting = tuple(
            view
            for view in open_for_votes
            if not view.has_voted(user) and user in self.service.approvers.members(view.approvers)
        )
        return HomeSummary(
            now=self.service.clock.now(), active=active, pending=pending,
            awaiting_my_approval=awaiting,
        )
