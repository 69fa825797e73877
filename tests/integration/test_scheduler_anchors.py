"""The scheduler process writes audit checkpoints: `connect-access scheduler` as a real
process with `audit:` configured (a local Ed25519 key, an Object Lock bucket on moto's S3
over HTTP) anchors the chain while requests arrive, without any request waiting on it, and
`connect-access audit verify` then checks the log against what it wrote."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
import yaml
from sqlalchemy import select
from test_scheduler_processes import (
    CLI,
    LEAD,
    REGION,
    SQLITE_ONLY,
    DeleteCounter,
    Deployment,
    fake_credentials,  # noqa: F401 - the autouse fixture, for this module too
    make_deployment,
    moto,  # noqa: F401 - the moto server fixture
    wait_for,
)

from bot.models import AuditChainHead

BUCKET = "scheduler-audit-anchors"


@pytest.fixture
def anchored(tmp_path: Path, database_url: str, moto: tuple[str, DeleteCounter]  # noqa: F811
             ) -> Iterator[Deployment]:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto[0])
    s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    for deployment in make_deployment(tmp_path, database_url, moto):
        subprocess.run([CLI, "audit", "keygen", str(tmp_path / "audit.pem")], check=True,
                       capture_output=True, env=deployment.env())
        config = yaml.safe_load(deployment.config_path.read_text())
        config["audit"] = {"signing_key_file": str(tmp_path / "audit.pem"),
                           "anchor_bucket": BUCKET, "checkpoint_events": 3,
                           "checkpoint_interval": "10s"}
        deployment.config_path.write_text(yaml.safe_dump(config))
        yield deployment


def checkpoints(moto_url: str) -> list[dict[str, object]]:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_url)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return [json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in keys]


@SQLITE_ONLY
def test_the_scheduler_leader_anchors_the_chain(anchored: Deployment) -> None:
    scheduler = anchored.scheduler("scheduler")
    scheduler.wait_for_log("now the scheduler leader")
    service = anchored.runtime.service
    request = service.submit(requester="U0ALICE", entry_id=anchored.entries[0],
                             reason="incident 42", duration=timedelta(minutes=5))
    service.approve(request.id, LEAD)  # submitted, vote, approved, granting, granted
    with anchored.runtime.sessions() as session:
        head = session.execute(select(AuditChainHead.seq)).scalar_one()
    found = wait_for(lambda: [c for c in checkpoints(anchored.moto_url) if c["seq"] == head],
                     30, f"a checkpoint of event {head} in S3")
    assert found[0]["algorithm"] == "ED25519"
    result = subprocess.run([CLI, "audit", "verify", "--json"], env=anchored.env(),
                            capture_output=True, text=True, timeout=60, check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"], result.stdout
    assert report["last_checkpoint_seq"] == head and report["anchored"]
    assert scheduler.terminate() == 0


@SQLITE_ONLY
def test_the_scheduler_refuses_a_bucket_without_object_lock(anchored: Deployment) -> None:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=anchored.moto_url)
    s3.create_bucket(Bucket="no-lock-here")
    config = yaml.safe_load(anchored.config_path.read_text())
    config["audit"]["anchor_bucket"] = "no-lock-here"
    anchored.config_path.write_text(yaml.safe_dump(config))
    scheduler = anchored.scheduler("scheduler")
    assert scheduler.popen.wait(30) == 2
    assert "audit.anchor_bucket no-lock-here: Object Lock is not enabled" in scheduler.log()
