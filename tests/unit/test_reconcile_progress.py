"""`connect-access reconcile` shows its progress on stderr."""

from __future__ import annotations

import pytest

from bot.commands.reconcile_cmds import _progress_printer
from bot.reconcile_model import ReconcileProgress


def test_progress_lines_go_to_stderr_at_most_once_a_period_and_always_at_the_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    show = _progress_printer(every_s=3600)

    show(ReconcileProgress("reading", 1000, 5000, 0))
    show(ReconcileProgress("reading", 2000, 5000, 0))  # within the period: not shown
    show(ReconcileProgress("done", 5000, 5000, 3))

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "reconcile: reading IAM: 1,000/5,000 principal(s), 0 unchecked",
        "reconcile: checked 5,000/5,000 principal(s), 3 unchecked",
    ]
