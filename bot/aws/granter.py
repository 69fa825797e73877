"""IamGranter: puts a grant's policies on an IAM principal and takes them off again.

One retry policy: botocore's (standard or adaptive mode, set in bot.aws.sessions) retries
throttling, service failures and time-outs, paced by the client-side rate limit when one is
configured. The granter adds only what IAM's eventual consistency needs and botocore does
not do: a policy just written that does not read back yet, and IAM's "entity is being
modified" conflicts, are retried here with exponential backoff and full jitter. Everything
else surfaces at once as GrantError with the AWS code (`throttled` when IAM still refused
the rate after botocore's retries). Every call is safe to repeat, so a retry after a
time-out whose request did reach IAM does no harm.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.errors import error_code, is_consistency_conflict, to_grant_error
from bot.aws.iam_calls import IAM_CALLS, page
from bot.aws.principals import IamPrincipal, parse_principal_arn

# The one definition of a policy's canonical form and hash (re-exported for bot.aws users).
from bot.evidence import canonical_json as canonical_json
from bot.evidence import document_hash as document_hash
from bot.ports import (
    AttachedPolicy,
    GrantError,
    GrantPlan,
    PolicyDocument,
    PolicyKind,
    PrincipalError,
)
from bot.targets import TargetError, parse_target

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

log = logging.getLogger(__name__)

POLICY_PREFIX = "connect-access-"
MANAGED_PATH = "/connect-access/"
GRANT_ID_TAG = "connect-access:grant-id"
EXPIRES_AT_TAG = "connect-access:expires-at"
MAX_POLICY_VERSIONS = 5  # IAM keeps at most five versions of a managed policy


def decode_document(raw: str | Mapping[str, Any]) -> Mapping[str, Any]:
    """A policy document as IAM returned it: boto3 hands back a dict, the raw API (and
    some SDK paths) a URL-encoded JSON string."""
    if not isinstance(raw, str):
        return raw
    text = raw if raw.lstrip().startswith("{") else unquote(raw)
    decoded = json.loads(text)
    if not isinstance(decoded, dict):
        raise ValueError("policy document is not a JSON object")
    return decoded


def iam_policy_size(document: Mapping[str, Any]) -> int:
    """Characters IAM counts against the size quotas: the JSON without any whitespace."""
    return len("".join(canonical_json(document).split()))


def managed_policy_arn(principal: IamPrincipal, name: str, path: str = MANAGED_PATH) -> str:
    return f"arn:{principal.partition}:iam::{principal.account_id}:policy{path}{name}"


class IamGranter:
    """Granter over IAM (see bot.ports.Granter)."""

    def __init__(
        self,
        iam_for_principal: Callable[[str], IAMClient],
        *,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        managed_path: str = MANAGED_PATH,
    ) -> None:
        # `attempts`, `base_delay`, `max_delay`: the consistency retry only (a read-back
        # miss, an entity being modified); botocore retries everything else.
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._iam_for_principal = iam_for_principal
        self._attempts = attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._sleep = sleep
        self._jitter = jitter
        self._managed_path = managed_path

    # -- Granter port -----------------------------------------------------------------

    def attach(self, plan: GrantPlan) -> tuple[AttachedPolicy, ...]:
        principal = self._principal(plan.principal_arn)
        _check_kind(plan.kind)
        for policy in plan.policies:
            _check_name(policy.name)
        iam = self._client(principal)
        created: list[str] = []
        attached: list[AttachedPolicy] = []
        try:
            for policy in plan.policies:
                if plan.kind == "inline":
                    attached.append(self._attach_inline(iam, principal, policy, created))
                else:
                    attached.append(self._attach_managed(iam, principal, policy, plan, created))
        except GrantError:
            # Leave nothing behind that this call added; policies that existed before (an
            # extension updating an active grant) stay, so a failed update never cuts access.
            self._roll_back(iam, principal, plan.kind, created)
            raise
        return tuple(attached)

    def revoke(self, principal_arn: str, kind: PolicyKind, policy_names: Sequence[str]) -> None:
        principal = self._principal(principal_arn)
        _check_kind(kind)
        for name in policy_names:
            _check_name(name)
        iam = self._client(principal)
        for name in policy_names:
            if kind == "inline":
                self._revoke_inline(iam, principal, name)
            else:
                self._revoke_managed(iam, principal, name)

    def inline_usage(self, principal_arn: str, exclude: Sequence[str] = ()) -> int:
        principal = self._principal(principal_arn)
        iam = self._client(principal)
        total = 0
        for name in self.inline_policy_names(principal_arn):
            if name in exclude:
                continue
            document = self._get_inline(iam, principal, name)
            if document is not None:
                total += iam_policy_size(document)
        return total

    # -- reads used by reconcile ------------------------------------------------------

    def inline_policy_names(self, principal_arn: str) -> list[str]:
        principal = self._principal(principal_arn)
        iam = self._client(principal)
        pages = self._pages(
            f"list inline policies of {principal.arn}",
            lambda marker: IAM_CALLS[principal.kind].list_inline(iam, principal.name, marker),
        )
        return [name for page in pages for name in page["PolicyNames"]]

    def inline_document(self, principal_arn: str, name: str) -> Mapping[str, Any] | None:
        principal = self._principal(principal_arn)
        return self._get_inline(self._client(principal), principal, name)

    def attached_managed_arns(self, principal_arn: str) -> list[str]:
        principal = self._principal(principal_arn)
        iam = self._client(principal)
        pages = self._pages(
            f"list managed policies of {principal.arn}",
            lambda marker: IAM_CALLS[principal.kind].list_attached(
                iam, principal.name, self._managed_path, marker
            ),
        )
        return [p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]]

    def unattached_managed_names(self, principal_arn: str) -> list[str]:
        """Names of managed policies under the bot's path, in the principal's account,
        attached to nothing."""
        iam = self._client(self._principal(principal_arn))
        pages = self._pages(
            "list the bot's managed policies",
            lambda marker: iam.list_policies(
                Scope="Local", PathPrefix=self._managed_path, **page(marker)
            ),
        )
        return [
            p["PolicyName"]
            for page in pages
            for p in page["Policies"]
            if p.get("AttachmentCount", 0) == 0
        ]

    def managed_document(self, principal_arn: str, policy_arn: str) -> Mapping[str, Any] | None:
        iam = self._client(self._principal(principal_arn))
        return self._get_managed_document(iam, policy_arn)

    def authorization_details(self, principal_arn: str) -> Iterator[Mapping[str, Any]]:
        """Every page of GetAccountAuthorizationDetails for the principal's account: roles,
        users and groups with their inline policies (documents included) and attached
        managed policies, and the account's own managed policies with their versions. A
        thousand entities a call, where reading principal by principal costs two or more
        calls each. Raises GrantError (botocore has retried each page)."""
        iam = self._client(self._principal(principal_arn))
        yield from self._pages(
            "read the account's authorization details",
            lambda marker: iam.get_account_authorization_details(
                Filter=["Role", "User", "Group", "LocalManagedPolicy"],
                MaxItems=1000,
                **page(marker),
            ),
        )

    @property
    def managed_path(self) -> str:
        return self._managed_path

    def managed_policy_arn(self, principal_arn: str, name: str) -> str:
        return managed_policy_arn(self._principal(principal_arn), name, self._managed_path)

    # -- inline -----------------------------------------------------------------------

    def _attach_inline(
        self, iam: IAMClient, principal: IamPrincipal, policy: PolicyDocument, created: list[str]
    ) -> AttachedPolicy:
        want = document_hash(policy.document)
        current = self._get_inline(iam, principal, policy.name)
        if current is None or document_hash(current) != want:
            self._call(
                f"put inline policy {policy.name} on {principal.arn}",
                IAM_CALLS[principal.kind].put_inline,
                iam,
                principal.name,
                policy.name,
                json.dumps(policy.document),
            )
            if current is None:
                created.append(policy.name)
        got = self._read_back(
            f"inline policy {policy.name} on {principal.arn}",
            lambda: self._get_inline(iam, principal, policy.name),
        )
        return self._verified(policy, None, got, want, principal)

    def _get_inline(
        self, iam: IAMClient, principal: IamPrincipal, name: str
    ) -> Mapping[str, Any] | None:
        response = self._call(
            f"read inline policy {name} of {principal.arn}",
            IAM_CALLS[principal.kind].get_inline,
            iam,
            principal.name,
            name,
            missing_ok=True,
        )
        return None if response is None else decode_document(response["PolicyDocument"])

    def _revoke_inline(self, iam: IAMClient, principal: IamPrincipal, name: str) -> None:
        self._call(
            f"delete inline policy {name} from {principal.arn}",
            IAM_CALLS[principal.kind].delete_inline,
            iam,
            principal.name,
            name,
            missing_ok=True,
        )

    # -- managed ----------------------------------------------------------------------

    def _attach_managed(
        self,
        iam: IAMClient,
        principal: IamPrincipal,
        policy: PolicyDocument,
        plan: GrantPlan,
        created: list[str],
    ) -> AttachedPolicy:
        arn = managed_policy_arn(principal, policy.name, self._managed_path)
        want = document_hash(policy.document)
        tags = [
            {"Key": GRANT_ID_TAG, "Value": plan.grant_id},
            {"Key": EXPIRES_AT_TAG, "Value": plan.expires_at.isoformat()},
        ]
        current = self._get_managed_document(iam, arn)
        if current is None:
            try:
                self._call(
                    f"create managed policy {arn}",
                    iam.create_policy,
                    PolicyName=policy.name,
                    Path=self._managed_path,
                    PolicyDocument=json.dumps(policy.document),
                    Description=f"connect-access grant {plan.grant_id}",
                    Tags=tags,
                )
                created.append(policy.name)
            except GrantError as exc:
                # A retried create whose first try reached IAM: carry on with the update path.
                if exc.code != "EntityAlreadyExists":
                    raise
                current = self._get_managed_document(iam, arn)
        if current is not None and document_hash(current) != want:
            self._replace_default_version(iam, arn, policy)
            self._call(f"tag managed policy {arn}", iam.tag_policy, PolicyArn=arn, Tags=tags)
        # A policy that already existed may already be attached: then there is nothing to
        # do (a repeated attach changes nothing, not even CloudTrail).
        if current is None or arn not in self.attached_managed_arns(principal.arn):
            self._call(
                f"attach {arn} to {principal.arn}",
                IAM_CALLS[principal.kind].attach_managed,
                iam,
                principal.name,
                arn,
            )
        got = self._read_back(f"managed policy {arn}", lambda: self._get_managed_document(iam, arn))
        return self._verified(policy, arn, got, want, principal)

    def _replace_default_version(self, iam: IAMClient, arn: str, policy: PolicyDocument) -> None:
        versions = self._call(f"list versions of {arn}", iam.list_policy_versions, PolicyArn=arn)
        old = [v for v in versions["Versions"] if not v["IsDefaultVersion"]]
        if len(versions["Versions"]) >= MAX_POLICY_VERSIONS and old:
            self._delete_version(iam, arn, min(old, key=lambda v: v["CreateDate"]))
        self._call(
            f"update managed policy {arn}",
            iam.create_policy_version,
            PolicyArn=arn,
            PolicyDocument=json.dumps(policy.document),
            SetAsDefault=True,
        )

    def _delete_version(self, iam: IAMClient, arn: str, version: Mapping[str, Any]) -> None:
        self._call(
            f"delete version {version['VersionId']} of {arn}",
            iam.delete_policy_version,
            missing_ok=True,
            PolicyArn=arn,
            VersionId=version["VersionId"],
        )

    def _get_managed_document(self, iam: IAMClient, arn: str) -> Mapping[str, Any] | None:
        got = self._call(
            f"read managed policy {arn}", iam.get_policy, missing_ok=True, PolicyArn=arn
        )
        if got is None:
            return None
        version = self._call(
            f"read default version of {arn}",
            iam.get_policy_version,
            missing_ok=True,
            PolicyArn=arn,
            VersionId=got["Policy"]["DefaultVersionId"],
        )
        return None if version is None else decode_document(version["PolicyVersion"]["Document"])

    def _revoke_managed(self, iam: IAMClient, principal: IamPrincipal, name: str) -> None:
        arn = managed_policy_arn(principal, name, self._managed_path)
        self._call(
            f"detach {arn} from {principal.arn}",
            IAM_CALLS[principal.kind].detach_managed,
            iam,
            principal.name,
            arn,
            missing_ok=True,
        )
        versions = self._call(
            f"list versions of {arn}", iam.list_policy_versions, missing_ok=True, PolicyArn=arn
        )
        if versions is None:
            return
        # IAM refuses to delete a policy that still has non-default versions.
        for version in versions["Versions"]:
            if not version["IsDefaultVersion"]:
                self._delete_version(iam, arn, version)
        self._call(
            f"delete managed policy {arn}", iam.delete_policy, missing_ok=True, PolicyArn=arn
        )

    # -- shared -----------------------------------------------------------------------

    def _principal(self, arn: str) -> IamPrincipal:
        """The IAM principal a target reference writes to: the ARN itself, or a shared
        role's ARN (its plans already carry the session condition)."""
        try:
            holder = parse_target(arn).policy_holder
            if holder is None:
                raise GrantError(
                    f"{arn} is an Identity Center user; the IAM granter cannot grant to it",
                    transient=False, code="InvalidPrincipal")
            return parse_principal_arn(holder)
        except (PrincipalError, TargetError) as exc:
            raise GrantError(str(exc), transient=False, code="InvalidPrincipal") from exc

    def _client(self, principal: IamPrincipal) -> IAMClient:
        # Getting the client may call sts:AssumeRole, which can throttle like anything else.
        client: IAMClient = self._call(
            f"get credentials for account {principal.account_id}",
            self._iam_for_principal,
            principal.arn,
        )
        return client

    def _call(
        self,
        action: str,
        fn: Callable[..., Any],
        *args: Any,
        missing_ok: bool = False,
        **kwargs: Any,
    ) -> Any:
        """fn(*args, **kwargs); None when missing_ok and IAM says NoSuchEntity.

        botocore has already retried what it retries (throttling, 5xx, time-outs) by the
        time an error reaches here; only IAM's consistency conflicts are retried again."""
        for attempt in range(1, self._attempts + 1):
            try:
                return fn(*args, **kwargs)
            except (ClientError, BotoCoreError) as exc:
                if missing_ok and error_code(exc) == "NoSuchEntity":
                    return None
                if not is_consistency_conflict(exc) or attempt == self._attempts:
                    raise to_grant_error(exc, action) from exc
                delay = self._backoff(attempt)
                log.warning("%s: %s, retry %d in %.2fs", action, error_code(exc), attempt, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _pages(
        self, action: str, fetch: Callable[[str | None], Mapping[str, Any]]
    ) -> Iterator[Any]:
        """Every page of a paginated IAM list call (`fetch` takes the page marker, None for
        the first), each page fetched through `_call` (so botocore retries each on its own)."""
        marker: str | None = None
        while True:
            got = self._call(action, fetch, marker)
            yield got
            if not got.get("IsTruncated"):
                return
            marker = got["Marker"]

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
        return self._jitter() * min(self._max_delay, self._base_delay * 2.0 ** (attempt - 1))

    def _read_back(
        self, what: str, read: Callable[[], Mapping[str, Any] | None]
    ) -> Mapping[str, Any]:
        """Read a policy just written. IAM is eventually consistent, so a miss right after
        a successful put is retried before it counts as a failure."""
        for attempt in range(1, self._attempts + 1):
            document = read()
            if document is not None:
                return document
            if attempt < self._attempts:
                self._sleep(self._backoff(attempt))
        raise GrantError(
            f"{what} was written but IAM does not return it; it will be retried",
            transient=True,
            code="ReadBackMissing",
        )

    @staticmethod
    def _verified(
        policy: PolicyDocument,
        arn: str | None,
        got: Mapping[str, Any],
        want: str,
        principal: IamPrincipal,
    ) -> AttachedPolicy:
        got_hash = document_hash(got)
        if got_hash != want:
            raise GrantError(
                f"policy {policy.name} on {principal.arn} reads back different from what was "
                "written (changed concurrently by someone else?); nothing was granted",
                transient=False,
                code="ReadBackMismatch",
            )
        return AttachedPolicy(policy.name, arn, got_hash)

    def _roll_back(
        self, iam: IAMClient, principal: IamPrincipal, kind: PolicyKind, names: list[str]
    ) -> None:
        for name in names:
            try:
                if kind == "inline":
                    self._revoke_inline(iam, principal, name)
                else:
                    self._revoke_managed(iam, principal, name)
            except GrantError as exc:
                # Reconcile removes it later: the grant is not active, so it is an orphan.
                log.error("could not roll back %s on %s: %s", name, principal.arn, exc)


def _check_kind(kind: str) -> None:
    if kind not in ("inline", "managed"):
        raise GrantError(f"the IAM granter writes inline or managed policies, not {kind}",
                         transient=False, code="InvalidPlan")


def _check_name(name: str) -> None:
    # The bot only ever touches policies it named, so an operator's own policies are safe
    # from attach, revoke and reconcile alike.
    if not name.startswith(POLICY_PREFIX):
        raise GrantError(
            f"policy name {name!r} does not start with {POLICY_PREFIX!r}; the bot only "
            "manages policies it named",
            transient=False,
            code="InvalidPolicyName",
        )
