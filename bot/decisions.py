"""Who may do what to a request, as pure decisions with a reason in words.

The lifecycle enforces these (raising its domain error for a refusal) and the Slack layer
asks them first, so a person hears the same sentence whichever refuses. Pure: the caller
gathers the facts (state, approver membership, earlier votes, the principal check from
bot.targets.self_approval_decision) and these functions only judge them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from bot.states import ACTIVE, PENDING
from bot.targets import VoteDecision

# The actor the bot itself acts as (expiry, sweeps, recovery).
SYSTEM: Final = "system"
RevokeReason = Literal["done", "approver", "expiry"]


class Refusal(StrEnum):
    """Why a decision refused, so a caller can pick its error (or wording) without
    parsing the reason."""

    WRONG_STATE = "wrong_state"  # the request is not in a state where this makes sense
    SELF_APPROVAL = "self_approval"
    NO_APPROVERS = "no_approvers"  # the route names nobody who could approve
    NOT_APPROVER = "not_approver"
    ALREADY_VOTED = "already_voted"
    NOT_REQUESTER = "not_requester"
    NOT_SYSTEM = "not_system"  # only the bot does this (revoking for expiry)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    refusal: Refusal | None = None

    @classmethod
    def allow(cls, reason: str) -> Decision:
        return cls(True, reason)

    @classmethod
    def refuse(cls, refusal: Refusal, reason: str) -> Decision:
        return cls(False, reason, refusal)


@dataclass(frozen=True)
class RequestFacts:
    """What the decisions need to know about one request."""

    id: int
    requester: str
    state: str
    tier: str
    extension_pending: bool = False  # active, with an extension waiting for approval

    @property
    def open_for_votes(self) -> bool:
        """Pending, or active with an extension waiting for re-approval."""
        return self.state == PENDING or (self.state == ACTIVE and self.extension_pending)


def _words(state: str) -> str:
    return state.replace("_", " ")


def may_vote(request: RequestFacts, voter: str, *, approvers: Collection[str],
             is_approver: bool, has_voted: bool,
             principal_check: VoteDecision | None = None) -> Decision:
    """May `voter` approve or deny `request` now?

    `approvers`: the route's configured approver ids; `is_approver`: whether `voter` is
    one of them (user groups resolved by the caller); `has_voted`: in the current round;
    `principal_check`: the principal-based self-approval check, when the caller has the
    voter's mapping (without it only the Slack ids are compared). A refusal for want of a
    lookup (`unconfirmed`) ranks after "not an approver": a stranger hears that first.
    """
    if not request.open_for_votes:
        return Decision.refuse(Refusal.WRONG_STATE, (
            f"Request #{request.id} is already {_words(request.state)}; there is nothing "
            "to approve or deny."))
    if voter == request.requester:
        return Decision.refuse(Refusal.SELF_APPROVAL, (
            f"You asked for request #{request.id}, so you cannot approve or deny it: it is "
            "your own request; another approver has to."))
    if (principal_check is not None and not principal_check.allowed
            and not principal_check.unconfirmed):
        return Decision.refuse(Refusal.SELF_APPROVAL, principal_check.reason)
    if not approvers:
        return Decision.refuse(Refusal.NO_APPROVERS, (
            f"No approvers are configured for {request.tier} requests; ask an operator to "
            "set routing in the bot's config."))
    if not is_approver:
        return Decision.refuse(Refusal.NOT_APPROVER, (
            f"Only the approvers of request #{request.id} can vote on it, and you are not "
            f"one of them for {request.tier}-tier requests."))
    if principal_check is not None and not principal_check.allowed:
        return Decision.refuse(Refusal.SELF_APPROVAL, principal_check.reason)
    if has_voted:
        return Decision.refuse(Refusal.ALREADY_VOTED, (
            f"You have already voted on request #{request.id}; each approver votes once."))
    return Decision.allow(f"You are an approver of request #{request.id} and have not "
                          "voted on it yet.")


def is_approved(approvals: int, required: int) -> Decision:
    """Do `approvals` (this round's approve votes) reach the `required` count?"""
    if approvals >= required:
        return Decision.allow(f"{approvals} of {required} approvals: approved.")
    # Not a refusal of anyone: the request simply waits for more votes.
    return Decision(False, f"{approvals} of {required} approvals; "
                           f"{required - approvals} more needed.")


def may_cancel(request: RequestFacts, actor: str) -> Decision:
    """Only the requester cancels, and only while the request is pending."""
    if actor != request.requester:
        return Decision.refuse(Refusal.NOT_REQUESTER,
                               "Only the person who asked can cancel a request.")
    if request.state != PENDING:
        hint = (" (use “I'm done” to give up active access)." if request.state == ACTIVE
                else ".")
        return Decision.refuse(Refusal.WRONG_STATE, (
            f"Request #{request.id} is {_words(request.state)}; only a pending request can "
            f"be cancelled{hint}"))
    return Decision.allow(f"You asked for request #{request.id} and it is still pending.")


def may_extend(request: RequestFacts, actor: str) -> Decision:
    """Only the holder asks for more time, on active access, one extension at a time."""
    if actor != request.requester:
        return Decision.refuse(Refusal.NOT_REQUESTER,
                               "Only the person who holds the access can ask to extend it.")
    if request.state != ACTIVE:
        return Decision.refuse(Refusal.WRONG_STATE, (
            f"Request #{request.id} is {_words(request.state)}; only active access can be "
            "extended."))
    if request.extension_pending:
        return Decision.refuse(Refusal.WRONG_STATE, (
            f"An extension of request #{request.id} is already waiting for approval."))
    return Decision.allow(f"Request #{request.id} is yours and active.")


def may_revoke(request: RequestFacts, actor: str, reason: RevokeReason, *,
               is_approver: bool = False) -> Decision:
    """Active access ends early by its holder ("done"), by an approver of its route
    (`is_approver`, groups resolved by the caller) or by the bot at expiry."""
    if reason == "done" and actor != request.requester:
        return Decision.refuse(Refusal.NOT_REQUESTER,
                               "Only the person who holds the access can say they are done.")
    if reason == "approver" and not is_approver:
        return Decision.refuse(Refusal.NOT_APPROVER, (
            f"Only the requester or an approver for {request.tier}-tier requests can "
            f"revoke request #{request.id}."))
    if reason == "expiry" and actor != SYSTEM:
        return Decision.refuse(Refusal.NOT_SYSTEM, "Only the bot revokes access for expiry.")
    if request.state != ACTIVE:
        return Decision.refuse(Refusal.WRONG_STATE, (
            f"Request #{request.id} is {_words(request.state)}; there is no active access "
            "to revoke."))
    return Decision.allow(f"Request #{request.id} is active and you may end it.")
