"""The operator's YAML (CONNECT_ACCESS_CONFIG): instances, principal mapping, approval
routing and timings, validated with errors that name the key path and the fault.

Tier defaults come from catalog/routing.yaml; the operator file overrides them key by key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from bot import slacklimits
from bot.catalog import DEFAULT_CATALOG_DIR, CatalogEntry
from bot.durations import format_duration, parse_duration
from bot.targets import (
    GrantTarget,
    IamTarget,
    IdentityCenterTarget,
    SharedRoleTarget,
    TargetError,
    target_from_mapping,
)
from bot.tiers import TIERS, Tier

DEFAULT_ROUTING_FILE = DEFAULT_CATALOG_DIR / "routing.yaml"

# Users (U..., W... on Enterprise Grid) and user groups (S...).
_APPROVER_ID = re.compile(r"[UWS][A-Z0-9]{2,}")
_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")
_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{2,}")
_INSTANCE_ARN = re.compile(r"arn:aws[a-z-]*:connect:[a-z0-9-]+:\d{12}:instance/[A-Za-z0-9-]+")
_DIRECTORY_ID = re.compile(r"d-[0-9a-f]{10}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
_SSO_INSTANCE_ARN = re.compile(r"arn:aws[a-z-]*:sso:::instance/ssoins-[a-zA-Z0-9]{16}")
_IDENTITY_STORE_ID = re.compile(r"d-[0-9a-z]{10}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                r"[0-9a-f]{4}-[0-9a-f]{12}")
# Extensions may add up to this many times the tier's max_duration unless the tier says.
DEFAULT_TOTAL_FACTOR = 3
_BOUNDARY_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}|\*):policy/[\w+=,.@/-]+")


class ConfigError(ValueError):
    """A fault in the operator config file, naming the key path."""

    def __init__(self, source: str, key_path: str, fault: str) -> None:
        super().__init__(f"{source}: {key_path}: {fault}" if source else f"{key_path}: {fault}")
        self.source = source
        self.key_path = key_path
        self.fault = fault


def parse_duration_text(text: str) -> timedelta:
    """'4h', '30m', '1h30m', '2d', '30s' -> timedelta; ValueError (DurationError) otherwise."""
    return parse_duration(text)


@dataclass(frozen=True)
class Instance:
    alias: str
    arn: str
    assume_role_arn: str | None = None
    external_id: str | None = None
    # The instance's AWS Directory Service directory (DescribeInstance does not return
    # it): pins the grants' ds: writes to it; None keeps them on the account and Region.
    directory_id: str | None = None
    # Regions replicas of the instance may be created in: pins Create replica's connect
    # actions to them (and the instance's own Region); empty keeps any Region.
    replica_regions: tuple[str, ...] = ()

    @property
    def account(self) -> str:
        return self.arn.split(":")[4]


@dataclass(frozen=True)
class Route:
    """Where a request for one entry goes and what it needs."""

    tier: Tier
    channel: str | None
    approvers: tuple[str, ...]
    approvals: int
    max_duration: timedelta
    auto_approve: bool
    # The most a request may last with all its extensions; None: DEFAULT_TOTAL_FACTOR
    # times max_duration (so an override changing max_duration moves it too).
    max_total_duration: timedelta | None = None

    @property
    def total_limit(self) -> timedelta:
        if self.max_total_duration is not None:
            return self.max_total_duration
        return self.max_duration * DEFAULT_TOTAL_FACTOR


@dataclass(frozen=True)
class IdentityCenter:
    """The IAM Identity Center instance whose users may be grant targets."""

    instance_arn: str
    identity_store_id: str
    portal_url: str | None = None

    @property
    def access_portal(self) -> str:
        """Where people sign in to use an assignment (the AWS access portal)."""
        return self.portal_url or f"https://{self.identity_store_id}.awsapps.com/start"


@dataclass(frozen=True)
class Override:
    entry_id: str | None
    page: str | None
    changes: Mapping[str, Any]

    def matches(self, entry: CatalogEntry) -> bool:
        if self.entry_id is not None and self.entry_id != entry.id:
            return False
        return self.page is None or self.page.lower() == entry.page.lower()


@dataclass(frozen=True)
class Timings:
    pending_ttl: timedelta = timedelta(hours=24)
    remind_before_expiry: timedelta = timedelta(minutes=10)
    pending_reminder_after: timedelta = timedelta(hours=1)
    sweep_interval: timedelta = timedelta(seconds=30)
    irrevocable_retry: timedelta = timedelta(minutes=15)
    # How often the scheduler leader compares IAM with the grants (and once at start).
    reconcile_interval: timedelta = timedelta(minutes=15)
    # Principals found by tag (principal_tag_lookup): the index of tags is rescanned in the
    # background when older than this, and at once on a miss unless it is younger than
    # principal_index_miss_refresh (bot.aws.principal_index).
    principal_index_max_age: timedelta = timedelta(minutes=10)
    principal_index_miss_refresh: timedelta = timedelta(seconds=30)


# Reconcile lists every mapped and tagged principal in IAM; more often than this would spend
# the bot's IAM request rate on checking rather than on granting and revoking.
MIN_RECONCILE_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class Alerts:
    """Where failures that need a person are posted (`alerts: {channel: C...}`)."""

    channel: str | None = None


@dataclass(frozen=True)
class AuditConfig:
    """The `audit:` section: where signed checkpoints of the audit chain go (anchors the
    database administrator cannot rewrite) and how often they are made. With neither a
    signer nor a store the log only detects careless edits (see bot.audit_verify)."""

    kms_key_id: str | None = None
    signing_key_file: Path | None = None
    anchor_bucket: str | None = None
    anchor_channel: str | None = None
    checkpoint_interval: timedelta = timedelta(minutes=5)
    checkpoint_events: int = 1000
    anchor_retention: timedelta = timedelta(days=365)
    # Retired signing keys whose checkpoints still verify: KMS key ARNs (str) and files
    # holding a retired Ed25519 key's public key in PEM (Path).
    previous_keys: tuple[str | Path, ...] = ()

    @property
    def anchored(self) -> bool:
        return self.signer_configured and (self.anchor_bucket is not None
                                           or self.anchor_channel is not None)

    @property
    def signer_configured(self) -> bool:
        return self.kms_key_id is not None or self.signing_key_file is not None


@dataclass(frozen=True)
class IamLimits:
    """How the bot paces itself against IAM's request rate (the `iam:` section).

    IAM throttles per account, and every process that talks to IAM (web, scheduler,
    reconcile) has its own limit, so give each its share of what the account allows.
    """

    # Client-side limit per account and process; None: none (botocore's retries only).
    requests_per_second: float | None = None
    # Requests sent at once after a quiet spell; None: a quarter of a second's worth.
    burst: float | None = None
    # botocore's retry mode: "standard" backs off after a throttle, "adaptive" also lowers
    # each client's send rate until throttling stops (measured: 23 times fewer throttled
    # answers than standard without a client-side limit; docs/benchmarks.md).
    retry_mode: Literal["standard", "adaptive"] = "adaptive"
    # HTTP attempts per IAM call, the first included (botocore's total_max_attempts).
    max_attempts: int = 5
    # Tell a requester when their approved grant will wait at least this long for IAM.
    queued_notice_after: timedelta = timedelta(seconds=2)


@dataclass(frozen=True)
class ApprovalRouter:
    tiers: Mapping[Tier, Route]
    overrides: tuple[Override, ...] = ()

    def route_for(self, entry: CatalogEntry) -> Route:
        """The tier's route, changed by the first override that matches the entry."""
        route = self.tiers[entry.tier]
        for override in self.overrides:
            if override.matches(entry):
                return _apply(route, override.changes)
        return route


@dataclass(frozen=True)
class OperatorConfig:
    instances: tuple[Instance, ...] = ()
    principals: Mapping[str, str] = field(default_factory=dict)
    principal_tag_lookup: bool = False
    require_managed_tag: bool = False
    # Every target principal must have this managed policy as its permissions boundary
    # (`*` for the account: the principal's own); None: no boundary is required.
    required_permissions_boundary: str | None = None
    router: ApprovalRouter = field(default_factory=lambda: load_router({}))
    timings: Timings = Timings()
    audit: AuditConfig = AuditConfig()
    # Slack user ids (U/W) and user-group ids (S) who may review the audit trail in Slack.
    auditors: tuple[str, ...] = ()
    iam: IamLimits = IamLimits()
    alerts: Alerts = Alerts()
    identity_center: IdentityCenter | None = None
    allow_group_targets: bool = False

    def instance(self, alias_or_arn: str | None = None) -> Instance:
        """The named instance, or the only/first one when none is named."""
        if not self.instances:
            raise ConfigError("", "instances", "no instance is configured")
        if alias_or_arn is None:
            return self.instances[0]
        for instance in self.instances:
            if alias_or_arn in (instance.alias, instance.arn):
                return instance
        known = ", ".join(i.alias for i in self.instances)
        raise ConfigError("", "instances", f"no instance {alias_or_arn!r} (known: {known})")


def _apply(route: Route, changes: Mapping[str, Any]) -> Route:
    return Route(
        tier=route.tier,
        channel=changes.get("channel", route.channel),
        approvers=changes.get("approvers", route.approvers),
        approvals=changes.get("approvals", route.approvals),
        max_duration=changes.get("max_duration", route.max_duration),
        auto_approve=changes.get("auto_approve", route.auto_approve),
        max_total_duration=changes.get("max_total_duration", route.max_total_duration),
    )


class _Reader:
    """Checks values at a key path and raises ConfigError naming it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, fault: str) -> ConfigError:
        return ConfigError(self.source, path, fault)

    def mapping(self, path: str, value: Any) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a mapping, got {type(value).__name__}")
        return value

    def sequence(self, path: str, value: Any) -> Sequence[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list, got {type(value).__name__}")
        return value

    def boolean(self, path: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {value!r}")
        return value

    def string(self, path: str, value: Any, pattern: re.Pattern[str] | None = None,
               what: str = "") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"must be a non-empty string, got {value!r}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(path, f"must be {what}, got {value!r}")
        return value

    def duration(self, path: str, value: Any) -> timedelta:
        try:
            return parse_duration_text(str(value)) if value is not None else parse_duration_text("")
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None

    def unknown_keys(self, path: str, raw: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in raw:
            if key not in allowed:
                raise self.fail(f"{path}.{key}" if path else str(key),
                                f"unknown key (allowed: {', '.join(allowed)})")


_ROUTE_KEYS = ("channel", "approvers", "approvals", "max_duration", "auto_approve",
               "max_total_duration")
# What every tier of catalog/routing.yaml must set (the rest has defaults).
_REQUIRED_ROUTE_KEYS = ("channel", "approvers", "approvals", "max_duration", "auto_approve")


def _route_changes(reader: _Reader, path: str, raw: Mapping[str, Any],
                   extra_keys: Sequence[str] = ()) -> dict[str, Any]:
    reader.unknown_keys(path, raw, (*_ROUTE_KEYS, *extra_keys))
    changes: dict[str, Any] = {}
    if "channel" in raw:
        channel = raw["channel"]
        changes["channel"] = None if channel is None else reader.string(
            f"{path}.channel", channel, _CHANNEL_ID, "a Slack channel id like C0APPROVALS")
    if "approvers" in raw:
        approvers = reader.sequence(f"{path}.approvers", raw["approvers"])
        changes["approvers"] = tuple(
            reader.string(f"{path}.approvers[{i}]", a, _APPROVER_ID,
                          "a Slack user id (U... or W...) or user-group id (S...)")
            for i, a in enumerate(approvers)
        )
    if "approvals" in raw:
        approvals = raw["approvals"]
        if isinstance(approvals, bool) or not isinstance(approvals, int) or approvals < 1:
            raise reader.fail(f"{path}.approvals",
                              f"must be a whole number >= 1, got {approvals!r}")
        changes["approvals"] = approvals
    if "max_duration" in raw:
        changes["max_duration"] = reader.duration(f"{path}.max_duration", raw["max_duration"])
    if "auto_approve" in raw:
        changes["auto_approve"] = reader.boolean(f"{path}.auto_approve", raw["auto_approve"])
    if "max_total_duration" in raw:
        changes["max_total_duration"] = reader.duration(f"{path}.max_total_duration",
                                                        raw["max_total_duration"])
    return changes


def check_instance_limits(reader: _Reader, aliases: Sequence[str]) -> None:
    """The request form offers every instance in one menu and carries their aliases in
    its private_metadata: refuse what Slack would reject there."""
    if len(aliases) > slacklimits.SELECT_OPTIONS_MAX:
        raise reader.fail("instances", f"{len(aliases)} instances configured; at most "
                                       f"{slacklimits.SELECT_OPTIONS_MAX} (Slack's limit on "
                                       "options in the request form's instance menu)")
    for index, alias in enumerate(aliases):
        if len(alias) > slacklimits.ALIAS_STORED_MAX:
            raise reader.fail(f"instances[{index}].alias",
                              f"is {len(alias)} characters; at most "
                              f"{slacklimits.ALIAS_STORED_MAX} (Slack allows "
                              f"{slacklimits.OPTION_VALUE_MAX} in a menu option's value, the "
                              f"database {slacklimits.ALIAS_STORED_MAX})")
    metadata = len(json.dumps({"entry_id": "x" * slacklimits.ENTRY_ID_MAX,
                               "max_seconds": 10**8, "instances": list(aliases)}))
    if metadata > slacklimits.PRIVATE_METADATA_MAX:
        raise reader.fail("instances", f"the aliases take {metadata} characters of the request "
                                       f"form's private_metadata; Slack allows "
                                       f"{slacklimits.PRIVATE_METADATA_MAX}: use shorter aliases "
                                       "or fewer instances")


def mention_length(approver: str) -> int:
    """Characters of an approver's mention in a message (`<@U…>`, `<!subteam^S…>`)."""
    return len(approver) + (len("<!subteam^>") if approver.startswith("S") else len("<@>"))


# The approval message lists the approvers in one context element:
# "Approvers: <@U1>, <@U2>. The requester cannot vote." (bot.slack.blocks.approval.approval_message)
_APPROVERS_LINE = len("Approvers: . The requester cannot vote.")


def check_approver_limits(reader: _Reader, path: str, approvers: Sequence[str]) -> None:
    length = _APPROVERS_LINE + sum(mention_length(a) for a in approvers) + 2 * max(
        0, len(approvers) - 1)
    if length > slacklimits.TEXT_MAX:
        raise reader.fail(f"{path}.approvers",
                          f"{len(approvers)} approvers make the approval message's approver "
                          f"line {length} characters; Slack allows {slacklimits.TEXT_MAX}: "
                          "put them in a user group (S...) instead")


def load_router(operator_routing: Mapping[str, Any], source: str = "",
                defaults_file: Path = DEFAULT_ROUTING_FILE) -> ApprovalRouter:
    """Merge the operator's `routing` section over the shipped tier defaults."""
    defaults_reader = _Reader(str(defaults_file))
    defaults = defaults_reader.mapping("", yaml.safe_load(defaults_file.read_text()))
    reader = _Reader(source)
    reader.unknown_keys("routing", operator_routing, ("tiers", "overrides"))
    default_tiers = defaults_reader.mapping("tiers", defaults.get("tiers"))
    operator_tiers = reader.mapping("routing.tiers", operator_routing.get("tiers"))
    for tier_name in operator_tiers:
        if tier_name not in TIERS:
            raise reader.fail(f"routing.tiers.{tier_name}",
                              f"unknown tier (tiers: {', '.join(TIERS)})")
    tiers: dict[Tier, Route] = {}
    for tier in TIERS:
        base = _route_changes(defaults_reader, f"tiers.{tier}",
                              defaults_reader.mapping(f"tiers.{tier}", default_tiers.get(tier)))
        missing = [k for k in _REQUIRED_ROUTE_KEYS if k not in base]
        if missing:
            raise defaults_reader.fail(f"tiers.{tier}", f"missing {', '.join(missing)}")
        path = f"routing.tiers.{tier}"
        base.update(_route_changes(reader, path,
                                   reader.mapping(path, operator_tiers.get(tier))))
        check_approver_limits(reader, path, base["approvers"])
        if base["auto_approve"] and tier != "read":
            raise reader.fail(f"{path}.auto_approve",
                              "only the read tier may be auto-approved")
        tiers[tier] = Route(tier=tier, **base)
        _check_total(reader, path, tiers[tier])
    overrides: list[Override] = []
    raw_overrides = reader.sequence("routing.overrides", operator_routing.get("overrides"))
    for index, raw_override in enumerate(raw_overrides):
        path = f"routing.overrides[{index}]"
        raw = reader.mapping(path, raw_override)
        match = reader.mapping(f"{path}.match", raw.get("match"))
        reader.unknown_keys(f"{path}.match", match, ("entry", "id", "page"))
        entry_id = match.get("entry", match.get("id"))
        page = match.get("page")
        if entry_id is None and page is None:
            raise reader.fail(f"{path}.match", "must name an entry id (entry:) or a page (page:)")
        changes = _route_changes(reader, path, raw, extra_keys=("match",))
        if "approvers" in changes:
            check_approver_limits(reader, path, changes["approvers"])
        if changes.get("auto_approve"):
            raise reader.fail(f"{path}.auto_approve",
                              "overrides may not auto-approve (only the read tier may)")
        if "max_total_duration" in changes:
            # Against the override's own max_duration, or every tier it could apply to.
            for route in tiers.values():
                _check_total(reader, path, _apply(route, changes))
        overrides.append(Override(
            entry_id=None if entry_id is None else reader.string(f"{path}.match.entry", entry_id),
            page=None if page is None else reader.string(f"{path}.match.page", page),
            changes=changes,
        ))
    return ApprovalRouter(tiers=tiers, overrides=tuple(overrides))


def _check_total(reader: _Reader, path: str, route: Route | None) -> None:
    if route is None or route.max_total_duration is None:
        return
    if route.max_total_duration < route.max_duration:
        raise reader.fail(
            f"{path}.max_total_duration",
            f"must be at least max_duration ({format_duration(route.max_duration)}), got "
            f"{format_duration(route.max_total_duration)}")


def _is_https_address(value: Any) -> bool:
    """An address people can follow: https, a host, no spaces (the DM links to it)."""
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme == "https" and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def _bucket_name(reader: _Reader, raw: Any) -> str:
    name = reader.string("audit.anchor_bucket", raw)
    problem = bucket_name_problem(name)
    if problem is not None:
        raise reader.fail("audit.anchor_bucket",
                          f"must be an S3 bucket name ({problem}), got {name!r}")
    return name


def _parse_identity_center(reader: _Reader, raw: Any) -> IdentityCenter | None:
    if raw is None:
        return None
    item = reader.mapping("identity_center", raw)
    reader.unknown_keys("identity_center", item,
                        ("instance_arn", "identity_store_id", "portal_url"))
    portal = item.get("portal_url")
    if portal is not None and not _is_https_address(portal):
        raise reader.fail("identity_center.portal_url",
                          f"must be the https:// address of the AWS access portal, like "
                          f"https://d-1234567890.awsapps.com/start, got {portal!r}")
    return IdentityCenter(
        instance_arn=reader.string(
            "identity_center.instance_arn", item.get("instance_arn"), _SSO_INSTANCE_ARN,
            "an IAM Identity Center instance ARN like arn:aws:sso:::instance/ssoins-..."),
        identity_store_id=reader.string(
            "identity_center.identity_store_id", item.get("identity_store_id"),
            _IDENTITY_STORE_ID, "an identity store id like d-1234567890"),
        portal_url=portal,
    )


def _parse_principals(reader: _Reader, raw: Any, *, identity_center: IdentityCenter | None,
                      allow_groups: bool) -> dict[str, str]:
    """Slack user -> target reference (bot.targets), refusing mappings that would let one
    person's grant reach someone else."""
    targets: dict[str, GrantTarget] = {}
    for user_id, value in reader.mapping("principals", raw).items():
        path = f"principals.{user_id}"
        reader.string(path, str(user_id), _SLACK_USER_ID, "keyed by a Slack user id (U... or W...)")
        try:
            target = target_from_mapping(value)
        except TargetError as exc:
            raise reader.fail(path, str(exc)) from None
        if isinstance(target, IdentityCenterTarget) and identity_center is None:
            raise reader.fail(path, "names an Identity Center user, but there is no "
                                    "`identity_center:` section (instance_arn, "
                                    "identity_store_id)")
        if isinstance(target, IamTarget) and target.is_group and not allow_groups:
            raise reader.fail(path, f"{target.principal.arn} is an IAM group: a grant to it "
                                    "reaches every member. Map the person's own role or "
                                    "user, or set `allow_group_targets: true`")
        targets[str(user_id)] = target
    _refuse_shared(reader, targets)
    return {user_id: target.ref for user_id, target in targets.items()}


def _refuse_shared(reader: _Reader, targets: Mapping[str, GrantTarget]) -> None:
    """One IAM principal (or Identity Center user) mapped to several Slack users hands
    each one's grants to all of them, and lets them approve each other's requests. Only a
    shared role where every mapping names its own session is safe."""
    by_holder: dict[str, list[tuple[str, GrantTarget]]] = {}
    for user_id, target in targets.items():
        if isinstance(target, IamTarget) and target.is_group:
            continue  # a group is shared by design; allow_group_targets already decided
        key = (target.ref if isinstance(target, IdentityCenterTarget)
               else str(target.policy_holder)).lower()
        by_holder.setdefault(key, []).append((user_id, target))
    for users in by_holder.values():
        if len(users) < 2:
            continue
        names = ", ".join(sorted(u for u, _ in users))
        plain = sorted(u for u, t in users if not isinstance(t, SharedRoleTarget))
        if plain:
            first = plain[0]
            shared = targets[first]
            raise reader.fail(
                f"principals.{first}",
                f"{shared.describe()} is mapped to {len(users)} Slack users ({names}); "
                "each would receive the others' grants and could approve their requests. "
                "Give each a session name ({role: ARN, session_name: ...}) or map each "
                "person to their own principal")
        sessions: dict[str, str] = {}
        for user_id, target in sorted(users):
            assert isinstance(target, SharedRoleTarget)
            if target.session_name in sessions:
                raise reader.fail(
                    f"principals.{user_id}",
                    f"session name {target.session_name!r} of {target.role.arn} is also "
                    f"mapped to {sessions[target.session_name]}; each person needs their "
                    "own session name")
            sessions[target.session_name] = user_id


def parse_config(raw: Any, source: str = "") -> OperatorConfig:
    reader = _Reader(source)
    top = reader.mapping("(top level)", raw)
    reader.unknown_keys("", top, ("instances", "principals", "principal_tag_lookup",
                                  "require_managed_tag", "required_permissions_boundary",
                                  "routing", "timings", "audit", "auditors", "iam", "alerts",
                                  "identity_center", "allow_group_targets"))
    instances: list[Instance] = []
    for index, raw_instance in enumerate(reader.sequence("instances", top.get("instances"))):
        path = f"instances[{index}]"
        item = reader.mapping(path, raw_instance)
        reader.unknown_keys(path, item, ("alias", "arn", "assume_role_arn", "external_id",
                                         "directory_id", "replica_regions"))
        role = item.get("assume_role_arn")
        external_id = item.get("external_id")
        directory_id = item.get("directory_id")
        instances.append(Instance(
            alias=reader.string(f"{path}.alias", item.get("alias")),
            arn=reader.string(f"{path}.arn", item.get("arn"), _INSTANCE_ARN,
                              "an Amazon Connect instance ARN"),
            assume_role_arn=None if role is None else reader.string(
                f"{path}.assume_role_arn", role, _ROLE_ARN, "an IAM role ARN"),
            external_id=None if external_id is None else reader.string(
                f"{path}.external_id", external_id),
            directory_id=None if directory_id is None else reader.string(
                f"{path}.directory_id", directory_id, _DIRECTORY_ID,
                "a Directory Service directory id: d- and 10 hex digits, e.g. d-906700c1a2"),
            replica_regions=tuple(
                reader.string(f"{path}.replica_regions[{n}]", region, _REGION,
                              "an AWS Region name, e.g. us-west-2")
                for n, region in enumerate(reader.sequence(f"{path}.replica_regions",
                                                           item.get("replica_regions")))),
        ))
    aliases = [i.alias for i in instances]
    for alias in aliases:
        if aliases.count(alias) > 1:
            raise reader.fail("instances", f"alias {alias!r} is used more than once")
    # One instance under two aliases would split its grants, limits and reconcile findings
    # between two names; requests and audit records must name an instance one way.
    by_arn: dict[str, str] = {}
    for instance in instances:
        if instance.arn in by_arn:
            raise reader.fail("instances", f"instance {instance.arn} is configured twice "
                                           f"(aliases {by_arn[instance.arn]!r} and "
                                           f"{instance.alias!r}); keep one entry")
        by_arn[instance.arn] = instance.alias
    check_instance_limits(reader, aliases)
    identity_center = _parse_identity_center(reader, top.get("identity_center"))
    allow_groups = reader.boolean("allow_group_targets", top.get("allow_group_targets", False))
    principals = _parse_principals(reader, top.get("principals"),
                                   identity_center=identity_center, allow_groups=allow_groups)
    raw_timings = reader.mapping("timings", top.get("timings"))
    timing_keys = tuple(Timings.__dataclass_fields__)
    reader.unknown_keys("timings", raw_timings, timing_keys)
    timings = Timings(**{
        key: reader.duration(f"timings.{key}", value) for key, value in raw_timings.items()
    })
    if timings.reconcile_interval < MIN_RECONCILE_INTERVAL:
        raise reader.fail("timings.reconcile_interval",
                          f"must be at least 1m, got {raw_timings['reconcile_interval']!r}")
    raw_alerts = reader.mapping("alerts", top.get("alerts"))
    reader.unknown_keys("alerts", raw_alerts, ("channel",))
    alert_channel = raw_alerts.get("channel")
    alerts = Alerts(channel=None if alert_channel is None else reader.string(
        "alerts.channel", alert_channel, _CHANNEL_ID, "a Slack channel id like C0ALERTS"))
    return OperatorConfig(
        instances=tuple(instances),
        principals=principals,
        principal_tag_lookup=reader.boolean("principal_tag_lookup",
                                            top.get("principal_tag_lookup", False)),
        require_managed_tag=reader.boolean("require_managed_tag",
                                           top.get("require_managed_tag", False)),
        required_permissions_boundary=None if top.get("required_permissions_boundary") is None
        else reader.string("required_permissions_boundary",
                           top["required_permissions_boundary"], _BOUNDARY_ARN,
                           "a managed policy ARN like arn:aws:iam::111122223333:policy/"
                           "connect-access-boundary (* for the account: each principal's own)"),
        router=load_router(reader.mapping("routing", top.get("routing")), source),
        timings=timings,
        audit=_audit_config(reader, reader.mapping("audit", top.get("audit"))),
        auditors=tuple(
            reader.string(f"auditors[{i}]", a, _APPROVER_ID,
                          "a Slack user id (U... or W...) or user-group id (S...)")
            for i, a in enumerate(reader.sequence("auditors", top.get("auditors")))
        ),
        iam=_iam_limits(reader, reader.mapping("iam", top.get("iam"))),
        alerts=alerts,
        identity_center=identity_center,
        allow_group_targets=allow_groups,
    )


def _iam_limits(reader: _Reader, raw: Mapping[str, Any]) -> IamLimits:
    reader.unknown_keys("iam", raw, tuple(IamLimits.__dataclass_fields__))

    def positive(key: str, minimum: float = 0.0) -> float | None:
        value = raw.get(key)
        if value is None:
            return None
        # YAML's .nan and .inf are floats too: NaN compares false with everything, so the
        # limiter would let every request through, as an infinite rate or burst does.
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value <= minimum):
            raise reader.fail(f"iam.{key}",
                              f"must be a finite number above {minimum:g}, got {value!r}")
        return float(value)

    burst = positive("burst")
    if burst is not None and burst < 1:
        raise reader.fail("iam.burst", f"must be at least 1, got {raw['burst']!r}")
    mode = raw.get("retry_mode", IamLimits.retry_mode)
    if mode not in ("standard", "adaptive"):
        raise reader.fail("iam.retry_mode", f"must be standard or adaptive, got {mode!r}")
    attempts = raw.get("max_attempts", IamLimits.max_attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 20:
        raise reader.fail("iam.max_attempts", f"must be a whole number 1-20, got {attempts!r}")
    notice = raw.get("queued_notice_after")
    return IamLimits(
        requests_per_second=positive("requests_per_second"),
        burst=burst,
        retry_mode=mode,
        max_attempts=attempts,
        queued_notice_after=IamLimits.queued_notice_after if notice is None
        else reader.duration("iam.queued_notice_after", notice),
    )


_KMS_KEY = re.compile(r"(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[\w/+=,.@-]+)"
                      r"|([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                      r"|(alias/[\w/+=,.@-]+)")
# S3's general purpose bucket naming rules: 3-63 characters of lower case, digits, dots and
# hyphens, a letter or digit at each end; plus the shapes S3 refuses or reserves, below.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def bucket_name_problem(name: str) -> str | None:
    """Why S3 would refuse `name` as a bucket name, or None. Checked at load, so a typo
    surfaces as the key's path, not as an AWS error when the first checkpoint is due."""
    if not _BUCKET.fullmatch(name):
        return ("3 to 63 lower-case letters, digits, dots or hyphens, starting and ending "
                "with a letter or digit")
    if ".." in name:
        return "no two dots in a row"
    if _IP_ADDRESS.fullmatch(name):
        return "not shaped like an IP address"
    reserved = [p for p in _BUCKET_RESERVED_PREFIXES if name.startswith(p)] + [
        s for s in _BUCKET_RESERVED_SUFFIXES if name.endswith(s)]
    if reserved:
        return f"not using S3's reserved {reserved[0]!r}"
    return None
_AUDIT_KEYS = ("kms_key_id", "signing_key_file", "anchor_bucket", "anchor_channel",
               "checkpoint_interval", "checkpoint_events", "anchor_retention",
               "previous_keys")
# A retired KMS key is named by its key ARN: that is what checkpoints record (an alias
# would follow the alias to the current key).
_KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[\w-]+")


def _previous_keys(reader: _Reader, raw: Any) -> tuple[str | Path, ...]:
    """`audit.previous_keys`: each a KMS key ARN or a readable Ed25519 public-key PEM."""
    from bot.anchors import AnchorError
    from bot.signing import Ed25519Verifier

    if not isinstance(raw, list):
        raise reader.fail("audit.previous_keys", "must be a list of KMS key ARNs and/or "
                                                 "Ed25519 public-key PEM files")
    keys: list[str | Path] = []
    for index, item in enumerate(raw):
        where = f"audit.previous_keys[{index}]"
        if not isinstance(item, str) or not item.strip():
            raise reader.fail(where, f"must be a KMS key ARN or a PEM file path, got {item!r}")
        if item.startswith("arn:"):
            if not _KMS_KEY_ARN.fullmatch(item):
                raise reader.fail(where, f"{item!r} is not a KMS key ARN "
                                         "(arn:aws:kms:REGION:ACCOUNT:key/KEY-ID; not an alias)")
            keys.append(item)
            continue
        path = Path(item)
        try:
            Ed25519Verifier.from_file(path)
        except AnchorError as exc:
            raise reader.fail(where, str(exc)) from None
        keys.append(path)
    return tuple(keys)


def _audit_config(reader: _Reader, raw: Mapping[str, Any]) -> AuditConfig:
    reader.unknown_keys("audit", raw, _AUDIT_KEYS)
    if not raw:
        return AuditConfig()
    kms_key_id = raw.get("kms_key_id")
    key_file = raw.get("signing_key_file")
    if kms_key_id is not None and key_file is not None:
        raise reader.fail("audit", "set kms_key_id or signing_key_file, not both")
    bucket = raw.get("anchor_bucket")
    channel = raw.get("anchor_channel")
    config = AuditConfig(
        kms_key_id=None if kms_key_id is None else reader.string(
            "audit.kms_key_id", kms_key_id, _KMS_KEY, "a KMS key ARN, key id or alias"),
        signing_key_file=None if key_file is None else Path(
            reader.string("audit.signing_key_file", key_file)),
        anchor_bucket=None if bucket is None else _bucket_name(reader, bucket),
        anchor_channel=None if channel is None else reader.string(
            "audit.anchor_channel", channel, _CHANNEL_ID, "a Slack channel id like C0AUDIT"),
    )
    changes: dict[str, Any] = {}
    for key in ("checkpoint_interval", "anchor_retention"):
        if key in raw:
            value = reader.duration(f"audit.{key}", raw[key])
            if value < timedelta(seconds=10):
                raise reader.fail(f"audit.{key}", "must be at least 10s")
            changes[key] = value
    if "checkpoint_events" in raw:
        events = raw["checkpoint_events"]
        if isinstance(events, bool) or not isinstance(events, int) or events < 1:
            raise reader.fail("audit.checkpoint_events",
                              f"must be a whole number >= 1, got {events!r}")
        changes["checkpoint_events"] = events
    if "previous_keys" in raw:
        changes["previous_keys"] = _previous_keys(reader, raw["previous_keys"])
    if changes:
        config = replace(config, **changes)
    if config.signer_configured and config.anchor_bucket is None and channel is None:
        raise reader.fail("audit", "a signing key is set but no anchor_bucket or "
                                   "anchor_channel: checkpoints need an S3 bucket with Object "
                                   "Lock (stronger) and/or an audit Slack channel")
    if config.previous_keys and not config.signer_configured:
        raise reader.fail("audit.previous_keys", "retired keys need a current signing key: "
                                                 "set kms_key_id or signing_key_file")
    if not config.signer_configured and (bucket is not None or channel is not None):
        raise reader.fail("audit", "anchor_bucket/anchor_channel need a signing key: set "
                                   "kms_key_id or signing_key_file")
    return config


def load_config(path: Path | str | None) -> OperatorConfig:
    """Read the operator file; None means shipped defaults only."""
    if path is None:
        return parse_config({})
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, "(file)", f"cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "(file)", f"not valid YAML: {exc}") from None
    return parse_config(raw, source)
