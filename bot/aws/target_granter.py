"""TargetGranter: the Granter for every kind of grant target (bot.targets).

IAM roles, users, groups and shared roles go to the IAM granter it extends (a shared
role's plan is an ordinary policy on the role, narrowed by its aws:userid condition);
Identity Center users go to the IdentityCenterGranter. Being an IamGranter, it is what
reconcile and the scheduler use as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bot.aws.granter import IamGranter
from bot.aws.identity_center import IdentityCenterGranter
from bot.ports import AttachedPolicy, GrantError, GrantPlan, PolicyKind
from bot.targets import IDENTITY_CENTER_PREFIX, TargetError, parse_target

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient


class TargetGranter(IamGranter):
    def __init__(self, iam_for_principal: Callable[[str], IAMClient], *,
                 identity_center: IdentityCenterGranter | None = None,
                 **options: Any) -> None:
        super().__init__(iam_for_principal, **options)
        self.identity_center = identity_center

    def attach(self, plan: GrantPlan) -> tuple[AttachedPolicy, ...]:
        if _is_identity_center(plan.principal_arn):
            return self._ic(plan.principal_arn).attach(plan)
        return super().attach(plan)

    def revoke(self, principal_arn: str, kind: PolicyKind, policy_names: Sequence[str]) -> None:
        if _is_identity_center(principal_arn):
            self._ic(principal_arn).revoke(principal_arn, kind, policy_names)
            return
        super().revoke(principal_arn, kind, policy_names)

    def inline_usage(self, principal_arn: str, exclude: Sequence[str] = ()) -> int:
        if _is_identity_center(principal_arn):
            return self._ic(principal_arn).inline_usage(principal_arn, exclude)
        return super().inline_usage(principal_arn, exclude)

    def role_unique_id(self, role_arn: str) -> str:
        """The role's unique id (AROA...), for a shared role's aws:userid condition."""
        principal = self._principal(role_arn)
        iam = self._client(principal)
        response = self._call(f"read role {principal.arn}", iam.get_role,
                              RoleName=principal.name)
        return str(response["Role"]["RoleId"])

    def _ic(self, ref: str) -> IdentityCenterGranter:
        if self.identity_center is None:
            raise GrantError(
                f"{ref} is an Identity Center user, and the bot has no `identity_center:` "
                "config", transient=False, code="IdentityCenterNotConfigured")
        return self.identity_center


def _is_identity_center(ref: str) -> bool:
    if not ref.startswith(IDENTITY_CENTER_PREFIX):
        return False
    try:
        parse_target(ref)
    except TargetError as exc:
        raise GrantError(str(exc), transient=False, code="InvalidPrincipal") from None
    return True
