"""Times people type (`--since`, `--until`, `--start`, the auditors' `since:`/`until:`):
ISO 8601, read as UTC when no zone is given, and kept inside a range the bot can compute
with. `datetime.fromisoformat` accepts 0001-01-01T00:00+05:00 and 9999-12-31T23:00Z, but
converting the first to UTC, or adding a grant's duration to the second, raises
OverflowError: such times are refused here as bad input instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class TimeInputError(ValueError):
    """A typed time that cannot be used; the message says why."""


def parse_utc(text: str, *, require_zone: bool = False) -> datetime:
    """`text` as an aware UTC datetime between EARLIEST and LATEST, or TimeInputError."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TimeInputError("not an ISO 8601 date or time") from None
    if parsed.tzinfo is None:
        if require_zone:
            raise TimeInputError("no time zone")
        parsed = parsed.replace(tzinfo=UTC)
    try:
        moment = parsed.astimezone(UTC)
    except OverflowError:
        moment = None
    if moment is None or not EARLIEST <= moment < LATEST:
        raise TimeInputError(f"outside {EARLIEST.year}-{LATEST.year - 1}")
    return moment
