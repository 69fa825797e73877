"""The policy compiler: catalog entry + principal + instance + time window -> the IAM
policy (or policies) a grant attaches, checked against IAM's reference data and quotas.

Pure: no boto3, no files, no clock. Everything it needs is passed in, so the same inputs
always give the same documents (the golden tests rely on that).

What a compiled policy guarantees:
- it grants the entry's actions and those of everything it requires, nothing else;
- `connect:` actions that accept an instance resource are limited to the chosen instance;
- no IAM write action reaches an arbitrary role, user, group or policy (see IAM_RULES);
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

from bot.catalog import Catalog, CatalogEntry
from bot.durations import DurationError, check_within, format_duration
from bot.iamref import (
    GLOBAL_CONDITION_KEYS,
    ActionInfo,
    IamReference,
    ResourceRef,
    UnknownActionError,
    arn_matches_format,
)
from bot.ports import GrantPlan, PolicyDocument, PolicyKind

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

    def arn(self, principal: Principal) -> str:
        # IAM refuses CreateRole under /aws-service-role/, so this path holds only roles
        # that AWS services create, which only those services can assume: write access to
        # them cannot be turned into access for the requester.
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

# kms:CreateGrant lets the holder make grants that outlive the time box; limited to grants
# an AWS service (Connect, Customer Profiles, Amazon Q) makes on the requester's behalf,
# as AWS's own Connect policies do, so no one can grant a key to themselves.
KMS_GRANT_CONDITION: Mapping[str, Mapping[str, Any]] = {
    "Bool": {"kms:GrantIsForAWSResource": "true"}
}


def service_linked_roles_for(actions: Iterable[str]) -> tuple[ServiceLinkedRole, ...]:
    prefixes = {a.split(":", 1)[0] for a in actions}
    return tuple(r for r in SERVICE_LINKED_ROLES if r.trigger == "connect" or r.trigger in prefixes)


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
                "available": self.inline_quota - self.existing_inline_chars,
            },
            "policies": [
                {"name": p.name, "document": p.document, "size": s}
                for p, s in zip(self.policies, self.sizes, strict=True)
            ],
            "notes": list(self.notes),
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


def build_statements(
    actions: Sequence[str],
    principal: Principal,
    instance: Instance | None,
    window: Mapping[str, Mapping[str, Any]],
    iam: IamReference,
) -> list[Statement]:
    """Group the actions into statements, each scoped and time-boxed. Order and Sids are
    fixed, so the same inputs give the same document."""
    connect_instance: list[str] = []
    connect_any: list[str] = []
    supporting: list[str] = []
    kms_grants: list[str] = []
    iam_by_rule: dict[IamRule, list[str]] = {}
    for action in actions:
        try:
            info = iam.info(action)
        except UnknownActionError as exc:
            raise PolicyError(f"the catalog grants {exc}; fix the catalog entry") from None
        if info.service == "connect":
            # Scoped only when a concrete instance is chosen; otherwise every connect
            # action goes to Resource "*" and the notes say so.
            if instance is not None and _accepts_instance(info.resources):
                connect_instance.append(action)
            else:
                connect_any.append(action)
        elif info.service == "iam" and info.is_write:
            rule = IAM_RULES.get(action)
            if rule is None:
                raise PolicyError(
                    f"{action} is an IAM write action with no scoping rule in bot/policy.py "
                    "IAM_RULES; refusing to grant it on Resource \"*\"."
                )
            iam_by_rule.setdefault(rule, []).append(action)
        elif action == "kms:CreateGrant":
            kms_grants.append(action)
        else:
            supporting.append(action)

    statements: list[Statement] = []

    def add(sid: str, acts: list[str], resources: Sequence[str],
            extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        if acts:
            condition = merge_conditions(window, extra or {})
            statements.append(Statement(sid, tuple(sorted(acts)), tuple(resources), condition))

    if instance is not None:
        add("ConnectInstance", connect_instance, (instance.arn, f"{instance.arn}/*"))
    connect_any_sid = "ConnectAccountWide" if instance is not None else "ConnectAllInstances"
    add(connect_any_sid, connect_any, ("*",))
    add("SupportingServices", supporting, ("*",))
    add("KmsGrantsForAwsServices", kms_grants, ("*",), KMS_GRANT_CONDITION)

    roles = service_linked_roles_for(actions)
    role_arns = tuple(r.arn(principal) for r in roles)
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
) -> CompiledPolicy:
    """Build and validate the policy for one grant.

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

    actions = catalog.granted_actions(entry.id)
    statements = build_statements(actions, principal, instance, window, iam)
    notes: list[str] = []
    if instance is None:
        notes.append(
            'no --instance given: connect actions use Resource "*" (every instance in '
            f"account {principal.account_id}); name an instance to scope them."
        )
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
    available = principal.inline_quota - existing_inline_chars
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
    )


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
                rf"{re.escape(r.role_prefix)}\*",
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
            for resource in resources:
                if not _resource_accepted(info, resource):
                    raise fault(f"{sid}: {action} does not accept resource {resource}")
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
) -> Callable[[GrantContextLike], GrantPlan]:
    """A lifecycle PlanBuilder: GrantContext -> GrantPlan. The duration limit is checked
    only when `max_duration_for` is given (the lifecycle checks it at request time, and an
    approved extension may legitimately run past it)."""

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
        )
        return compiled.to_plan()

    return build
