"""Grant targets (bot.targets), their config forms (bot.config) and their compiled
policies (bot.target_policy): pure, no AWS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.catalog import Catalog, load_catalog
from bot.config import ConfigError, parse_config
from bot.iamref import IamReference
from bot.policy import validate_document
from bot.target_policy import compile_for_target
from bot.targets import (
    ApproverMapping,
    IamTarget,
    IdentityCenterTarget,
    SharedRoleTarget,
    TargetError,
    is_session_scoped,
    parse_target,
    reaches,
    self_approval_decision,
    session_condition,
)

ROLE = "arn:aws:iam::111122223333:role/ConnectAdmins"
USER = "arn:aws:iam::111122223333:user/carol"
GROUP = "arn:aws:iam::111122223333:group/admins"
INSTANCE = "arn:aws:connect:us-east-1:111122223333:instance/11111111-2222-3333-4444-555555555555"
SSO = {"instance_arn": "arn:aws:sso:::instance/ssoins-1234567890abcdef",
       "identity_store_id": "d-1234567890"}
ROLE_ID = "AROAEXAMPLEID1234567"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.mark.parametrize("ref", [
    ROLE, USER, GROUP, f"{ROLE};session=bob@example.com", "identity-center-user:alice@example.com",
    "arn:aws:iam::111122223333:role/team/a/Admins;session=x.y",
])
def test_every_target_reference_reads_back_as_itself(ref: str) -> None:
    assert parse_target(ref).ref == ref


def test_the_three_kinds_and_where_their_policies_go() -> None:
    iam, shared, ic = (parse_target(USER), parse_target(f"{ROLE};session=bob"),
                       parse_target("identity-center-user:alice@example.com"))
    assert isinstance(iam, IamTarget) and iam.policy_holder == USER
    assert isinstance(shared, SharedRoleTarget) and shared.policy_holder == ROLE
    assert shared.session_name == "bob"
    assert isinstance(ic, IdentityCenterTarget) and ic.policy_holder is None


@pytest.mark.parametrize(("ref", "fault"), [
    (f"{USER};session=bob", "only narrows a role"),
    (f"{ROLE};session=b", "not a role session name"),
    (f"{ROLE};session=bob*", "not a role session name"),
    ("identity-center-user:", "not an Identity Center user"),
    ("identity-center-user:a b", "not an Identity Center user"),
    ("alice", "not an IAM principal ARN"),
])
def test_bad_references_are_refused_with_the_reason(ref: str, fault: str) -> None:
    with pytest.raises(TargetError, match=fault):
        parse_target(ref)


@pytest.mark.parametrize(("holder", "target", "expected"), [
    (ROLE, ROLE, True),
    (USER, USER, True),
    (GROUP, GROUP, True),
    (USER, ROLE, False),
    (ROLE, f"{ROLE};session=bob", True),  # a plain mapping may assume any session name
    (f"{ROLE};session=bob", ROLE, True),
    (f"{ROLE};session=bob", f"{ROLE};session=bob", True),
    (f"{ROLE};session=erin", f"{ROLE};session=bob", False),
    ("identity-center-user:Alice@Example.com", "identity-center-user:alice@example.com", True),
    ("identity-center-user:erin@example.com", "identity-center-user:alice@example.com", False),
    ("identity-center-user:alice@example.com", ROLE, False),
])
def test_reaches(holder: str, target: str, expected: bool) -> None:
    assert reaches(parse_target(holder), parse_target(target)) is expected


def test_self_approval_is_judged_by_slack_id_and_by_principal() -> None:
    own = self_approval_decision("U0A", "U0A", ROLE, ApproverMapping(ROLE))
    assert not own.allowed and own.reason == "You cannot approve or deny your own request."
    same = self_approval_decision("U0A", "U0B", f"{ROLE};session=a1", ApproverMapping(ROLE))
    assert not same.allowed and not same.unconfirmed
    assert "reaches the access it grants" in same.reason
    assert self_approval_decision("U0A", "U0B", f"{ROLE};session=a1",
                                  ApproverMapping(f"{ROLE};session=b1")).allowed
    assert self_approval_decision("U0A", "U0B", ROLE, ApproverMapping()).allowed


@pytest.mark.parametrize(("requester_ref", "mapping", "refused"), [
    # found only by tag: the same role, the same user, the role without distinct sessions
    (ROLE, ApproverMapping(tagged=(ROLE,)), True),
    (USER, ApproverMapping(tagged=(USER,)), True),
    (f"{ROLE};session=a1", ApproverMapping(tagged=(ROLE,)), True),
    # a config mapping elsewhere does not hide a tag on the requester's principal
    (ROLE, ApproverMapping(USER, tagged=(ROLE,)), True),
    (ROLE, ApproverMapping(tagged=(USER,)), False),
    (f"{ROLE};session=a1", ApproverMapping(f"{ROLE};session=b1", tagged=(USER,)), False),
])
def test_a_mapping_found_by_tag_counts_like_a_configured_one(
    requester_ref: str, mapping: ApproverMapping, refused: bool,
) -> None:
    decision = self_approval_decision("U0A", "U0B", requester_ref, mapping)
    assert decision.allowed is not refused
    if refused:
        assert "found by its connect-access:slack-user tag" in decision.reason or (
            mapping.configured is not None and "reaches" in decision.reason)


def test_a_failed_lookup_refuses_unless_a_configured_mapping_differs() -> None:
    failed = "searching IAM for connect-access:slack-user=U0B: EndpointConnectionError"
    unknown = self_approval_decision("U0A", "U0B", ROLE, ApproverMapping(lookup_error=failed))
    assert not unknown.allowed and unknown.unconfirmed
    assert "could not confirm that you are not the requester" in unknown.reason
    assert "EndpointConnectionError" in unknown.reason

    differs = self_approval_decision("U0A", "U0B", ROLE,
                                     ApproverMapping(USER, lookup_error=failed))
    assert differs.allowed and "tag lookup failed" in differs.reason
    # a configured mapping that reaches the requester is refused outright, lookup or not
    same = self_approval_decision("U0A", "U0B", ROLE, ApproverMapping(ROLE, lookup_error=failed))
    assert not same.allowed and not same.unconfirmed


def test_the_session_condition_and_its_check() -> None:
    condition = session_condition(ROLE_ID, "bob@example.com")
    assert condition == {"StringLike": {"aws:userid": f"{ROLE_ID}:bob@example.com"}}
    with pytest.raises(TargetError, match="unique id"):
        session_condition("alice", "bob@example.com")
    assert not is_session_scoped({"Statement": []}, ROLE_ID, "bob@example.com")


# -- config ------------------------------------------------------------------------------


def config(principals: dict[str, Any], **top: Any) -> Any:
    return parse_config({"instances": [{"alias": "prod", "arn": INSTANCE}],
                         "principals": principals, **top}, "op.yaml")


def test_the_three_principal_forms_load() -> None:
    loaded = config({
        "U0A": ROLE,
        "U0B": {"role": "arn:aws:iam::111122223333:role/Shared", "session_name": "bob@x.io"},
        "U0C": {"role": "arn:aws:iam::111122223333:role/Shared", "session_name": "cat@x.io"},
        "U0D": {"identity_center_user": "dora@example.com"},
    }, identity_center=SSO)
    assert loaded.principals == {
        "U0A": ROLE,
        "U0B": "arn:aws:iam::111122223333:role/Shared;session=bob@x.io",
        "U0C": "arn:aws:iam::111122223333:role/Shared;session=cat@x.io",
        "U0D": "identity-center-user:dora@example.com",
    }
    assert loaded.identity_center is not None
    assert loaded.identity_center.access_portal == "https://d-1234567890.awsapps.com/start"


@pytest.mark.parametrize(("principals", "top", "message"), [
    ({"U0A": ROLE, "U0B": ROLE}, {},
     "principals.U0A: IAM role .* is mapped to 2 Slack users \\(U0A, U0B\\)"),
    ({"U0A": ROLE, "U0B": {"role": ROLE, "session_name": "bob"}}, {},
     "principals.U0A: .* mapped to 2 Slack users"),
    ({"U0A": {"role": ROLE, "session_name": "bob"}, "U0B": {"role": ROLE, "session_name": "bob"}},
     {}, "principals.U0B: session name 'bob' .* is also mapped to U0A"),
    ({"U0A": {"identity_center_user": "a@x.io"}, "U0B": {"identity_center_user": "A@x.io"}},
     {"identity_center": SSO}, "principals.U0A: IAM Identity Center user .* mapped to 2"),
    ({"U0A": GROUP}, {}, "principals.U0A: .* is an IAM group: .* `allow_group_targets: true`"),
    ({"U0A": {"identity_center_user": "a@x.io"}}, {},
     "principals.U0A: names an Identity Center user, but there is no `identity_center:`"),
    ({"U0A": {"role": ROLE}}, {}, "principals.U0A: a shared role needs the person's session_name"),
    ({"U0A": {"role": USER, "session_name": "bob"}}, {}, "principals.U0A: .* only narrows a role"),
    ({}, {"identity_center": {"instance_arn": "ssoins-1", "identity_store_id": "d-1234567890"}},
     "identity_center.instance_arn: must be an IAM Identity Center instance ARN"),
    ({}, {"identity_center": {**SSO, "identity_store_id": "store"}},
     "identity_center.identity_store_id: must be an identity store id"),
    ({}, {"identity_center": {**SSO, "portal": "x"}}, "identity_center.portal: unknown key"),
    ({}, {"identity_center": {**SSO, "portal_url": "https://"}},
     "identity_center.portal_url: must be the https:// address of the AWS access portal"),
    ({}, {"identity_center": {**SSO, "portal_url": "http://d-1234567890.awsapps.com/start"}},
     "identity_center.portal_url: must be the https:// address"),
    ({}, {"identity_center": {**SSO, "portal_url": "https://portal .example.com"}},
     "identity_center.portal_url: must be the https:// address"),
    ({}, {"allow_group_targets": "yes"}, "allow_group_targets: must be true or false"),
])
def test_config_refusals_name_the_key(principals: dict[str, Any], top: dict[str, Any],
                                      message: str) -> None:
    with pytest.raises(ConfigError, match=f"^op.yaml: {message}"):
        config(principals, **top)


def test_groups_load_when_allowed_and_may_be_shared() -> None:
    loaded = config({"U0A": GROUP, "U0B": GROUP}, allow_group_targets=True)
    assert loaded.allow_group_targets and loaded.principals["U0B"] == GROUP


def test_max_total_duration_defaults_to_three_times_max_duration() -> None:
    loaded = parse_config({"routing": {"tiers": {
        "read": {"max_duration": "2h"},
        "write": {"max_duration": "1h", "max_total_duration": "90m"}}}})
    assert loaded.router.tiers["read"].total_limit == timedelta(hours=6)
    assert loaded.router.tiers["write"].total_limit == timedelta(minutes=90)
    with pytest.raises(ConfigError, match=r"routing\.tiers\.write\.max_total_duration: must be "
                                          r"at least max_duration \(1h\), got 30m"):
        parse_config({"routing": {"tiers": {
            "write": {"max_duration": "1h", "max_total_duration": "30m"}}}})
    with pytest.raises(ConfigError, match=r"routing\.overrides\[0\]\.max_total_duration"):
        parse_config({"routing": {"overrides": [
            {"match": {"page": "Home"}, "max_total_duration": "1m"}]}})


# -- compiled policies --------------------------------------------------------------------


def test_a_shared_role_policy_carries_the_session_condition_on_every_statement(
    catalog: Catalog,
) -> None:
    # An entry with several statements, IAM-scoped ones among them.
    entry = "contact-lens-connectors/add-update-remove-contact-lens-connectors"
    compiled = compile_for_target(
        catalog, entry, f"{ROLE};session=bob@example.com", grant_id="abc123",
        start=START, duration=timedelta(hours=1), max_duration=None, iam=IamReference(),
        instance_arn=INSTANCE, role_unique_id=lambda arn: ROLE_ID)
    assert compiled.principal_arn == f"{ROLE};session=bob@example.com"
    for policy in compiled.policies:
        assert is_session_scoped(policy.document, ROLE_ID, "bob@example.com")
        assert len(policy.document["Statement"]) >= 1
        validate_document(policy.document, IamReference(), starts_at=compiled.starts_at,
                          expires_at=compiled.expires_at)
    plain = compile_for_target(
        catalog, entry, ROLE, grant_id="abc123", start=START, duration=timedelta(hours=1),
        max_duration=None, iam=IamReference(), instance_arn=INSTANCE)
    assert compiled.size > plain.size  # the condition is counted against the quota
    assert not is_session_scoped(plain.policies[0].document, ROLE_ID, "bob@example.com")


def test_an_identity_center_grant_is_one_permission_set_policy_in_the_instance_account(
    catalog: Catalog,
) -> None:
    compiled = compile_for_target(
        catalog, "home/describe-instance", "identity-center-user:alice@example.com",
        grant_id="abc123", start=START, duration=timedelta(hours=1), max_duration=None,
        iam=IamReference(), instance_arn=INSTANCE, existing_inline_chars=9000)
    assert compiled.kind == "permission_set" and compiled.quota == 10240
    assert compiled.policy_names == ("connect-access-abc123",)
    assert compiled.existing_inline_chars == 0  # a set of its own: nothing else counts
    plan = compiled.to_plan()
    assert plan.principal_arn == "identity-center-user:alice@example.com"
    assert plan.instance_arn == INSTANCE
    assert INSTANCE in str(compiled.policies[0].document)
    with pytest.raises(TargetError, match="configure an instance"):
        compile_for_target(
            catalog, "home/describe-instance", "identity-center-user:alice@example.com",
            grant_id="abc123", start=START, duration=timedelta(hours=1), max_duration=None,
            iam=IamReference())
