"""The bot as the Procfile runs it: `connect-access serve` and `connect-access scheduler`
as separate processes, on SQLite and PostgreSQL, against moto and the fake Slack. What
each notification and alert is, is checked where it lands: the Slack Web API calls the
fake received, the policies in IAM, the rows in the database. No log line is read.

Grants last an hour as requested; the tests move a grant's end in the database (the clock
moving) to reach its reminder and its expiry in seconds. The scheduler reads expiries
from the database every sweep, like grants made by any web process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from topology_kit import (
    ALERTS,
    APPROVALS,
    LEAD,
    Topology,
    has_buttons,
    make_topology,
    shown,
    wait_for,
)

from bot.catalog import load_catalog

ALICE, BOB = "U0ALICE", "U0BOB"
SWEEP = "1s"
STRAY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "connect:*", "Resource": "*"}]}

pytestmark = pytest.mark.slow  # two processes per test, plus moto and the fake Slack


@pytest.fixture
def topology(tmp_path: Path, database_url: str, fake_aws_credentials: None
             ) -> Iterator[Topology]:
    yield from make_topology(tmp_path, database_url, [ALICE, BOB], {
        "sweep_interval": SWEEP, "pending_ttl": "8s", "pending_reminder_after": "2s",
        "remind_before_expiry": "10m", "irrevocable_retry": "2s",
        "reconcile_interval": "1m"})


def entry_names(count: int) -> list[str]:
    catalog = load_catalog()
    names = [e.name for e in catalog if e.tier == "write"]
    return names[:count]


def test_the_scheduler_process_tells_people_and_alerts_through_slack(
        topology: Topology) -> None:
    # A stray connect-access policy on a mapped principal that never had a grant.
    stray = "connect-access-stray0000001"
    topology.iam.put_role_policy(RoleName=topology.roles[BOB], PolicyName=stray,
                                 PolicyDocument=json.dumps(STRAY))
    topology.serve()
    topology.scheduler()
    driver = topology.driver
    assert driver is not None
    fake = topology.fake
    first, second, third = entry_names(3)

    # -- reconcile at the leader's start: the orphan is removed and alerted -------------
    (orphan_alert,) = wait_for(lambda: topology.alerts(stray), 30,
                               "the reconcile alert about the stray policy")
    assert topology.policies_on(BOB) == []
    text = shown(orphan_alert)
    assert topology.arn(BOB) in text and "orphan" in text and "What to do" in text

    # -- a grant: the reminder before expiry, then the expiry -------------------------
    _, message = driver.request(ALICE, first, instance="prod", seconds=3600,
                                reason="incident INC-7")
    request_id = topology.request_ids()[-1]
    driver.click_message(LEAD, message, "approve_request")
    driver.wait_for_dm(ALICE, "is active until")
    granted = topology.policies_on(ALICE)
    assert len(granted) == 1

    topology.move_expiry(request_id, 40)  # now within remind_before_expiry (10m)
    reminder = driver.wait_for_dm(ALICE, "ends")
    buttons = [e["action_id"] for b in reminder.blocks if b["type"] == "actions"
               for e in b["elements"]]
    assert {"extend_grant", "end_grant"} <= set(buttons)

    topology.move_expiry(request_id, 1)
    expired = driver.wait_for_dm(ALICE, "expired")
    assert "the access was removed" in expired.text
    final = wait_for(lambda: (m := fake.message(message.channel, message.ts))
                     and "Expired" in shown(m) and m, 20, "the message to show the expiry")
    assert not has_buttons(final)
    assert topology.policies_on(ALICE) == []
    assert topology.request(request_id).state == "revoked"

    # -- a request nobody decides on: the approver reminder, then the timeout ---------
    _, pending = driver.request(BOB, second, instance="prod", seconds=3600,
                                reason="incident INC-8")
    pending_id = topology.request_ids()[-1]
    (nudge,) = wait_for(lambda: [m for m in fake.messages(APPROVALS)
                                 if m.thread_ts == pending.ts], 20,
                        "the approver reminder in the message's thread")
    assert f"#{pending_id}" in nudge.text and "waiting" in nudge.text
    timed_out = wait_for(lambda: (m := fake.message(pending.channel, pending.ts))
                         and "Timed out" in shown(m) and m, 30,
                         "the approval message to show the timeout")
    assert not has_buttons(timed_out)
    driver.wait_for_dm(BOB, "timed out")
    assert topology.request(pending_id).state == "timed_out"

    # -- a grant IAM will not let go of: irrevocable, alerted, then followed up -------
    _, held_message = driver.request(ALICE, third, instance="prod", seconds=3600,
                                     reason="incident INC-9")
    held_id = topology.request_ids()[-1]
    driver.click_message(LEAD, held_message, "approve_request")
    driver.wait_for_dm(ALICE, "is active until", count=2)
    (policy,) = topology.policies_on(ALICE)
    topology.faults.refuse("DeleteRolePolicy", topology.roles[ALICE])
    topology.move_expiry(held_id, 1)

    driver.wait_for_dm(ALICE, "could not be removed yet")
    (alert,) = wait_for(lambda: topology.alerts(policy), 20, "the irrevocable alert")
    text = shown(alert)
    for expected in (f"#{held_id}", f"<@{ALICE}>", topology.arn(ALICE), policy,
                     "AccessDenied", "What to do"):
        assert expected in text, expected
    assert alert.thread_ts is None
    assert topology.request(held_id).state == "irrevocable"
    assert topology.policies_on(ALICE) == [policy]
    wait_for(lambda: "Could not remove access yet" in shown(
        fake.message(held_message.channel, held_message.ts)), 20,
        "the approval message to show the grant is still held")

    topology.faults.heal()  # a person fixed the bot's permissions
    (followup,) = wait_for(lambda: [m for m in fake.messages(ALERTS)
                                    if m.thread_ts == alert.ts], 30,
                           "the alert's follow-up in its thread")
    assert "has now been removed" in followup.text
    assert topology.policies_on(ALICE) == []
    assert topology.request(held_id).state == "revoked"
    ended = wait_for(lambda: (m := fake.message(held_message.channel, held_message.ts))
                     and "Expired" in shown(m) and m, 20, "the message to show the end")
    assert not has_buttons(ended)
    wait_for(lambda: [m for m in fake.dms(ALICE)
                      if f"#{held_id}*" in m.text and "the access was removed" in m.text],
             20, "the DM that the access is gone at last")
    # Every alert went to the alerts channel, and only there.
    assert all(m.channel == ALERTS for m in topology.alerts("What to do"))
