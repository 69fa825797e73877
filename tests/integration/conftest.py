"""Fixtures for the integration tests that touch AWS: credentials no real account accepts,
moto in-process, and `flow`, the request lifecycle on the database driving the real IAM
granter and policy compiler (grant_flow_kit.py).

pytest puts the folder of each conftest.py on sys.path, so the tests in the folders below
import aws_testkit and grant_flow_kit from here too.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aws_testkit import REGION, TRUST, SleepRecorder
from doubles import (
    FakeClock,
    RecordingNotifier,
    StaticApproverDirectory,
    StaticPrincipalDirectory,
)
from grant_flow_kit import ATTEMPTS, LEADS, Flow, operator_config_data
from moto import mock_aws
from moto.server import ThreadedMotoServer
from throttling_iam import ThrottlingIamProxy

from bot.aws.granter import IamGranter
from bot.aws.sessions import AwsSessions
from bot.catalog import Catalog
from bot.config import parse_config
from bot.db import SessionFactory
from bot.iamref import IamReference
from bot.lifecycle import RequestService
from bot.policy import plan_builder


@pytest.fixture
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials that no real account accepts, and no config file, profile or endpoint
    that could point boto3 at one."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_STS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_aws(fake_aws_credentials: None) -> Iterator[None]:
    """moto in-process, fresh for the test."""
    with mock_aws():
        yield


@pytest.fixture
def flow(fake_aws: None, session_factory: SessionFactory, catalog: Catalog) -> Flow:
    # botocore's own retries off (it would sleep for real between its attempts): a hook
    # fault is then what botocore gave up on. The granter's consistency retries and the
    # lifecycle's throttle waits sleep through `sleeps`, recorded, not real.
    aws = AwsSessions(REGION, max_attempts=1)
    iam = aws.iam()
    iam.create_role(RoleName="alice-admin", AssumeRolePolicyDocument=TRUST)
    iam.create_user(UserName="carol")
    sleeps = SleepRecorder()
    granter = IamGranter(aws.iam_for_principal, attempts=ATTEMPTS, base_delay=0.01,
                         sleep=sleeps)
    config = parse_config(operator_config_data(), "test")
    clock = FakeClock(datetime.now(UTC))
    notifier = RecordingNotifier()
    service = RequestService(
        sessions=session_factory, catalog=catalog, config=config, granter=granter,
        notifier=notifier, approvers=StaticApproverDirectory({"S0LEADS": LEADS}),
        principals=StaticPrincipalDirectory(config.principals), clock=clock,
        plan_builder=plan_builder(catalog, IamReference()), max_revoke_attempts=3,
        sleep=sleeps,
    )
    return Flow(service, session_factory, iam, granter, clock, notifier, sleeps)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's HTTP server (its state is the process's, shared with other servers and
    tests: use names of your own)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # Each module starts from an empty moto, whatever ran before it in this process: a
    # walk of the whole account (test_paginated_iam's tiny pages) after another module's
    # hundreds of principals took minutes.
    urllib.request.urlopen(
        urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10
    ).close()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def proxy(moto_url: str, fake_aws_credentials: None) -> Iterator[ThrottlingIamProxy]:
    """A rate-limited IAM in front of moto (tests/throttling_iam.py), not throttling until
    the test sets a rate; it counts every request by action."""
    with ThrottlingIamProxy(moto_url) as running:
        yield running
