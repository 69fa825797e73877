"""The one rule for the free text people attach to a request: its reason, and the reason
an approver gives for a deny. The Slack forms show these bounds and check them; the
lifecycle checks them again, so a request made any other way meets the same rule.

Pure: no I/O. A check returns None when the text is fine, or the sentence to show the
person (what is wrong and what to do).
"""

from __future__ import annotations

from typing import Final

REASON_MIN: Final = 10
REASON_MAX: Final = 1000
DENY_REASON_MIN: Final = 3
DENY_REASON_MAX: Final = 500


def reason_problem(reason: str) -> str | None:
    """What is wrong with a request's reason (judged stripped), or None."""
    length = len(reason.strip())
    if length == 0:
        return (f"Say why you need this access (the reason is empty): at least "
                f"{REASON_MIN} characters.")
    if length < REASON_MIN:
        return f"Say a little more: at least {REASON_MIN} characters (you wrote {length})."
    if length > REASON_MAX:
        return f"Keep it to at most {REASON_MAX} characters (you wrote {length})."
    return None


def deny_reason_problem(reason: str) -> str | None:
    """What is wrong with the reason given for a deny (judged stripped), or None."""
    length = len(reason.strip())
    if not DENY_REASON_MIN <= length <= DENY_REASON_MAX:
        return (f"Give a reason of {DENY_REASON_MIN} to {DENY_REASON_MAX} characters "
                f"(you wrote {length}).")
    return None
