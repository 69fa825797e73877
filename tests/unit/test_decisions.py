"""The pure decisions behind every refusal: each one allowed and refused, with its words."""

from __future__ import annotations

import pytest

from bot.decisions import (
    SYSTEM,
    Decision,
    Refusal,
    RequestFacts,
    is_approved,
    may_cancel,
    may_extend,
    may_revoke,
    may_vote,
)
from bot.targets import VoteDecision

ALICE, LEAD, STRANGER = "U0ALICE", "U0LEAD01", "U0STRANGER"
PENDING_REQUEST = RequestFacts(id=7, requester=ALICE, state="pending", tier="write")
ACTIVE_REQUEST = RequestFacts(id=7, requester=ALICE, state="active", tier="write")
EXTENDING = RequestFacts(id=7, requester=ALICE, state="active", tier="write",
                         extension_pending=True)
APPROVERS = ("S0LEADS",)


def vote(request: RequestFacts = PENDING_REQUEST, voter: str = LEAD, *,
         approvers: tuple[str, ...] = APPROVERS, is_approver: bool = True,
         has_voted: bool = False, principal_check: VoteDecision | None = None) -> Decision:
    return may_vote(request, voter, approvers=approvers, is_approver=is_approver,
                    has_voted=has_voted, principal_check=principal_check)


# -- may_vote ----------------------------------------------------------------------------

@pytest.mark.parametrize("request_facts", [PENDING_REQUEST, EXTENDING])
def test_an_approver_who_has_not_voted_may_vote(request_facts: RequestFacts) -> None:
    decision = vote(request_facts, principal_check=VoteDecision(True, "no mapping reaches"))
    assert decision == Decision(True, "You are an approver of request #7 and have not voted "
                                      "on it yet.")


@pytest.mark.parametrize("state", ["approved", "denied", "timed_out", "revoked"])
def test_votes_are_closed_once_decided(state: str) -> None:
    decision = vote(RequestFacts(7, ALICE, state, "write"))
    assert decision.refusal is Refusal.WRONG_STATE and not decision.allowed
    words = state.replace("_", " ")
    assert decision.reason == (f"Request #7 is already {words}; there is nothing to approve "
                               "or deny.")


def test_active_access_without_a_pending_extension_has_nothing_to_vote_on() -> None:
    assert not ACTIVE_REQUEST.open_for_votes and EXTENDING.open_for_votes
    assert vote(ACTIVE_REQUEST).refusal is Refusal.WRONG_STATE


def test_the_requester_may_not_vote_even_as_an_approver() -> None:
    decision = vote(voter=ALICE)
    assert decision == Decision(False, (
        "You asked for request #7, so you cannot approve or deny it: it is your own "
        "request; another approver has to."), Refusal.SELF_APPROVAL)


def test_a_mapping_that_reaches_the_target_refuses_first() -> None:
    reaches = VoteDecision(False, "your own mapping reaches the access it grants")
    # Refused as self-approval even where they are not an approver at all.
    decision = vote(is_approver=False, principal_check=reaches)
    assert decision == Decision(False, reaches.reason, Refusal.SELF_APPROVAL)


def test_an_unconfirmed_principal_check_ranks_after_not_being_an_approver() -> None:
    unconfirmed = VoteDecision(False, "could not confirm", unconfirmed=True)
    assert vote(is_approver=False, principal_check=unconfirmed).refusal is Refusal.NOT_APPROVER
    decision = vote(principal_check=unconfirmed)
    assert decision == Decision(False, "could not confirm", Refusal.SELF_APPROVAL)


def test_a_route_without_approvers_refuses_everyone() -> None:
    decision = vote(approvers=(), is_approver=False)
    assert decision == Decision(False, (
        "No approvers are configured for write requests; ask an operator to set routing in "
        "the bot's config."), Refusal.NO_APPROVERS)


def test_someone_not_an_approver_of_the_route_may_not_vote() -> None:
    decision = vote(voter=STRANGER, is_approver=False)
    assert decision == Decision(False, (
        "Only the approvers of request #7 can vote on it, and you are not one of them for "
        "write-tier requests."), Refusal.NOT_APPROVER)


def test_each_approver_votes_once() -> None:
    decision = vote(has_voted=True)
    assert decision == Decision(False, (
        "You have already voted on request #7; each approver votes once."),
        Refusal.ALREADY_VOTED)


# -- is_approved -------------------------------------------------------------------------

@pytest.mark.parametrize(("approvals", "required"), [(1, 1), (2, 2), (3, 2)])
def test_enough_approvals_approve(approvals: int, required: int) -> None:
    assert is_approved(approvals, required) == Decision(
        True, f"{approvals} of {required} approvals: approved.")


def test_too_few_approvals_wait_for_more() -> None:
    assert is_approved(1, 3) == Decision(False, "1 of 3 approvals; 2 more needed.")
    assert is_approved(0, 1).refusal is None  # nobody was refused: it waits


# -- may_cancel --------------------------------------------------------------------------

def test_the_requester_may_cancel_a_pending_request() -> None:
    assert may_cancel(PENDING_REQUEST, ALICE).allowed


def test_only_the_requester_cancels() -> None:
    assert may_cancel(PENDING_REQUEST, LEAD) == Decision(
        False, "Only the person who asked can cancel a request.", Refusal.NOT_REQUESTER)


@pytest.mark.parametrize(("state", "ending"), [
    ("active", " (use “I'm done” to give up active access)."),
    ("denied", "."),
])
def test_only_a_pending_request_is_cancelled(state: str, ending: str) -> None:
    decision = may_cancel(RequestFacts(7, ALICE, state, "write"), ALICE)
    assert decision == Decision(False, (
        f"Request #7 is {state}; only a pending request can be cancelled{ending}"),
        Refusal.WRONG_STATE)


# -- may_extend --------------------------------------------------------------------------

def test_the_holder_may_extend_active_access() -> None:
    assert may_extend(ACTIVE_REQUEST, ALICE).allowed


def test_only_the_holder_extends() -> None:
    assert may_extend(ACTIVE_REQUEST, LEAD) == Decision(
        False, "Only the person who holds the access can ask to extend it.",
        Refusal.NOT_REQUESTER)


def test_only_active_access_is_extended() -> None:
    assert may_extend(PENDING_REQUEST, ALICE) == Decision(
        False, "Request #7 is pending; only active access can be extended.",
        Refusal.WRONG_STATE)


def test_one_extension_at_a_time() -> None:
    assert may_extend(EXTENDING, ALICE) == Decision(
        False, "An extension of request #7 is already waiting for approval.",
        Refusal.WRONG_STATE)


# -- may_revoke --------------------------------------------------------------------------

def test_who_may_end_active_access() -> None:
    assert may_revoke(ACTIVE_REQUEST, ALICE, "done").allowed
    assert may_revoke(ACTIVE_REQUEST, LEAD, "approver", is_approver=True).allowed
    assert may_revoke(ACTIVE_REQUEST, SYSTEM, "expiry").allowed


def test_only_the_holder_says_they_are_done() -> None:
    assert may_revoke(ACTIVE_REQUEST, LEAD, "done", is_approver=True) == Decision(
        False, "Only the person who holds the access can say they are done.",
        Refusal.NOT_REQUESTER)


def test_only_an_approver_of_the_route_revokes_as_approver() -> None:
    assert may_revoke(ACTIVE_REQUEST, STRANGER, "approver") == Decision(False, (
        "Only the requester or an approver for write-tier requests can revoke request #7."),
        Refusal.NOT_APPROVER)


def test_only_the_bot_revokes_for_expiry() -> None:
    assert may_revoke(ACTIVE_REQUEST, ALICE, "expiry") == Decision(
        False, "Only the bot revokes access for expiry.", Refusal.NOT_SYSTEM)


@pytest.mark.parametrize("state", ["pending", "revoking", "revoked"])
def test_only_active_access_is_revoked(state: str) -> None:
    assert may_revoke(RequestFacts(7, ALICE, state, "write"), ALICE, "done") == Decision(
        False, f"Request #7 is {state}; there is no active access to revoke.",
        Refusal.WRONG_STATE)
