"""The IAM calls the granter makes on a principal, spelled out per principal kind.

IAM names the same operation differently for roles, users and groups (PutRolePolicy,
PutUserPolicy, PutGroupPolicy, each with its own RoleName=/UserName=/GroupName=). The
table below lists each call by its real name, so every one is typed by boto3-stubs and
can be found by searching for it; nothing builds a method name at run time.

List calls take the page marker IAM returned (None for the first page).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypedDict

from bot.policy import PrincipalKind

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient


class Page(TypedDict, total=False):
    """The paging argument of an IAM list call: absent on the first page."""

    Marker: str


def page(marker: str | None) -> Page:
    return {} if marker is None else {"Marker": marker}


Response = Mapping[str, Any]


@dataclass(frozen=True)
class PrincipalCalls:
    """One principal kind's IAM calls. Arguments: the client, the principal's name, then
    the call's own (policy name, document JSON, policy ARN, path prefix, page marker)."""

    list_inline: Callable[[IAMClient, str, str | None], Response]
    get_inline: Callable[[IAMClient, str, str], Response]
    put_inline: Callable[[IAMClient, str, str, str], Response]
    delete_inline: Callable[[IAMClient, str, str], Response]
    list_attached: Callable[[IAMClient, str, str, str | None], Response]
    attach_managed: Callable[[IAMClient, str, str], Response]
    detach_managed: Callable[[IAMClient, str, str], Response]


ROLE_CALLS = PrincipalCalls(
    list_inline=lambda iam, role, marker: iam.list_role_policies(
        RoleName=role, **page(marker)
    ),
    get_inline=lambda iam, role, policy: iam.get_role_policy(RoleName=role, PolicyName=policy),
    put_inline=lambda iam, role, policy, document: iam.put_role_policy(
        RoleName=role, PolicyName=policy, PolicyDocument=document
    ),
    delete_inline=lambda iam, role, policy: iam.delete_role_policy(
        RoleName=role, PolicyName=policy
    ),
    list_attached=lambda iam, role, prefix, marker: iam.list_attached_role_policies(
        RoleName=role, PathPrefix=prefix, **page(marker)
    ),
    attach_managed=lambda iam, role, arn: iam.attach_role_policy(RoleName=role, PolicyArn=arn),
    detach_managed=lambda iam, role, arn: iam.detach_role_policy(RoleName=role, PolicyArn=arn),
)

USER_CALLS = PrincipalCalls(
    list_inline=lambda iam, user, marker: iam.list_user_policies(
        UserName=user, **page(marker)
    ),
    get_inline=lambda iam, user, policy: iam.get_user_policy(UserName=user, PolicyName=policy),
    put_inline=lambda iam, user, policy, document: iam.put_user_policy(
        UserName=user, PolicyName=policy, PolicyDocument=document
    ),
    delete_inline=lambda iam, user, policy: iam.delete_user_policy(
        UserName=user, PolicyName=policy
    ),
    list_attached=lambda iam, user, prefix, marker: iam.list_attached_user_policies(
        UserName=user, PathPrefix=prefix, **page(marker)
    ),
    attach_managed=lambda iam, user, arn: iam.attach_user_policy(UserName=user, PolicyArn=arn),
    detach_managed=lambda iam, user, arn: iam.detach_user_policy(UserName=user, PolicyArn=arn),
)

GROUP_CALLS = PrincipalCalls(
    list_inline=lambda iam, group, marker: iam.list_group_policies(
        GroupName=group, **page(marker)
    ),
    get_inline=lambda iam, group, policy: iam.get_group_policy(
        GroupName=group, PolicyName=policy
    ),
    put_inline=lambda iam, group, policy, document: iam.put_group_policy(
        GroupName=group, PolicyName=policy, PolicyDocument=document
    ),
    delete_inline=lambda iam, group, policy: iam.delete_group_policy(
        GroupName=group, PolicyName=policy
    ),
    list_attached=lambda iam, group, prefix, marker: iam.list_attached_group_policies(
        GroupName=group, PathPrefix=prefix, **page(marker)
    ),
    attach_managed=lambda iam, group, arn: iam.attach_group_policy(
        GroupName=group, PolicyArn=arn
    ),
    detach_managed=lambda iam, group, arn: iam.detach_group_policy(
        GroupName=group, PolicyArn=arn
    ),
)

# Read-only: the table is a fact about IAM, not state.
IAM_CALLS: Mapping[PrincipalKind, PrincipalCalls] = MappingProxyType(
    {"role": ROLE_CALLS, "user": USER_CALLS, "group": GROUP_CALLS}
)
