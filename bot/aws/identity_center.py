"""IdentityCenterGranter: a grant to an IAM Identity Center user, as a permission set of
its own.

attach: find the user in the identity store (identitystore:GetUserId, by user name, then
by email); create permission set `connect-access-<grant id>` (session duration no longer
than the grant, within Identity Center's 1-12 h range) holding the compiled policy as its
inline policy, whose aws:CurrentTime window ends live sessions at expiry too; provision it
to the instance's account; assign it to the user there; wait for both to succeed. Anything
that fails removes what this call created, so a failed grant leaves nothing behind.

revoke: delete the set's assignments (on every account it is provisioned to), wait for
the deletions, delete the set. Already gone is success.

One retry policy, as in the IAM granter: botocore's (standard or adaptive mode, its
attempts set once in bot.aws.sessions) retries throttling, service failures and time-outs.
This granter retries only Identity Center's ConflictException, which botocore does not: the
service answers it while another write to the same permission set is still in flight (a
provisioning, an assignment) or has not reached every host yet, and the same call succeeds
moments later. Everything else surfaces at once as GrantError with the AWS code.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.errors import error_code, is_consistency_conflict, to_grant_error
from bot.aws.granter import decode_document, document_hash
from bot.ports import AttachedPolicy, GrantError, GrantPlan, PolicyKind
from bot.targets import PERMISSION_SET_PREFIX, IdentityCenterTarget, TargetError, parse_target

if TYPE_CHECKING:
    from mypy_boto3_identitystore import IdentityStoreClient
    from mypy_boto3_sso_admin import SSOAdminClient

log = logging.getLogger(__name__)

MISSING = "ResourceNotFoundException"
MIN_SESSION = timedelta(hours=1)  # Identity Center's own bounds for SessionDuration
MAX_SESSION = timedelta(hours=12)


def session_duration(grant_left: timedelta) -> str:
    """The permission set's SessionDuration (ISO 8601): the whole hours left of the grant,
    within Identity Center's 1-12 h. A grant under an hour still gets PT1H, the shortest
    Identity Center allows; its policy's aws:CurrentTime window ends access at expiry."""
    hours = int(grant_left // timedelta(hours=1))
    hours = max(int(MIN_SESSION / timedelta(hours=1)),
                min(int(MAX_SESSION / timedelta(hours=1)), hours))
    return f"PT{hours}H"


@dataclass(frozen=True)
class PermissionSetInfo:
    name: str
    arn: str


@dataclass(frozen=True)
class Assignment:
    account: str
    permission_set_arn: str
    principal_id: str


class IdentityCenterGranter:
    """The Granter for Identity Center targets (see bot.ports.Granter); the TargetGranter
    sends it the plans whose target is an Identity Center user."""

    def __init__(
        self,
        sso_admin: Callable[[], SSOAdminClient],
        identity_store: Callable[[], IdentityStoreClient],
        *,
        instance_arn: str,
        identity_store_id: str,
        # `required_permissions_boundary`: every set the bot makes carries it, so the role
        # a permission set becomes in an account stays within it like any IAM target.
        permissions_boundary: str | None = None,
        # The ConflictException retry only; botocore retries everything else.
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        poll_interval: float = 1.0,
        poll_timeout: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._sso = sso_admin
        self._ids = identity_store
        self.instance_arn = instance_arn
        self.identity_store_id = identity_store_id
        self._boundary = (None if permissions_boundary is None
                          else boundary_reference(permissions_boundary))
        self._attempts = attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._poll_interval = poll_interval
        self._poll_timeout = poll_timeout
        self._sleep = sleep
        self._jitter = jitter
        self._monotonic = monotonic
        self._now = now
        # name -> ARN of the sets this process has seen, so extensions and revokes do not
        # list every permission set of the instance again.
        self._known: dict[str, str] = {}

    # -- Granter port -----------------------------------------------------------------

    def attach(self, plan: GrantPlan) -> tuple[AttachedPolicy, ...]:
        target = self._target(plan.principal_arn)
        if plan.kind != "permission_set" or len(plan.policies) != 1:
            raise GrantError(
                f"an Identity Center grant is one permission-set policy, got {plan.kind} "
                f"x{len(plan.policies)}", transient=False, code="InvalidPlan")
        if plan.instance_arn is None:
            raise GrantError("an Identity Center grant needs the Connect instance's account",
                             transient=False, code="InvalidPlan")
        policy = plan.policies[0]
        _check_name(policy.name)
        account = plan.instance_arn.split(":")[4]
        user_id = self.user_id(target.user)
        duration = session_duration(plan.expires_at - self._now())
        document = json.dumps(policy.document)
        want = document_hash(policy.document)

        existing = self.find_permission_set(policy.name, account)
        created_set: str | None = None
        assigned = False
        try:
            if existing is None:
                arn = created_set = self._create_set(policy.name, plan, duration)
            else:
                arn = existing
                self._call(f"update session duration of {policy.name}",
                           self._sso().update_permission_set, InstanceArn=self.instance_arn,
                           PermissionSetArn=arn, SessionDuration=duration)
            self._call(f"put the inline policy of {policy.name}",
                       self._sso().put_inline_policy_to_permission_set,
                       InstanceArn=self.instance_arn, PermissionSetArn=arn,
                       InlinePolicy=document)
            if self._boundary is not None:
                self._put_boundary(arn, policy.name, self._boundary)
            self._provision(arn, account, policy.name)
            if not self._is_assigned(arn, account, user_id):
                assigned = True
                self._assign(arn, account, user_id, policy.name)
            got = self._inline(arn)
            if got is None or document_hash(got) != want:
                raise GrantError(
                    f"permission set {policy.name} reads back a different policy from the "
                    "one written (changed concurrently?); nothing was granted",
                    transient=False, code="ReadBackMismatch")
        except GrantError:
            # Leave nothing this call made; a set that existed before (an extension being
            # re-attached) keeps its assignment, so a failed update never cuts access.
            if created_set is not None:
                self._remove_set(created_set, policy.name)
            elif assigned and existing is not None:
                self._unassign_all(existing, policy.name, only=user_id)
            raise
        return (AttachedPolicy(policy.name, arn, want),)

    def revoke(self, principal_arn: str, kind: PolicyKind, policy_names: Sequence[str]) -> None:
        self._target(principal_arn)
        for name in policy_names:
            _check_name(name)
            arn = self.find_permission_set(name)
            if arn is not None:
                self._remove_set(arn, name)

    def inline_usage(self, principal_arn: str, exclude: Sequence[str] = ()) -> int:
        return 0  # each grant has a permission set, and its quota, of its own

    # -- reads used by reconcile ------------------------------------------------------

    def user_id(self, user: str) -> str:
        """The identity-store user id of a user name or, failing that, an email."""
        for path in ("UserName", "emails.value"):
            found = self._call(
                f"look up {user} in identity store {self.identity_store_id}",
                self._ids().get_user_id, missing_ok=True,
                IdentityStoreId=self.identity_store_id,
                AlternateIdentifier={"UniqueAttribute": {"AttributePath": path,
                                                         "AttributeValue": user}})
            if found is not None:
                return str(found["UserId"])
        raise GrantError(
            f"there is no user {user!r} (user name or email) in identity store "
            f"{self.identity_store_id}; fix the principal mapping",
            transient=False, code="NoSuchUser")

    def managed_permission_sets(self) -> list[PermissionSetInfo]:
        """Every permission set of the instance named connect-access-*."""
        found = []
        for arn in self._list_arns("list permission sets", self._sso().list_permission_sets):
            name = self._name_of(arn)
            if name is not None and name.startswith(PERMISSION_SET_PREFIX):
                found.append(PermissionSetInfo(name, arn))
        return found

    def assignments(self, permission_set_arn: str) -> list[Assignment]:
        found = []
        for account in self._list_arns(
                f"list accounts of {permission_set_arn}",
                self._sso().list_accounts_for_provisioned_permission_set,
                key="AccountIds", PermissionSetArn=permission_set_arn):
            for page in self._pages(f"list assignments of {permission_set_arn}",
                                    self._sso().list_account_assignments,
                                    InstanceArn=self.instance_arn, AccountId=account,
                                    PermissionSetArn=permission_set_arn):
                found += [Assignment(account, permission_set_arn, a["PrincipalId"])
                          for a in page["AccountAssignments"]]
        return found

    def inline_document(self, permission_set_arn: str) -> Mapping[str, Any] | None:
        return self._inline(permission_set_arn)

    def find_permission_set(self, name: str, account: str | None = None) -> str | None:
        """The ARN of the set called `name`: known to this process, among the sets
        provisioned to `account`, or among all of the instance's sets."""
        if name in self._known:
            arn = self._known[name]
            if self._name_of(arn) == name:
                return arn
            del self._known[name]
        sources: list[Iterator[str]] = []
        if account is not None:
            sources.append(self._list_arns(
                f"list permission sets on account {account}",
                self._sso().list_permission_sets_provisioned_to_account, AccountId=account))
        sources.append(self._list_arns("list permission sets", self._sso().list_permission_sets))
        seen: set[str] = set()
        for source in sources:
            for arn in source:
                if arn in seen:
                    continue
                seen.add(arn)
                if self._name_of(arn) == name:
                    self._known[name] = arn
                    return arn
        return None

    def remove(self, permission_set_arn: str, name: str) -> None:
        """Delete a set's assignments and the set (reconcile's repair for orphans)."""
        _check_name(name)
        self._remove_set(permission_set_arn, name)

    # -- steps ------------------------------------------------------------------------

    def _create_set(self, name: str, plan: GrantPlan, duration: str) -> str:
        try:
            # Not retried on a conflict: for a create it means the name is taken.
            created = self._call(
                f"create permission set {name}", self._sso().create_permission_set,
                retry_conflict=False,
                InstanceArn=self.instance_arn, Name=name, SessionDuration=duration,
                Description=f"connect-access grant {plan.grant_id}, until "
                            f"{plan.expires_at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
                Tags=[{"Key": "connect-access:grant-id", "Value": plan.grant_id}])
        except GrantError as exc:
            # A retried create whose first try reached AWS: use the set it made.
            if exc.code != "ConflictException":
                raise
            arn = self.find_permission_set(name)
            if arn is None:
                raise
            return arn
        arn = str(created["PermissionSet"]["PermissionSetArn"])
        self._known[name] = arn
        return arn

    def has_required_boundary(self, permission_set_arn: str) -> bool:
        """Whether the set carries the boundary the bot puts on every set (True when the
        config requires none). For reconcile: a removed boundary is a tampered grant."""
        if self._boundary is None:
            return True
        got = self._call("read a permissions boundary",
                         self._sso().get_permissions_boundary_for_permission_set,
                         missing_ok=True, InstanceArn=self.instance_arn,
                         PermissionSetArn=permission_set_arn)
        return got is not None and got.get("PermissionsBoundary") == self._boundary

    def _put_boundary(self, arn: str, name: str, boundary: Mapping[str, Any]) -> None:
        self._call(f"put the permissions boundary of {name}",
                   self._sso().put_permissions_boundary_to_permission_set,
                   InstanceArn=self.instance_arn, PermissionSetArn=arn,
                   PermissionsBoundary=boundary)
        got = self._call(f"read the permissions boundary of {name}",
                         self._sso().get_permissions_boundary_for_permission_set,
                         missing_ok=True, InstanceArn=self.instance_arn, PermissionSetArn=arn)
        if got is None or got.get("PermissionsBoundary") != boundary:
            raise GrantError(
                f"permission set {name} reads back no or another permissions boundary than "
                f"the required {boundary}; nothing was granted",
                transient=False, code="ReadBackMismatch")

    def _provision(self, arn: str, account: str, name: str) -> None:
        response = self._call(f"provision {name} to account {account}",
                              self._sso().provision_permission_set,
                              InstanceArn=self.instance_arn, PermissionSetArn=arn,
                              TargetType="AWS_ACCOUNT", TargetId=account)
        self._wait(f"provisioning {name} to account {account}",
                   response["PermissionSetProvisioningStatus"],
                   lambda request_id: self._sso().describe_permission_set_provisioning_status(
                       InstanceArn=self.instance_arn,
                       ProvisionPermissionSetRequestId=request_id,
                   )["PermissionSetProvisioningStatus"])

    def _assign(self, arn: str, account: str, user_id: str, name: str) -> None:
        response = self._call(f"assign {name} to user {user_id} on account {account}",
                              self._sso().create_account_assignment,
                              InstanceArn=self.instance_arn, TargetId=account,
                              TargetType="AWS_ACCOUNT", PermissionSetArn=arn,
                              PrincipalType="USER", PrincipalId=user_id)
        self._wait(f"assigning {name} to user {user_id} on account {account}",
                   response["AccountAssignmentCreationStatus"],
                   lambda request_id: self._sso().describe_account_assignment_creation_status(
                       InstanceArn=self.instance_arn,
                       AccountAssignmentCreationRequestId=request_id,
                   )["AccountAssignmentCreationStatus"])

    def _unassign(self, assignment: Assignment, name: str) -> None:
        response = self._call(
            f"remove the assignment of {name} from {assignment.principal_id} on account "
            f"{assignment.account}", self._sso().delete_account_assignment, missing_ok=True,
            InstanceArn=self.instance_arn, TargetId=assignment.account,
            TargetType="AWS_ACCOUNT", PermissionSetArn=assignment.permission_set_arn,
            PrincipalType="USER", PrincipalId=assignment.principal_id)
        if response is None:
            return
        self._wait(f"removing the assignment of {name} on account {assignment.account}",
                   response["AccountAssignmentDeletionStatus"],
                   lambda request_id: self._sso().describe_account_assignment_deletion_status(
                       InstanceArn=self.instance_arn,
                       AccountAssignmentDeletionRequestId=request_id,
                   )["AccountAssignmentDeletionStatus"])

    def _unassign_all(self, arn: str, name: str, only: str | None = None) -> None:
        for assignment in self.assignments(arn):
            if only is None or assignment.principal_id == only:
                self._unassign(assignment, name)

    def _remove_set(self, arn: str, name: str) -> None:
        """Assignments first (Identity Center refuses to delete an assigned set), then
        the set. Used by revoke and by the roll-back of a failed attach."""
        self._unassign_all(arn, name)
        self._call(f"delete permission set {name}", self._sso().delete_permission_set,
                   missing_ok=True, InstanceArn=self.instance_arn, PermissionSetArn=arn)
        self._known.pop(name, None)

    def _is_assigned(self, arn: str, account: str, user_id: str) -> bool:
        for page in self._pages(f"list assignments of {arn}",
                                self._sso().list_account_assignments,
                                InstanceArn=self.instance_arn, AccountId=account,
                                PermissionSetArn=arn):
            if any(a["PrincipalId"] == user_id and a["PrincipalType"] == "USER"
                   for a in page["AccountAssignments"]):
                return True
        return False

    def _inline(self, arn: str) -> Mapping[str, Any] | None:
        got = self._call(f"read the inline policy of {arn}",
                         self._sso().get_inline_policy_for_permission_set, missing_ok=True,
                         InstanceArn=self.instance_arn, PermissionSetArn=arn)
        if got is None or not got.get("InlinePolicy"):
            return None
        return decode_document(got["InlinePolicy"])

    def _name_of(self, arn: str) -> str | None:
        got = self._call(f"describe permission set {arn}", self._sso().describe_permission_set,
                         missing_ok=True, InstanceArn=self.instance_arn, PermissionSetArn=arn)
        return None if got is None else str(got["PermissionSet"]["Name"])

    def _wait(self, what: str, status: Mapping[str, Any],
              describe: Callable[[str], Mapping[str, Any]]) -> None:
        """Poll an asynchronous Identity Center operation until it succeeds; FAILED or a
        time-out is a GrantError."""
        deadline = self._monotonic() + self._poll_timeout
        while status.get("Status") == "IN_PROGRESS":
            if self._monotonic() >= deadline:
                raise GrantError(f"{what} was still in progress after {self._poll_timeout:.0f}s",
                                 transient=True, code="StatusTimeout")
            self._sleep(self._poll_interval)
            request_id = status["RequestId"]
            status = self._call(f"check {what}", describe, request_id)
        if status.get("Status") != "SUCCEEDED":
            reason = status.get("FailureReason") or "no reason given"
            raise GrantError(f"{what} failed: {reason}", transient=False,
                             code="IdentityCenterOperationFailed")

    # -- shared -----------------------------------------------------------------------

    @staticmethod
    def _target(ref: str) -> IdentityCenterTarget:
        try:
            target = parse_target(ref)
        except TargetError as exc:
            raise GrantError(str(exc), transient=False, code="InvalidPrincipal") from None
        if not isinstance(target, IdentityCenterTarget):
            raise GrantError(f"{ref} is not an Identity Center user", transient=False,
                             code="InvalidPrincipal")
        return target

    def _list_arns(self, action: str, fn: Callable[..., Any], key: str = "PermissionSets",
                   **kwargs: Any) -> Iterator[str]:
        for page in self._pages(action, fn, InstanceArn=self.instance_arn, **kwargs):
            yield from page.get(key, [])

    def _pages(self, action: str, fn: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
        while True:
            page = self._call(action, fn, **kwargs)
            yield page
            token = page.get("NextToken")
            if not token:
                return
            kwargs["NextToken"] = token

    def _call(self, action: str, fn: Callable[..., Any], *args: Any,
              missing_ok: bool = False, retry_conflict: bool = True, **kwargs: Any) -> Any:
        """fn(*args, **kwargs); None when missing_ok and AWS says the resource is not found.

        botocore has already retried what it retries (throttling, 5xx, time-outs) by the
        time an error reaches here, so those surface at once. Only ConflictException is
        retried, up to `attempts` tries with backoff and full jitter: Identity Center is
        still applying an earlier write to the same set (or has not made it visible to
        every host), and the same call succeeds once that write has landed."""
        for attempt in range(1, self._attempts + 1):
            try:
                return fn(*args, **kwargs)
            except (ClientError, BotoCoreError) as exc:
                if missing_ok and error_code(exc) == MISSING:
                    return None
                conflict = retry_conflict and is_consistency_conflict(exc)
                if not conflict or attempt == self._attempts:
                    raise to_grant_error(exc, action) from exc
                delay = self._jitter() * min(self._max_delay,
                                             self._base_delay * 2.0 ** (attempt - 1))
                log.warning("%s: %s, retry %d in %.2fs", action, error_code(exc), attempt,
                            delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises


def boundary_reference(boundary_arn: str) -> dict[str, Any]:
    """`required_permissions_boundary` (a customer managed policy, bot.config) as a
    permission set takes it: by name and path, which Identity Center looks up in each
    account the set is provisioned to, so `*` as the account fits."""
    parts = boundary_arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "iam" or not parts[5].startswith("policy/"):
        raise ValueError(f"{boundary_arn!r} is not an IAM policy ARN")
    path, _, name = parts[5].removeprefix("policy").rpartition("/")
    return {"CustomerManagedPolicyReference": {"Name": name, "Path": f"{path}/"}}


def _check_name(name: str) -> None:
    # The bot only ever touches permission sets it named, so an operator's own are safe.
    if not name.startswith(PERMISSION_SET_PREFIX):
        raise GrantError(
            f"permission set name {name!r} does not start with {PERMISSION_SET_PREFIX!r}; "
            "the bot only manages permission sets it named",
            transient=False, code="InvalidPolicyName")
