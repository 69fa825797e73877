"""Durations: parse what people type ("30m", "4h", "1d", "1h30m", "90s"), print them back,
and check them against a risk tier's maximum. The one parser for grant durations, Slack
input and the operator config's timings."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import yaml

from bot.resources import CATALOG_DIR
from bot.tiers import TIERS, Tier

DEFAULT_ROUTING_FILE = CATALOG_DIR / "routing.yaml"

# Longer than any tier would allow; bounds the arithmetic so "99999999d" is an error,
# not an OverflowError.
LONGEST_DURATION = timedelta(days=366)

_PART = re.compile(r"\s*(\d{1,9})\s*([dhms])", re.IGNORECASE)
_UNITS = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_EXAMPLES = "30m, 4h, 1d or 1h30m"


class DurationError(ValueError):
    """A duration that cannot be used; the message says what to type instead."""


def parse_duration(text: str) -> timedelta:
    """'30m' | '4h' | '1d' | '1h30m' | '90s' (units d, h, m, s; case and spaces ignored)."""
    if not isinstance(text, str) or not text.strip():
        raise DurationError(f"No duration given; write one like {_EXAMPLES}.")
    cleaned = text.strip()
    if cleaned.startswith("-"):
        raise DurationError(
            f"Duration {text!r} is negative; write a positive one like {_EXAMPLES}."
        )
    total = timedelta()
    position = 0
    seen: set[str] = set()
    while position < len(cleaned):
        match = _PART.match(cleaned, position)
        if match is None:
            raise DurationError(
                f"Duration {text!r} is not understood; write a number and a unit "
                f"(d, h, m or s), e.g. {_EXAMPLES}."
            )
        unit = match.group(2).lower()
        if unit in seen:
            raise DurationError(
                f"Duration {text!r} names the unit {unit!r} twice; e.g. {_EXAMPLES}."
            )
        seen.add(unit)
        total += int(match.group(1)) * _UNITS[unit]
        if total > LONGEST_DURATION:
            raise DurationError(
                f"Duration {text!r} is longer than {format_duration(LONGEST_DURATION)}; "
                "time-boxed access is meant to be short."
            )
        position = match.end()
    if total <= timedelta():
        raise DurationError(f"Duration {text!r} is zero; write a positive one like {_EXAMPLES}.")
    return total


def format_duration(duration: timedelta) -> str:
    """timedelta -> the shortest form parse_duration reads back: 4h, 1h30m, 1d2h."""
    seconds = int(duration.total_seconds())
    if seconds < 0:
        raise DurationError("a negative duration cannot be written")
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0m"


def check_within(duration: timedelta, maximum: timedelta, tier: str) -> timedelta:
    """Return `duration` if it is positive and within the tier's maximum, else raise."""
    if duration <= timedelta():
        raise DurationError("The duration must be positive, e.g. 30m or 4h.")
    if duration > maximum:
        raise DurationError(
            f"{format_duration(duration)} is longer than the {tier} tier allows "
            f"({format_duration(maximum)}); ask for {format_duration(maximum)} or less "
            "and extend later if needed."
        )
    return duration


def load_default_tier_maxima(path: Path | str = DEFAULT_ROUTING_FILE) -> dict[Tier, timedelta]:
    """tiers.<tier>.max_duration from the shipped routing file (operators override these
    through their own config; callers pass the result on, nothing here caches it)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DurationError(f"{path}: cannot read the tier maxima ({exc})") from None
    tiers = document.get("tiers") if isinstance(document, dict) else None
    if not isinstance(tiers, dict):
        raise DurationError(f"{path}: expected a mapping under 'tiers'")
    maxima: dict[Tier, timedelta] = {}
    for tier in TIERS:
        raw = tiers.get(tier)
        value = raw.get("max_duration") if isinstance(raw, dict) else None
        if not isinstance(value, str):
            raise DurationError(f"{path}: tiers.{tier}.max_duration is missing; e.g. 4h")
        try:
            maxima[tier] = parse_duration(value)
        except DurationError as exc:
            raise DurationError(f"{path}: tiers.{tier}.max_duration: {exc}") from None
    return maxima


def format_duration_spaced(duration: timedelta) -> str:
    """For reading rather than typing: `1h 30m`."""
    return " ".join(re.findall(r"\d+[dhms]", format_duration(duration)))
