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
from bot.iamref import IamReference
from bot.lifecycle import LifecycleError, RequestService
from bot.models import AccessRequest, Grant
from bot.ports import PrincipalError
from bot.resolve import Resolver
from bot.scoping import InstanceResources
from bot.slack.request_views import DbRequestViews
from bot.slack.services import (
    EntryDescription,
    EntryListing,
    HomeSummary,
    InstanceChoice,
    PermissionsView,
    RequestView,
    Resolved,
    ServiceError,
    catalog_entry,
    describe,
    list_catalog,
    permissions_view,
    preview_instance,
    resolve_text,
    vote_decision,
)
from bot.states import ACTIVE, LIVE_STATES, PENDING, WAITING_STATES
from bot.target_policy import RoleIdLookup

T = TypeVar("T")
RECENT_REQUESTS = 10


@contextmanager
def _as_service_errors() -> Iterator[None]:
    try:
        yield
    except LifecycleError as exc:
        raise ServiceError(str(exc)) from None


class DbSlackServices:
    """Implements bot.slack.services.SlackServices."""

    def __init__(self, service: RequestService, resolver: Resolver | None = None,
                 views: DbRequestViews | None = None, iam: IamReference | None = None) -> None:
        self.service = service
        self.catalog: Catalog = service.catalog
        self.resolver = resolver or Resolver(service.catalog)
        self.views = views or DbRequestViews(service.sessions, service.catalog,
                                             service.config.router,
                                             service.config.identity_center)
        self.iam = iam or IamReference()

    # --- catalog --------------------------------------------------------------------------

    def resolve(self, text: str) -> Resolved:
        return resolve_text(self.resolver, text)

    def describe_entry(self, entry_id: str) -> EntryDescription:
        entry = catalog_entry(self.catalog, entry_id)
        route = self.service.config.router.route_for(entry)
        instances = [InstanceChoice(i.alias, i.arn) for i in self.service.config.instances]
        return describe(self.catalog, entry.id, route, instances)

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
        active = tuple(v for v in mine if v.state in LIVE_STATES)
        pending = tuple(v for v in mine if v.state in WAITING_STATES)
        # The query only narrows (requests open for votes, not the user's own); whether
        # the user may vote on each is bot.decisions.may_vote's to say.
        open_for_votes = self._requests(
            or_(
                AccessRequest.state == PENDING,
                (AccessRequest.state == ACTIVE) & AccessRequest.extension_seconds.is_not(None),
            ),
            AccessRequest.requester != user,
        )
        awaiting = tuple(
            view for view in open_for_votes
            if vote_decision(view, user, self.service.approvers).allowed
        )
        return HomeSummary(
            now=self.service.clock.now(), active=active, pending=pending,
            awaiting_my_approval=awaiting,
        )

    # --- permissions ----------------------------------------------------------------------

    def entry_permissions(self, entry_id: str, user: str,
                          instance_alias: str | None = None) -> PermissionsView:
        entry = catalog_entry(self.catalog, entry_id)
        route = self.service.config.router.route_for(entry)
        instance, is_default = preview_instance(
            [InstanceChoice(i.alias, i.arn) for i in self.service.config.instances],
            instance_alias)
        try:
            principal, known = self.service.principals.principal_for(user), True
        except PrincipalError:
            # Shown as a preview: the principal is found (or refused) when they request.
            account = instance.arn.split(":")[4] if instance else "111122223333"
            principal, known = f"arn:aws:iam::{account}:role/your-principal", False
        return permissions_view(
            self.catalog, self.iam, entry.id, principal_arn=principal, principal_known=known,
            instance=instance, start=self.service.clock.now(), duration=route.max_duration,
            role_unique_id=self._role_ids(), instance_is_default=is_default,
            instance_resources=self._configured(instance.arn if instance else None),
        )

    def request_permissions(self, request_id: int) -> PermissionsView:
        with _as_service_errors():
            request = self.service.get(request_id)
        grant: Grant | None = request.grants[-1] if request.grants else None
        instance = (InstanceChoice(request.instance_alias or request.instance_arn,
                                   request.instance_arn) if request.instance_arn else None)
        start = grant.starts_at if grant is not None else self.service.clock.now()
        duration = (grant.expires_at - grant.starts_at if grant is not None
                    else timedelta(seconds=request.duration_seconds))
        return permissions_view(
            self.catalog, self.iam, request.entry_id, principal_arn=request.principal_arn,
            principal_known=True, instance=instance, start=start, duration=duration,
            request_id=request.id, role_unique_id=self._role_ids(),
            instance_resources=self._configured(request.instance_arn),
        )

    def _configured(self, instance_arn: str | None) -> InstanceResources | None:
        """What the operator config says about the instance (directory, replica Regions):
        the grant is narrowed by it, so the preview is too. The grant-time AWS look-ups
        (service-linked role, storage) are not repeated for a preview."""
        for i in self.service.config.instances:
            if i.arn == instance_arn and (i.directory_id or i.replica_regions):
                return InstanceResources(i.arn, directory_id=i.directory_id,
                                         replica_regions=i.replica_regions)
        return None

    def _role_ids(self) -> RoleIdLookup | None:
        """A shared role's unique id comes from IAM, through the granter that has it."""
        from bot.aws.target_granter import TargetGranter

        granter = self.service.granter
        return granter.role_unique_id if isinstance(granter, TargetGranter) else None
