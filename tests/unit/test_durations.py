"""Durations people type, their errors, and the tier maxima from catalog/routing.yaml."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bot.durations import (
    DurationError,
    check_within,
    format_duration,
    load_default_tier_maxima,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("4h", timedelta(hours=4)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1H 30M", timedelta(hours=1, minutes=30)),
        (" 2d4h ", timedelta(days=2, hours=4)),
        ("90m", timedelta(minutes=90)),
    ],
)
def test_parse_duration_accepts_common_forms(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("0h", "zero"),
        ("0m0h", "zero"),
        ("-1h", "negative"),
        ("", "No duration"),
        ("   ", "No duration"),
        ("4", "not understood"),
        ("4x", "not understood"),
        ("h4", "not understood"),
        ("4h!", "not understood"),
        ("1.5h", "not understood"),
        ("1h1h", "twice"),
        ("99999999d", "longer than"),
    ],
)
def test_parse_duration_refuses_with_a_clear_message(text: str, fault: str) -> None:
    with pytest.raises(DurationError, match=fault) as caught:
        parse_duration(text)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("text", ["30m", "4h", "1d", "1h30m", "2d4h5m"])
def test_format_duration_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


def test_format_duration_of_odd_values() -> None:
    assert format_duration(timedelta(seconds=90)) == "1m30s"
    assert format_duration(timedelta()) == "0m"
    with pytest.raises(DurationError):
        format_duration(timedelta(seconds=-1))


def test_check_within_tier_maximum() -> None:
    assert check_within(timedelta(hours=1), timedelta(hours=1), "critical") == timedelta(hours=1)
    with pytest.raises(DurationError, match=r"longer than the critical tier allows \(1h\)"):
        check_within(timedelta(hours=2), timedelta(hours=1), "critical")
    with pytest.raises(DurationError, match="positive"):
        check_within(timedelta(), timedelta(hours=1), "read")


def test_default_tier_maxima_come_from_routing_yaml() -> None:
    assert load_default_tier_maxima() == {
        "read": timedelta(hours=8),
        "write": timedelta(hours=4),
        "critical": timedelta(hours=1),
    }


def test_tier_maxima_file_faults_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "routing.yaml"
    bad.write_text("tiers:\n  read: {max_duration: 8h}\n  write: {max_duration: soon}\n")
    with pytest.raises(DurationError, match=r"tiers\.write\.max_duration"):
        load_default_tier_maxima(bad)
    with pytest.raises(DurationError, match="cannot read"):
        load_default_tier_maxima(tmp_path / "missing.yaml")
