"""Request ids as people type them (`#12`, `12`): the one parser for Slack commands, button
values, the auditors' `request:` filter and `connect-access audit show`.

`access_requests.id` is an INTEGER column: PostgreSQL's int4, so an id past 2**31 - 1 is not
a request that can exist, and handing it to the database fails inside the driver (SQLite:
OverflowError past 2**63; PostgreSQL: "integer out of range") rather than finding nothing.
Only ASCII digits count: `str.isdigit` also accepts `²` and other digits `int()` refuses.
"""

from __future__ import annotations

MAX_REQUEST_ID = 2**31 - 1


def is_request_number(text: str) -> bool:
    """Whether `text` (after an optional `#`) is written as a request number at all."""
    digits = text.strip().lstrip("#")
    return digits.isascii() and digits.isdigit()


def parse_request_id(text: str) -> int | None:
    """The id `text` names, or None when it is not a number or no request can have it."""
    if not is_request_number(text):
        return None
    value = int(text.strip().lstrip("#"))
    return value if 1 <= value <= MAX_REQUEST_ID else None
