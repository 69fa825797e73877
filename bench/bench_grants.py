"""Attach and revoke throughput and latency of IamGranter against moto's HTTP server.

Each grant is one connect-access inline (or managed) policy on one of `--principals` roles,
attached through the full granter path (pre-read, put, read-back and hash check) and then
revoked. Timings include boto3 over real HTTP to moto on 127.0.0.1, so they measure the
bot's own overhead plus a fast local "IAM"; real IAM adds ~50-300 ms per call and
throttles at a few requests per second per account.

Prints JSON: {"grants", "principals", "document_chars", "runs": [{"kind", "workers",
"attach": {...}, "revoke": {...}}]} with throughput per second and p50/p99/max in ms.
Run: .venv/bin/python bench/bench_grants.py [--grants 1000] [--workers 1 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from moto.server import ThreadedMotoServer

from bot.aws.granter import IamGranter, iam_policy_size
from bot.aws.sessions import AwsSessions
from bot.ports import GrantPlan, PolicyDocument, PolicyKind

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
)


def grant_document(index: int, expires_at: datetime) -> dict[str, Any]:
    """A document shaped like the compiler's output for a read-tier entry (bot/policy.py
    was not available when this bench was written)."""
    instance = f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/00000000-0000-0000-0000-{index:012d}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ConnectAccessRead",
                "Effect": "Allow",
                "Action": [
                    "connect:DescribeInstance",
                    "connect:ListQueues",
                    "connect:DescribeQueue",
                    "connect:ListRoutingProfiles",
                ],
                "Resource": [instance, f"{instance}/*"],
                "Condition": {
                    "DateLessThan": {"aws:CurrentTime": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
                },
            }
        ],
    }


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarise(latencies: list[float], wall: float) -> dict[str, float]:
    return {
        "throughput_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


def timed_all(work: Sequence[Callable[[], object]], workers: int) -> tuple[list[float], float]:
    def one(job: Callable[[], object]) -> float:
        start = time.perf_counter()
        job()
        return time.perf_counter() - start

    start = time.perf_counter()
    if workers == 1:
        latencies = [one(job) for job in work]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            latencies = list(pool.map(one, work))
    return latencies, time.perf_counter() - start


def run(
    granter: IamGranter,
    roles: Sequence[str],
    kind: PolicyKind,
    workers: int,
    grants: int,
    tag: str,
) -> dict[str, Any]:
    expires_at = datetime.now(UTC) + timedelta(hours=1)
    plans = [
        GrantPlan(
            grant_id=f"{tag}-{i}",
            principal_arn=roles[i % len(roles)],
            kind=kind,
            policies=(PolicyDocument(f"connect-access-{tag}-{i}", grant_document(i, expires_at)),),
            expires_at=expires_at,
        )
        for i in range(grants)
    ]
    attach_jobs = [partial(granter.attach, plan) for plan in plans]
    revoke_jobs = [
        partial(granter.revoke, plan.principal_arn, plan.kind, [plan.policies[0].name])
        for plan in plans
    ]
    attach_lat, attach_wall = timed_all(attach_jobs, workers)
    revoke_lat, revoke_wall = timed_all(revoke_jobs, workers)
    return {
        "kind": kind,
        "workers": workers,
        "attach": summarise(attach_lat, attach_wall),
        "revoke": summarise(revoke_lat, revoke_wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--principals", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--kinds", nargs="+", default=["inline", "managed"])
    args = parser.parse_args()

    # Fake credentials: the only endpoint is the local moto server.
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per call
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        sessions = AwsSessions(REGION, endpoint_url=endpoint)
        granter = IamGranter(sessions.iam_for_principal)
        iam = sessions.iam()
        roles = [
            iam.create_role(RoleName=f"bench-{i}", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
            for i in range(args.principals)
        ]
        runs = []
        for kind in args.kinds:
            for workers in args.workers:
                runs.append(run(granter, roles, kind, workers, args.grants, f"{kind[0]}{workers}"))
        leftovers = sum(
            len(iam.list_role_policies(RoleName=f"bench-{i}")["PolicyNames"])
            for i in range(args.principals)
        )
        leftovers += len(iam.list_policies(Scope="Local")["Policies"])
        print(
            json.dumps(
                {
                    "grants": args.grants,
                    "principals": args.principals,
                    "document_chars": iam_policy_size(grant_document(0, datetime.now(UTC))),
                    "transport": "boto3 over HTTP to moto ThreadedMotoServer on 127.0.0.1",
                    "policies_left_after_revoke": leftovers,
                    "runs": runs,
                },
                indent=2,
            )
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
