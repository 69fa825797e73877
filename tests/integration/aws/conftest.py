"""Fixtures for the AWS adapter tests: moto (in-process, function-scoped), fake
credentials, and a way to make a single IAM call fail the way AWS fails."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aws_testkit import (
    OTHER_INSTANCE,
    REGION,
    WRITE_OPERATIONS,
    Fault,
    FaultFactory,
    RecordingNotifier,
    SleepRecorder,
    WriteCounter,
)
from moto import mock_aws

from bot.aws.granter import IamGranter
from bot.aws.sessions import AwsSessions


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Credentials that no real account accepts, and no config file or profile that could
    point boto3 at one."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_STS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws(fake_aws_credentials: None) -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def sessions(aws: None) -> AwsSessions:
    # botocore's own retries off: the granter's loop is what these tests exercise, and
    # botocore would sleep for real between its attempts.
    return AwsSessions(REGION, instances=[OTHER_INSTANCE], max_attempts=1)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def granter(sessions: AwsSessions, sleeps: SleepRecorder) -> IamGranter:
    return IamGranter(sessions.iam_for_principal, attempts=4, base_delay=0.1, sleep=sleeps)


@pytest.fixture
def iam(sessions: AwsSessions) -> Any:
    """The home account's IAM client (the same object the granter uses)."""
    return sessions.iam()


@pytest.fixture
def inject(sessions: AwsSessions) -> FaultFactory:
    """inject("PutRolePolicy", "Throttling", times=2) makes the next two calls fail;
    code "ReadTimeout" raises botocore's ReadTimeoutError from the HTTP layer instead."""

    def install(
        operation: str, code: str, times: int | None = 1, account: str | None = None
    ) -> Fault:
        client: Any = sessions.iam_for_account(account)  # botocore's hook types are too narrow
        fault = Fault(operation, code, times)
        if code == "ReadTimeout":
            # register_first: moto answers in its own before-send hook, so ours must run
            # before it to look like the network failing.
            client.meta.events.register_first(f"before-send.iam.{operation}", fault.read_timeout)
        else:
            client.meta.events.register(f"before-call.iam.{operation}", fault.error_response)
        return fault

    return install


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
def writes(iam: Any) -> WriteCounter:
    counter = WriteCounter()
    for operation in WRITE_OPERATIONS:
        iam.meta.events.register(f"before-call.iam.{operation}", counter)
    return counter
