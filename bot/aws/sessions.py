"""Where every boto3 client in the bot comes from.

One AwsSessions object is built by the CLI from settings and handed to the adapters; nothing
creates a client at import time. It adds three things boto3 does not do on its own here:

- the same botocore Config (standard or adaptive retry mode, short timeouts, a connection
  pool big enough for the threads that share a client) on every client: botocore's retries
  are the only retry policy for throttling, service failures and time-outs;
- a client-side request rate limit for IAM (bot.aws.ratelimit), one per account and
  process, shared by every IAM client of that account, when the operator sets one;
- the endpoint passed in by the caller (AWS_ENDPOINT_URL, e.g. moto's server), not read
  from the environment at import;
- per-instance `sts:AssumeRole` with an external id for Connect instances in other
  accounts. The assumed credentials are botocore's `RefreshableCredentials`: the session
  and its clients are built once per role, and botocore calls sts:AssumeRole again, under
  its own lock, when a request finds the credentials within `refresh_margin` of expiring.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials

from bot.aws.errors import AwsConfigError
from bot.aws.ratelimit import RequestRateLimiter

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_sts import STSClient


# botocore's retry modes the bot supports: `adaptive` also lowers a client's own send rate
# after throttles (a per-client limiter that learns the rate), `standard` only backs off.
RetryMode = Literal["standard", "adaptive"]


# IAM requests an inline grant makes one after another: list and read the principal's
# inline policies (quota), read the policy, put it, read it back.
IAM_CALLS_PER_GRANT = 4


class InstanceAccess(Protocol):
    """The part of an operator's instance config that says how to reach its account.
    Structural, so the settings model can be passed as it is."""

    @property
    def arn(self) -> str: ...

    @property
    def assume_role_arn(self) -> str | None: ...

    @property
    def external_id(self) -> str | None: ...


@dataclass(frozen=True)
class InstanceConfig:
    """A plain InstanceAccess, for tests and scripts."""

    arn: str
    assume_role_arn: str | None = None
    external_id: str | None = None
    alias: str = ""


def account_of(arn: str) -> str:
    """The account id field of an ARN (`arn:partition:service:region:ACCOUNT:...`)."""
    parts = arn.split(":", 5)
    if len(parts) < 6 or parts[0] != "arn" or not parts[4].isdigit():
        raise AwsConfigError(f"{arn!r} is not an ARN with an account id")
    return parts[4]


@dataclass
class _AssumedRole:
    """A role's session (its credentials refresh themselves) and the clients built on it."""

    session: boto3.Session
    clients: dict[str, Any]


class _GivenCredentials(CredentialProvider):
    """Hands a botocore session the credentials it was built for, instead of looking in
    the environment and config files."""

    METHOD = "sts-assume-role"
    CANONICAL_NAME = "connect-access-assume-role"

    def __init__(self, credentials: RefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> RefreshableCredentials:
        return self._credentials


class AwsSessions:
    """Builds boto3 sessions and clients for the bot's own account and, through
    sts:AssumeRole, for the accounts of configured Connect instances."""

    def __init__(
        self,
        region: str,
        endpoint_url: str | None = None,
        *,
        instances: Sequence[InstanceAccess] = (),
        max_attempts: int = 3,
        retry_mode: RetryMode = "standard",
        iam_requests_per_second: float | None = None,
        iam_burst: float | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        # botocore keeps 10 connections per client; threads beyond that (the scheduler's
        # revoke workers) would open and drop a connection per call.
        max_pool_connections: int = 32,
        session_name: str = "connect-access-bot",
        refresh_margin: timedelta = timedelta(minutes=5),
        assume_duration_seconds: int = 3600,
        base_session: boto3.Session | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if max_pool_connections < 1:
            raise AwsConfigError("max_pool_connections must be at least 1")
        if retry_mode not in ("standard", "adaptive"):
            raise AwsConfigError(f"retry_mode must be standard or adaptive, not {retry_mode!r}")
        if max_attempts < 1:
            raise AwsConfigError("max_attempts must be at least 1")
        self.region = region
        self.endpoint_url = endpoint_url or None
        self.config = Config(
            region_name=region,
            # total_max_attempts counts the first try; botocore's `max_attempts` would not.
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
        )
        self._instances = tuple(instances)
        self._session_name = session_name
        self._refresh_margin = refresh_margin
        self._assume_duration = assume_duration_seconds
        self._base = base_session or boto3.Session(region_name=region)
        self._now = now
        self._lock = threading.Lock()
        self._base_clients: dict[str, Any] = {}
        self._assumed: dict[str, _AssumedRole] = {}
        self.assume_role_calls = 0  # visible so tests can see credentials being reused
        self._iam_rate = iam_requests_per_second
        self._iam_burst = iam_burst
        self._iam_limiters: dict[str, RequestRateLimiter] = {}
        for instance in self._instances:
            if instance.external_id and not instance.assume_role_arn:
                raise AwsConfigError(
                    f"instance {instance.arn}: external_id is set but assume_role_arn is not; "
                    "add the role to assume in that account or remove the external id"
                )

    # -- sessions ---------------------------------------------------------------------

    def session_for(self, instance: InstanceAccess | None) -> boto3.Session:
        """The session for an instance's account: assumed-role credentials when the
        instance names a role, the bot's own credentials otherwise (or for None)."""
        if instance is None or not instance.assume_role_arn:
            return self._base
        with self._lock:
            return self._assumed_locked(instance.assume_role_arn, instance.external_id).session

    def instance_for_account(self, account_id: str) -> InstanceAccess | None:
        """The configured instance whose assume-role lives in `account_id`, if any."""
        for instance in self._instances:
            if instance.assume_role_arn and account_of(instance.assume_role_arn) == account_id:
                return instance
        return None

    # -- clients ----------------------------------------------------------------------

    def client(self, service: str, instance: InstanceAccess | None = None) -> Any:
        """A client for `service`, cached per credentials (boto3 clients are thread-safe,
        sessions are not, so creation happens under the lock)."""
        with self._lock:
            if instance is None or not instance.assume_role_arn:
                cached = self._base_clients.get(service)
                if cached is None:
                    cached = self._make_client(self._base, service)
                    self._base_clients[service] = cached
                return cached
            entry = self._assumed_locked(instance.assume_role_arn, instance.external_id)
            cached = entry.clients.get(service)
            if cached is None:
                cached = self._make_client(entry.session, service, instance)
                entry.clients[service] = cached
            return cached

    def iam(self, instance: InstanceAccess | None = None) -> IAMClient:
        client: IAMClient = self.client("iam", instance)
        return client

    def iam_for_account(self, account_id: str | None) -> IAMClient:
        """The IAM client that can change principals in `account_id`: through the
        instance's assumed role when one lives there, else the bot's own credentials."""
        instance = self.instance_for_account(account_id) if account_id else None
        return self.iam(instance)

    def iam_for_principal(self, principal_arn: str) -> IAMClient:
        return self.iam_for_account(account_of(principal_arn))

    # -- pacing -----------------------------------------------------------------------

    def iam_limiter(self, account_id: str | None = None) -> RequestRateLimiter | None:
        """The IAM rate limiter for the credentials that reach `account_id` (None: the
        bot's own), or None when no rate limit is configured."""
        if self._iam_rate is None:
            return None
        instance = self.instance_for_account(account_id) if account_id else None
        with self._lock:
            return self._limiter_locked(self._limit_key(instance))

    def expected_grant_wait(self, principal_arn: str) -> float:
        """bot.ports.Pacing: seconds a grant to this principal would queue behind the IAM
        requests waiting for the rate limit (0 without a limit). Each of a grant's IAM
        calls waits its turn, so the queue ahead counts once per call."""
        limiter = self.iam_limiter(account_of(principal_arn))
        return 0.0 if limiter is None else limiter.expected_wait() * IAM_CALLS_PER_GRANT

    # -- internals --------------------------------------------------------------------

    def _make_client(
        self, session: boto3.Session, service: str, instance: InstanceAccess | None = None
    ) -> Any:
        client = session.client(  # type: ignore[call-overload]
            service, region_name=self.region, endpoint_url=self.endpoint_url, config=self.config
        )
        if service == "iam" and self._iam_rate is not None:
            self._limiter_locked(self._limit_key(instance)).attach(client, "iam")
        return client

    @staticmethod
    def _limit_key(instance: InstanceAccess | None) -> str:
        # IAM's budget is per account: one limiter for the bot's own credentials, one per
        # account reached by assuming a role.
        if instance is None or not instance.assume_role_arn:
            return ""
        return account_of(instance.assume_role_arn)

    def _limiter_locked(self, key: str) -> RequestRateLimiter:
        limiter = self._iam_limiters.get(key)
        if limiter is None:
            assert self._iam_rate is not None
            limiter = RequestRateLimiter(self._iam_rate, self._iam_burst)
            self._iam_limiters[key] = limiter
        return limiter

    def _assumed_locked(self, role_arn: str, external_id: str | None) -> _AssumedRole:
        cached = self._assumed.get(role_arn)
        if cached is not None:
            return cached
        sts: STSClient = self._base_clients.get("sts") or self._make_client(self._base, "sts")
        self._base_clients["sts"] = sts

        def assume() -> dict[str, str]:
            return self._assume_role(sts, role_arn, external_id)

        # The first AssumeRole happens here, so a failure (throttled, denied) reaches the
        # caller now and nothing is cached; botocore makes the later ones when it refreshes.
        first = assume()
        margin = int(self._refresh_margin.total_seconds())
        credentials = RefreshableCredentials(
            access_key=first["access_key"],
            secret_key=first["secret_key"],
            token=first["token"],
            expiry_time=datetime.fromisoformat(first["expiry_time"]),
            refresh_using=assume,
            method=_GivenCredentials.METHOD,
            time_fetcher=self._now,
            advisory_timeout=margin,
            mandatory_timeout=margin,
        )
        core = botocore.session.Session()
        core.register_component(
            "credential_provider", CredentialResolver([_GivenCredentials(credentials)])
        )
        entry = _AssumedRole(boto3.Session(botocore_session=core, region_name=self.region), {})
        self._assumed[role_arn] = entry
        return entry

    def _assume_role(
        self, sts: STSClient, role_arn: str, external_id: str | None
    ) -> dict[str, str]:
        """sts:AssumeRole with the bot's own credentials, in the metadata form
        RefreshableCredentials refreshes from."""
        kwargs: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": self._session_name,
            "DurationSeconds": self._assume_duration,
        }
        if external_id:
            kwargs["ExternalId"] = external_id
        response = sts.assume_role(**kwargs)
        self.assume_role_calls += 1
        credentials = response["Credentials"]
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": credentials["Expiration"].isoformat(),
        }
