"""The audit trail: hash chain, tamper detection (edit, delete, reorder, cut tail) through
`connect-access audit verify`, and filtered streaming export."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from doubles import FakeClock
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from bot.audit import append_event, event_hash, export_lines, verify_chain
from bot.cli import build_cli
from bot.db import SessionFactory
from bot.lifecycle import RequestService
from bot.models import GENESIS_HASH, AuditEvent

WRITE = "telephony/enable-disable-telephony-options"
READ = "home/list-instance"


def run_cli(database_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_cli(), list(args), env={"DATABASE_URL": database_url})
    return result.exit_code, result.output


def add_events(session_factory: SessionFactory, clock: FakeClock, n: int) -> None:
    with session_factory.begin() as session:
        for i in range(n):
            clock.advance(timedelta(seconds=1))
            append_event(session, at=clock.now(), actor=f"U0{i}", action="note", request_id=None,
                         details={"i": i, "text": "<!channel> & ünïcode"})


def test_chain_links_each_event_to_the_previous(session_factory: SessionFactory,
                                                clock: FakeClock) -> None:
    add_events(session_factory, clock, 3)
    with session_factory() as session:
        events = session.query(AuditEvent).order_by(AuditEvent.seq).all()
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS_HASH
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    first = events[0]
    assert first.hash == event_hash(1, first.at, first.actor, first.action, None,
                                    first.details, GENESIS_HASH)
    assert first.at == clock.now() - timedelta(seconds=2)  # tz-aware round trip


def test_verify_ok(database_url: str, session_factory: SessionFactory, clock: FakeClock) -> None:
    code, output = run_cli(database_url, "audit", "verify")
    assert code == 0 and output.startswith("audit chain intact: 0 events verified\n")
    add_events(session_factory, clock, 5)
    code, output = run_cli(database_url, "audit", "verify")
    assert code == 0 and output.startswith("audit chain intact: 5 events verified\n")
    # Without anchors it says what it cannot see.
    assert "note: no anchors are configured" in output


@pytest.mark.parametrize(("tamper", "broken_at", "message"), [
    ("UPDATE audit_events SET details = '{\"i\": 99}' WHERE seq = 3", 3, "altered"),
    ("UPDATE audit_events SET actor = 'U0MALLORY' WHERE seq = 1", 1, "altered"),
    ("DELETE FROM audit_events WHERE seq = 3", 3, "missing"),
    ("DELETE FROM audit_events WHERE seq = 5", 5, "removed"),
])
def test_verify_finds_tampering(database_url: str, session_factory: SessionFactory,
                                engine: Engine, clock: FakeClock, tamper: str, broken_at: int,
                                message: str) -> None:
    add_events(session_factory, clock, 5)
    with engine.begin() as connection:
        connection.execute(text(tamper))
    code, output = run_cli(database_url, "audit", "verify")
    assert code == 1
    assert f"BROKEN at event {broken_at}" in output and message in output


def test_verify_finds_reordered_events(database_url: str, session_factory: SessionFactory,
                                       engine: Engine, clock: FakeClock) -> None:
    add_events(session_factory, clock, 5)
    with engine.begin() as connection:  # swap events 2 and 3
        connection.execute(text("UPDATE audit_events SET seq = 1000 WHERE seq = 2"))
        connection.execute(text("UPDATE audit_events SET seq = 2 WHERE seq = 3"))
        connection.execute(text("UPDATE audit_events SET seq = 3 WHERE seq = 1000"))
    code, output = run_cli(database_url, "audit", "verify")
    assert code == 1 and "BROKEN at event 2" in output and "does not link" in output


def test_rewriting_an_event_with_a_fresh_hash_breaks_the_next_link(
        session_factory: SessionFactory, engine: Engine, clock: FakeClock) -> None:
    add_events(session_factory, clock, 4)
    with session_factory() as session:
        event = session.get_one(AuditEvent, 2)
        forged = event_hash(2, event.at, "U0MALLORY", event.action, None, event.details,
                            event.prev_hash)
    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'U0MALLORY', hash = :h "
                                "WHERE seq = 2"), {"h": forged})
    with session_factory() as session:
        result = verify_chain(session)
    assert not result.ok and result.broken_seq == 3 and result.checked == 2


def test_transitions_write_their_events_in_the_same_transaction(
        request_service: RequestService, session_factory: SessionFactory) -> None:
    request = request_service.submit(requester="U0ALICE", entry_id=WRITE, reason="incident INC-3",
                                     duration=timedelta(hours=1))
    with session_factory() as session:
        (event,) = session.query(AuditEvent).all()
    assert (event.actor, event.action, event.request_id) == ("U0ALICE", "submitted", request.id)
    assert event.details["reason"] == "incident INC-3" and event.details["entry_hash"] == request.entry_hash


def make_history(service: RequestService, clock: FakeClock) -> tuple[int, int]:
    alice = service.submit(requester="U0ALICE", entry_id=WRITE, reason="alice, needs \"quotes\"",
                           duration=timedelta(hours=1)).id
    clock.advance(timedelta(days=1))
    bob = service.submit(requester="U0BOB", entry_id=READ, reason="bob: queue audit",
                         duration=timedelta(hours=1)).id
    service.approve(bob, "U0LEAD01")
    return alice, bob


def test_export_jsonl_with_filters(database_url: str, request_service: RequestService,
                                   clock: FakeClock) -> None:
    start = clock.now()
    alice, bob = make_history(request_service, clock)
    code, output = run_cli(database_url, "audit", "export", "--format", "jsonl")
    assert code == 0
    records = [json.loads(line) for line in output.splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["request_id"] == alice and records[0]["requester"] == "U0ALICE"
    assert records[0]["at"] == start.isoformat(timespec="microseconds")

    code, output = run_cli(database_url, "audit", "export", "--format", "jsonl",
                           "--requester", "U0BOB")
    bob_records = [json.loads(line) for line in output.splitlines()]
    assert {r["request_id"] for r in bob_records} == {bob}
    assert [r["action"] for r in bob_records] == ["submitted", "vote", "approved", "granting",
                                                  "granted"]

    code, output = run_cli(database_url, "audit", "export", "--format", "jsonl",
                           "--entry", WRITE)
    assert {json.loads(line)["request_id"] for line in output.splitlines()} == {alice}

    until = (start + timedelta(hours=1)).isoformat()
    code, output = run_cli(database_url, "audit", "export", "--format", "jsonl",
                           "--until", until)
    assert [json.loads(line)["request_id"] for line in output.splitlines()] == [alice]
    code, output = run_cli(database_url, "audit", "export", "--format", "jsonl",
                           "--since", until)
    assert len(output.splitlines()) == len(records) - 1


def test_export_csv(database_url: str, request_service: RequestService,
                    clock: FakeClock) -> None:
    alice, _ = make_history(request_service, clock)
    code, output = run_cli(database_url, "audit", "export", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(output)))
    assert rows[0]["requester"] == "U0ALICE" and rows[0]["request_id"] == str(alice)
    assert json.loads(rows[0]["details"])["reason"] == 'alice, needs "quotes"'
    assert len(rows) == 1 + 5  # alice submitted; bob submitted, vote, approved, granting, granted


def test_export_is_a_lazy_stream(session_factory: SessionFactory, clock: FakeClock) -> None:
    add_events(session_factory, clock, 3)
    with session_factory() as session:
        lines = export_lines(session, "jsonl")
        assert json.loads(next(lines))["seq"] == 1
        assert len(list(lines)) == 2


def test_export_rejects_bad_dates_and_formats(database_url: str) -> None:
    code, output = run_cli(database_url, "audit", "export", "--format", "jsonl",
                           "--since", "yesterday")
    assert code == 2 and "--since: expected an ISO date" in output
    code, output = run_cli(database_url, "audit", "export", "--format", "xml")
    assert code == 2 and "xml" in output
    # Read by fromisoformat, but converting it to UTC overflowed (a traceback).
    code, output = run_cli(database_url, "audit", "export", "--format", "csv",
                           "--since", "0001-01-01T00:00:00+05:00")
    assert code == 2 and "--since: expected an ISO date" in output and "outside" in output
    # A window that ends before it starts is a typo, not an empty export.
    code, output = run_cli(database_url, "audit", "export", "--format", "csv",
                           "--since", "2026-02-01", "--until", "2026-01-01")
    assert code == 2 and "--since (2026-02-01T00:00:00+00:00) must be before --until" in output


def test_invalid_database_url_is_named(tmp_path: object) -> None:
    result = CliRunner().invoke(build_cli(), ["audit", "verify"],
                                env={"DATABASE_URL": "mysql://nope"})
    assert result.exit_code == 2 and "DATABASE_URL" in result.output
