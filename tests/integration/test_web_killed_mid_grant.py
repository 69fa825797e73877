"""`kill -9` of the web process while it is granting a burst of approvals: the scheduler
process settles every request the dead process left `approved` or `granting`, each ends
active with its policy in IAM or failed with nothing attached, every requester is told
(through Slack, by the scheduler), the alerts channel hears of each, and a re-submission
is accepted once the web process is back.

IAM holds every PutRolePolicy at a gate while the approvals come in, so the kill lands
while all of them are in flight; the gate then opens, so the attaches the dead process
sent do reach IAM (the worst case: granted in IAM, not in the database). Meanwhile the
bot's role has lost PutRolePolicy on a few principals (their held attaches and the
recovery's are refused), so that recovery has both outcomes to show. Figures (requests in flight, outcomes, time to settle) are printed.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
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
from bot.models import AccessRequest

pytestmark = pytest.mark.slow

USERS = [f"U0USER{i:02d}" for i in range(1, 25)]  # 24 requesters, one principal each
REFUSED = USERS[-4:]  # IAM refuses their attach after the crash
SWEEP_SECONDS = 2
ENTRY = "home/describe-instance"


@pytest.fixture
def topology(tmp_path: Path, database_url: str, fake_aws_credentials: None
             ) -> Iterator[Topology]:
    yield from make_topology(tmp_path, database_url, USERS,
                             {"sweep_interval": f"{SWEEP_SECONDS}s"})


def test_requests_left_mid_grant_by_a_killed_web_process_are_settled(
        topology: Topology) -> None:
    name = load_catalog().get(ENTRY).name
    web = topology.serve("--lazy-workers", "32")
    topology.scheduler()
    driver = topology.driver
    assert driver is not None
    messages = {}
    for user in USERS:
        _, messages[user] = driver.request(user, name, instance="prod", seconds=3600,
                                           reason=f"incident for {user}")
    ids = dict(zip(USERS, topology.request_ids(), strict=True))

    topology.faults.hold("PutRolePolicy")
    for user in USERS:
        driver.click_message(LEAD, messages[user], "approve_request")
    wait_for(lambda: topology.faults.held >= 20, 60,
             "20+ grants to be in flight, held at IAM")
    with contextlib.suppress(AssertionError):  # most likely all of them, a moment later
        wait_for(lambda: topology.faults.held >= len(USERS), 5, "every grant in flight")
    web.kill()
    killed_at = time.monotonic()
    with topology.sessions() as session:
        at_kill = dict(session.execute(select(AccessRequest.requester, AccessRequest.state)).all())
    states_at_kill = Counter(at_kill.values())
    in_flight = states_at_kill["approved"] + states_at_kill["granting"]
    assert in_flight >= 20, states_at_kill

    for user in REFUSED:
        topology.faults.refuse("PutRolePolicy", topology.roles[user])
    topology.faults.release()

    def settled() -> bool:
        states = topology.states()
        return states["approved"] == 0 and states["granting"] == 0

    wait_for(settled, 60, "the scheduler to settle every request")
    settle_seconds = time.monotonic() - killed_at

    outcomes = {user: topology.request(ids[user]).state for user in USERS}
    for user in USERS:
        if at_kill[user] == "pending":
            # The approval click died with the process before it was recorded: still
            # waiting, and its message still offers the vote to cast again.
            assert outcomes[user] == "pending"
            assert has_buttons(topology.fake.message(messages[user].channel,
                                                     messages[user].ts))
        elif user in REFUSED:
            assert outcomes[user] == "failed", (user, outcomes[user])
            assert topology.policies_on(user) == []
            driver.wait_for_dm(user, "could not be granted")
        else:
            assert outcomes[user] == "active", (user, outcomes[user])
            (grant,) = topology.grants_of(ids[user])
            assert topology.policies_on(user) == sorted(grant.policy_names)
            driver.wait_for_dm(user, "is active until")
    stuck_alerts = wait_for(lambda: (found := topology.alerts("was left")) and
                            len(found) >= in_flight and found, 30,
                            "an alert per request the crash left behind")
    assert {a.channel for a in stuck_alerts} == {ALERTS}
    for user in USERS:
        if at_kill[user] in ("approved", "granting"):
            assert any(f"#{ids[user]}" in shown(a) and topology.arn(user) in shown(a)
                       for a in stuck_alerts), user

    # Once settled, asking again works (from a web process the supervisor restarted).
    topology.serve("--lazy-workers", "8")
    driver = topology.driver
    assert driver is not None
    again_user = next(u for u in REFUSED if outcomes[u] == "failed")
    topology.faults.heal()
    _, again = driver.request(again_user, name, instance="prod", seconds=3600,
                              reason="asking again")
    assert again.channel == APPROVALS
    assert topology.request(topology.request_ids()[-1]).state == "pending"

    counts = Counter(outcomes.values())
    print(f"\nkill -9: {len(USERS)} approvals, {in_flight} in flight at the kill "
          f"({dict(states_at_kill)}), {topology.faults.held} attaches held at IAM; "
          f"outcomes {dict(counts)}; all settled {settle_seconds:.1f}s after the kill "
          f"(sweep interval {SWEEP_SECONDS}s)")
