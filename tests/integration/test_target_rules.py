"""Lifecycle rules that depend on who receives a grant, on a real database with the
in-memory granter: principal-based self-approval, and extensions against the tier's own
maximum and total limit (auto-approval never stretches access past the tier maximum)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from doubles import (
    InMemoryGranter,
    RecordingNotifier,
    StaticApproverDirectory,
    StaticPrincipalDirectory,
)

from bot.config import parse_config
from bot.lifecycle import InvalidRequest, RequestService, SelfApproval

READ = "home/list-instance"
ALICE_ROLE = "arn:aws:iam::111122223333:role/alice-admin"


def service_with(base: RequestService, config_data: dict[str, Any],
                 principals: dict[str, str], notifier: RecordingNotifier) -> RequestService:
    """The test RequestService (tests/conftest.py) with another config and mapping."""
    config = parse_config(config_data, "test")
    return RequestService(
        sessions=base.sessions, catalog=base.catalog, config=config,
        granter=InMemoryGranter(),
        notifier=notifier, approvers=StaticApproverDirectory({"S0LEADS": ("U0LEAD01",
                                                                          "U0LEAD02")}),
        principals=StaticPrincipalDirectory({**config.principals, **principals}),
        clock=base.clock, plan_builder=base.plan_builder)


def test_an_approver_mapped_to_the_principal_a_requester_was_found_at_is_refused(
    request_service: RequestService, operator_config_data: dict[str, Any],
    notifier: RecordingNotifier,
) -> None:
    data = operator_config_data
    # The lead is mapped to alice-admin; Carol reaches the same role another way (a
    # connect-access:slack-user tag, as the principal directory finds it).
    data["principals"] = {"U0LEAD01": ALICE_ROLE}
    service = service_with(request_service, data, {"U0CAROL": ALICE_ROLE}, notifier)
    request_id = service.submit(requester="U0CAROL", entry_id=READ, reason="incident INC-1",
                                duration=timedelta(hours=1)).id

    with pytest.raises(SelfApproval, match=r"your own mapping .*alice-admin.* reaches"):
        service.approve(request_id, "U0LEAD01")
    with pytest.raises(SelfApproval):
        service.deny(request_id, "U0LEAD01")
    service.approve(request_id, "U0LEAD02")
    assert service.get(request_id).state == "active"


def auto_read(data: dict[str, Any]) -> dict[str, Any]:
    data["routing"]["tiers"]["read"].update(
        {"auto_approve": True, "max_duration": "2h"})  # total limit: 3 x 2h = 6h
    return data


def test_auto_approval_extends_only_up_to_the_tier_maximum_and_never_past_the_total(
    request_service: RequestService, operator_config_data: dict[str, Any],
    notifier: RecordingNotifier,
) -> None:
    service = service_with(request_service, auto_read(operator_config_data), {}, notifier)
    request_id = service.submit(requester="U0ALICE", entry_id=READ, reason="incident INC-1",
                                duration=timedelta(hours=1)).id
    assert service.get(request_id).state == "active"  # auto-approved

    # 1h + 1h = 2h, within the tier's own maximum: auto-approved again.
    service.request_extension(request_id, "U0ALICE", timedelta(hours=1))
    assert service.get(request_id).extension_seconds is None
    assert service.get(request_id).duration_seconds == 2 * 3600

    # 2h + 2h = 4h is past the 2h maximum: a person must approve it.
    service.request_extension(request_id, "U0ALICE", timedelta(hours=2))
    pending = service.get(request_id)
    assert pending.extension_seconds == 2 * 3600 and pending.duration_seconds == 2 * 3600
    asked = [n for n in notifier.sent if n.event == "extension_requested"][-1]
    assert asked.detail["auto_approve"] is False
    service.approve(request_id, "U0LEAD01")
    assert service.get(request_id).duration_seconds == 4 * 3600

    # 4h + 2h = 6h: the total limit itself is allowed; beyond it is refused.
    service.request_extension(request_id, "U0ALICE", timedelta(hours=2))
    service.approve(request_id, "U0LEAD02")
    assert service.get(request_id).duration_seconds == 6 * 3600
    with pytest.raises(InvalidRequest, match=r"over the 6h .* Request the access again"):
        service.request_extension(request_id, "U0ALICE", timedelta(minutes=1))
