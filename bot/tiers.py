"""Risk tiers: how dangerous a catalog entry is, derived from what its actions can do."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from bot.iamref import IamReference

Tier = Literal["read", "write", "critical"]
TIERS: tuple[Tier, ...] = ("read", "write", "critical")

# Entries the issue names as critical whatever their actions: they create or destroy whole
# instances, or hand out a console session as anyone (federation).
ALWAYS_CRITICAL = frozenset(
    {
        "home/create-instance",
        "home/delete-instance",
        "home/create-a-replica-instance",
        "federations/saml-federation",
        "federations/admin-emergency-federation",
    }
)


def tier_rank(tier: Tier) -> int:
    return TIERS.index(tier)


def derive_tier(entry_id: str, actions: Iterable[str], iam: IamReference) -> Tier:
    """The minimum tier an entry may have.

    Any Write, Permissions management or Tagging action makes it at least `write`; IAM
    write actions (roles, policies) make it `critical`, as does a listed critical entry.
    """
    infos = [iam.info(action) for action in actions]
    if entry_id in ALWAYS_CRITICAL or any(i.service == "iam" and i.is_write for i in infos):
        return "critical"
    if any(i.is_write for i in infos):
        return "write"
    return "read"
