"""AwsSessions: config, assume-role with external id and credential caching, and the
explicit endpoint (moto's HTTP server standing in for AWS_ENDPOINT_URL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_testkit import (
    OTHER_ACCOUNT,
    OTHER_INSTANCE,
    REGION,
    connect_document,
    make_plan,
    make_principal,
)

from bot.aws.errors import AwsConfigError
from bot.aws.granter import IamGranter, decode_document
from bot.aws.sessions import AwsSessions, InstanceConfig, account_of


def test_clients_use_standard_retries_and_timeouts(fake_aws: None) -> None:
    sessions = AwsSessions(REGION, max_attempts=4, connect_timeout=2, read_timeout=7)
    client = sessions.iam()
    config: Any = client.meta.config

    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert (config.connect_timeout, config.read_timeout) == (2, 7)
    assert sessions.iam() is client  # one client per credentials, reused


def test_assume_role_passes_the_external_id_and_caches_until_near_expiry(fake_aws: None) -> None:
    clock = [datetime.now(UTC)]
    sessions = AwsSessions(REGION, instances=[OTHER_INSTANCE], now=lambda: clock[0])
    sent: list[dict[str, Any]] = []
    sessions.client("sts").meta.events.register(
        "provide-client-params.sts.AssumeRole", lambda params, **_: sent.append(dict(params))
    )

    first = sessions.iam(OTHER_INSTANCE)
    first.list_roles()
    again = sessions.iam(OTHER_INSTANCE)
    again.list_roles()
    assert sessions.assume_role_calls == 1  # the credentials are reused while fresh
    clock[0] += timedelta(minutes=56)  # inside the 5-minute refresh margin of 1 h creds
    refreshed = sessions.iam(OTHER_INSTANCE)
    assert sessions.assume_role_calls == 1  # botocore refreshes on the next request...
    refreshed.list_roles()

    # ...so the same client keeps working with new credentials from a second AssumeRole.
    assert again is first
    assert refreshed is first
    assert sessions.assume_role_calls == 2
    assert len(sent) == 2
    assert sent[0]["RoleArn"] == OTHER_INSTANCE.assume_role_arn
    assert sent[0]["ExternalId"] == "ext-id-for-other"
    caller = sessions.client("sts", OTHER_INSTANCE).get_caller_identity()
    assert caller["Account"] == OTHER_ACCOUNT


def test_instances_without_a_role_use_the_bots_own_credentials(fake_aws: None) -> None:
    local = InstanceConfig(arn="arn:aws:connect:us-east-1:123456789012:instance/x")
    sessions = AwsSessions(REGION, instances=[local])

    assert sessions.session_for(local) is sessions.session_for(None)
    assert sessions.iam_for_account("123456789012") is sessions.iam()
    assert sessions.assume_role_calls == 0


def test_an_external_id_without_a_role_is_a_config_error() -> None:
    broken = InstanceConfig(arn="arn:aws:connect:us-east-1:1:instance/x", external_id="abc")

    with pytest.raises(AwsConfigError, match="assume_role_arn is not"):
        AwsSessions(REGION, instances=[broken])
    with pytest.raises(AwsConfigError, match="not an ARN"):
        account_of("role/x")


def test_the_endpoint_url_sends_everything_to_that_server(moto_url: str) -> None:
    # moto_url: moto's HTTP server, from tests/integration/conftest.py
    sessions = AwsSessions(REGION, endpoint_url=moto_url, instances=[OTHER_INSTANCE])
    granter = IamGranter(sessions.iam_for_principal, sleep=lambda _: None)
    home = make_principal(sessions.iam(), "role", "over-http")
    remote = make_principal(sessions.iam(OTHER_INSTANCE), "user", "remote-over-http")

    granter.attach(make_plan(home, "inline", "h1"))
    granter.attach(make_plan(remote, "managed", "h2"))

    assert sessions.iam().meta.endpoint_url == moto_url
    assert sessions.iam().list_role_policies(RoleName="over-http")["PolicyNames"] == [
        "connect-access-h1"
    ]
    remote_iam = sessions.iam(OTHER_INSTANCE)
    attached = remote_iam.list_attached_user_policies(UserName="remote-over-http")
    assert [p["PolicyName"] for p in attached["AttachedPolicies"]] == ["connect-access-h2"]
    document = remote_iam.get_policy_version(
        PolicyArn=attached["AttachedPolicies"][0]["PolicyArn"], VersionId="v1"
    )["PolicyVersion"]["Document"]
    assert decode_document(document) == connect_document()
