"""The "See permissions" modal builder within Slack's limits, whatever the policy's size."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from bot.slack.blocks.permissions import chunk_lines, parse_value, permissions_modal
from bot.slack.services import EntryBrief, PermissionStatement, PermissionsView

START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def view_with(statements: int, actions_each: int, effects: int = 0) -> PermissionsView:
    return PermissionsView(
        entry=EntryBrief("x/big", "Big <!channel> & co", "X", None, "critical"),
        principal_arn="arn:aws:iam::111122223333:role/alice", principal_known=True,
        instance_alias="prod", instance_arn="arn:aws:connect:us-east-1:111122223333:instance/i",
        starts_at=START, expires_at=START + timedelta(hours=1),
        statements=tuple(
            PermissionStatement(f"S{n}", tuple(f"svc{n % 7}:Action{n}x{i}" for i in range(actions_each)),
                                (f"arn:aws:svc:us-east-1:111122223333:thing/{n}/*",),
                                ("StringEquals svc:Key = value",))
            for n in range(statements)),
        persistent_effects=tuple((f"svc:Write{i}", "stays after the grant " * 20)
                                 for i in range(effects)),
        notes=(),
    )


def limits_hold(modal: dict) -> None:
    assert len(modal["blocks"]) <= 100
    for block in modal["blocks"]:
        texts = [block.get("text", {}).get("text", "")]
        texts += [e.get("text", "") for e in block.get("elements", [])]
        assert all(len(t) <= 3000 for t in texts)


def test_a_normal_policy_lists_every_action_once_grouped_by_service() -> None:
    view = view_with(statements=20, actions_each=5, effects=2)
    modal = permissions_modal(view)
    limits_hold(modal)
    shown = json.dumps(modal["blocks"])
    assert all(f"`{a}`" in shown for a in view.actions)
    assert "*svc0*" in shown and "svc:Write1" in shown
    assert "&lt;!channel&gt; &amp; co" in shown and "<!channel>" not in shown


def test_a_huge_policy_stays_within_100_blocks_and_says_what_is_cut() -> None:
    modal = permissions_modal(view_with(statements=400, actions_each=30, effects=40))
    limits_hold(modal)
    assert len(modal["blocks"]) == 100
    assert "do not fit in Slack" in json.dumps(modal["blocks"][-1])


def test_chunks_and_values() -> None:
    chunks = chunk_lines(["a" * 2000, "b" * 2000, "c" * 5000])
    assert [len(c) for c in chunks] == [2000, 2000, 3000] and chunks[2].endswith("…")
    assert parse_value("entry:home/list-instance") == ("entry", "home/list-instance")
    assert parse_value("request:12") == ("request", "12")
    assert parse_value("request:x") is None and parse_value("nope") is None
    # Only ids a request can have: no superscript digits int() refuses, nothing past int4.
    assert parse_value("request:²") is None
    assert parse_value("request:99999999999999999999") is None
    assert parse_value("request:0") is None
