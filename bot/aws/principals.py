"""Slack user -> IAM principal, checked against IAM before anything is granted to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.errors import error_code
from bot.aws.principal_index import (
    SERVICE_ROLE_PATH,
    SLACK_USER_TAG,
    PrincipalIndex,
    tagged_in_account,
)
from bot.policy import Principal, PrincipalArnError, parse_principal
from bot.ports import GrantError, PrincipalError
from bot.targets import (
    ApproverMapping,
    IamTarget,
    IdentityCenterTarget,
    TargetError,
    parse_target,
)

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

MANAGED_TAG = "connect-access:managed"
__all__ = ["MANAGED_TAG", "SERVICE_ROLE_PATH", "SLACK_USER_TAG", "IamPrincipalDirectory",
           "parse_principal_arn", "tagged_principals"]

# Given an account id (None: the bot's own account), the IAM client that can read it.
IamClientFactory = Callable[[str | None], "IAMClient"]


# One parser for principal ARNs, shared with the policy compiler (which must agree on what
# a principal is); here its refusals become PrincipalError for the person in Slack.
IamPrincipal = Principal


def parse_principal_arn(arn: str) -> IamPrincipal:
    """Split `arn:aws:iam::123456789012:role/path/name`; PrincipalError if it is not an IAM
    role, user or group ARN that may receive grants."""
    try:
        return parse_principal(arn)
    except PrincipalArnError as exc:
        raise PrincipalError(str(exc)) from None


class IamPrincipalDirectory:
    """PrincipalDirectory over the operator's mapping and, optionally, IAM tags.

    The mapping wins; tag lookup (`connect-access:slack-user=<id>` on roles and users) is
    tried only when the user is not mapped, through a PrincipalIndex (no IAM call when the
    index knows the user; see bot.aws.principal_index for how fresh it is). Every answer
    is checked against IAM with one call (GetRole/GetUser return the tags too): the
    principal must exist, must not be a service-linked role, and, when
    `require_managed_tag`, must carry `connect-access:managed=true` (groups cannot carry
    tags in IAM, so they are refused in that mode).
    """

    def __init__(
        self,
        iam_client_factory: IamClientFactory,
        mapping: Mapping[str, str],
        *,
        tag_lookup: bool = False,
        require_managed_tag: bool = False,
        tag_lookup_accounts: Sequence[str | None] = (None,),
        allow_group_targets: bool = False,
        index: PrincipalIndex | None = None,
        index_max_age: float = 600.0,
        index_miss_refresh: float = 30.0,
        required_boundary: str | None = None,
        identity_center_user: Callable[[str], str] | None = None,
    ) -> None:
        self._iam = iam_client_factory
        # A managed policy ARN every target principal must have as its permissions
        # boundary; `*` as the account means the principal's own account.
        self._required_boundary = required_boundary
        self._mapping = dict(mapping)
        self._tag_lookup = tag_lookup
        self._require_managed_tag = require_managed_tag
        self._tag_lookup_accounts = tuple(tag_lookup_accounts)
        self._allow_groups = allow_group_targets
        # user name or email -> identity-store user id; GrantError when there is none
        self._identity_center_user = identity_center_user
        self.index = index
        if tag_lookup and index is None:
            self.index = PrincipalIndex(iam_client_factory, self._tag_lookup_accounts,
                                        max_age=index_max_age,
                                        miss_refresh=index_miss_refresh)

    def principal_for(self, slack_user_id: str) -> str:
        arn = self._mapping.get(slack_user_id)
        if arn is None and self._tag_lookup:
            return self._by_tag(slack_user_id)
        if arn is None:
            how = (
                f" or tag your IAM role/user with {SLACK_USER_TAG}={slack_user_id}"
                if self._tag_lookup
                else ""
            )
            raise PrincipalError(
                f"No IAM principal is set up for Slack user {slack_user_id}. Ask an "
                f"administrator to map you under `principals:` in the bot's config{how}."
            )
        self.check(arn)
        return arn

    def approver_mapping(self, slack_user_id: str) -> ApproverMapping:
        """The approver's config mapping and, with tag lookup on, every principal tagged
        for them (confirmed by its own tags, as for requesters; the index may be behind).
        A config mapping does not stop the tag lookup here: someone tagged on a role
        can use it whatever their mapping says."""
        configured = self._mapping.get(slack_user_id)
        if not self._tag_lookup:
            return ApproverMapping(configured)
        try:
            return ApproverMapping(configured, self._confirmed_tagged(slack_user_id))
        except PrincipalError as exc:
            return ApproverMapping(configured, lookup_error=str(exc))

    def _confirmed_tagged(self, slack_user_id: str) -> tuple[str, ...]:
        """Every principal the index has for this user that still carries the tag; when
        one no longer does, the index is behind: look again, freshly, once."""
        assert self.index is not None  # made in __init__ whenever tag lookup is on
        confirmed: list[str] = []
        for _ in range(2):
            try:
                found = self.index.lookup(slack_user_id)
            except (ClientError, BotoCoreError) as exc:
                raise PrincipalError(
                    f"searching IAM for {SLACK_USER_TAG}={slack_user_id}: {error_code(exc)}"
                ) from exc
            confirmed, stale = [], False
            for arn in found:
                principal = parse_principal_arn(arn)
                try:
                    tags = self._tags(self._iam(principal.account_id), principal)
                except ClientError as exc:
                    if error_code(exc) != "NoSuchEntity":
                        raise PrincipalError(f"reading {arn}: {error_code(exc)}") from exc
                    tags = {}
                except BotoCoreError as exc:
                    raise PrincipalError(f"reading {arn}: {error_code(exc)}") from exc
                if tags.get(SLACK_USER_TAG) == slack_user_id:
                    confirmed.append(arn)
                else:
                    self.index.forget(arn)
                    stale = True
            if not stale:
                break
        return tuple(confirmed)

    def _by_tag(self, slack_user_id: str) -> str:
        """The principal tagged for this user, checked (one IAM call once the index is
        warm). When the principal no longer carries the tag the index is behind (the tag
        moved or went): look again, freshly, once."""
        for _ in range(2):
            arn = self._find_by_tag(slack_user_id)
            if arn is None:
                break
            _principal, tags = self._checked(arn)
            if tags.get(SLACK_USER_TAG) == slack_user_id:
                return arn
            assert self.index is not None
            self.index.forget(arn)
        raise PrincipalError(
            f"No IAM principal is set up for Slack user {slack_user_id}. Ask an "
            f"administrator to map you under `principals:` in the bot's config or tag your "
            f"IAM role/user with {SLACK_USER_TAG}={slack_user_id}."
        )

    def check(self, ref: str) -> IamPrincipal | None:
        """Raise PrincipalError unless grants may go to the target `ref` (bot.targets).
        Returns the IAM principal the policy goes on; None for an Identity Center user,
        whom the Identity Center granter looks up in the identity store."""
        try:
            target = parse_target(ref)
        except TargetError as exc:
            raise PrincipalError(str(exc)) from None
        if isinstance(target, IdentityCenterTarget):
            if self._identity_center_user is not None:
                try:
                    self._identity_center_user(target.user)
                except GrantError as exc:
                    raise PrincipalError(
                        f"Could not find you in IAM Identity Center: {exc}" if not exc.transient
                        else f"Could not reach IAM Identity Center to look up {target.user} "
                             f"({exc.code}); try again."
                    ) from exc
            return None
        if isinstance(target, IamTarget) and target.is_group and not self._allow_groups:
            raise PrincipalError(
                f"{target.principal.arn} is an IAM group; a grant to it reaches every "
                "member, and this bot does not grant to groups (allow_group_targets is off)."
            )
        arn = target.policy_holder
        return self._checked(arn)[0]

    def _checked(self, arn: str) -> tuple[IamPrincipal, dict[str, str]]:
        """check(), also returning the principal's tags (read by the same IAM call)."""
        # Refuses service-linked and Identity Center roles by their path, too.
        principal = parse_principal_arn(arn)
        iam = self._iam(principal.account_id)
        try:
            tags = self._tags(iam, principal)
            boundary = (self._boundary(iam, principal)
                        if self._required_boundary is not None else None)
        except ClientError as exc:
            if error_code(exc) == "NoSuchEntity":
                raise PrincipalError(
                    f"The IAM {principal.kind} {arn} does not exist. Fix the principal "
                    "mapping (it may have been renamed or deleted)."
                ) from exc
            raise PrincipalError(
                f"Could not look up {arn} in IAM ({error_code(exc)}); try again, and tell an "
                "administrator if it keeps failing."
            ) from exc
        except BotoCoreError as exc:
            raise PrincipalError(
                f"Could not reach IAM to look up {arn} ({type(exc).__name__}); try again."
            ) from exc
        if self._require_managed_tag:
            if principal.kind == "group":
                raise PrincipalError(
                    f"{arn} is an IAM group; groups cannot carry the "
                    f"{MANAGED_TAG}=true tag this bot requires, so map a role or user instead."
                )
            if tags.get(MANAGED_TAG, "").lower() != "true":
                raise PrincipalError(
                    f"{arn} is not tagged {MANAGED_TAG}=true, and this bot only grants to "
                    "principals carrying that tag. Ask an administrator to add it."
                )
        if self._required_boundary is not None:
            self._check_boundary(principal, boundary)
        return principal, tags

    def group_member_count(self, group_arn: str) -> int:
        principal = parse_principal_arn(group_arn)
        if principal.kind != "group":
            raise PrincipalError(f"{group_arn} is not an IAM group")
        iam = self._iam(principal.account_id)
        try:
            pages = iam.get_paginator("get_group").paginate(GroupName=principal.name)
            return sum(len(page["Users"]) for page in pages)
        except ClientError as exc:
            raise PrincipalError(
                f"Could not read the members of IAM group {group_arn} ({error_code(exc)})."
            ) from exc
        except BotoCoreError as exc:
            raise PrincipalError(
                f"Could not reach IAM to read group {group_arn} ({type(exc).__name__})."
            ) from exc

    def _check_boundary(self, principal: IamPrincipal, actual: str | None) -> None:
        assert self._required_boundary is not None
        expected = required_boundary_for(self._required_boundary, principal)
        if principal.kind == "group":
            raise PrincipalError(
                f"{principal.arn} is an IAM group; groups cannot have a permissions boundary, "
                f"and this bot only grants to principals bounded by {expected}. Map a role or "
                "user instead.")
        if actual != expected:
            raise PrincipalError(
                f"{principal.arn} does not have the permissions boundary {expected} "
                f"(it has {actual or 'none'}), and this bot only grants to principals bounded "
                "by it. Ask an administrator to set it.")

    # -- internals --------------------------------------------------------------------

    @staticmethod
    def _boundary(iam: IAMClient, principal: IamPrincipal) -> str | None:
        """The principal's permissions boundary ARN (None: none, or a group)."""
        if principal.kind == "group":
            return None
        if principal.kind == "role":
            boundary = iam.get_role(RoleName=principal.name)["Role"].get("PermissionsBoundary")
        else:
            boundary = iam.get_user(UserName=principal.name)["User"].get("PermissionsBoundary")
        arn = (boundary or {}).get("PermissionsBoundaryArn")
        return str(arn) if arn else None

    @staticmethod
    def _tags(iam: IAMClient, principal: IamPrincipal) -> dict[str, str]:
        """Tags of the principal; also proves it exists (NoSuchEntity otherwise). One IAM
        call: GetRole and GetUser return every tag (IAM allows at most 50)."""
        if principal.kind == "group":
            iam.get_group(GroupName=principal.name, MaxItems=1)
            return {}
        if principal.kind == "role":
            role = iam.get_role(RoleName=principal.name)["Role"]
            if role.get("Path", "/").startswith(SERVICE_ROLE_PATH):
                raise PrincipalError(f"{principal.arn} is a service-linked role; refused.")
            tag_list = role.get("Tags", [])
        else:
            tag_list = iam.get_user(UserName=principal.name)["User"].get("Tags", [])
        return {tag["Key"]: tag["Value"] for tag in tag_list}

    def _find_by_tag(self, slack_user_id: str) -> str | None:
        assert self.index is not None  # made in __init__ whenever tag lookup is on
        try:
            found = list(self.index.lookup(slack_user_id))
        except (ClientError, BotoCoreError) as exc:
            raise PrincipalError(
                f"Could not search IAM for a principal tagged {SLACK_USER_TAG}="
                f"{slack_user_id} ({error_code(exc)}); try again in a minute."
            ) from exc
        if len(found) > 1:
            raise PrincipalError(
                f"{len(found)} IAM principals are tagged {SLACK_USER_TAG}={slack_user_id} "
                f"({', '.join(sorted(found))}); keep the tag on one of them or map the user "
                "explicitly in the config."
            )
        return found[0] if found else None


def required_boundary_for(boundary: str, principal: IamPrincipal) -> str:
    """The boundary ARN for this principal: `arn:aws:iam::*:policy/x` names the policy `x`
    in the principal's own account (one setting for instances in several accounts)."""
    parts = boundary.split(":", 5)  # arn, partition, iam, (region), account, policy/...
    if parts[4] == "*":
        parts[4] = principal.account_id
    return ":".join(parts)


def tagged_principals(iam: IAMClient) -> Iterator[tuple[str, dict[str, str]]]:
    """(arn, tags) of every role and user carrying a connect-access:* tag, from
    GetAccountAuthorizationDetails (a thousand principals a call, tags included; ListRoles
    and ListUsers would need one more call per principal for its tags)."""
    for principal in tagged_in_account(iam):
        yield principal.arn, dict(principal.tags)
