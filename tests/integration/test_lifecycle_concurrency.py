"""Races between people clicking at the same moment, on real databases. PostgreSQL is the
one that matters (row locks, SKIP LOCKED, advisory lock); SQLite runs the same tests
through its serialised writers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from doubles import FakeClock, InMemoryGranter
from sqlalchemy import func, select

from bot.audit import verify_chain
from bot.config import parse_config
from bot.db import SessionFactory
from bot.lifecycle import AlreadyActive, DuplicateVote, InvalidTransition, RequestService
from bot.models import AuditEvent, Grant, Vote

WRITE = "telephony/enable-disable-telephony-options"
LEADS = [f"U0LEAD{i:02d}" for i in range(1, 21)]


def race(calls: list[Callable[[], object]]) -> tuple[list[object], list[BaseException]]:
    """Run every call in its own thread, released at the same instant."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            outcome = call()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def count(session_factory: SessionFactory, model: Any, *where: Any) -> int:
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def submit(service: RequestService) -> int:
    return service.submit(requester="U0ALICE", entry_id=WRITE, reason="incident 42",
                          duration=timedelta(hours=1)).id


def test_twenty_approvers_at_once_make_one_approval_and_one_grant(
        request_service: RequestService, granter: InMemoryGranter,
        session_factory: SessionFactory) -> None:
    request_id = submit(request_service)
    results, errors = race([partial(request_service.approve, request_id, who) for who in LEADS])
    assert len(results) == 1, errors
    assert len(errors) == 19 and all(isinstance(e, InvalidTransition) for e in errors), errors
    assert request_service.get(request_id).state == "active"
    assert count(session_factory, Grant) == 1 and len(granter.attach_calls) == 1
    assert count(session_factory, Vote) == 1
    assert count(session_factory, AuditEvent, AuditEvent.action == "approved") == 1
    with session_factory() as session:
        assert verify_chain(session).ok


def test_n_of_m_under_contention_counts_exactly_n_votes(
        request_service: RequestService, granter: InMemoryGranter,
        session_factory: SessionFactory, operator_config_data: dict[str, Any]) -> None:
    operator_config_data["routing"]["tiers"]["write"]["approvals"] = 3
    request_service.config = parse_config(operator_config_data)
    request_id = submit(request_service)
    results, errors = race([partial(request_service.approve, request_id, who) for who in LEADS])
    assert len(results) == 3 and all(isinstance(e, InvalidTransition) for e in errors), errors
    assert count(session_factory, Vote) == 3
    assert count(session_factory, Grant) == 1 and len(granter.attach_calls) == 1
    assert count(session_factory, AuditEvent, AuditEvent.action == "approved") == 1


@pytest.mark.parametrize("round_", range(3))
def test_approve_racing_deny_has_one_consistent_outcome(
        request_service: RequestService, granter: InMemoryGranter,
        session_factory: SessionFactory, round_: int) -> None:
    request_id = submit(request_service)
    approvers, deniers = LEADS[:10], LEADS[10:]
    calls: list[Callable[[], object]] = []
    for approver, denier in zip(approvers, deniers, strict=True):
        calls.append(partial(request_service.approve, request_id, approver))
        calls.append(partial(request_service.deny, request_id, denier))
    results, errors = race(calls)
    assert len(results) == 1 and all(isinstance(e, InvalidTransition) for e in errors), errors
    final = request_service.get(request_id)
    (vote,) = final.votes
    if final.state == "active":
        assert vote.decision == "approve"
        assert count(session_factory, Grant) == 1 and len(granter.attach_calls) == 1
    else:
        assert final.state == "denied" and vote.decision == "deny"
        assert count(session_factory, Grant) == 0 and granter.attach_calls == []
    decided = count(session_factory, AuditEvent,
                    AuditEvent.action.in_(("approved", "denied")))
    assert decided == 1


def test_same_approver_double_click_votes_once(request_service: RequestService,
                                               session_factory: SessionFactory,
                                               operator_config_data: dict[str, Any]) -> None:
    operator_config_data["routing"]["tiers"]["write"]["approvals"] = 2
    request_service.config = parse_config(operator_config_data)
    request_id = submit(request_service)
    results, errors = race([lambda: request_service.approve(request_id, "U0LEAD01")] * 8)
    assert len(results) == 1 and all(isinstance(e, DuplicateVote) for e in errors), errors
    assert count(session_factory, Vote) == 1


def test_simultaneous_submissions_open_one_request(request_service: RequestService,
                                                   session_factory: SessionFactory) -> None:
    results, errors = race([lambda: submit(request_service)] * 10)
    assert len(results) == 1 and all(isinstance(e, AlreadyActive) for e in errors), errors


def test_two_sweepers_revoke_each_grant_once(request_service: RequestService,
                                             granter: InMemoryGranter, clock: FakeClock,
                                             session_factory: SessionFactory) -> None:
    for requester in ("U0ALICE", "U0BOB", "U0LEAD01"):
        request_id = request_service.submit(requester=requester, entry_id=WRITE, reason="incident INC-5",
                                            duration=timedelta(hours=1)).id
        request_service.approve(request_id, "U0LEAD05")
    clock.advance(timedelta(hours=2))
    results, errors = race([request_service.revoke_due_batch] * 4)
    assert errors == []
    outcomes = [o for batch in results for o in batch]  # type: ignore[attr-defined]
    assert sorted(o.state for o in outcomes) == ["revoked"] * 3
    assert len(granter.revoke_calls) == 3
    assert count(session_factory, Grant, Grant.state == "revoked") == 3
