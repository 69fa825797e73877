"""The policy compiler: catalog entry + principal + instance + time window -> the IAM
policy (or policies) a grant attaches, checked against IAM's reference data and quotas.

Pure: no boto3, no files, no clock. Everything it needs is passed in, so the same inputs
always give the same documents (the golden tests rely on that).

What a compiled policy guarantees:
- it grants the entry's actions and those of everything it requires, nothing else;
- `connect:` actions that accept an instance resource are limited to the chosen instance
  (or, for entries that create instances, to new instances of the account and Region);
  storage-config and instance-attribute writes carry Amazon Connect's condition keys;
- other services' actions that accept ARNs are pinned to the account and Region, to
  Amazon Connect's own names or the instance's own resources (bot/scoping.py), unless the
  catalog records a `*` exception with its reason;
- no IAM write action reaches an arbitrary role, user, group or policy (see IAM_RULES);
- no action whose effect outlives the grant (bot/persistence.py) is left uncontained
  unless the catalog entry declares it in `persistent_effects`;
- every statement stops working by itself at expiry (an `aws:CurrentTime` condition);
- it fits the principal's inline quota, or is split into managed policies that each fit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, Protocol

from bot.catalog import Catalog, CatalogEntry, InstanceScope, Reasoned
from bot.durations import DurationError, check_within, format_duration
from bot.iamref import (
    GLOBAL_CONDITION_KEYS,
    ActionInfo,
    IamReference,
    ResourceRef,
    UnknownActionError,
    arn_matches_format,
)
from bot.persistence import containment, persistence_of
from bot.ports import GrantPlan, PolicyDocument, PolicyKind
from bot.scoping import InstanceResources, Placement, ScopeContext, place, sid_prefix

POLICY_VERSION = "2012-10-17"
POLICY_NAME_PREFIX = "connect-access-"
MAX_POLICY_NAME_LENGTH = 128
_POLICY_NAME = re.compile(r"[\w+=,.@-]+", re.ASCII)

# IAM's size quotas, in characters with whitespace not counted. The inline ones are the
# aggregate of all inline policies on one principal.
INLINE_QUOTAS: Mapping[str, int] = {"user": 2048, "group": 5120, "role": 10240}
MANAGED_POLICY_QUOTA = 6144
# Default IAM quota of managed policies attached to one user, group or role (adjustable
# up to 20 by a quota increase, hence a parameter).
DEFAULT_MANAGED_ATTACH_LIMIT = 10

PrincipalKind = Literal["role", "user", "group"]


# -- errors ---------------------------------------------------------------------------


class PolicyError(ValueError):
    """The policy for a grant cannot be built; the message says why and what to do."""


class PrincipalArnError(PolicyError):
    pass


class InstanceArnError(PolicyError):
    pass


class PolicyTooLargeError(PolicyError):
    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class PolicyValidationError(PolicyError):
    """A compiled document failed the check against the IAM reference data. This is a bug
    in the compiler or the catalog, never something a requester can fix."""


# -- principals and instances ---------------------------------------------------------

_PARTITIONS = ("aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b")
# ASCII only: IAM names and account ids never hold other scripts' letters or digits.
_PRINCIPAL_ARN = re.compile(r"arn:(?P<partition>[a-z-]+):iam::(?P<account>[0-9]{12}):(?P<rest>.+)")
_NAME = re.compile(r"[\w+=,.@-]+", re.ASCII)
_PATH = re.compile(r"/(?:[\x21-\x7e]+/)?")
_NAME_LIMITS: Mapping[str, int] = {"role": 64, "user": 64, "group": 128}
_INSTANCE_ARN = re.compile(
    r"arn:(?P<partition>[a-z-]+):connect:(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+):"
    r"(?P<account>[0-9]{12}):instance/(?P<id>[A-Za-z0-9-]{1,100})"
)


@dataclass(frozen=True)
class Principal:
    arn: str
    partition: str
    account_id: str
    kind: PrincipalKind
    name: str
    path: str  # "/" or "/a/b/"

    @property
    def inline_quota(self) -> int:
        return INLINE_QUOTAS[self.kind]

    @property
    def name_param(self) -> str:
        """The parameter IAM APIs use for this principal: RoleName, UserName, GroupName."""
        return f"{self.kind.capitalize()}Name"


def parse_principal(arn: str) -> Principal:
    """An IAM role (with any path), user or group ARN; anything else is refused with a
    message that says which ARN to use instead."""
    text = arn.strip() if isinstance(arn, str) else ""
    if text.startswith("arn:") and ":sts::" in text and ":assumed-role/" in text:
        account = text.split(":")[4]
        role = text.split(":assumed-role/", 1)[1].split("/", 1)[0]
        raise PrincipalArnError(
            f"{arn!r} is a temporary session, not a principal a policy can be attached to; "
            f"use the role itself, e.g. arn:aws:iam::{account}:role/{role} "
            "(with its path, if it has one)."
        )
    match = _PRINCIPAL_ARN.fullmatch(text)
    if match is None or match["partition"] not in _PARTITIONS:
        raise PrincipalArnError(
            f"{arn!r} is not an IAM principal ARN; expected a role, user or group such as "
            "arn:aws:iam::111122223333:role/NAME."
        )
    kind, _, rest = match["rest"].partition("/")
    if kind not in ("role", "user", "group") or not rest:
        raise PrincipalArnError(
            f"{arn!r} names {kind!r}; grants go to IAM roles, users or groups only."
        )
    slash = rest.rfind("/")
    path, name = ("/" + rest[: slash + 1], rest[slash + 1 :]) if slash >= 0 else ("/", rest)
    if not _NAME.fullmatch(name) or len(name) > _NAME_LIMITS[kind] or not _PATH.fullmatch(path):
        raise PrincipalArnError(
            f"{arn!r} does not hold a valid IAM {kind} name and path "
            f"(names: letters, digits and +=,.@_- up to {_NAME_LIMITS[kind]} characters)."
        )
    if path.startswith("/aws-service-role/"):
        raise PrincipalArnError(
            f"{arn!r} is a service-linked role, which only its AWS service may use and "
            "whose permissions cannot be changed; name the person's own role or user."
        )
    if path.startswith("/aws-reserved/"):
        raise PrincipalArnError(
            f"{arn!r} is a role that IAM Identity Center manages; its policies can only be "
            "changed through permission sets. Name a role or user that IAM manages directly."
        )
    return Principal(text, match["partition"], match["account"], kind, name, path)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Instance:
    arn: str
    partition: str
    region: str
    account_id: str
    instance_id: str


def parse_instance_arn(arn: str) -> Instance:
    text = arn.strip() if isinstance(arn, str) else ""
    match = _INSTANCE_ARN.fullmatch(text)
    if match is None or match["partition"] not in _PARTITIONS:
        raise InstanceArnError(
            f"{arn!r} is not an Amazon Connect instance ARN; expected "
            "arn:aws:connect:REGION:ACCOUNT:instance/INSTANCE-ID "
            "(shown on the instance's overview page)."
        )
    return Instance(text, match["partition"], match["region"], match["account"], match["id"])


# -- escalation rules for IAM actions -------------------------------------------------


@dataclass(frozen=True)
class ServiceLinkedRole:
    """A service-linked role a console feature creates or edits, and the action service
    prefix whose presence in an entry means the entry touches that feature."""

    trigger: str  # an action prefix, e.g. "connect-campaigns"
    service_name: str  # the value of iam:AWSServiceName
    role_prefix: str

    def arn(self, principal: Principal, exact: str | None = None) -> str:
        # IAM refuses CreateRole under /aws-service-role/, so this path holds only roles
        # that AWS services create, which only those services can assume: write access to
        # them cannot be turned into access for the requester. `exact`: the one role of
        # this service the grant may reach (the instance's own, from DescribeInstance).
        if exact is not None:
            return exact
        return (
            f"arn:{principal.partition}:iam::{principal.account_id}:role/aws-service-role/"
            f"{self.service_name}/{self.role_prefix}*"
        )


# Which service-linked roles an entry may create or edit, chosen by the services its
# actions touch. Amazon Connect's own role (one per instance, AWSServiceRoleForAmazonConnect_
# <id>) is always in: the console adds each feature's permissions (recording buckets,
# streams, Lex, Lambda, Cases, Voice ID, Amazon Q) to it with iam:PutRolePolicy, which is
# the AWS page's AttachAnyPolicyToAmazonConnectRole statement. The others are the feature
# roles the console enables alongside Connect: outbound campaigns
# (AWSServiceRoleForConnectCampaigns), Customer Profiles (AWSServiceRoleForProfile_<id>)
# and, for Connect email, Amazon SES (AWSServiceRoleForAmazonSES).
SERVICE_LINKED_ROLES: tuple[ServiceLinkedRole, ...] = (
    ServiceLinkedRole("connect", "connect.amazonaws.com", "AWSServiceRoleForAmazonConnect"),
    ServiceLinkedRole(
        "connect-campaigns", "connect-campaigns.amazonaws.com", "AWSServiceRoleForConnectCampaigns"
    ),
    ServiceLinkedRole("profile", "profile.amazonaws.com", "AWSServiceRoleForProfile"),
    ServiceLinkedRole("ses", "ses.amazonaws.com", "AWSServiceRoleForAmazonSES"),
)

# iam:PassRole only to the service the console passes a role to: Connect email configures
# Amazon SES receipt rules, which take a role for their S3/SNS actions.
PASS_ROLE_SERVICES: tuple[str, ...] = ("ses.amazonaws.com",)

# How each IAM write action is confined. An IAM write action with no rule here makes the
# compiler refuse the entry (a catalog change must come with a rule, never with "*").
#   slr-writes   PutRolePolicy/AttachRolePolicy/DeleteRolePolicy: only the entry's
#                service-linked roles (above).
#   slr-create   CreateServiceLinkedRole: those roles, and iam:AWSServiceName must be one of
#                their services.
#   slr-delete   DeleteServiceLinkedRole: those roles. The action accepts no
#                iam:AWSServiceName key (a StringEquals on a key an action does not supply
#                never matches, which would silently deny it); the service name is in the
#                role path, so the resource carries the same restriction.
#   service-role CreateRole/CreatePolicy (Edit customer profiles, Edit email): only under
#                the /service-role/ path. Nothing in any entry can attach or put a policy on
#                a role there, so a role created this way holds no permissions.
#   pass-role    PassRole: /service-role/ roles, and only to PASS_ROLE_SERVICES.
IamRule = Literal["slr-writes", "slr-create", "slr-delete", "service-role", "pass-role"]
IAM_RULES: Mapping[str, IamRule] = {
    "iam:PutRolePolicy": "slr-writes",
    "iam:AttachRolePolicy": "slr-writes",
    "iam:DeleteRolePolicy": "slr-writes",
    "iam:CreateServiceLinkedRole": "slr-create",
    "iam:DeleteServiceLinkedRole": "slr-delete",
    "iam:CreateRole": "service-role",
    "iam:CreatePolicy": "service-role",
    "iam:PassRole": "pass-role",
}

# kms:CreateGrant, like every other action whose effect outlives the grant, is contained
# by bot/scoping.py's ACTION_CONDITIONS (kms:GrantIsForAWSResource) and checked by
# bot/persistence.py.


def service_linked_roles_for(actions: Iterable[str]) -> tuple[ServiceLinkedRole, ...]:
    prefixes = {a.split(":", 1)[0] for a in actions}
    return tuple(r for r in SERVICE_LINKED_ROLES if r.trigger == "connect" or r.trigger in prefixes)


@dataclass(frozen=True)
class GrantScope:
    """What the catalog and the grant-time look-ups add to the actions: where `connect:`
    actions point, the reviewed `*` exceptions, Amazon Connect condition-key values, the
    declared persistent effects and the instance's own resources."""

    instance_scope: InstanceScope = "chosen"
    star_exceptions: frozenset[str] = frozenset()
    storage_resource_types: tuple[str, ...] = ()
    instance_attributes: tuple[str, ...] = ()
    declared_persistent: frozenset[str] = frozenset()
    resources: InstanceResources | None = None

    @classmethod
    def for_entry(cls, catalog: Catalog, entry_id: str,
                  resources: InstanceResources | None = None) -> GrantScope:
        entry = catalog.get(entry_id)
        return cls(
            instance_scope=entry.instance_scope,
            star_exceptions=frozenset(e.action for e in catalog.star_exceptions(entry_id)),
            storage_resource_types=catalog.condition_values(entry_id, "storage_resource_types"),
            instance_attributes=catalog.condition_values(entry_id, "instance_attributes"),
            declared_persistent=frozenset(
                e.action for e in catalog.declared_persistent_effects(entry_id)),
            resources=resources,
        )


# Statements for Amazon Connect's own condition keys: (Sid, actions, key, GrantScope field).
CONNECT_KEYED: tuple[tuple[str, frozenset[str], str, str], ...] = (
    ("ConnectStorageConfig", frozenset({
        "connect:AssociateInstanceStorageConfig", "connect:UpdateInstanceStorageConfig",
        "connect:DisassociateInstanceStorageConfig"}),
     "connect:StorageResourceType", "storage_resource_types"),
    ("ConnectInstanceAttributes", frozenset({"connect:UpdateInstanceAttribute"}),
     "connect:AttributeType", "instance_attributes"),
)


# -- documents ------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: Mapping[str, Mapping[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": list(self.actions),
            "Resource": self.resources[0] if len(self.resources) == 1 else list(self.resources),
            "Condition": {op: dict(keys) for op, keys in self.condition.items()},
        }


def document_for(statements: Sequence[Statement]) -> dict[str, Any]:
    return {"Version": POLICY_VERSION, "Statement": [s.to_json() for s in statements]}


def policy_size(document: Mapping[str, Any]) -> int:
    """Characters IAM counts against its quotas: the JSON with all whitespace removed."""
    return len("".join(json.dumps(document, separators=(",", ":")).split()))


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_box(start: datetime, expires_at: datetime) -> dict[str, dict[str, Any]]:
    return {
        "DateGreaterThan": {"aws:CurrentTime": iso_utc(start)},
        "DateLessThan": {"aws:CurrentTime": iso_utc(expires_at)},
    }


def merge_conditions(
    *conditions: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Combine condition blocks operator by operator (all must hold, as IAM evaluates
    them). The same key under the same operator with different values is a conflict, not
    something to overwrite silently."""
    merged: dict[str, dict[str, Any]] = {}
    for condition in conditions:
        for operator, keys in condition.items():
            target = merged.setdefault(operator, {})
            for key, value in keys.items():
                if key in target and target[key] != value:
                    raise PolicyError(
                        f"conflicting conditions: {operator} {key} is both "
                        f"{target[key]!r} and {value!r}"
                    )
                target[key] = value
    return {op: merged[op] for op in sorted(merged)}


# -- the compiled result ---------------------------------------------------------------


@dataclass(frozen=True)
class CompiledPolicy:
    entry_id: str
    grant_id: str
    principal_arn: str
    principal_kind: PrincipalKind
    instance_arn: str | None
    kind: PolicyKind
    policies: tuple[PolicyDocument, ...]
    sizes: tuple[int, ...]
    quota: int  # what each document's size was compared with
    inline_quota: int
    existing_inline_chars: int
    starts_at: datetime
    expires_at: datetime
    notes: tuple[str, ...] = field(default=())
    # Declared effects that outlive the grant (catalog `persistent_effects`), for approvers.
    persistent_effects: tuple[Reasoned, ...] = field(default=())
    # Exact ARNs of the instance's own resources the grant was scoped to (looked up).
    own_resources: tuple[str, ...] = field(default=())

    @property
    def policy_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.policies)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def duration(self) -> timedelta:
        return self.expires_at - self.starts_at

    def to_plan(self) -> GrantPlan:
        return GrantPlan(
            grant_id=self.grant_id,
            principal_arn=self.principal_arn,
            kind=self.kind,
            policies=self.policies,
            expires_at=self.expires_at,
            instance_arn=self.instance_arn,
        )

    def to_json(self) -> dict[str, Any]:
        """The `connect-access policy --json` shape: entry, policy_name, document, size,
        quota, expires_at; with several managed policies, `policies` lists them all and
        policy_name/document are the first."""
        first = self.policies[0]
        return {
            "entry": self.entry_id,
            "policy_name": first.name,
            "document": first.document,
            "size": self.size,
            "quota": self.quota,
            "expires_at": iso_utc(self.expires_at),
            "starts_at": iso_utc(self.starts_at),
            "duration": format_duration(self.duration),
            "kind": self.kind,
            "principal": self.principal_arn,
            "instance": self.instance_arn,
            "inline_quota": {
                "limit": self.inline_quota,
                "existing": self.existing_inline_chars,
                "available": max(0, self.inline_quota - self.existing_inline_chars),
            },
            "policies": [
                {"name": p.name, "document": p.document, "size": s}
                for p, s in zip(self.policies, self.sizes, strict=True)
            ],
            "notes": list(self.notes),
            "persistent_effects": [
                {"action": e.action, "reason": e.reason} for e in self.persistent_effects
            ],
        }


# -- compilation ----------------------------------------------------------------------


def policy_name(grant_id: str, part: int | None = None) -> str:
    name = f"{POLICY_NAME_PREFIX}{grant_id}" + (f"-{part}" if part is not None else "")
    if not grant_id or not _POLICY_NAME.fullmatch(name) or len(name) > MAX_POLICY_NAME_LENGTH:
        raise PolicyError(
            f"grant id {grant_id!r} cannot make an IAM policy name: use letters, digits and "
            f"+=,.@_- so that {name[:40]!r}... stays within {MAX_POLICY_NAME_LENGTH} characters."
        )
    return name


def _accepts_instance(resources: Iterable[ResourceRef]) -> bool:
    """Whether an action takes the instance (or something inside it) as its resource."""
    return any(":instance/${InstanceId}" in fmt for ref in resources for fmt in ref.arn_formats)


def replica_regions_of(scope: GrantScope, instance: Instance | None) -> tuple[str, ...]:
    """The allowed replica Regions of a new-replica grant on a chosen instance (operator
    config `instances[].replica_regions`, through InstanceResources); () when unknown."""
    if scope.instance_scope != "new-replica" or instance is None or scope.resources is None:
        return ()
    return scope.resources.replica_regions


def _connect_placement(
    info: ActionInfo, principal: Principal, instance: Instance | None, scope: GrantScope
) -> tuple[str, tuple[str, ...]]:
    """Sid and resources for one `connect:` action."""
    if scope.instance_scope != "chosen" and _accepts_instance(info.resources):
        # The instance the holder creates gets a new id (a replica also another Region):
        # pinning to the chosen instance would deny the wizard's follow-up calls.
        region = instance.region if instance and scope.instance_scope == "new-instance" else "*"
        regions = [region]
        replicas = replica_regions_of(scope, instance)
        if replicas:
            # The operator named where replicas of this instance may go: those Regions,
            # plus the instance's own (ReplicateInstance acts on the source instance).
            regions = sorted({instance.region, *replicas}) if instance else regions
        return "ConnectNewInstances", tuple(
            f"arn:{principal.partition}:connect:{r}:{principal.account_id}:instance/*"
            for r in regions)
    if not _accepts_instance(info.resources) and any(r.arn_formats for r in info.resources):
        # Account-level Connect resources (e.g. phone-number/* for ListPhoneNumbersV2):
        # pinned to the account and the instance's Region like other services' actions.
        placement = place(info, scope_context((info.action,), principal, instance, scope), ())
        return "ConnectInAccount", placement.resources
    if instance is None:
        # Scoped only when a concrete instance is chosen; otherwise every connect action
        # goes to Resource "*" and the notes say so.
        return "ConnectAllInstances", ("*",)
    if _accepts_instance(info.resources):
        return "ConnectInstance", (instance.arn, f"{instance.arn}/*")
    return "ConnectAccountWide", ("*",)


def scope_context(
    actions: Sequence[str], principal: Principal, instance: Instance | None, scope: GrantScope
) -> ScopeContext:
    return ScopeContext(
        partition=principal.partition,
        account=principal.account_id,
        region=instance.region if instance is not None else "*",
        services=frozenset(a.split(":", 1)[0] for a in actions),
        resources=scope.resources if instance is not None else None,
        on_chosen_instance=scope.instance_scope == "chosen",
        storage_entry=bool(scope.storage_resource_types),
    )


def build_statements(
    actions: Sequence[str],
    principal: Principal,
    instance: Instance | None,
    window: Mapping[str, Mapping[str, Any]],
    iam: IamReference,
    scope: GrantScope | None = None,
) -> list[Statement]:
    """Group the actions into statements, each scoped and time-boxed. Order and Sids are
    fixed, so the same inputs give the same document."""
    scope = scope or GrantScope()
    ctx = scope_context(actions, principal, instance, scope)
    infos: list[ActionInfo] = []
    for action in actions:
        try:
            infos.append(iam.info(action))
        except UnknownActionError as exc:
            raise PolicyError(f"the catalog grants {exc}; fix the catalog entry") from None

    connect: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    # Per service, actions with the same label and conditions share one statement over the
    # union of their resources: an action never matches a resource of another type, so the
    # union grants nothing more, and the policy stays within the quotas.
    supporting: dict[tuple[str, str, str], tuple[set[str], Placement, list[str]]] = {}
    iam_by_rule: dict[IamRule, list[str]] = {}
    for info in infos:
        action = info.action
        if info.service == "connect":
            sid, resources = _connect_placement(info, principal, instance, scope)
            for keyed_sid, keyed_actions, _key, _field in CONNECT_KEYED:
                if action in keyed_actions:
                    sid = keyed_sid
            connect.setdefault((sid, resources), []).append(action)
        elif info.service == "iam" and info.is_write:
            rule = IAM_RULES.get(action)
            if rule is None:
                raise PolicyError(
                    f"{action} is an IAM write action with no scoping rule in bot/policy.py "
                    "IAM_RULES; refusing to grant it on Resource \"*\"."
                )
            iam_by_rule.setdefault(rule, []).append(action)
        else:
            placement = place(info, ctx, infos, scope.star_exceptions)
            star = placement.resources == ("*",)
            group = (info.service, "*" if star else placement.label,
                     json.dumps(placement.condition, sort_keys=True))
            union, _first, members = supporting.setdefault(group, (set(), placement, []))
            union.update(placement.resources)
            members.append(action)

    statements: list[Statement] = []

    def add(sid: str, acts: list[str], resources: Sequence[str],
            extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        if acts:
            condition = merge_conditions(window, extra or {})
            statements.append(Statement(sid, tuple(sorted(acts)), tuple(resources), condition))

    connect_order = ("ConnectInstance", "ConnectNewInstances", "ConnectStorageConfig",
                     "ConnectInstanceAttributes", "ConnectInAccount", "ConnectAccountWide",
                     "ConnectAllInstances")
    keyed: dict[str, tuple[str, tuple[str, ...]]] = {
        k_sid: (key_name, getattr(scope, field_name))
        for k_sid, _a, key_name, field_name in CONNECT_KEYED
    }
    for (sid, connect_resources), acts in sorted(
        connect.items(), key=lambda item: connect_order.index(item[0][0])
    ):
        extra: dict[str, dict[str, Any]] = {}
        if sid in keyed:
            key_name, values = keyed[sid]
            if values:
                extra = {"StringEquals": {key_name: list(values)}}
        add(sid, acts, connect_resources, extra)

    # Other services: one statement per service and placement, scoped ones first (by
    # service), then the `*` ones together.
    used_sids: set[str] = set()
    star_actions: list[str] = []
    for (service, label, _condition), (union, placement, acts) in sorted(
        supporting.items(), key=lambda item: item[0]
    ):
        if union == {"*"} and not placement.condition:
            star_actions.extend(acts)
            continue
        base = sid_prefix(service) + (label if label != "*" else "AnyResource")
        sid, n = base, 1
        while sid in used_sids:
            n += 1
            sid = f"{base}{n}"
        used_sids.add(sid)
        add(sid, acts, sorted(union), placement.condition)
    add("SupportingServices", star_actions, ("*",))

    roles = service_linked_roles_for(actions)
    own_role = (scope.resources.service_role_arn
                if scope.resources is not None and instance is not None
                and scope.instance_scope == "chosen" else None)
    role_arns = tuple(r.arn(principal, own_role if r.trigger == "connect" else None)
                      for r in roles)
    service_role = f"arn:{principal.partition}:iam::{principal.account_id}:role/service-role/*"
    service_policy = f"arn:{principal.partition}:iam::{principal.account_id}:policy/service-role/*"
    add("ServiceLinkedRolePolicies", iam_by_rule.get("slr-writes", []), role_arns)
    add("CreateServiceLinkedRoles", iam_by_rule.get("slr-create", []), role_arns,
        {"StringEquals": {"iam:AWSServiceName": [r.service_name for r in roles]}})
    add("DeleteServiceLinkedRoles", iam_by_rule.get("slr-delete", []), role_arns)
    service_role_actions = iam_by_rule.get("service-role", [])
    add("CreateServiceRoles", [a for a in service_role_actions if a == "iam:CreateRole"],
        (service_role,))
    add("CreateServiceRolePolicies", [a for a in service_role_actions if a == "iam:CreatePolicy"],
        (service_policy,))
    add("PassServiceRoles", iam_by_rule.get("pass-role", []), (service_role,),
        {"StringEquals": {"iam:PassedToService": list(PASS_ROLE_SERVICES)}})
    return statements


def uncontained_persistent_actions(
    statements: Sequence[Statement], iam: IamReference, own_resources: Iterable[str] = ()
) -> dict[str, str]:
    """Persistent-class actions (bot/persistence.py) that no statement contains: action ->
    why it persists. A grant may carry them only when its catalog entry declares them."""
    own = tuple(own_resources)
    found: dict[str, str] = {}
    for statement in statements:
        for action in statement.actions:
            info = iam.info(action)
            reviewed = persistence_of(info)
            if reviewed is not None and containment(
                info, statement.resources, statement.condition, own
            ) is None:
                found[action] = reviewed.reason
    return found


def _split_to_fit(statement: Statement, limit: int) -> list[Statement]:
    """A statement too large for one managed policy, cut into the fewest equal parts
    (Sids <Sid>1, <Sid>2, ...) that each fit."""
    if policy_size(document_for([statement])) <= limit:
        return [statement]
    actions = statement.actions
    for parts in range(2, len(actions) + 1):
        step = -(-len(actions) // parts)
        chunks = [actions[i : i + step] for i in range(0, len(actions), step)]
        pieces = [
            Statement(f"{statement.sid}{n}", chunk, statement.resources, statement.condition)
            for n, chunk in enumerate(chunks, start=1)
        ]
        if all(policy_size(document_for([p])) <= limit for p in pieces):
            return pieces
    raise PolicyTooLargeError(
        f"statement {statement.sid} cannot fit a managed policy of {limit} characters even "
        "with one action per policy",
        needed=policy_size(document_for([statement])),
        available=limit,
    )


def pack_statements(statements: Sequence[Statement], limit: int) -> list[list[Statement]]:
    """First-fit, in statement order: deterministic, and few policies for our sizes."""
    bins: list[list[Statement]] = []
    for statement in statements:
        for piece in _split_to_fit(statement, limit):
            for existing in bins:
                if policy_size(document_for([*existing, piece])) <= limit:
                    existing.append(piece)
                    break
            else:
                bins.append([piece])
    return bins


def compile_policy(
    catalog: Catalog,
    entry_id: str,
    principal_arn: str | Principal,
    *,
    grant_id: str,
    start: datetime,
    duration: timedelta,
    max_duration: timedelta | None,
    iam: IamReference,
    instance_arn: str | None = None,
    existing_inline_chars: int = 0,
    existing_managed_policies: int = 0,
    managed_attach_limit: int = DEFAULT_MANAGED_ATTACH_LIMIT,
    extra_condition: Mapping[str, Mapping[str, Any]] | None = None,
    instance_resources: InstanceResources | None = None,
) -> CompiledPolicy:
    """Build and validate the policy for one grant.

    `instance_resources`: what the bot looked up about the instance at grant time (its
    service-linked role, directory, storage buckets); they narrow the scope further.

    `max_duration` is the tier's maximum (from routing config); None skips that check,
    for re-compiling an active grant whose extension was approved separately.
    Raises PolicyError (or DurationError) with a message for the person asking.
    """
    try:
        entry: CatalogEntry = catalog.get(entry_id)
    except KeyError:
        raise PolicyError(
            f"there is no catalog entry {entry_id!r}; see `connect-access catalog list`"
        ) from None
    if start.tzinfo is None:
        raise PolicyError("the start time must be timezone-aware (UTC)")
    if existing_inline_chars < 0:
        raise PolicyError("existing inline policy size cannot be negative")
    if duration <= timedelta():
        raise DurationError("The duration must be positive, e.g. 30m or 4h.")
    if max_duration is not None:
        check_within(duration, max_duration, entry.tier)
    principal = (principal_arn if isinstance(principal_arn, Principal)
                 else parse_principal(principal_arn))
    instance = parse_instance_arn(instance_arn) if instance_arn is not None else None
    if instance is not None and (
        instance.account_id != principal.account_id or instance.partition != principal.partition
    ):
        raise InstanceArnError(
            f"the instance is in account {instance.account_id} ({instance.partition}) but "
            f"the principal is in {principal.account_id} ({principal.partition}); a policy "
            "on a principal only grants access in its own account. Name a principal in the "
            "instance's account."
        )
    grant_name = policy_name(grant_id)

    # Whole seconds: IAM compares aws:CurrentTime to the second, and flooring the expiry
    # keeps the policy from outliving the scheduled revoke.
    starts_at = start.astimezone(UTC).replace(microsecond=0)
    expires_at = (start.astimezone(UTC) + duration).replace(microsecond=0)
    # extra_condition (bot.targets: a shared role's aws:userid) joins the time box on
    # every statement, so sizes and packing below already count it.
    window = merge_conditions(time_box(starts_at, expires_at), extra_condition or {})

    if instance_resources is not None and (
        instance is None or instance_resources.instance_arn != instance.arn
    ):
        raise PolicyError("the looked-up instance resources belong to another instance")
    actions = catalog.granted_actions(entry.id)
    scope = GrantScope.for_entry(catalog, entry.id, instance_resources)
    statements = build_statements(actions, principal, instance, window, iam, scope)
    own_resources = (
        instance_resources.own_arns(principal.partition, instance.region, principal.account_id)
        if instance_resources is not None and instance is not None else ()
    )
    uncontained = uncontained_persistent_actions(statements, iam, own_resources)
    undeclared = sorted(set(uncontained) - scope.declared_persistent)
    if undeclared:
        raise PolicyError(
            f"{entry.id}: " + "; ".join(f"{a} {uncontained[a]}" for a in undeclared)
            + ". Scope it to Amazon Connect's own resources or condition it (bot/scoping.py), "
            "or declare it under the entry's persistent_effects with a reason."
        )
    notes: list[str] = []
    if instance is None and entry.instance_scope == "chosen":
        notes.append(
            'no --instance given: connect actions use Resource "*" (every instance in '
            f"account {principal.account_id}); name an instance to scope them."
        )
    if entry.instance_scope != "chosen":
        replicas = replica_regions_of(scope, instance)
        if instance is not None and replicas:
            where = (f" in {', '.join(sorted({instance.region, *replicas}))} (the instance's "
                     "Region and its allowed replica Regions)")
        elif entry.instance_scope == "new-replica" or instance is None:
            where = " in any Region (a replica lives in another Region)"
        else:
            where = f" in {instance.region}"
        notes.append("connect actions on instances point at new instances of account "
                     f"{principal.account_id}{where}, not at an existing one.")
    roles = service_linked_roles_for(actions)
    if any(a in IAM_RULES for a in actions):
        notes.append(
            "IAM write actions are limited to the service-linked roles of "
            + ", ".join(r.service_name for r in roles)
            + (" and the /service-role/ path" if {"iam:CreateRole", "iam:CreatePolicy",
                                                  "iam:PassRole"} & set(actions) else "")
            + "."
        )

    inline_document = document_for(statements)
    inline_size = policy_size(inline_document)
    # Never below zero: an over-full principal (or a mistyped figure) must read as
    # "nothing left", not as a negative number of characters.
    available = max(0, principal.inline_quota - existing_inline_chars)
    if inline_size <= available:
        policies: tuple[PolicyDocument, ...] = (PolicyDocument(grant_name, inline_document),)
        sizes: tuple[int, ...] = (inline_size,)
        kind: PolicyKind = "inline"
        quota = available
    else:
        bins = pack_statements(statements, MANAGED_POLICY_QUOTA)
        slots = managed_attach_limit - existing_managed_policies
        if len(bins) > slots:
            raise PolicyTooLargeError(
                f"{entry.name!r} needs {inline_size} characters: more than the {available} "
                f"left of the {principal.kind}'s {principal.inline_quota}-character inline "
                f"quota ({existing_inline_chars} used by other inline policies), and "
                f"{len(bins)} managed policies of up to {MANAGED_POLICY_QUOTA} characters, "
                f"but only {max(slots, 0)} of {managed_attach_limit} managed-policy slots are "
                "free. Remove other policies from the principal, or grant to a role.",
                needed=inline_size,
                available=available,
            )
        names = (
            [grant_name]
            if len(bins) == 1
            else [policy_name(grant_id, n) for n in range(1, len(bins) + 1)]
        )
        documents = [document_for(b) for b in bins]
        policies = tuple(PolicyDocument(n, d) for n, d in zip(names, documents, strict=True))
        sizes = tuple(policy_size(d) for d in documents)
        kind = "managed"
        quota = MANAGED_POLICY_QUOTA
        notes.append(
            f"inline does not fit ({inline_size} characters, {available} of the "
            f"{principal.kind}'s {principal.inline_quota} left): using {len(bins)} managed "
            f"polic{'y' if len(bins) == 1 else 'ies'} of up to {MANAGED_POLICY_QUOTA} each."
        )

    for policy, size in zip(policies, sizes, strict=True):
        validate_document(policy.document, iam, starts_at=starts_at, expires_at=expires_at)
        if size > quota:  # cannot happen by construction; checked so it can never slip out
            raise PolicyValidationError(f"{policy.name} is {size} characters, over {quota}")
    return CompiledPolicy(
        entry_id=entry.id,
        grant_id=grant_id,
        principal_arn=principal.arn,
        principal_kind=principal.kind,
        instance_arn=instance.arn if instance else None,
        kind=kind,
        policies=policies,
        sizes=sizes,
        quota=quota,
        inline_quota=principal.inline_quota,
        existing_inline_chars=existing_inline_chars,
        starts_at=starts_at,
        expires_at=expires_at,
        notes=tuple(notes),
        persistent_effects=catalog.declared_persistent_effects(entry.id),
        own_resources=own_resources,
    )


# AWS managed policies that explicitly deny actions an entry grants: an explicit deny
# beats any allow, so granting those actions to a principal that carries the policy does
# nothing. AmazonConnectReadOnlyAccess denies connect:AdminGetEmergencyAccessToken.
EXPLICIT_DENIES: Mapping[str, frozenset[str]] = {
    "AmazonConnectReadOnlyAccess": frozenset({"connect:AdminGetEmergencyAccessToken"}),
}


class ExplicitDenyError(PolicyError):
    """The principal carries a managed policy that denies what the grant is for."""


def check_explicit_denies(
    entry: CatalogEntry, actions: Iterable[str], principal_arn: str,
    attached_policy_arns: Iterable[str],
) -> None:
    """Refuse a grant whose entry's own actions a policy on the principal denies outright,
    with a message that says so (instead of attaching a policy that does nothing)."""
    granted = set(actions)
    for arn in attached_policy_arns:
        # AWS managed policies live at arn:PARTITION:iam::aws:policy/NAME.
        if ":iam::aws:policy/" not in arn:
            continue
        name = arn.rsplit("/", 1)[-1]
        denied = sorted(EXPLICIT_DENIES.get(name, frozenset()) & granted & set(entry.actions))
        if denied:
            raise ExplicitDenyError(
                f"{principal_arn} carries the AWS managed policy {name}, which explicitly "
                f"denies {', '.join(denied)}: this grant of {entry.name!r} would do nothing. "
                f"Detach {name} from the principal (or use another principal), then ask again."
            )


VALIDATION_PRINCIPAL = "arn:aws:iam::111122223333:role/catalog-validate"
VALIDATION_INSTANCE = (
    "arn:aws:connect:us-east-1:111122223333:instance/00000000-0000-0000-0000-000000000000"
)


def check_catalog_compiles(catalog: Catalog, iam: IamReference) -> list[tuple[str, str]]:
    """Compile every entry (with and without an instance) and return (entry id, fault) for
    each that the compiler refuses: an uncontained, undeclared persistent action, an IAM
    write without a rule, a document that fails validation."""
    faults: list[tuple[str, str]] = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for entry in catalog:
        for instance in (VALIDATION_INSTANCE, None):
            try:
                compile_policy(catalog, entry.id, VALIDATION_PRINCIPAL, grant_id="validate",
                               start=start, duration=timedelta(hours=1), max_duration=None,
                               iam=iam, instance_arn=instance)
            except PolicyError as exc:
                faults.append((entry.id, str(exc)))
                break
    return faults


# -- validation -----------------------------------------------------------------------

_SID = re.compile(r"[A-Za-z0-9]+")


def _key_matches(template: str, key: str) -> bool:
    pattern = re.sub(r"\\\$\\\{[^}]*\\\}", ".+", re.escape(template))
    return re.fullmatch(pattern, key, flags=re.IGNORECASE) is not None


# Validation runs on every compile; these answers depend only on the reference data, so
# they are cached per process (it keeps a compile well under the 5 ms p99 target).
@lru_cache(maxsize=8192)
def _condition_key_supported(info: ActionInfo, key: str) -> bool:
    return any(_key_matches(t, key) for t in GLOBAL_CONDITION_KEYS) or any(
        _key_matches(t, key) for t in info.condition_keys
    )


@lru_cache(maxsize=8192)
def _resource_accepted(info: ActionInfo, resource: str) -> bool:
    if resource == "*":
        return True
    return any(arn_matches_format(resource, f) for ref in info.resources for f in ref.arn_formats)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def is_escalation_safe_resource(action: str, resource: str) -> bool:
    """Where an IAM write action may point: a service-linked role path, or (for the
    service-role rules) the /service-role/ path. Never "*", never any other ARN."""
    rule = IAM_RULES.get(action)
    if rule in ("slr-writes", "slr-create", "slr-delete"):
        return any(
            re.fullmatch(
                rf"arn:[a-z-]+:iam::[0-9]{{12}}:role/aws-service-role/{re.escape(r.service_name)}/"
                rf"{re.escape(r.role_prefix)}(?:\*|[\w+=,.@-]*)",
                resource,
            )
            for r in SERVICE_LINKED_ROLES
        )
    if rule in ("service-role", "pass-role"):
        kind = "policy" if action == "iam:CreatePolicy" else "role"
        pattern = rf"arn:[a-z-]+:iam::[0-9]{{12}}:{kind}/service-role/\*"
        return re.fullmatch(pattern, resource) is not None
    return False


def validate_document(
    document: Mapping[str, Any],
    iam: IamReference,
    *,
    starts_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> None:
    """Check a document against IAM's reference data and this project's rules; raise
    PolicyValidationError naming the first fault."""
    def fault(message: str) -> PolicyValidationError:
        return PolicyValidationError(f"compiled policy is invalid: {message}")

    if document.get("Version") != POLICY_VERSION:
        raise fault(f"Version must be {POLICY_VERSION}")
    statements = document.get("Statement")
    if not isinstance(statements, list) or not statements:
        raise fault("no statements")
    sids: set[str] = set()
    for statement in statements:
        sid = statement.get("Sid", "")
        if not isinstance(sid, str) or not _SID.fullmatch(sid) or sid in sids:
            raise fault(f"Sid {sid!r} is missing, not alphanumeric or repeated")
        sids.add(sid)
        if statement.get("Effect") != "Allow":
            raise fault(f"{sid}: Effect must be Allow")
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        condition = statement.get("Condition") or {}
        if not actions or not resources:
            raise fault(f"{sid}: needs at least one action and one resource")
        window = (condition.get("DateGreaterThan", {}).get("aws:CurrentTime"),
                  condition.get("DateLessThan", {}).get("aws:CurrentTime"))
        if None in window:
            raise fault(f"{sid}: lacks the aws:CurrentTime time box")
        if starts_at is not None and expires_at is not None and window != (
            iso_utc(starts_at), iso_utc(expires_at)
        ):
            raise fault(f"{sid}: time box {window} is not the grant's window")
        keys = [key for op in condition.values() for key in op]
        for action in actions:
            try:
                info = iam.info(action)
            except UnknownActionError as exc:
                raise fault(f"{sid}: {exc}") from None
            # Each action must accept at least one of the statement's resources (statements
            # may hold several resource types of one service), and each resource must be
            # accepted by at least one of its actions: nothing in a statement is dead.
            if not any(_resource_accepted(info, r) for r in resources):
                raise fault(f"{sid}: {action} accepts none of the resources {resources}")
            for resource in resources:
                if info.service == "iam" and info.is_write and not is_escalation_safe_resource(
                    action, resource
                ):
                    raise fault(f"{sid}: IAM write action {action} on {resource} could "
                                "outlive the time box")
            for key in keys:
                if not _condition_key_supported(info, key):
                    raise fault(f"{sid}: {action} does not support condition key {key}")
            if action == "iam:PassRole" and "iam:PassedToService" not in keys:
                raise fault(f"{sid}: iam:PassRole without iam:PassedToService")
            if action == "iam:CreateServiceLinkedRole" and "iam:AWSServiceName" not in keys:
                raise fault(f"{sid}: iam:CreateServiceLinkedRole without iam:AWSServiceName")
        for resource in resources:
            if not any(_resource_accepted(iam.info(a), resource) for a in actions):
                raise fault(f"{sid}: no action of the statement accepts resource {resource}")


# -- adapter for the request lifecycle -------------------------------------------------


class GrantContextLike(Protocol):
    """What bot.lifecycle.GrantContext carries (kept structural so the compiler does not
    import the lifecycle)."""

    @property
    def grant_id(self) -> str: ...
    @property
    def entry_id(self) -> str: ...
    @property
    def principal_arn(self) -> str: ...
    @property
    def instance_arn(self) -> str | None: ...
    @property
    def start(self) -> datetime: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def inline_usage(self) -> int: ...


def plan_builder(
    catalog: Catalog,
    iam: IamReference,
    max_duration_for: Callable[[CatalogEntry], timedelta | None] | None = None,
    instance_resources_for: Callable[[str], InstanceResources | None] | None = None,
) -> Callable[[GrantContextLike], GrantPlan]:
    """A lifecycle PlanBuilder: GrantContext -> GrantPlan. The duration limit is checked
    only when `max_duration_for` is given (the lifecycle checks it at request time, and an
    approved extension may legitimately run past it). `instance_resources_for` looks up
    the instance's own resources at grant time (bot/aws/instance_resources.py); None, or a
    look-up that finds nothing, leaves the account-and-Region scope."""

    def build(context: GrantContextLike) -> GrantPlan:
        entry = catalog.get(context.entry_id)
        compiled = compile_policy(
            catalog,
            context.entry_id,
            context.principal_arn,
            grant_id=context.grant_id,
            start=context.start,
            duration=context.expires_at - context.start,
            max_duration=max_duration_for(entry) if max_duration_for else None,
            iam=iam,
            instance_arn=context.instance_arn,
            existing_inline_chars=context.inline_usage,
            instance_resources=(
                instance_resources_for(context.instance_arn)
                if instance_resources_for is not None and context.instance_arn else None
            ),
        )
        return compiled.to_plan()

    return build
