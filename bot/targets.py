"""Who receives a grant: the three kinds of grant target, as one tagged union.

- IamTarget: an IAM role, user or group that the policy is written to directly.
- SharedRoleTarget: a role many people assume, plus the one person's session name; the
  policy goes on the role, and every statement carries an `aws:userid` condition so only
  that person's sessions of the role get it.
- IdentityCenterTarget: an IAM Identity Center user (user name or email in the identity
  store); the grant is a permission set of its own, assigned to the user on the
  instance's account for the grant's lifetime.

Pure core: no boto3. A target is stored (the `principal_arn` columns, the ports' string
arguments) as its reference, `target.ref`, which `parse_target` turns back into the
typed value. A plain IAM ARN is its own reference, so rows written before these kinds
existed read back unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.policy import Principal, PrincipalArnError, parse_principal

TargetKind = Literal["iam", "shared_role", "identity_center"]

SESSION_SEPARATOR = ";session="
IDENTITY_CENTER_PREFIX = "identity-center-user:"
# What STS accepts as a role session name (RoleSessionName); `*` and `?` are not in it,
# so the name can sit in a StringLike condition without matching anyone else's.
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
MAX_IDENTITY_CENTER_USER = 128
# A permission set's inline policy has the quota of a role's inline policies: the
# permission set becomes a role (AWSReservedSSO_...) in the account it is assigned on.
PERMISSION_SET_INLINE_QUOTA = 10240
PERMISSION_SET_PREFIX = "connect-access-"


class TargetError(ValueError):
    """A target reference or mapping that cannot receive grants; the message says why."""


@dataclass(frozen=True)
class IamTarget:
    """An IAM role, user or group that receives the policy itself."""

    principal: Principal
    kind: Literal["iam"] = "iam"

    @property
    def ref(self) -> str:
        return self.principal.arn

    @property
    def policy_holder(self) -> str:
        """The IAM principal whose policies the grant writes."""
        return self.principal.arn

    @property
    def is_group(self) -> bool:
        return self.principal.kind == "group"

    def describe(self) -> str:
        return f"IAM {self.principal.kind} {self.principal.arn}"


@dataclass(frozen=True)
class SharedRoleTarget:
    """A role that several people assume, narrowed to one person's session name."""

    role: Principal
    session_name: str
    kind: Literal["shared_role"] = "shared_role"

    @property
    def ref(self) -> str:
        return f"{self.role.arn}{SESSION_SEPARATOR}{self.session_name}"

    @property
    def policy_holder(self) -> str:
        return self.role.arn

    @property
    def is_group(self) -> bool:
        return False

    def describe(self) -> str:
        return f"role {self.role.arn}, session {self.session_name} only"


@dataclass(frozen=True)
class IdentityCenterTarget:
    """An IAM Identity Center user, by user name or email in the identity store."""

    user: str
    kind: Literal["identity_center"] = "identity_center"

    @property
    def ref(self) -> str:
        return f"{IDENTITY_CENTER_PREFIX}{self.user}"

    @property
    def policy_holder(self) -> None:
        return None  # a per-grant permission set, not an IAM principal

    @property
    def is_group(self) -> bool:
        return False

    def describe(self) -> str:
        return f"IAM Identity Center user {self.user}"


GrantTarget = IamTarget | SharedRoleTarget | IdentityCenterTarget


def _principal(arn: str) -> Principal:
    try:
        return parse_principal(arn)
    except PrincipalArnError as exc:
        raise TargetError(str(exc)) from None


def iam_target(arn: str) -> IamTarget:
    return IamTarget(_principal(arn))


def shared_role_target(role_arn: str, session_name: str) -> SharedRoleTarget:
    role = _principal(role_arn)
    if role.kind != "role":
        raise TargetError(
            f"{role_arn!r} is an IAM {role.kind}; a session name only narrows a role "
            "(people assume roles, not users or groups)."
        )
    if not isinstance(session_name, str) or not SESSION_NAME.fullmatch(session_name):
        raise TargetError(
            f"session name {session_name!r} is not a role session name: 2 to 64 letters, "
            "digits and +=,.@_- (what the person's sign-in sets as RoleSessionName)."
        )
    return SharedRoleTarget(role, session_name)


def identity_center_target(user: str) -> IdentityCenterTarget:
    text = user.strip() if isinstance(user, str) else ""
    if not text or len(text) > MAX_IDENTITY_CENTER_USER or any(c.isspace() for c in text):
        raise TargetError(
            f"{user!r} is not an Identity Center user name or email (1 to "
            f"{MAX_IDENTITY_CENTER_USER} characters, no spaces)."
        )
    return IdentityCenterTarget(text)


def parse_target(ref: str) -> GrantTarget:
    """The typed target of a stored reference (see each class's `ref`)."""
    if ref.startswith(IDENTITY_CENTER_PREFIX):
        return identity_center_target(ref.removeprefix(IDENTITY_CENTER_PREFIX))
    if SESSION_SEPARATOR in ref:
        # IAM names cannot hold ';', and the session part follows the role's name.
        role_arn, _, session = ref.rpartition(SESSION_SEPARATOR)
        return shared_role_target(role_arn, session)
    return iam_target(ref)


def target_from_mapping(value: Any) -> GrantTarget:
    """A `principals:` value of the operator config: an ARN string,
    `{identity_center_user: NAME}` or `{role: ARN, session_name: NAME}`."""
    if isinstance(value, str):
        return iam_target(value)
    if isinstance(value, Mapping):
        keys = set(value)
        if keys == {"identity_center_user"}:
            return identity_center_target(value["identity_center_user"])
        if keys == {"role", "session_name"}:
            role, session = value["role"], value["session_name"]
            if not isinstance(role, str):
                raise TargetError(f"role must be an IAM role ARN, got {role!r}")
            return shared_role_target(role, session)
        if "role" in keys and "session_name" not in keys:
            raise TargetError("a shared role needs the person's session_name beside role")
        raise TargetError(
            f"unknown principal form with keys {sorted(map(str, keys))}; use an IAM ARN, "
            "{identity_center_user: NAME} or {role: ARN, session_name: NAME}"
        )
    raise TargetError(
        f"must be an IAM ARN or a mapping, got {type(value).__name__}"
    )


def account_of_target(target: GrantTarget, instance_arn: str | None) -> str:
    """The AWS account the grant takes effect in: the principal's own for IAM targets,
    the Connect instance's for Identity Center users (the assignment's account)."""
    if isinstance(target, IamTarget):
        return target.principal.account_id
    if isinstance(target, SharedRoleTarget):
        return target.role.account_id
    if instance_arn is None:
        raise TargetError(
            "an Identity Center user gets access on an Amazon Connect instance's account, "
            "and no instance is configured; add one under `instances:`."
        )
    return instance_arn.split(":")[4]


def reaches(holder: GrantTarget, target: GrantTarget) -> bool:
    """Whether someone whose mapping is `holder` can use access granted to `target`:
    the same IAM user, role or group; the same role when either side has no session of
    its own (a plain mapping may assume the role under any session name); the same role
    and session; the same Identity Center user."""
    if isinstance(target, IdentityCenterTarget) or isinstance(holder, IdentityCenterTarget):
        return (isinstance(target, IdentityCenterTarget)
                and isinstance(holder, IdentityCenterTarget)
                and target.user.lower() == holder.user.lower())
    holder_arn = holder.policy_holder
    target_arn = target.policy_holder
    if holder_arn.lower() != target_arn.lower():
        return False
    if isinstance(holder, SharedRoleTarget) and isinstance(target, SharedRoleTarget):
        return holder.session_name == target.session_name
    return True


def session_condition(role_unique_id: str, session_name: str) -> dict[str, dict[str, str]]:
    """The condition that narrows a policy on a shared role to one person's sessions:
    `aws:userid` of an assumed-role session is `<role unique id>:<session name>`."""
    if not SESSION_NAME.fullmatch(session_name):
        raise TargetError(f"session name {session_name!r} is not a role session name")
    if not re.fullmatch(r"AROA[A-Z0-9]{8,}", role_unique_id):
        raise TargetError(
            f"{role_unique_id!r} is not a role's unique id (AROA...), as IAM GetRole returns"
        )
    return {"StringLike": {"aws:userid": f"{role_unique_id}:{session_name}"}}


def is_session_scoped(document: Mapping[str, Any], role_unique_id: str,
                      session_name: str) -> bool:
    """Whether every statement of a document carries the session condition."""
    want = session_condition(role_unique_id, session_name)["StringLike"]["aws:userid"]
    statements = document.get("Statement") or []
    return bool(statements) and all(
        (s.get("Condition") or {}).get("StringLike", {}).get("aws:userid") == want
        for s in statements
    )


@dataclass(frozen=True)
class ApproverMapping:
    """Where an approver's own access goes, as the principal directory found it (the
    lookup is the adapter's; this is what it found)."""

    configured: str | None = None  # their mapping under `principals:` (a target reference)
    tagged: tuple[str, ...] = ()  # principals tagged connect-access:slack-user=<them>
    lookup_error: str | None = None  # why the tag lookup could not be done (None: it was)


@dataclass(frozen=True)
class VoteDecision:
    """Whether a person may vote on a request, and why."""

    allowed: bool
    reason: str
    # The refusal is for want of a lookup, not a finding: ranked after "not an approver".
    unconfirmed: bool = False


def self_approval_decision(requester: str, approver: str, requester_ref: str,
                           mapping: ApproverMapping) -> VoteDecision:
    """May `approver` vote on `requester`'s request? Judged by principal too: someone
    whose mapping (config or tag) reaches the requester's target would be approving access
    they can use themselves. When the tag lookup failed, only an explicit config mapping
    that differs lets the vote through; otherwise the vote is refused, as unconfirmed."""
    if approver == requester:
        return VoteDecision(False, "You cannot approve or deny your own request.")
    try:
        target = parse_target(requester_ref)
    except TargetError:
        # Stored references are parsed at request time; one that no longer parses
        # reaches nobody's mapping.
        return VoteDecision(True, f"the request's target {requester_ref!r} is not a target")
    found = [(mapping.configured, "")] if mapping.configured is not None else []
    found += [(ref, ", found by its connect-access:slack-user tag") for ref in mapping.tagged]
    for ref, how in found:
        assert ref is not None
        try:
            holder = parse_target(ref)
        except TargetError:
            continue  # a mapping the config refused would not get here
        if reaches(holder, target):
            return VoteDecision(False, (
                f"You cannot vote on this request: your own mapping ({holder.describe()}"
                f"{how}) reaches the access it grants ({target.describe()}), so it would be "
                "approving access you could use yourself. Another approver must decide."))
    if mapping.lookup_error is not None:
        if mapping.configured is not None:
            return VoteDecision(True, (
                f"your configured mapping ({mapping.configured}) does not reach "
                f"{target.describe()}; the tag lookup failed ({mapping.lookup_error})"))
        return VoteDecision(False, (
            "Your vote was not counted: the bot could not confirm that you are not the "
            f"requester, because looking up your own AWS principal failed "
            f"({mapping.lookup_error}). Try again in a minute; if AWS stays unreachable, "
            "an approver mapped explicitly in the bot's config can decide."), unconfirmed=True)
    return VoteDecision(True, f"no mapping of yours reaches {target.describe()}")


@dataclass(frozen=True)
class AccessRoute:
    """How a person reaches a grant, for the approval message and the DM."""

    kind: TargetKind
    target: str  # the target in words (describe())
    account: str
    holder: str | None = None  # the IAM principal holding the policy
    session_name: str | None = None
    portal_url: str | None = None  # the AWS access portal, for Identity Center users
    permission_set: str | None = None  # once granted
    group_members: int | None = None  # IAM users a group target reaches

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


def access_route(ref: str, instance_arn: str | None, *, portal_url: str | None = None,
                 grant_name: str | None = None, group_members: int | None = None
                 ) -> AccessRoute:
    target = parse_target(ref)
    account = account_of_target(target, instance_arn)
    if isinstance(target, IdentityCenterTarget):
        return AccessRoute(target.kind, target.describe(), account, portal_url=portal_url,
                           permission_set=grant_name)
    session = target.session_name if isinstance(target, SharedRoleTarget) else None
    return AccessRoute(target.kind, target.describe(), account, holder=target.policy_holder,
                       session_name=session,
                       group_members=group_members if target.is_group else None)
