"""The state module is the one home of state names: the sets are consistent with the
transitions, and the enum stores and compares as the plain strings the database holds."""

import json

from bot.states import (
    ATTACHED_STATES,
    LIVE_STATES,
    OPEN_STATES,
    TRANSITIONS,
    WAITING_STATES,
    AuditAction,
    RequestState,
)


def test_states_compare_equal_to_the_strings_stored_in_the_database() -> None:
    assert RequestState("active") is RequestState.ACTIVE
    assert RequestState.TIMED_OUT == "timed_out"
    assert f"{RequestState.REVOKING}" == "revoking"
    assert json.dumps({"state": RequestState.IRREVOCABLE}) == '{"state": "irrevocable"}'
    assert "granting" in ATTACHED_STATES


def test_open_states_are_exactly_those_with_a_way_out() -> None:
    assert set(OPEN_STATES) == set(TRANSITIONS)
    assert set(OPEN_STATES) == set(WAITING_STATES) | set(LIVE_STATES)
    assert not set(WAITING_STATES) & set(LIVE_STATES)


def test_every_transition_targets_a_known_state() -> None:
    for source, targets in TRANSITIONS.items():
        assert RequestState(source) in RequestState
        assert targets <= set(RequestState)


def test_audit_actions_are_stored_and_hashed_as_their_names() -> None:
    """The audit chain hashes the action through json: an AuditAction must serialise as
    the plain name older events carry, or a verify would see a different chain."""
    assert json.dumps([AuditAction.GRANTED, AuditAction.GRANT_FAILED]) == (
        '["granted", "grant_failed"]')
    assert len({action.value for action in AuditAction}) == len(AuditAction)
