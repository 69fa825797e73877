"""The request and grant states, and the named sets of them the rest of the code uses.

This is the one home for state names: every other module imports them from here. A
`RequestState` is a `StrEnum`, so it compares equal to (and is stored as) its string
value; rows read back from the database carry plain strings and still compare equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class RequestState(StrEnum):
    """The state of an access request; a grant uses the same names from GRANTING on."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    GRANTING = "granting"
    ACTIVE = "active"
    FAILED = "failed"
    REVOKING = "revoking"
    REVOKED = "revoked"
    IRREVOCABLE = "irrevocable"


PENDING: Final = RequestState.PENDING
APPROVED: Final = RequestState.APPROVED
DENIED: Final = RequestState.DENIED
CANCELLED: Final = RequestState.CANCELLED
TIMED_OUT: Final = RequestState.TIMED_OUT
GRANTING: Final = RequestState.GRANTING
ACTIVE: Final = RequestState.ACTIVE
FAILED: Final = RequestState.FAILED
REVOKING: Final = RequestState.REVOKING
REVOKED: Final = RequestState.REVOKED
IRREVOCABLE: Final = RequestState.IRREVOCABLE

TRANSITIONS: Mapping[str, frozenset[RequestState]] = {
    PENDING: frozenset({APPROVED, DENIED, CANCELLED, TIMED_OUT}),
    # approved -> failed: the policy could not even be built, so nothing was attached.
    APPROVED: frozenset({GRANTING, FAILED}),
    GRANTING: frozenset({ACTIVE, FAILED}),
    ACTIVE: frozenset({REVOKING}),
    REVOKING: frozenset({REVOKED, IRREVOCABLE}),
    IRREVOCABLE: frozenset({REVOKED}),
}
# Requests that hold (or are about to hold) access: a second one for the same entry and
# principal is refused.
OPEN_STATES = (PENDING, APPROVED, GRANTING, ACTIVE, REVOKING, IRREVOCABLE)
# Requests on their way to access: waiting for votes, approved, or being granted.
WAITING_STATES = (PENDING, APPROVED, GRANTING)
# Access is attached (or its removal has not finished yet): the revocation sweep acts on
# these when due, and they count as "active" for the requester.
LIVE_STATES = (ACTIVE, REVOKING, IRREVOCABLE)
# A grant row that may have a policy attached in IAM: being attached, or live.
ATTACHED_STATES = (GRANTING, *LIVE_STATES)


class AuditAction(StrEnum):
    """What the lifecycle records in the audit log about a request: a vocabulary of its own
    beside the states. A move records the action named after where it went (`approved`,
    `revoking`...), except that entering `active` is `granted` and `failed` is
    `grant_failed`; votes, failed revoke attempts and extensions move no state. Stored as
    its string value, like RequestState."""

    SUBMITTED = "submitted"
    VOTE = "vote"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    GRANTING = "granting"
    GRANTED = "granted"
    GRANT_FAILED = "grant_failed"
    REVOKING = "revoking"
    REVOKED = "revoked"
    REVOKE_FAILED = "revoke_failed"
    IRREVOCABLE = "irrevocable"
    EXTENSION_REQUESTED = "extension_requested"
    EXTENDED = "extended"
    EXTENSION_DENIED = "extension_denied"
