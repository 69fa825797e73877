"""Least privilege beyond IAM: every entry compiled for a role, user and group, with and
without an instance, checked independently of the compiler's own checks; and the catalog
rules that keep a careless edit from widening a grant."""

from __future__ import annotations

import fnmatch
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bot.catalog import (
    DEFAULT_CATALOG_FILE,
    Catalog,
    CatalogError,
    load_catalog,
    validate_catalog,
)
from bot.cli import build_cli
from bot.config import ConfigError, parse_config
from bot.iamref import WRITE_LEVELS, IamReference
from bot.persistence import containment, persistence_of
from bot.policy import PolicyError, compile_policy
from bot.scoping import InstanceResources

ACCOUNT = "111122223333"
INSTANCE_ID = "0a1b2c3d-1111-2222-3333-444455556666"
INSTANCE = f"arn:aws:connect:eu-west-2:{ACCOUNT}:instance/{INSTANCE_ID}"
PRINCIPALS = {
    "role": f"arn:aws:iam::{ACCOUNT}:role/team/alice-admin",
    "user": f"arn:aws:iam::{ACCOUNT}:user/alice",
    "group": f"arn:aws:iam::{ACCOUNT}:group/connect-admins",
}
CATALOG = load_catalog()
STORAGE_WRITES = {"connect:AssociateInstanceStorageConfig", "connect:UpdateInstanceStorageConfig",
                  "connect:DisassociateInstanceStorageConfig"}


@pytest.fixture(scope="module")
def iam() -> IamReference:
    return IamReference()


def compile_for(entry_id: str, principal: str, iam: IamReference, catalog: Catalog = CATALOG,
                **kwargs: Any) -> Any:
    return compile_policy(catalog, entry_id, principal, grant_id="lp01", iam=iam,
                          start=datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
                          duration=timedelta(hours=1), max_duration=None, **kwargs)


def statements_of(compiled: Any) -> list[dict[str, Any]]:
    return [s for p in compiled.policies for s in p.document["Statement"]]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("entry_id", sorted(CATALOG.entries))
def test_every_compiled_policy_keeps_to_least_privilege(entry_id: str, iam: IamReference) -> None:
    entry = CATALOG.get(entry_id)
    declared = {e.action for e in CATALOG.declared_persistent_effects(entry_id)}
    stars = {e.action for e in CATALOG.star_exceptions(entry_id)}
    for kind, principal in PRINCIPALS.items():
        for instance in (INSTANCE, None):
            where = f"{entry_id} {kind} {'instance' if instance else 'no instance'}"
            compiled = compile_for(entry_id, principal, iam, instance_arn=instance)
            for statement in statements_of(compiled):
                resources = as_list(statement["Resource"])
                condition = statement["Condition"]
                for action in statement["Action"]:
                    info = iam.info(action)
                    # A persistent-class action is contained, or the entry declares it.
                    if persistence_of(info) is not None and action not in declared:
                        assert containment(info, resources, condition) is not None, (where, action)
                    if info.service in ("connect", "iam"):
                        continue
                    # Other services: ARN-capable actions are never on "*" unless recorded.
                    arn_capable = any(r.arn_formats for r in info.resources)
                    if arn_capable and action not in stars:
                        assert "*" not in resources, (where, action)
                        # ... and always pinned to the account. S3 ARNs carry none: pinned by
                        # s3:ResourceAccount or to Connect's names. Partner event sources
                        # (arn:...:events:REGION::event-source/...) have none in IAM at all.
                        for r in resources:
                            if r.startswith("arn:aws:s3:::"):
                                pinned = condition.get("StringEquals", {})
                                assert ACCOUNT in (pinned.get("s3:ResourceAccount"),
                                                   pinned.get("aws:ResourceAccount")) or fnmatch.fnmatchcase(
                                    r, "arn:aws:s3:::amazon-connect-*"), (where, action, r)
                            else:
                                assert f":{ACCOUNT}:" in r or (":events:" in r and "::event-source/" in r), (
                                    where, action, r)
                        if instance:  # ... and to the instance's Region where ARNs have one
                            assert all(":eu-west-2:" in r or r.startswith("arn:aws:s3:::")
                                       or ":events:eu-west-2::" in r for r in resources), (
                                where, action, resources)
                    if arn_capable and info.access_levels & WRITE_LEVELS:
                        assert "*" not in resources or action in stars, (where, action)
                # Amazon Connect's condition keys on storage and attribute writes.
                actions = set(statement["Action"])
                if actions & STORAGE_WRITES:
                    assert actions <= STORAGE_WRITES
                    assert condition["StringEquals"]["connect:StorageResourceType"] == list(
                        CATALOG.condition_values(entry_id, "storage_resource_types")), where
                if "connect:UpdateInstanceAttribute" in actions:
                    assert actions == {"connect:UpdateInstanceAttribute"}
                    assert condition["StringEquals"]["connect:AttributeType"] == list(
                        CATALOG.condition_values(entry_id, "instance_attributes")), where
            text = str(compiled.policies)
            if entry.instance_scope != "chosen":
                # Create instance / replica: never pinned to the existing instance.
                assert INSTANCE_ID not in text, where
                assert f"arn:aws:connect:{'eu-west-2' if instance and entry.instance_scope == 'new-instance' else '*'}:{ACCOUNT}:instance/*" in text, where


def test_declared_exceptions_have_reasons_and_name_granted_actions() -> None:
    for entry in CATALOG:
        granted = set(CATALOG.granted_actions(entry.id))
        for item in (*entry.persistent_effects, *entry.star_exceptions):
            assert len(item.reason) > 30, (entry.id, item.action)
            assert item.action in granted, (entry.id, item.action)


def test_the_entries_of_the_issue_are_contained_or_declared(iam: IamReference) -> None:
    def statement_with(compiled: Any, action: str) -> dict[str, Any]:
        return next(s for s in statements_of(compiled) if action in s["Action"])

    role = PRINCIPALS["role"]
    profiles = compile_for("customer-profiles/edit-customer-profiles", role, iam, instance_arn=INSTANCE)
    assert as_list(statement_with(profiles, "s3:PutBucketPolicy")["Resource"]) == [
        "arn:aws:s3:::amazon-connect-*"]
    assert "s3:PutBucketPolicy" in {e.action for e in profiles.persistent_effects}
    assert as_list(statement_with(profiles, "profile:DeleteDomain")["Resource"]) != ["*"]
    lam = compile_for("flows/add-remove-lambda-functions", role, iam, instance_arn=INSTANCE)
    permission = statement_with(lam, "lambda:AddPermission")
    assert permission["Condition"]["StringEquals"]["lambda:Principal"] == "connect.amazonaws.com"
    assert permission["Resource"] == f"arn:aws:lambda:eu-west-2:{ACCOUNT}:function:*"
    delete = compile_for("home/delete-instance", role, iam, instance_arn=INSTANCE)
    assert statement_with(delete, "ds:DeleteDirectory")["Resource"] == (
        f"arn:aws:ds:eu-west-2:{ACCOUNT}:directory/*")
    recording = compile_for("data-storage/edit-call-recording", role, iam, instance_arn=INSTANCE)
    kms = statement_with(recording, "kms:CreateGrant")
    assert kms["Condition"]["Bool"]["kms:GrantIsForAWSResource"] == "true"
    assert statement_with(recording, "s3:CreateBucket")["Resource"] == "arn:aws:s3:::amazon-connect-*"
    decrypt = statement_with(profiles, "kms:Decrypt")
    assert "connect.eu-west-2.amazonaws.com" in decrypt["Condition"]["StringLike"]["kms:ViaService"]
    chat = compile_for("data-storage/edit-chat-transcripts", role, iam, instance_arn=INSTANCE)
    storage = statement_with(chat, "connect:UpdateInstanceStorageConfig")
    assert storage["Condition"]["StringEquals"]["connect:StorageResourceType"] == ["CHAT_TRANSCRIPTS"]
    for federation in ("federations/admin-emergency-federation", "federations/saml-federation"):
        effects = compile_for(federation, role, iam, instance_arn=INSTANCE).persistent_effects
        assert effects and "outlast the window" in effects[0].reason


def test_instance_resources_looked_up_narrow_the_grant(iam: IamReference) -> None:
    own_role = (f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/connect.amazonaws.com/"
                "AWSServiceRoleForAmazonConnect_Abc123")
    looked_up = InstanceResources(instance_arn=INSTANCE, service_role_arn=own_role,
                                  directory_id="d-1234567890", bucket_names=("corp-recordings",))
    role = PRINCIPALS["role"]
    recording = compile_for("data-storage/edit-call-recording", role, iam, instance_arn=INSTANCE,
                            instance_resources=looked_up)
    slr = next(s for s in statements_of(recording) if s["Sid"] == "ServiceLinkedRolePolicies")
    assert slr["Resource"] == own_role
    buckets = next(s for s in statements_of(recording) if "s3:CreateBucket" in s["Action"])
    assert sorted(as_list(buckets["Resource"])) == [
        "arn:aws:s3:::amazon-connect-*", "arn:aws:s3:::corp-recordings"]
    delete = compile_for("home/delete-instance", role, iam, instance_arn=INSTANCE,
                         instance_resources=looked_up)
    directory = next(s for s in statements_of(delete) if "ds:DeleteDirectory" in s["Action"])
    assert directory["Resource"] == f"arn:aws:ds:eu-west-2:{ACCOUNT}:directory/d-1234567890"
    # Creating an instance is not about the chosen one: its resources do not narrow it.
    create = compile_for("home/create-instance", role, iam, instance_arn=INSTANCE,
                         instance_resources=looked_up)
    assert own_role not in str(create.policies) and "d-1234567890" not in str(create.policies)
    with pytest.raises(PolicyError, match="another instance"):
        compile_for("home/delete-instance", role, iam, instance_arn=INSTANCE,
                    instance_resources=InstanceResources(instance_arn=INSTANCE + "x"))


# -- catalog validate ----------------------------------------------------------------


def _edited_catalog(tmp_path: Path, entry_id: str, **changes: Any) -> Path:
    document = yaml.safe_load(DEFAULT_CATALOG_FILE.read_text(encoding="utf-8"))
    for raw in document["entries"]:
        if raw["id"] == entry_id:
            for key, value in changes.items():
                if key == "add_actions":
                    raw["actions"] = [*raw["actions"], *value]
                else:
                    raw[key] = value
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def _faults(path: Path, iam: IamReference) -> list[str]:
    return [str(f) for f in validate_catalog(load_catalog(path), iam)]


def test_adding_sts_assume_role_fails_validation(tmp_path: Path, iam: IamReference) -> None:
    path = _edited_catalog(tmp_path, "data-storage/edit-chat-transcripts",
                           add_actions=["sts:AssumeRole"])
    faults = _faults(path, iam)
    assert any("does not concern sts" in f for f in faults), faults
    # Explaining the service is not enough: the session it opens outlives the grant.
    path = _edited_catalog(tmp_path, "data-storage/edit-chat-transcripts",
                           add_actions=["sts:AssumeRole"],
                           other_services={"sts": "needed to test the rule"})
    faults = _faults(path, iam)
    assert len(faults) == 1 and "sts:AssumeRole opens a role session" in faults[0], faults
    assert "persistent_effects" in faults[0]
    result = CliRunner().invoke(build_cli(), ["catalog", "validate", "--catalog", str(path)])
    assert result.exit_code == 1 and "sts:AssumeRole" in result.output


def test_an_undeclared_persistent_effect_fails_validation(tmp_path: Path, iam: IamReference) -> None:
    path = _edited_catalog(tmp_path, "flows/add-remove-lex-bots", persistent_effects=[])
    faults = _faults(path, iam)
    assert len(faults) == 1 and "lex:CreateResourcePolicy" in faults[0], faults


def test_reviewed_fields_are_checked(tmp_path: Path, iam: IamReference) -> None:
    chat = "data-storage/edit-chat-transcripts"
    assert any("lists no storage_resource_types" in f for f in _faults(
        _edited_catalog(tmp_path, chat, storage_resource_types=[]), iam))
    assert any("'TRANSCRIPTS' is not one of" in f for f in _faults(
        _edited_catalog(tmp_path, chat, storage_resource_types=["TRANSCRIPTS"]), iam))
    assert any("lists instance_attributes but grants none" in f for f in _faults(
        _edited_catalog(tmp_path, chat, instance_attributes=["CONTACT_LENS"]), iam))
    assert any("star_exceptions names s3:PutBucketPolicy" in f for f in _faults(
        _edited_catalog(tmp_path, chat, star_exceptions=[
            {"action": "s3:PutBucketPolicy", "reason": "no"}]), iam))
    with pytest.raises(CatalogError, match="needs an action and a written reason"):
        load_catalog(_edited_catalog(tmp_path, chat, persistent_effects=[
            {"action": "connect:ListInstances", "reason": " "}]))
    with pytest.raises(CatalogError, match="instance_scope 'anywhere'"):
        load_catalog(_edited_catalog(tmp_path, chat, instance_scope="anywhere"))


def test_a_star_exception_puts_the_action_on_star_and_only_then(
    tmp_path: Path, iam: IamReference
) -> None:
    entry = "home/delete-instance"
    plain = compile_for(entry, PRINCIPALS["role"], iam, instance_arn=INSTANCE)
    assert all("ds:DeleteDirectory" not in s["Action"] or s["Resource"] != "*"
               for s in statements_of(plain))
    path = _edited_catalog(tmp_path, entry, star_exceptions=[
        {"action": "ds:DeleteDirectory", "reason": "a test of the mechanism only"}])
    widened = compile_for(entry, PRINCIPALS["role"], iam, catalog=load_catalog(path),
                          instance_arn=INSTANCE)
    star = next(s for s in statements_of(widened) if s["Sid"] == "SupportingServices")
    assert "ds:DeleteDirectory" in star["Action"] and star["Resource"] == "*"


def test_docs_per_entry_table_is_the_generated_one() -> None:
    """docs/policies.md's per-entry table is the script's output, so it stays true."""
    import sys

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tools"))
    from least_privilege_report import markdown, measure

    table = markdown(measure(with_parliament=False))
    docs = (root / "docs" / "policies.md").read_text(encoding="utf-8")
    assert table in docs, "regenerate: .venv/bin/python tools/least_privilege_report.py --markdown"


def test_configured_directory_id_pins_directory_writes(iam: IamReference) -> None:
    config = parse_config({"instances": [
        {"alias": "prod", "arn": INSTANCE, "directory_id": "d-906700c1a2"},
        {"alias": "other", "arn": INSTANCE.replace("0a1b", "9f9f")}]})
    prod, other = config.instances
    assert prod.directory_id == "d-906700c1a2" and other.directory_id is None
    role = PRINCIPALS["role"]
    pinned = compile_for("home/delete-instance", role, iam, instance_arn=prod.arn,
                         instance_resources=InstanceResources(prod.arn,
                                                              directory_id=prod.directory_id))
    directory = f"arn:aws:ds:eu-west-2:{ACCOUNT}:directory/d-906700c1a2"
    ds = [s for s in statements_of(pinned) if any(a.startswith("ds:") for a in s["Action"])]
    writes = [s for s in ds if "ds:DeleteDirectory" in s["Action"]]
    assert writes and all(as_list(s["Resource"]) == [directory] for s in writes)
    assert "ds:UnauthorizeApplication" in writes[0]["Action"]
    # Unset: the account-and-Region scope, never `*`.
    unpinned = compile_for("home/delete-instance", role, iam, instance_arn=other.arn)
    (write,) = [s for s in statements_of(unpinned) if "ds:DeleteDirectory" in s["Action"]]
    assert as_list(write["Resource"]) == [f"arn:aws:ds:eu-west-2:{ACCOUNT}:directory/*"]


@pytest.mark.parametrize("bad", ["d-12345", "D-906700C1A2", "d-906700c1a2x", "906700c1a2", 7])
def test_a_malformed_directory_id_is_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"instances\[0\]\.directory_id: must be") as raised:
        parse_config({"instances": [{"alias": "prod", "arn": INSTANCE, "directory_id": bad}]})
    if isinstance(bad, str):
        assert "d- and 10 hex digits" in str(raised.value)


def test_storage_config_keys_narrow_only_storage_entries_kms_writes(iam: IamReference) -> None:
    key = "0a1b2c3d-aaaa-bbbb-cccc-111122223333"
    looked_up = InstanceResources(instance_arn=INSTANCE, kms_key_ids=(key,),
                                  kinesis_stream_names=("agent-events",),
                                  firehose_stream_names=("ctr",))
    key_arn = f"arn:aws:kms:eu-west-2:{ACCOUNT}:key/{key}"
    any_key = f"arn:aws:kms:eu-west-2:{ACCOUNT}:key/*"
    role = PRINCIPALS["role"]

    def statement_with(compiled: Any, action: str) -> dict[str, Any]:
        return next(s for s in statements_of(compiled) if action in s["Action"])

    def kms_resources(entry_id: str) -> dict[str, list[str]]:
        compiled = compile_for(entry_id, role, iam, instance_arn=INSTANCE,
                               instance_resources=looked_up)
        return {a: as_list(s["Resource"]) for s in statements_of(compiled)
                for a in s["Action"] if a.startswith("kms:")}

    recording = kms_resources("data-storage/edit-call-recording")
    # The KMS grant writes reach only the storage configs' key; DescribeKey (a read, for
    # the console to offer another key) stays on the account and Region.
    assert recording["kms:CreateGrant"] == [key_arn]
    assert recording["kms:RetireGrant"] == [key_arn]
    assert recording["kms:DescribeKey"] == [any_key]
    compiled = compile_for("data-storage/edit-call-recording", role, iam, instance_arn=INSTANCE,
                           instance_resources=looked_up)
    grant = statement_with(compiled, "kms:CreateGrant")
    assert grant["Condition"]["Bool"]["kms:GrantIsForAWSResource"] == "true"
    # A non-storage entry's keys (a Customer Profiles domain's) are not the storage ones.
    profiles = kms_resources("customer-profiles/edit-customer-profiles")
    assert key_arn not in str(profiles) and profiles["kms:CreateGrant"] == [any_key]
    # Streams: the streaming entries only read them, so they stay on the account+Region.
    streaming = compile_for("data-streaming/edit-contact-record", role, iam,
                            instance_arn=INSTANCE, instance_resources=looked_up)
    described = statement_with(streaming, "kinesis:DescribeStream")
    assert as_list(described["Resource"]) == [f"arn:aws:kinesis:eu-west-2:{ACCOUNT}:stream/*"]
    # Without the look-up (or before it answers): the account-and-Region scope.
    plain = compile_for("data-storage/edit-call-recording", role, iam, instance_arn=INSTANCE)
    assert as_list(statement_with(plain, "kms:CreateGrant")["Resource"]) == [any_key]


def test_configured_replica_regions_pin_create_replica(iam: IamReference) -> None:
    config = parse_config({"instances": [
        {"alias": "prod", "arn": INSTANCE, "replica_regions": ["us-west-2"]}]})
    (prod,) = config.instances
    assert prod.replica_regions == ("us-west-2",)
    role = PRINCIPALS["role"]
    resources = InstanceResources(prod.arn, replica_regions=prod.replica_regions)
    pinned = compile_for("home/create-a-replica-instance", role, iam, instance_arn=prod.arn,
                         instance_resources=resources)
    (new,) = [s for s in statements_of(pinned) if s["Sid"] == "ConnectNewInstances"]
    # The target Region, and the source instance's own (ReplicateInstance acts on it).
    assert sorted(as_list(new["Resource"])) == [
        f"arn:aws:connect:eu-west-2:{ACCOUNT}:instance/*",
        f"arn:aws:connect:us-west-2:{ACCOUNT}:instance/*"]
    assert "connect:ReplicateInstance" in new["Action"]
    assert any("eu-west-2, us-west-2" in n for n in pinned.notes)
    # Unset: any Region, as before, and the note says so.
    anywhere = compile_for("home/create-a-replica-instance", role, iam, instance_arn=prod.arn)
    (new,) = [s for s in statements_of(anywhere) if s["Sid"] == "ConnectNewInstances"]
    assert as_list(new["Resource"]) == [f"arn:aws:connect:*:{ACCOUNT}:instance/*"]
    assert any("in any Region" in n for n in anywhere.notes)
    # Other entries ignore replica Regions.
    created = compile_for("home/create-instance", role, iam, instance_arn=prod.arn,
                          instance_resources=resources)
    assert "us-west-2" not in json.dumps([p.document for p in created.policies])


@pytest.mark.parametrize("bad", ["us-west", "US-WEST-2", "uswest2", 5])
def test_a_malformed_replica_region_is_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"instances\[0\]\.replica_regions\[1\]: must be"):
        parse_config({"instances": [{"alias": "prod", "arn": INSTANCE,
                                     "replica_regions": ["us-west-2", bad]}]})
