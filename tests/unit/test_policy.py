"""The policy compiler: every catalog entry, for every kind of principal, with and without
an instance; scoping, the escalation rule, the time box and IAM's size quotas."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.catalog import Catalog, load_catalog
from bot.durations import DurationError
from bot.iamref import IamReference
from bot.policy import (
    MANAGED_POLICY_QUOTA,
    CompiledPolicy,
    InstanceArnError,
    PolicyError,
    PolicyTooLargeError,
    PolicyValidationError,
    PrincipalArnError,
    compile_policy,
    merge_conditions,
    pack_statements,
    parse_instance_arn,
    parse_principal,
    plan_builder,
    validate_document,
)

ACCOUNT = "111122223333"
INSTANCE = f"arn:aws:connect:eu-west-2:{ACCOUNT}:instance/0a1b2c3d-1111-2222-3333-444455556666"
PRINCIPALS = {
    "role": f"arn:aws:iam::{ACCOUNT}:role/team/connect/alice-admin",
    "user": f"arn:aws:iam::{ACCOUNT}:user/alice",
    "group": f"arn:aws:iam::{ACCOUNT}:group/connect-admins",
}
QUOTAS = {"user": 2048, "group": 5120, "role": 10240}
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
WINDOW = {"DateGreaterThan": {"aws:CurrentTime": "2026-11-27T09:00:00Z"},
          "DateLessThan": {"aws:CurrentTime": "2026-11-27T10:00:00Z"}}
IAM_WRITE_OK = re.compile(
    rf"arn:aws:iam::{ACCOUNT}:(role/aws-service-role/[a-z.-]+\.amazonaws\.com/AWSServiceRoleFor\w+\*"
    r"|role/service-role/\*|policy/service-role/\*)"
)

CATALOG = load_catalog()
ENTRY_IDS = sorted(CATALOG.entries)


@pytest.fixture(scope="module")
def iam() -> IamReference:
    return IamReference()


def compile_for(catalog: Catalog, entry_id: str, principal: str, iam: IamReference,
                **kwargs: Any) -> CompiledPolicy:
    options: dict[str, Any] = {"grant_id": "g0123456789a", "start": START,
                               "duration": timedelta(hours=1), "max_duration": timedelta(hours=1),
                               "iam": iam}
    options.update(kwargs)
    return compile_policy(catalog, entry_id, principal, **options)


def independent_size(document: dict[str, Any]) -> int:
    return len(re.sub(r"\s", "", json.dumps(document)))


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("with_instance", [False, True], ids=["no-instance", "instance"])
@pytest.mark.parametrize("kind", ["role", "user", "group"])
@pytest.mark.parametrize("entry_id", ENTRY_IDS)
def test_every_entry_compiles_safely(entry_id: str, kind: str, with_instance: bool,
                                     iam: IamReference) -> None:
    compiled = compile_for(CATALOG, entry_id, PRINCIPALS[kind], iam,
                           instance_arn=INSTANCE if with_instance else None)
    statements = [s for p in compiled.policies for s in p.document["Statement"]]

    # Content: exactly the entry's actions and its requirements', each once.
    granted = [a for s in statements for a in s["Action"]]
    assert sorted(granted) == list(CATALOG.granted_actions(entry_id))
    assert len(granted) == len(set(granted))

    for statement in statements:
        condition = statement["Condition"]
        # Time box on every statement, other conditions merged beside it.
        assert condition["DateGreaterThan"] == WINDOW["DateGreaterThan"]
        assert condition["DateLessThan"] == WINDOW["DateLessThan"]
        resources = as_list(statement["Resource"])
        for action in statement["Action"]:
            info = iam.info(action)
            accepts_instance = any(":instance/${InstanceId}" in f
                                   for r in info.resources for f in r.arn_formats)
            if info.service == "connect":
                scope = CATALOG.get(entry_id).instance_scope
                if scope != "chosen" and accepts_instance:
                    # Create instance / replica: new instances, never the chosen one.
                    region = "eu-west-2" if with_instance and scope == "new-instance" else "*"
                    assert resources == [f"arn:aws:connect:{region}:{ACCOUNT}:instance/*"], action
                elif with_instance and accepts_instance:
                    assert resources == [INSTANCE, f"{INSTANCE}/*"], action
                elif any(r.arn_formats for r in info.resources) and not accepts_instance:
                    assert all(r.startswith("arn:aws:connect:") and f":{ACCOUNT}:" in r
                               for r in resources), action
                else:
                    assert resources == ["*"], action
            if info.service == "iam" and info.is_write:
                # The escalation rule: never "*", never an arbitrary role/user/group/policy.
                assert resources and all(IAM_WRITE_OK.fullmatch(r) for r in resources), (action, resources)
            if action == "iam:PassRole":
                assert condition["StringEquals"]["iam:PassedToService"]
            if action == "iam:CreateServiceLinkedRole":
                services = condition["StringEquals"]["iam:AWSServiceName"]
                assert "connect.amazonaws.com" in services
                assert all(f"/{s}/" in "".join(resources) for s in services)

    # Size accounting, recomputed independently of the compiler.
    sizes = [independent_size(dict(p.document)) for p in compiled.policies]
    assert list(compiled.sizes) == sizes
    if compiled.kind == "inline":
        assert len(compiled.policies) == 1
        assert sizes[0] <= QUOTAS[kind] == compiled.quota
        assert compiled.policy_names == ("connect-access-g0123456789a",)
    else:
        assert all(s <= MANAGED_POLICY_QUOTA for s in sizes)
        whole = independent_size({"Version": "2012-10-17", "Statement": statements})
        assert whole > QUOTAS[kind]
    chosen = CATALOG.get(entry_id).instance_scope == "chosen"
    assert ("no --instance given" in " ".join(compiled.notes)) is (chosen and not with_instance)


def test_edit_customer_profiles_is_managed_for_a_user_and_inline_for_a_role(iam: IamReference) -> None:
    entry = "customer-profiles/edit-customer-profiles"
    as_user = compile_for(CATALOG, entry, PRINCIPALS["user"], iam)
    as_role = compile_for(CATALOG, entry, PRINCIPALS["role"], iam)
    assert as_user.kind == "managed" and as_user.quota == MANAGED_POLICY_QUOTA
    assert as_role.kind == "inline" and as_role.quota == 10240
    assert "inline does not fit" in " ".join(as_user.notes)


def test_existing_inline_usage_counts_against_the_aggregate(iam: IamReference) -> None:
    entry = "data-storage/edit-chat-transcripts"
    fresh = compile_for(CATALOG, entry, PRINCIPALS["role"], iam, instance_arn=INSTANCE)
    assert fresh.kind == "inline"
    room = 10240 - fresh.size
    fits = compile_for(CATALOG, entry, PRINCIPALS["role"], iam, instance_arn=INSTANCE,
                       existing_inline_chars=room)
    assert fits.kind == "inline" and fits.quota == fresh.size
    over = compile_for(CATALOG, entry, PRINCIPALS["role"], iam, instance_arn=INSTANCE,
                       existing_inline_chars=room + 1)
    assert over.kind == "managed"
    assert over.to_json()["inline_quota"] == {"limit": 10240, "existing": room + 1,
                                              "available": fresh.size - 1}


def test_more_existing_usage_than_the_quota_reads_as_none_left(iam: IamReference) -> None:
    entry = "data-storage/edit-chat-transcripts"
    over = compile_for(CATALOG, entry, PRINCIPALS["role"], iam, instance_arn=INSTANCE,
                       existing_inline_chars=50_000)
    assert over.kind == "managed"
    assert over.to_json()["inline_quota"] == {"limit": 10240, "existing": 50_000,
                                              "available": 0}
    with pytest.raises(PolicyTooLargeError) as caught:
        compile_for(CATALOG, entry, PRINCIPALS["role"], iam, instance_arn=INSTANCE,
                    existing_inline_chars=50_000, existing_managed_policies=10)
    assert "the 0 left of the role's 10240-character inline quota" in str(caught.value)
    assert caught.value.available == 0


def test_nothing_fits_is_a_clear_error_with_numbers(iam: IamReference) -> None:
    with pytest.raises(PolicyTooLargeError) as caught:
        compile_for(CATALOG, "customer-profiles/edit-customer-profiles", PRINCIPALS["user"], iam,
                    existing_inline_chars=2000, existing_managed_policies=10)
    message = str(caught.value)
    assert "the 48 left of the user's 2048-character inline quota" in message
    assert "0 of 10 managed-policy slots" in message
    assert caught.value.available == 48 and caught.value.needed > 2048


def test_pack_splits_statements_and_policies_within_the_limit(iam: IamReference) -> None:
    compiled = compile_for(CATALOG, "customer-profiles/edit-customer-profiles", PRINCIPALS["role"], iam)
    from bot.policy import Statement
    statements = [Statement(s["Sid"], tuple(s["Action"]), tuple(as_list(s["Resource"])), s["Condition"])
                  for s in compiled.policies[0].document["Statement"]]
    bins = pack_statements(statements, 1000)
    assert len(bins) > 2
    from bot.policy import document_for, policy_size
    assert all(policy_size(document_for(b)) <= 1000 for b in bins)
    packed = sorted(a for b in bins for s in b for a in s.actions)
    assert packed == sorted(a for s in statements for a in s.actions)
    sids = [s.sid for b in bins for s in b]
    # The statements too large for 1,500 characters are cut into <Sid>1, <Sid>2, ...
    too_large = [s.sid for s in statements if policy_size(document_for([s])) > 1000]
    assert too_large
    assert all(f"{sid}1" in sids and f"{sid}2" in sids for sid in too_large)


def test_managed_split_names_are_numbered(iam: IamReference, tmp_path: Path) -> None:
    # A synthetic entry large enough to need two managed policies for a user.
    big = sorted({a for e in CATALOG for a in CATALOG.granted_actions(e.id)})
    catalog_file = tmp_path / "catalog.yaml"
    declared = {e.action: e.reason for entry in CATALOG for e in entry.persistent_effects}
    catalog_file.write_text(json.dumps({"entries": [
        {"id": "x/big", "page": "X", "name": "Big", "tier": "critical", "actions": big,
         "persistent_effects": [{"action": a, "reason": r} for a, r in declared.items()]}]}))
    catalog = load_catalog(catalog_file)
    compiled = compile_for(catalog, "x/big", PRINCIPALS["user"], iam)
    assert compiled.kind == "managed" and len(compiled.policies) >= 2
    assert compiled.policy_names == tuple(
        f"connect-access-g0123456789a-{n}" for n in range(1, len(compiled.policies) + 1))
    assert all(s <= MANAGED_POLICY_QUOTA for s in compiled.sizes)
    plan = compiled.to_plan()
    assert plan.kind == "managed" and len(plan.policies) == len(compiled.policies)


def test_unscoped_iam_write_action_is_refused(iam: IamReference, tmp_path: Path) -> None:
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(json.dumps({"entries": [
        {"id": "x/users", "page": "X", "name": "Users", "tier": "critical",
         "actions": ["connect:ListInstances", "iam:CreateUser"]}]}))
    with pytest.raises(PolicyError, match=r"iam:CreateUser is an IAM write action with no scoping rule"):
        compile_for(load_catalog(catalog_file), "x/users", PRINCIPALS["role"], iam)


def test_time_box_is_whole_seconds_utc(iam: IamReference) -> None:
    from zoneinfo import ZoneInfo
    start = datetime(2026, 11, 27, 10, 0, 0, 999_999, tzinfo=ZoneInfo("Europe/Paris"))
    compiled = compile_for(CATALOG, "home/list-instance", PRINCIPALS["user"], iam,
                           start=start, duration=timedelta(minutes=30))
    condition = compiled.policies[0].document["Statement"][0]["Condition"]
    assert condition["DateGreaterThan"]["aws:CurrentTime"] == "2026-11-27T09:00:00Z"
    assert condition["DateLessThan"]["aws:CurrentTime"] == "2026-11-27T09:30:00Z"
    assert compiled.expires_at == datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


def test_duration_limits(iam: IamReference) -> None:
    with pytest.raises(DurationError, match="critical tier allows"):
        compile_for(CATALOG, "federations/admin-emergency-federation", PRINCIPALS["role"], iam,
                    duration=timedelta(hours=2), max_duration=timedelta(hours=1))
    with pytest.raises(DurationError, match="positive"):
        compile_for(CATALOG, "home/list-instance", PRINCIPALS["role"], iam, duration=timedelta())
    extended = compile_for(CATALOG, "home/list-instance", PRINCIPALS["role"], iam,
                           duration=timedelta(hours=3), max_duration=None)
    assert extended.duration == timedelta(hours=3)
    with pytest.raises(PolicyError, match="timezone-aware"):
        compile_for(CATALOG, "home/list-instance", PRINCIPALS["role"], iam,
                    start=datetime(2026, 11, 27, 9, 0))


@pytest.mark.parametrize(
    ("arn", "kind", "path", "name", "partition"),
    [
        (f"arn:aws:iam::{ACCOUNT}:role/alice", "role", "/", "alice", "aws"),
        (f"arn:aws:iam::{ACCOUNT}:role/a/b/alice.admin@x", "role", "/a/b/", "alice.admin@x", "aws"),
        (f"arn:aws-cn:iam::{ACCOUNT}:user/bob", "user", "/", "bob", "aws-cn"),
        (f"arn:aws-us-gov:iam::{ACCOUNT}:group/ops/admins", "group", "/ops/", "admins", "aws-us-gov"),
    ],
)
def test_parse_principal(arn: str, kind: str, path: str, name: str, partition: str) -> None:
    principal = parse_principal(arn)
    assert (principal.kind, principal.path, principal.name, principal.partition,
            principal.account_id) == (kind, path, name, partition, ACCOUNT)


@pytest.mark.parametrize(
    ("arn", "fault"),
    [
        (f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/bob", rf"temporary session.*arn:aws:iam::{ACCOUNT}:role/Admin"),
        (f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/connect.amazonaws.com/AWSServiceRoleForAmazonConnect_x", "service-linked role"),
        (f"arn:aws:iam::{ACCOUNT}:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_1", "Identity Center"),
        (f"arn:aws:iam::{ACCOUNT}:root", "roles, users or groups only"),
        (f"arn:aws:iam::{ACCOUNT}:instance-profile/web", "roles, users or groups only"),
        (f"arn:aws:iam::{ACCOUNT}:role/", "roles, users or groups only"),
        (f"arn:aws:iam::{ACCOUNT}:user/bad name", "valid IAM user name"),
        (f"arn:aws:iam::{ACCOUNT}:role/" + "r" * 65, "up to 64"),
        ("arn:aws:iam::12345:role/alice", "not an IAM principal ARN"),
        ("arn:aws:s3:::bucket", "not an IAM principal ARN"),
        ("alice", "not an IAM principal ARN"),
        (f"arn:foo:iam::{ACCOUNT}:role/alice", "not an IAM principal ARN"),
        ("arn:aws:iam::00000000000\u0660:role/alice", "not an IAM principal ARN"),
        (f"arn:aws:iam::{ACCOUNT}:role/al\u00efce", "valid IAM role name"),
    ],
)
def test_parse_principal_refusals(arn: str, fault: str) -> None:
    with pytest.raises(PrincipalArnError, match=fault):
        parse_principal(arn)


def test_instance_arns(iam: IamReference) -> None:
    instance = parse_instance_arn(INSTANCE)
    assert (instance.region, instance.account_id) == ("eu-west-2", ACCOUNT)
    for bad in ["arn:aws:connect:eu-west-2:111122223333:instance/*", "arn:aws:connect:::instance/x",
                f"arn:aws:connect:eu-west-2:{ACCOUNT}:instance/abc/queue/1"]:
        with pytest.raises(InstanceArnError, match="not an Amazon Connect instance ARN"):
            parse_instance_arn(bad)
    with pytest.raises(InstanceArnError, match="account 444455556666"):
        compile_for(CATALOG, "home/list-instance", PRINCIPALS["role"], iam,
                    instance_arn=INSTANCE.replace(ACCOUNT, "444455556666"))


@pytest.mark.parametrize("grant_id", ["", "has space", "x" * 114, "a/b"])
def test_bad_grant_ids_cannot_make_policy_names(grant_id: str, iam: IamReference) -> None:
    with pytest.raises(PolicyError, match="cannot make an IAM policy name"):
        compile_for(CATALOG, "home/list-instance", PRINCIPALS["role"], iam, grant_id=grant_id)


def test_longest_grant_id_fits_the_name_limit(iam: IamReference) -> None:
    compiled = compile_for(CATALOG, "home/list-instance", PRINCIPALS["role"], iam, grant_id="x" * 113)
    assert len(compiled.policy_names[0]) == 128


def test_merge_conditions_merges_operators_and_refuses_conflicts() -> None:
    merged = merge_conditions(WINDOW, {"StringEquals": {"iam:PassedToService": ["ses.amazonaws.com"]}},
                              {"StringEquals": {"aws:RequestedRegion": "eu-west-2"}})
    assert merged == {**WINDOW, "StringEquals": {"iam:PassedToService": ["ses.amazonaws.com"],
                                                 "aws:RequestedRegion": "eu-west-2"}}
    with pytest.raises(PolicyError, match="conflicting conditions"):
        merge_conditions(WINDOW, {"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}})


def _doc(statement: dict[str, Any]) -> dict[str, Any]:
    base = {"Sid": "S", "Effect": "Allow", "Action": ["connect:ListInstances"], "Resource": "*",
            "Condition": WINDOW}
    return {"Version": "2012-10-17", "Statement": [{**base, **statement}]}


@pytest.mark.parametrize(
    ("statement", "fault"),
    [
        ({"Action": ["connect:NoSuchThing"]}, "no action"),
        ({"Action": ["iam:PutRolePolicy"]}, "could outlive the time box"),
        ({"Action": ["iam:PutRolePolicy"], "Resource": f"arn:aws:iam::{ACCOUNT}:role/alice"}, "could outlive"),
        ({"Action": ["connect:DescribeInstance"], "Resource": "arn:aws:s3:::bucket"}, "accepts none of the resources"),
        ({"Action": ["s3:ListBucket"], "Resource": ["arn:aws:s3:::bucket", f"arn:aws:kms:us-east-1:{ACCOUNT}:key/k"]},
         "no action of the statement accepts resource arn:aws:kms"),
        ({"Condition": {"DateLessThan": {"aws:CurrentTime": "2026-11-27T10:00:00Z"}}}, "time box"),
        ({"Condition": {**WINDOW, "StringEquals": {"iam:PassedToService": "x"}}}, "condition key"),
        ({"Effect": "Deny"}, "Effect"),
        ({"Sid": "has-dash"}, "Sid"),
        ({"Action": ["iam:PassRole"], "Resource": f"arn:aws:iam::{ACCOUNT}:role/service-role/*"}, "PassedToService"),
    ],
)
def test_validation_fails_loudly(statement: dict[str, Any], fault: str, iam: IamReference) -> None:
    with pytest.raises(PolicyValidationError, match=fault):
        validate_document(_doc(statement), iam)


def test_validation_checks_the_grant_window(iam: IamReference) -> None:
    with pytest.raises(PolicyValidationError, match="not the grant's window"):
        validate_document(_doc({}), iam, starts_at=START, expires_at=START + timedelta(hours=2))
    validate_document(_doc({}), iam, starts_at=START, expires_at=START + timedelta(hours=1))


def test_plan_builder_fits_the_lifecycle_context(iam: IamReference) -> None:
    from bot.lifecycle import GrantContext
    context = GrantContext(grant_id="abc123def456", entry_id="data-storage/edit-chat-transcripts",
                           principal_arn=PRINCIPALS["user"], instance_arn=INSTANCE, start=START,
                           expires_at=START + timedelta(minutes=45), inline_usage=100)
    plan = plan_builder(CATALOG, iam)(context)
    # 1,984 characters inline plus the 100 already used exceed a user's 2,048: the usage
    # the lifecycle measured reaches the compiler, which falls back to one managed policy.
    assert plan.grant_id == "abc123def456" and plan.kind == "managed"
    assert plan.policies[0].name == "connect-access-abc123def456"
    assert plan.expires_at == START + timedelta(minutes=45)
    assert plan.instance_arn == INSTANCE and plan.principal_arn == PRINCIPALS["user"]
    statement = plan.policies[0].document["Statement"][0]
    assert statement["Condition"]["DateLessThan"]["aws:CurrentTime"] == "2026-11-27T09:45:00Z"


def test_unknown_entry_is_a_policy_error(iam: IamReference) -> None:
    with pytest.raises(PolicyError, match="no catalog entry 'nope'"):
        compile_for(CATALOG, "nope", PRINCIPALS["role"], iam)
