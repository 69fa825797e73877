"""Active grants made through the real lifecycle, for the expiry tests (scheduler and
batched revocation) that start from grants about to expire."""

from __future__ import annotations

from datetime import timedelta

from bot.catalog import Catalog
from bot.lifecycle import RequestService

LEAD = "U0LEAD01"


def entries(catalog: Catalog, count: int) -> list[str]:
    """Distinct non-critical entries (one approval each), so one requester can hold many."""
    chosen = [e.id for e in catalog if e.tier != "critical"][:count]
    assert len(chosen) == count
    return chosen


def make_active(service: RequestService, entry_id: str, minutes: int = 30,
                requester: str = "U0ALICE") -> str:
    """Submit and approve; returns the id of the grant the approval attached."""
    request = service.submit(requester=requester, entry_id=entry_id, reason="ticket CX-7",
                             duration=timedelta(minutes=minutes))
    service.approve(request.id, LEAD)
    granted = service.get(request.id)
    assert granted.state == "active"
    return granted.grants[-1].id
