"""Rotating the audit signing key (`audit.previous_keys`): checkpoints signed by a retired
key (a KMS key ARN on moto, or a retired Ed25519 key's public-key PEM) still verify and
are reported as such; a checkpoint signed by a key that is neither current nor retired
is a forged checkpoint. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from doubles import FakeClock
from sqlalchemy import Engine
from test_audit_anchors import (
    BUCKET,
    forge_checkpoint,
    granted_and_revoked,
    make_locked_bucket,
    pending,
    rewrite_as_mallory,
    write_config,
)
from typer.testing import CliRunner

from bot.aws.anchors import S3AnchorStore
from bot.cli import build_cli
from bot.config import parse_config
from bot.lifecycle import RequestService
from bot.signing import Ed25519Signer, write_new_key


def public_pem(private_key_file: Path, out: Path) -> Path:
    """What an operator keeps of a retired key: its public half."""
    key = serialization.load_pem_private_key(private_key_file.read_bytes(), password=None)
    out.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return out


@dataclass
class Cli:
    database_url: str

    def run(self, config: Path, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(build_cli(), list(args), env={
            "DATABASE_URL": self.database_url, "CONNECT_ACCESS_CONFIG": str(config)})
        return result.exit_code, result.output

    def verify(self, config: Path) -> tuple[int, dict[str, Any]]:
        result = CliRunner().invoke(build_cli(), ["audit", "verify", "--json"], env={
            "DATABASE_URL": self.database_url, "CONNECT_ACCESS_CONFIG": str(config)})
        assert result.exit_code in (0, 1), result.output
        return result.exit_code, json.loads(result.stdout)


@dataclass
class Rotated:
    """A log checkpointed with an old Ed25519 key, then with a new one after rotation."""

    cli: Cli
    old: Ed25519Signer
    new: Ed25519Signer
    old_config: Path
    rotated: Path  # new key, previous_keys: [old public key]
    forgetful: Path  # new key, the old one not listed
    old_seq: int


@pytest.fixture
def rotated(fake_aws: None, database_url: str, request_service: RequestService,
            clock: FakeClock, tmp_path: Path) -> Rotated:
    make_locked_bucket()
    cli = Cli(database_url)
    old = write_new_key(tmp_path / "old.pem")
    new = write_new_key(tmp_path / "new.pem")
    old_public = public_pem(tmp_path / "old.pem", tmp_path / "old.pub.pem")
    old_config = write_config(tmp_path / "old.yaml", {
        "signing_key_file": str(tmp_path / "old.pem"), "anchor_bucket": BUCKET})
    granted_and_revoked(request_service, clock)
    code, output = cli.run(old_config, "audit", "checkpoint")
    assert code == 0, output
    old_seq = int(output.split("event ")[1].split()[0].rstrip(","))
    rotated = write_config(tmp_path / "rotated.yaml", {
        "signing_key_file": str(tmp_path / "new.pem"), "anchor_bucket": BUCKET,
        "previous_keys": [str(old_public)]})
    forgetful = write_config(tmp_path / "forgetful.yaml", {
        "signing_key_file": str(tmp_path / "new.pem"), "anchor_bucket": BUCKET})
    pending(request_service)
    code, output = cli.run(rotated, "audit", "checkpoint")
    assert code == 0 and f"signed by {new.key_id}" in output, output
    return Rotated(cli, old, new, old_config, rotated, forgetful, old_seq)


def test_checkpoints_of_a_retired_key_still_verify_and_are_reported(rotated: Rotated) -> None:
    code, report = rotated.cli.verify(rotated.rotated)
    assert code == 0 and report["ok"], report
    assert report["checkpoints"] == 2
    assert report["retired_keys"] == {rotated.old.key_id: 1}
    code, output = rotated.cli.run(rotated.rotated, "audit", "verify")
    assert code == 0
    assert f"1 checkpoint(s) signed by the retired key {rotated.old.key_id}" in output


def test_a_retired_key_not_listed_makes_its_checkpoints_a_fault(rotated: Rotated) -> None:
    code, report = rotated.cli.verify(rotated.forgetful)
    assert code == 1 and report["fault"]["kind"] == "forged_checkpoint"
    assert report["fault"]["found"] == rotated.old.key_id
    assert "audit.previous_keys" in report["fault"]["message"]


def test_retired_key_checkpoints_still_catch_a_rewrite(rotated: Rotated,
                                                       engine: Engine) -> None:
    rewrite_as_mallory(engine, "seq = 1")
    code, report = rotated.cli.verify(rotated.rotated)
    assert code == 1 and report["fault"]["kind"] == "checkpoint_mismatch"
    assert report["fault"]["seq"] == rotated.old_seq  # the retired key's checkpoint


@pytest.mark.parametrize("claims", ["unknown", "retired"])
def test_a_checkpoint_signed_by_an_unknown_key_is_forged(
        rotated: Rotated, engine: Engine, tmp_path: Path, clock: FakeClock,
        claims: str) -> None:
    mallory = write_new_key(tmp_path / "mallory.pem")
    # Her own key id, or the retired key's id with her signature.
    key_id = mallory.key_id if claims == "unknown" else rotated.old.key_id
    forged = forge_checkpoint(engine, mallory, key_id, clock.now())
    S3AnchorStore(boto3.client("s3", region_name="us-east-1"), BUCKET,
                  retention=timedelta(days=1)).put(forged)
    code, report = rotated.cli.verify(rotated.rotated)
    assert code == 1 and report["fault"]["kind"] == "forged_checkpoint"
    assert report["fault"]["seq"] == forged.checkpoint.seq
    if claims == "unknown":
        assert report["fault"]["found"] == mallory.key_id
        assert "neither the signing key nor one of audit.previous_keys" in \
            report["fault"]["message"]
    else:
        assert f"does not verify with {rotated.old.key_id}" in report["fault"]["message"]


def test_kms_key_rotation_on_moto(fake_aws: None, database_url: str,
                                  request_service: RequestService, clock: FakeClock,
                                  tmp_path: Path) -> None:
    make_locked_bucket()
    kms = boto3.client("kms", region_name="us-east-1")
    # (ECC: moto's RSASSA_PSS signatures use the maximum salt length, not the digest
    # length AWS KMS uses, so an RSA PSS key does not round-trip on moto.)
    old, new = (str(kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")
                    ["KeyMetadata"]["Arn"]) for _ in range(2))
    cli = Cli(database_url)
    granted_and_revoked(request_service, clock)
    config = write_config(tmp_path / "old.yaml", {"kms_key_id": old, "anchor_bucket": BUCKET})
    code, output = cli.run(config, "audit", "checkpoint")
    assert code == 0 and f"signed by {old}" in output, output
    pending(request_service)
    rotated = write_config(tmp_path / "new.yaml", {"kms_key_id": new, "anchor_bucket": BUCKET,
                                                   "previous_keys": [old]})
    code, output = cli.run(rotated, "audit", "checkpoint")
    assert code == 0 and f"signed by {new}" in output, output
    code, report = cli.verify(rotated)
    assert code == 0 and report["checkpoints"] == 2, report
    assert report["retired_keys"] == {old: 1}
    forgetful = write_config(tmp_path / "forgetful.yaml", {"kms_key_id": new,
                                                           "anchor_bucket": BUCKET})
    code, report = cli.verify(forgetful)
    assert code == 1 and report["fault"]["kind"] == "forged_checkpoint"
    assert report["fault"]["found"] == old


def test_a_retired_kms_key_that_cannot_be_read_is_refused_at_start(
        fake_aws: None, database_url: str, tmp_path: Path) -> None:
    make_locked_bucket()
    write_new_key(tmp_path / "k.pem")
    missing = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    config = write_config(tmp_path / "c.yaml", {"signing_key_file": str(tmp_path / "k.pem"),
                                                "anchor_bucket": BUCKET,
                                                "previous_keys": [missing]})
    code, output = Cli(database_url).run(config, "audit", "verify")
    assert code == 2
    assert f"audit.previous_keys {missing}: kms:GetPublicKey" in output


# -- configuration -----------------------------------------------------------------------

def test_previous_keys_are_validated_at_config_load(tmp_path: Path) -> None:
    write_new_key(tmp_path / "old.pem")
    pub = public_pem(tmp_path / "old.pem", tmp_path / "old.pub.pem")
    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    base = {"signing_key_file": "/k", "anchor_bucket": "b-1"}
    config = parse_config({"audit": {**base, "previous_keys": [arn, str(pub)]}})
    assert config.audit.previous_keys == (arn, pub)
    cases: list[tuple[dict[str, Any], str]] = [
        ({**base, "previous_keys": arn}, "audit.previous_keys: must be a list"),
        ({**base, "previous_keys": [7]}, r"audit.previous_keys\[0\]: must be a KMS key ARN"),
        ({**base, "previous_keys": ["arn:aws:kms:us-east-1:111122223333:alias/old"]},
         "not an alias"),
        ({**base, "previous_keys": [str(tmp_path / "missing.pem")]}, "cannot read"),
        ({**base, "previous_keys": [str(tmp_path / "old.pem")]}, "not a PEM public key"),
        ({"previous_keys": [arn]}, "retired keys need a current signing key"),
    ]
    for audit, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_config({"audit": audit}, "c.yaml")
