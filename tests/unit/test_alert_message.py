"""How an alert reads in Slack: every field it names, what to do next, and no user or AWS
text that could ping a channel."""

from __future__ import annotations

import json

from bot.alerts import Alert, AlertRef
from bot.slack.alerter import alert_message

HOSTILE = "<!channel> <@U123> & <https://evil.example|click>"


def test_an_alert_names_the_request_requester_principal_policies_and_next_step() -> None:
    text, blocks = alert_message(Alert(
        kind="irrevocable", summary="Access #7 could not be removed",
        next_step="Delete the policy by hand.", request_id=7, requester="U0ALICE",
        principal_arn="arn:aws:iam::111122223333:role/alice", policy_names=("connect-access-ab",),
        details={"error": "AccessDenied"}))
    shown = json.dumps(blocks)
    assert text.startswith(":rotating_light: Access #7")
    for expected in ("#7", "<@U0ALICE>", "arn:aws:iam::111122223333:role/alice",
                     "connect-access-ab", "AccessDenied", "*What to do:* Delete the policy"):
        assert expected in shown


def test_user_and_aws_text_is_escaped_everywhere() -> None:
    text, blocks = alert_message(Alert(
        kind="reconcile_finding", summary=HOSTILE, next_step=HOSTILE,
        principal_arn=HOSTILE, policy_names=(HOSTILE,), details={HOSTILE: HOSTILE},
        follows_up=AlertRef("C0ALERTS", "1.0")))
    for shown in (text, json.dumps(blocks)):
        assert "<!channel>" not in shown and "<https://evil" not in shown
        assert "&lt;!channel&gt;" in shown
