"""The one reason rule: what the Slack forms show and the lifecycle enforces."""

from __future__ import annotations

import pytest

from bot.request_rules import (
    DENY_REASON_MAX,
    DENY_REASON_MIN,
    REASON_MAX,
    REASON_MIN,
    deny_reason_problem,
    reason_problem,
)


def test_the_bounds_are_the_slack_forms() -> None:
    assert (REASON_MIN, REASON_MAX, DENY_REASON_MIN, DENY_REASON_MAX) == (10, 1000, 3, 500)


@pytest.mark.parametrize("reason", ["x" * REASON_MIN, "x" * REASON_MAX,
                                    f"  {'x' * REASON_MIN}\n", "Incident INC-42, queues"])
def test_reasons_within_the_bounds_pass(reason: str) -> None:
    assert reason_problem(reason) is None


@pytest.mark.parametrize(("reason", "message"), [
    ("", "Say why you need this access (the reason is empty): at least 10 characters."),
    ("   \n", "Say why you need this access (the reason is empty): at least 10 characters."),
    ("x" * 9, "Say a little more: at least 10 characters (you wrote 9)."),
    # Judged stripped: padding does not make a reason long enough.
    (f"   {'x' * 9}   ", "Say a little more: at least 10 characters (you wrote 9)."),
    ("x" * 1001, "Keep it to at most 1000 characters (you wrote 1001)."),
])
def test_reasons_outside_the_bounds_say_what_to_do(reason: str, message: str) -> None:
    assert reason_problem(reason) == message


@pytest.mark.parametrize("reason", ["no!", "x" * DENY_REASON_MAX, "  Use staging  "])
def test_deny_reasons_within_the_bounds_pass(reason: str) -> None:
    assert deny_reason_problem(reason) is None


@pytest.mark.parametrize(("reason", "written"), [("", 0), ("no", 2), ("  no  ", 2),
                                                 ("x" * 501, 501)])
def test_deny_reasons_outside_the_bounds_say_what_to_do(reason: str, written: int) -> None:
    assert deny_reason_problem(reason) == (
        f"Give a reason of 3 to 500 characters (you wrote {written}).")
