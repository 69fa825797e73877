"""Enterprise Grid user ids (W...) approve exactly as U... ids do, through the lifecycle."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bot.lifecycle import NotAllowed, RequestService

WRITE = "telephony/enable-disable-telephony-options"


@pytest.fixture
def operator_config_data(operator_config_data: dict[str, Any]) -> dict[str, Any]:
    operator_config_data["routing"]["tiers"]["write"]["approvers"] = ["W0GRIDLEAD"]
    return operator_config_data


def test_a_w_approver_approves_and_the_grant_is_made(request_service: RequestService) -> None:
    request = request_service.submit(requester="U0ALICE", entry_id=WRITE, reason="ticket CX-1",
                                     duration=timedelta(hours=1))
    with pytest.raises(NotAllowed):
        request_service.approve(request.id, "U0LEAD01")  # a lead, but not on this route
    request_service.approve(request.id, "W0GRIDLEAD")
    assert request_service.get(request.id).state == "active"
