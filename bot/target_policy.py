"""Compiling a grant for each kind of target (bot.targets).

- IAM role, user or group: bot.policy.compile_policy as it is.
- Shared role: the same, with `StringLike aws:userid = "<role unique id>:<session>"` joined
  to every statement (session_condition), so only that person's sessions of the role get
  the access; the role's unique id comes from IAM through an injected lookup.
- Identity Center user: one inline policy for a permission set of its own. A permission
  set becomes a role in the account it is assigned on, so the compiler sees it as a role
  in the instance's account, with the permission-set inline quota (10,240) and no managed
  fallback: a grant that does not fit is refused.

Pure apart from the lookup it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from bot.catalog import Catalog, CatalogEntry
from bot.iamref import IamReference
from bot.policy import (
    DEFAULT_MANAGED_ATTACH_LIMIT,
    CompiledPolicy,
    GrantContextLike,
    PolicyTooLargeError,
    Principal,
    check_explicit_denies,
    compile_policy,
    parse_instance_arn,
    policy_name,
)
from bot.ports import GrantPlan
from bot.scoping import InstanceResources
from bot.targets import (
    PERMISSION_SET_INLINE_QUOTA,
    IamTarget,
    SharedRoleTarget,
    TargetError,
    parse_target,
    session_condition,
)

# Role ARN -> the role's unique id (AROA...), as IAM GetRole returns it.
RoleIdLookup = Callable[[str], str]
# Instance ARN -> its own resources (bot.aws.instance_resources); principal ARN -> the
# managed policies attached to it.
InstanceResourcesLookup = Callable[[str], InstanceResources | None]
AttachedPoliciesLookup = Callable[[str], Sequence[str]]


def _no_role_lookup(role_arn: str) -> str:
    raise TargetError(
        f"{role_arn} is a shared role, and this process has no IAM lookup for its unique id"
    )


def compile_for_target(
    catalog: Catalog,
    entry_id: str,
    target_ref: str,
    *,
    grant_id: str,
    start: datetime,
    duration: timedelta,
    max_duration: timedelta | None,
    iam: IamReference,
    instance_arn: str | None = None,
    existing_inline_chars: int = 0,
    role_unique_id: RoleIdLookup | None = None,
    instance_resources: InstanceResources | None = None,
    attached_policies: AttachedPoliciesLookup | None = None,
) -> CompiledPolicy:
    """compile_policy for any target reference. The result's `principal_arn` is the
    target reference, so its plan reaches the right granter. `instance_resources` narrow
    IAM targets' grants to the instance's own resources; `attached_policies` lets an IAM
    principal whose managed policies deny the entry's actions be refused with a reason."""
    target = parse_target(target_ref)

    def compile_on(holder: str | Principal, *, inline_used: int = existing_inline_chars,
                   managed_slots: int = DEFAULT_MANAGED_ATTACH_LIMIT,
                   condition: dict[str, dict[str, str]] | None = None) -> CompiledPolicy:
        return compile_policy(
            catalog, entry_id, holder, grant_id=grant_id, start=start, duration=duration,
            max_duration=max_duration, iam=iam, instance_arn=instance_arn,
            existing_inline_chars=inline_used, managed_attach_limit=managed_slots,
            extra_condition=condition,
            # A permission set's holder is not an IAM principal of the instance's
            # account in the ARN sense; only IAM targets are narrowed by the look-up.
            instance_resources=instance_resources if isinstance(holder, str) else None)

    if attached_policies is not None and isinstance(target, IamTarget | SharedRoleTarget):
        principal = (target.principal.arn if isinstance(target, IamTarget)
                     else target.role.arn)
        check_explicit_denies(catalog.get(entry_id), catalog.granted_actions(entry_id),
                              principal, attached_policies(principal))
    if isinstance(target, IamTarget):
        return compile_on(target.principal.arn)
    if isinstance(target, SharedRoleTarget):
        lookup = role_unique_id or _no_role_lookup
        condition = session_condition(lookup(target.role.arn), target.session_name)
        compiled = compile_on(target.role.arn, condition=condition)
        return replace(compiled, principal_arn=target.ref, notes=(
            *compiled.notes,
            f"only sessions named {target.session_name} of {target.role.arn} get this "
            "access (aws:userid condition on every statement)."))

    if instance_arn is None:
        raise TargetError(
            f"{target.describe()} gets access through a permission set assigned on an "
            "Amazon Connect instance's account; configure an instance under `instances:`."
        )
    instance = parse_instance_arn(instance_arn)
    name = policy_name(grant_id)
    holder = Principal(arn=target.ref, partition=instance.partition,
                       account_id=instance.account_id, kind="role", name=name, path="/")
    try:
        # A permission set holds one inline policy of its own: nothing else uses its
        # quota, and there is no managed-policy fallback.
        compiled = compile_on(holder, inline_used=0, managed_slots=0)
    except PolicyTooLargeError as exc:
        raise PolicyTooLargeError(
            f"the policy needs {exc.needed} characters, more than a permission set's "
            f"{PERMISSION_SET_INLINE_QUOTA}-character inline policy holds; ask for a "
            "narrower use case.",
            needed=exc.needed, available=PERMISSION_SET_INLINE_QUOTA,
        ) from None
    return replace(compiled, kind="permission_set", quota=PERMISSION_SET_INLINE_QUOTA,
                   inline_quota=PERMISSION_SET_INLINE_QUOTA, notes=(
                       *compiled.notes,
                       f"granted as permission set {name}, assigned to {target.user} on "
                       f"account {instance.account_id} until it expires."))


def target_plan_builder(
    catalog: Catalog,
    iam: IamReference,
    *,
    role_unique_id: RoleIdLookup = _no_role_lookup,
    max_duration_for: Callable[[CatalogEntry], timedelta | None] | None = None,
    instance_resources_for: InstanceResourcesLookup | None = None,
    attached_policies: AttachedPoliciesLookup | None = None,
) -> Callable[[GrantContextLike], GrantPlan]:
    """A lifecycle PlanBuilder for every kind of target (see bot.policy.plan_builder).
    The look-ups run at grant time: `instance_resources_for` narrows the scope to the
    instance's own resources, `attached_policies` refuses a grant an explicit deny on the
    principal would make pointless (the requester is told why)."""

    def build(context: GrantContextLike) -> GrantPlan:
        entry = catalog.get(context.entry_id)
        compiled = compile_for_target(
            catalog, context.entry_id, context.principal_arn,
            grant_id=context.grant_id, start=context.start,
            duration=context.expires_at - context.start,
            max_duration=max_duration_for(entry) if max_duration_for else None,
            iam=iam, instance_arn=context.instance_arn,
            existing_inline_chars=context.inline_usage, role_unique_id=role_unique_id,
            instance_resources=(instance_resources_for(context.instance_arn)
                                if instance_resources_for is not None and context.instance_arn
                                else None),
            attached_policies=attached_policies,
        )
        return compiled.to_plan()

    return build
