"""How the AWS adapter names its failures.

Grant and principal failures use the port exceptions (bot.ports.GrantError and
PrincipalError) so the core can handle them without importing boto3. This module decides
which botocore failures are worth retrying; everything else in bot/aws derives from
AwsAdapterError.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from bot.ports import GrantError


class AwsAdapterError(Exception):
    """Base for errors raised by bot/aws outside the Granter/PrincipalDirectory ports."""


class AwsConfigError(AwsAdapterError):
    """The AWS settings (instances, assume-role ARNs, external ids) are unusable."""


# Codes that say "slow down": the request was fine, the caller sends too many. botocore
# retries them with backoff (and, in adaptive mode, lowers its own send rate); a throttled
# call that still fails says nothing about the grant, only about the pace.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
    }
)

# Codes that say "try again later": the request was fine, AWS was busy or broken.
TRANSIENT_CODES = THROTTLING_CODES | frozenset(
    {
        "ServiceFailure",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)

# IAM returns the first two while an entity is being changed by another request, Identity
# Center ConflictException while another write to the same permission set is in flight (a
# provisioning, an assignment) or not yet visible; the same call succeeds moments later.
# botocore does not retry them (they are not throttling, time-outs or 5xx), so the granters
# do, with the read-after-write retry eventual consistency needs anyway.
CONSISTENCY_CODES = frozenset(
    {"EntityTemporarilyUnmodifiable", "ConcurrentModification", "ConflictException"}
)
TRANSIENT_CODES = TRANSIENT_CODES | CONSISTENCY_CODES

# Codes that will fail again unchanged: a person has to fix a quota, permission or input.
PERMANENT_CODES = frozenset(
    {
        "LimitExceeded",
        "MalformedPolicyDocument",
        "AccessDenied",
        "AccessDeniedException",
        "InvalidInput",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "ValidationError",
        "DeleteConflict",
        "EntityAlreadyExists",
        "NoSuchEntity",
        "PolicyNotAttachable",
        "UnmodifiableEntity",
    }
)

_TRANSIENT_EXCEPTIONS = (
    ConnectTimeoutError,
    ReadTimeoutError,
    EndpointConnectionError,
    ConnectionClosedError,
)

_WHAT_TO_DO = {
    "LimitExceeded": "an IAM quota is full (policies per principal or versions per policy); "
    "remove unused policies from the principal or raise the quota",
    "MalformedPolicyDocument": "IAM rejected the generated policy; this is a bug in the "
    "policy compiler, report it with the request id",
    "AccessDenied": "the bot's own IAM role lacks a permission or the principal is not "
    "tagged connect-access:managed=true; compare the role with deploy/bot-iam-policy.json",
    "NoSuchEntity": "the IAM principal or policy does not exist (deleted?); check the "
    "principal mapping",
    "DeleteConflict": "the policy is still attached elsewhere; detach it by hand",
}


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, or the exception class name otherwise."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return type(exc).__name__


def is_throttling(exc: BaseException) -> bool:
    """IAM (or STS) refused the call because of the caller's request rate."""
    return isinstance(exc, ClientError) and error_code(exc) in THROTTLING_CODES


def is_consistency_conflict(exc: BaseException) -> bool:
    """IAM or Identity Center is still applying another change to the same entity."""
    return isinstance(exc, ClientError) and error_code(exc) in CONSISTENCY_CODES


def attempts_made(exc: BaseException) -> int | None:
    """How many HTTP attempts botocore made before giving up, when it says."""
    if isinstance(exc, ClientError):
        retries = exc.response.get("ResponseMetadata", {}).get("RetryAttempts")
        return None if retries is None else int(retries) + 1
    return None


def is_transient(exc: BaseException) -> bool:
    """The same call may succeed later: throttling, a service failure, a time-out."""
    if isinstance(exc, ClientError):
        return error_code(exc) in TRANSIENT_CODES
    return isinstance(exc, _TRANSIENT_EXCEPTIONS)


def to_grant_error(
    exc: BotoCoreError | ClientError, action: str, attempts: int | None = None
) -> GrantError:
    """Turn a botocore failure into the port's GrantError, with a message for the operator.

    Unknown codes are permanent on purpose: retrying something we do not understand forever
    hides it, while a permanent error reaches a person.
    """
    code = error_code(exc)
    transient = is_transient(exc)
    throttled = is_throttling(exc)
    attempts = attempts or attempts_made(exc)
    tries = f"{attempts} attempt(s)" if attempts else "botocore's retries"
    if throttled:
        advice = (f"IAM's request rate limit was still exceeded after {tries}; "
                  "it will be retried at a slower pace")
    elif transient:
        advice = f"AWS did not answer successfully after {tries}; it will be retried"
    else:
        advice = _WHAT_TO_DO.get(code, "this will not succeed by retrying; a person must look")
    return GrantError(
        f"{action} failed ({code}): {advice}. AWS said: {exc}",
        transient=transient,
        code=code,
        throttled=throttled,
    )
