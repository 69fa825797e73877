"""`connect-access policy ... --json`: the shape scripts depend on, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bot.cli import build_cli

runner = CliRunner()
ROLE = "arn:aws:iam::111122223333:role/alice"
INSTANCE = "arn:aws:connect:us-east-1:111122223333:instance/0a1b2c3d-1111-2222-3333-444455556666"
FIXED = ["--grant-id", "cli1", "--start", "2026-11-27T09:00:00Z"]


def test_policy_json_shape_for_a_free_text_query() -> None:
    result = runner.invoke(build_cli(), ["policy", "Edit", "chat", "transcripts", "--principal", ROLE,
                                         "--instance", INSTANCE, "--duration", "45m", "--json", *FIXED])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {"entry", "policy_name", "document", "size", "quota", "expires_at"} <= payload.keys()
    assert payload["entry"] == "data-storage/edit-chat-transcripts"
    assert payload["policy_name"] == "connect-access-cli1"
    assert payload["expires_at"] == "2026-11-27T09:45:00Z"
    assert payload["quota"] == 10240 and payload["kind"] == "inline"
    assert payload["size"] == len("".join(json.dumps(payload["document"], separators=(",", ":")).split()))
    resources = payload["document"]["Statement"][0]["Resource"]
    assert resources == [INSTANCE, f"{INSTANCE}/*"]


def test_policy_by_id_for_a_user_over_quota_falls_back_to_managed() -> None:
    result = runner.invoke(build_cli(), ["policy", "customer-profiles/edit-customer-profiles",
                                         "--principal", "arn:aws:iam::111122223333:user/bob",
                                         "--existing-inline-chars", "100", "--json", *FIXED])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["kind"] == "managed" and payload["quota"] == 6144
    assert payload["inline_quota"] == {"limit": 2048, "existing": 100, "available": 1948}
    assert any("no --instance given" in note for note in payload["notes"])


def test_policy_errors_are_messages_not_tracebacks() -> None:
    cases = [
        (["Admin", "emergency", "federation", "--principal", ROLE, "--duration", "2h"], "critical tier allows"),
        (["Admin", "emergency", "federation", "--principal", ROLE, "--duration", "0m"], "zero"),
        (["Admin", "emergency", "federation", "--principal", ROLE, "--duration", "soon"], "not understood"),
        (["Admin", "emergency", "federation", "--principal",
          "arn:aws:sts::111122223333:assumed-role/Admin/bob"], "temporary session"),
        (["view", "--principal", ROLE], "matches several entries"),
        (["zzzz qqqq", "--principal", ROLE], "matches no entry"),
        (["home/list-instance", "--principal", ROLE, "--start", "yesterday"], "ISO 8601"),
        # fromisoformat reads these, but start + duration (or the conversion to UTC)
        # overflowed with a traceback.
        (["home/list-instance", "--principal", ROLE, "--start", "9999-12-31T23:00:00Z"],
         "outside 1970-8999"),
        (["home/list-instance", "--principal", ROLE, "--start", "0001-01-01T00:00:00+05:00"],
         "outside 1970-8999"),
    ]
    for args, fault in cases:
        result = runner.invoke(build_cli(), ["policy", *args, "--json"])
        assert result.exit_code == 2, (args, result.output)
        assert fault in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_operator_config_sets_the_maximum_and_instance_aliases(tmp_path: Path) -> None:
    config = tmp_path / "connect-access.yaml"
    config.write_text(
        "instances:\n"
        f"  - alias: prod\n    arn: {INSTANCE}\n"
        "routing:\n  tiers:\n    critical: {max_duration: 2h}\n"
    )
    args = ["policy", "federations/admin-emergency-federation", "--principal", ROLE,
            "--duration", "2h", "--json", *FIXED]
    # Shipped defaults allow a critical entry 1h; the operator raised it to 2h.
    assert runner.invoke(build_cli(), args).exit_code == 2
    result = runner.invoke(build_cli(), [*args, "--instance", "prod", "--config", str(config)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["expires_at"] == "2026-11-27T11:00:00Z"
    assert payload["instance"] == INSTANCE
    unknown = runner.invoke(build_cli(), [*args, "--instance", "dev", "--config", str(config)])
    assert unknown.exit_code == 2 and "no instance 'dev' (known: prod)" in unknown.output


def test_policy_previews_a_shared_roles_grant_narrowed_to_one_session() -> None:
    role_id = "AROA3XFRBF23EXAMPLE1"
    result = runner.invoke(build_cli(), [
        "policy", "home/list-instance", "--principal", ROLE, "--session-name", "bob@example.com",
        "--role-unique-id", role_id, "--instance", INSTANCE, "--json", *FIXED])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["principal"] == f"{ROLE};session=bob@example.com"
    statements = payload["document"]["Statement"]
    assert statements and all(
        s["Condition"]["StringLike"] == {"aws:userid": f"{role_id}:bob@example.com"}
        and s["Condition"]["DateLessThan"]["aws:CurrentTime"] == "2026-11-27T10:00:00Z"
        for s in statements)
    assert payload["size"] == len("".join(json.dumps(payload["document"], separators=(",", ":")).split()))
    assert any("only sessions named bob@example.com" in note for note in payload["notes"])

    text = runner.invoke(build_cli(), [
        "policy", "home/list-instance", "--principal", ROLE, "--session-name", "bob@example.com",
        "--role-unique-id", role_id, *FIXED])
    assert text.exit_code == 0, text.output
    assert f"principal: {ROLE};session=bob@example.com" in text.stdout
    assert f'"aws:userid": "{role_id}:bob@example.com"' in text.stdout


def test_policy_shared_role_mistakes_are_messages() -> None:
    base = ["policy", "home/list-instance", "--json", *FIXED]
    cases = [
        (["--principal", ROLE, "--session-name", "bob"], "give --role-unique-id AROA"),
        (["--principal", ROLE, "--role-unique-id", "AROA3XFRBF23EXAMPLE1"], "give --session-name"),
        (["--principal", "arn:aws:iam::111122223333:user/bob", "--session-name", "bob",
          "--role-unique-id", "AROA3XFRBF23EXAMPLE1"], "a session name only narrows a role"),
        (["--principal", ROLE, "--session-name", "no spaces", "--role-unique-id",
          "AROA3XFRBF23EXAMPLE1"], "is not a role session name"),
        (["--principal", ROLE, "--session-name", "bob", "--role-unique-id", "AIDA123"],
         "is not a role's unique id"),
    ]
    for args, fault in cases:
        result = runner.invoke(build_cli(), [*base, *args])
        assert result.exit_code == 2, (args, result.output)
        assert fault in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_policy_previews_an_identity_center_users_permission_set() -> None:
    result = runner.invoke(build_cli(), [
        "policy", "data-storage/edit-chat-transcripts", "--principal",
        "identity-center-user:alice@example.com", "--instance", INSTANCE, "--duration", "45m",
        "--json", *FIXED])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["kind"] == "permission_set" and payload["quota"] == 10240
    assert payload["principal"] == "identity-center-user:alice@example.com"
    assert payload["policy_name"] == "connect-access-cli1"
    assert payload["expires_at"] == "2026-11-27T09:45:00Z"
    assert payload["document"]["Statement"][0]["Resource"] == [INSTANCE, f"{INSTANCE}/*"]
    assert any("permission set connect-access-cli1" in note and "111122223333" in note
               for note in payload["notes"])


def test_policy_identity_center_mistakes_are_messages() -> None:
    for extra, message in (
        ([], "give --instance ARN"),
        (["--instance", INSTANCE, "--session-name", "bob"], "an Identity Center user's grant "
                                                             "needs neither"),
    ):
        result = runner.invoke(build_cli(), [
            "policy", "home/list-instance", "--principal", "identity-center-user:alice", *extra])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and "Traceback" not in result.output
    bad = runner.invoke(build_cli(), ["policy", "home/list-instance", "--principal",
                                      "identity-center-user:has space", "--instance", INSTANCE])
    assert bad.exit_code == 2 and "is not an Identity Center user name or email" in bad.stderr
