"""What the Slack layer needs from the core, as one Protocol over plain data.

The Slack listeners and the notifier only see `SlackServices`; the database-backed
implementation (bot/slack/db_services.py, lifecycle + models) provides it, in production and
in the tests alike. Domain refusals surface as `ServiceError`, whose message is shown to the
person as written (escaped).

The catalog helpers at the bottom (`resolve_text`, `describe`, `list_catalog`) are pure and
shared by every implementation, so both answer `/connect-access <text>` the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from bot import durations
from bot.catalog import Catalog, CatalogEntry
from bot.config import Route
from bot.decisions import Decision, RequestFacts, may_vote
from bot.iamref import IamReference
from bot.policy import PolicyError
from bot.ports import ApproverDirectory
from bot.resolve import QueryError, Resolver
from bot.scoping import InstanceResources
from bot.states import RequestState
from bot.target_policy import RoleIdLookup, compile_for_target
from bot.targets import AccessRoute, TargetError
from bot.tiers import Tier


class ServiceError(Exception):
    """A request the core refuses (not allowed, wrong state, bad input). The message is
    written for the person in Slack: what was wrong and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message




@dataclass(frozen=True)
class EntryBrief:
    id: str
    name: str
    page: str
    section: str | None
    tier: Tier


@dataclass(frozen=True)
class Resolved:
    query: str
    status: Literal["match", "ambiguous", "none"]
    matches: tuple[EntryBrief, ...] = ()
    suggestions: tuple[EntryBrief, ...] = ()


@dataclass(frozen=True)
class InstanceChoice:
    alias: str
    arn: str


@dataclass(frozen=True)
class EntryDescription:
    """What a request for the entry would grant, shown before anyone asks."""

    entry: EntryBrief
    action_count: int
    services: tuple[str, ...]
    max_duration: timedelta
    requires: tuple[EntryBrief, ...]
    instances: tuple[InstanceChoice, ...]
    approvals_needed: int
    approval_channel: str | None
    auto_approve: bool


@dataclass(frozen=True)
class HistoryItem:
    id: int
    entry_name: str
    state: RequestState
    created_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True)
class RequesterHistory:
    other_active: tuple[HistoryItem, ...]
    recent_same_entry: tuple[HistoryItem, ...]


@dataclass(frozen=True)
class PermissionStatement:
    """One statement of the compiled policy, as people read it."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    # Conditions other than the time box, as "Operator key = value(s)" lines.
    conditions: tuple[str, ...]


@dataclass(frozen=True)
class PermissionsView:
    """Exactly what a grant of the entry attaches: every statement of the compiled policy,
    the window and the effects that outlive it."""

    entry: EntryBrief
    principal_arn: str
    principal_known: bool  # False: a preview for a principal looked up only at request time
    instance_alias: str | None
    instance_arn: str | None
    starts_at: datetime
    expires_at: datetime
    statements: tuple[PermissionStatement, ...]
    persistent_effects: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    request_id: int | None = None
    # True when no instance was chosen yet and the preview shows the first configured one.
    instance_is_default: bool = False

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(sorted({a for s in self.statements for a in s.actions}))

    def by_service(self) -> dict[str, list[PermissionStatement]]:
        """Statements split by the service of their actions, services in name order."""
        grouped: dict[str, list[PermissionStatement]] = {}
        for statement in self.statements:
            services = sorted({a.split(":", 1)[0] for a in statement.actions})
            for service in services:
                acts = tuple(a for a in statement.actions if a.split(":", 1)[0] == service)
                grouped.setdefault(service, []).append(
                    PermissionStatement(statement.sid, acts, statement.resources,
                                        statement.conditions))
        return dict(sorted(grouped.items()))


@dataclass(frozen=True)
class VoteRecord:
    approver: str
    approve: bool
    comment: str
    at: datetime


@dataclass(frozen=True)
class RequestView:
    """Everything the approval message, the DMs and App Home show about one request."""

    id: int
    requester: str
    entry: EntryBrief
    instance_alias: str
    duration: timedelta
    reason: str
    state: RequestState
    approvers: tuple[str, ...]
    approvals_needed: int
    votes: tuple[VoteRecord, ...]
    created_at: datetime
    expires_at: datetime | None = None
    channel: str | None = None
    message_ts: str | None = None
    # The last outcome's detail in words: why it failed, what revoked it ("expired").
    note: str | None = None
    # An extension waiting for approval, when the tier requires re-approval.
    extension: timedelta | None = None
    # Effects of the grant that outlive it (catalog `persistent_effects`): (action, reason).
    persistent_effects: tuple[tuple[str, str], ...] = ()
    # For approvers: the requester's other live grants and recent requests for this entry
    # (filled for a single request's view, not for lists).
    history: RequesterHistory | None = None
    # Who receives the grant and how they reach it (portal, account, permission set).
    access: AccessRoute | None = None

    @property
    def approvals(self) -> int:
        return sum(1 for vote in self.votes if vote.approve)

    @property
    def facts(self) -> RequestFacts:
        """What bot.decisions judges this request by (whether votes are open, who may
        cancel, extend or end it)."""
        return RequestFacts(self.id, self.requester, self.state, self.entry.tier,
                            extension_pending=self.extension is not None)

    def has_voted(self, user_id: str) -> bool:
        return any(vote.approver == user_id for vote in self.votes)


def vote_decision(view: RequestView, user: str, directory: ApproverDirectory) -> Decision:
    """bot.decisions.may_vote on what the view shows (the lifecycle judges the same when the
    vote arrives, adding the principal check). The approvers are looked up (a Slack call
    for user groups) only when the answer depends on it: not for a closed request or for
    its requester, which may_vote refuses first."""
    facts = view.facts
    needs_lookup = facts.open_for_votes and user != view.requester
    return may_vote(facts, user, approvers=view.approvers,
                    is_approver=needs_lookup and user in directory.members(view.approvers),
                    has_voted=view.has_voted(user))


@dataclass(frozen=True)
class HomeSummary:
    now: datetime
    active: tuple[RequestView, ...]
    pending: tuple[RequestView, ...]
    awaiting_my_approval: tuple[RequestView, ...]


@dataclass(frozen=True)
class PageSummary:
    name: str
    entry_count: int


@dataclass(frozen=True)
class EntryListing:
    page: str | None  # the page listed, None for the overview of pages
    pages: tuple[PageSummary, ...]
    entries: tuple[EntryBrief, ...]


class SlackServices(Protocol):
    """The core as the Slack layer sees it. Every method may raise ServiceError."""

    def resolve(self, text: str) -> Resolved: ...

    def describe_entry(self, entry_id: str) -> EntryDescription: ...

    def list_entries(self, page: str | None) -> EntryListing: ...

    def submit_request(
        self,
        requester: str,
        entry_id: str,
        instance_alias: str,
        duration: timedelta,
        reason: str,
    ) -> RequestView: ...

    def vote(self, request_id: int, approver: str, approve: bool, comment: str) -> RequestView: ...

    def cancel(self, request_id: int, user: str) -> RequestView: ...

    def revoke(self, request_id: int, user: str) -> RequestView:
        """The requester is done with an active grant ("I'm done")."""
        ...

    def extend(self, request_id: int, user: str, duration: timedelta) -> RequestView: ...

    def status(self, user: str) -> tuple[RequestView, ...]:
        """The user's recent requests, newest first."""
        ...

    def home(self, user: str) -> HomeSummary: ...

    def request_view(self, request_id: int) -> RequestView: ...

    def set_approval_message(self, request_id: int, channel: str, ts: str) -> None: ...

    def entry_permissions(self, entry_id: str, user: str,
                          instance_alias: str | None = None) -> PermissionsView:
        """What a request by `user` for the entry would attach, compiled now on the
        instance `instance_alias` (chosen in the request modal; None: the first configured
        instance, said so in the view), for the tier's longest duration."""
        ...

    def request_permissions(self, request_id: int) -> PermissionsView:
        """What the request attaches (or attached): its principal, instance and window."""
        ...


# ---------------------------------------------------------------------------------------
# Durations as people type them (30m, 2h, 1h30m, 90s, 1d): one parser, bot.durations.


def parse_duration(text: str) -> timedelta:
    """`30m`, `2h`, `1h30m`, `90s`, `1d` -> timedelta; ServiceError says what to type."""
    try:
        return durations.parse_duration(text)
    except durations.DurationError as exc:
        raise ServiceError(str(exc)) from None


def format_duration(duration: timedelta) -> str:
    """timedelta -> `1h 30m` (zero and below read `0m`)."""
    if duration <= timedelta(0):
        return "0m"
    return durations.format_duration_spaced(duration)


# ---------------------------------------------------------------------------------------
# Catalog answers shared by every implementation.


def brief(entry: CatalogEntry) -> EntryBrief:
    return EntryBrief(entry.id, entry.name, entry.page, entry.section, entry.tier)


def resolve_text(resolver: Resolver, text: str) -> Resolved:
    try:
        resolution = resolver.resolve(text)
    except QueryError as exc:
        raise ServiceError(str(exc)) from None
    return Resolved(
        query=resolution.query,
        status=resolution.status,
        matches=tuple(brief(c.entry) for c in resolution.matches),
        suggestions=tuple(brief(c.entry) for c in resolution.suggestions),
    )


def catalog_entry(catalog: Catalog, entry_id: str) -> CatalogEntry:
    try:
        return catalog.get(entry_id)
    except KeyError:
        raise ServiceError(
            f"There is no use case `{entry_id}`; try `/connect-access list` to browse."
        ) from None


def describe(
    catalog: Catalog,
    entry_id: str,
    route: Route,
    instances: Sequence[InstanceChoice],
) -> EntryDescription:
    entry = catalog_entry(catalog, entry_id)
    actions = catalog.granted_actions(entry.id)
    closure = catalog.required_closure(entry.id)[1:]
    return EntryDescription(
        entry=brief(entry),
        action_count=len(actions),
        services=tuple(sorted({a.split(":", 1)[0] for a in actions})),
        max_duration=route.max_duration,
        requires=tuple(brief(catalog.get(d)) for d in closure),
        instances=tuple(instances),
        approvals_needed=route.approvals,
        approval_channel=route.channel,
        auto_approve=route.auto_approve,
    )


_TIME_BOX_OPERATORS = ("DateGreaterThan", "DateLessThan")


def _condition_value(value: object) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def preview_instance(instances: Sequence[InstanceChoice], alias: str | None
                     ) -> tuple[InstanceChoice | None, bool]:
    """The instance a permissions preview shows, and whether it is the default: the one
    named `alias` (as the request modal's select holds it), else the first configured one.
    An alias no instance has is a ServiceError (the modal only offers configured ones)."""
    if alias:
        for instance in instances:
            if instance.alias == alias:
                return instance, False
        known = ", ".join(i.alias for i in instances) or "none"
        raise ServiceError(f"There is no instance {alias!r} (configured: {known}).")
    return (instances[0], True) if instances else (None, False)


def permissions_view(
    catalog: Catalog,
    iam: IamReference,
    entry_id: str,
    *,
    principal_arn: str,
    principal_known: bool,
    instance: InstanceChoice | None,
    start: datetime,
    duration: timedelta,
    request_id: int | None = None,
    role_unique_id: RoleIdLookup | None = None,
    instance_is_default: bool = False,
    instance_resources: InstanceResources | None = None,
) -> PermissionsView:
    """Compile the entry's policy (as the grant would, for any kind of target: a shared
    role's session condition needs `role_unique_id`) and describe it statement by
    statement. A compile failure is a ServiceError with the compiler's message."""
    entry = catalog_entry(catalog, entry_id)
    try:
        compiled = compile_for_target(
            catalog, entry.id, principal_arn, grant_id=f"preview{request_id or 0}",
            start=start, duration=duration, max_duration=None, iam=iam,
            instance_arn=instance.arn if instance else None,
            role_unique_id=role_unique_id,
            # What the operator configured for the instance (directory, replica Regions)
            # narrows the grant, so the preview shows it too.
            instance_resources=(instance_resources if instance is not None
                                and instance_resources is not None
                                and instance_resources.instance_arn == instance.arn else None),
        )
    except (PolicyError, TargetError, durations.DurationError) as exc:
        raise ServiceError(f"The policy for {entry.name} cannot be built: {exc}") from None
    statements = []
    for policy in compiled.policies:
        for raw in policy.document["Statement"]:
            actions = raw["Action"] if isinstance(raw["Action"], list) else [raw["Action"]]
            resources = raw["Resource"] if isinstance(raw["Resource"], list) else [raw["Resource"]]
            conditions = tuple(
                f"{operator} {key} = {_condition_value(value)}"
                for operator, keys in raw.get("Condition", {}).items()
                if operator not in _TIME_BOX_OPERATORS
                for key, value in keys.items()
            )
            statements.append(PermissionStatement(raw["Sid"], tuple(actions), tuple(resources),
                                                  conditions))
    return PermissionsView(
        entry=brief(entry), principal_arn=compiled.principal_arn,
        principal_known=principal_known, instance_alias=instance.alias if instance else None,
        instance_arn=compiled.instance_arn, starts_at=compiled.starts_at,
        expires_at=compiled.expires_at, statements=tuple(statements),
        persistent_effects=tuple((e.action, e.reason) for e in compiled.persistent_effects),
        notes=compiled.notes, request_id=request_id,
        instance_is_default=instance_is_default,
    )


def persistent_effects_of(catalog: Catalog, entry_id: str) -> tuple[tuple[str, str], ...]:
    if entry_id not in catalog.entries:
        return ()
    return tuple((e.action, e.reason) for e in catalog.declared_persistent_effects(entry_id))


def list_catalog(catalog: Catalog, page: str | None) -> EntryListing:
    counts: dict[str, int] = {}
    for entry in catalog:
        counts[entry.page] = counts.get(entry.page, 0) + 1
    pages = tuple(PageSummary(name, count) for name, count in counts.items())
    if not page or not page.strip():
        return EntryListing(None, pages, ())
    wanted = page.strip().lower()
    chosen = [p for p in counts if p.lower() == wanted] or [
        p for p in counts if wanted in p.lower()
    ]
    if len(chosen) != 1:
        names = ", ".join(f"`{p}`" for p in (chosen or counts))
        what = "matches several pages" if chosen else "matches no page"
        raise ServiceError(f"`{page.strip()}` {what}; pick one of: {names}.")
    entries = tuple(brief(e) for e in catalog if e.page == chosen[0])
    return EntryListing(chosen[0], pages, entries)
