"""Fixtures for the AWS adapter tests: sessions and a granter on moto (in-process,
function-scoped; fake credentials and moto itself come from tests/integration/conftest.py),
and a way to make a single IAM call fail the way AWS fails."""

from __future__ import annotations

from typing import Any

import pytest
from aws_testkit import (
    OTHER_INSTANCE,
    REGION,
    WRITE_OPERATIONS,
    Fault,
    FaultFactory,
    SleepRecorder,
    WriteCounter,
)

from bot.aws.granter import IamGranter
from bot.aws.sessions import AwsSessions


@pytest.fixture(autouse=True)
def _no_real_aws(fake_aws_credentials: None) -> None:
    """Every test here runs on fake credentials (tests/integration/conftest.py), moto
    in-process or not."""


@pytest.fixture
def sessions(fake_aws: None) -> AwsSessions:
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
def writes(iam: Any) -> WriteCounter:
    counter = WriteCounter()
    for operation in WRITE_OPERATIONS:
        iam.meta.events.register(f"before-call.iam.{operation}", counter)
    return counter
