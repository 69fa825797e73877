"""Principal lookup by tag and reconcile in a big account, against a rate-limited IAM:
5,000 roles and 1,000 users in moto (created straight to moto with threads, not counted),
IAM reached through tests/throttling_iam.py at R requests a second, the bot's client-side
limit at the same R.

1. Principal index (issue 18, item 4): the first lookup (warm-up: the index is built),
   then `--lookups` lookups of random tagged people: IAM calls per request (target: at
   most one after warm-up) and latency.
2. Reconcile over every principal (item 5): 1,000 active grants, plus orphans, tampered
   and missing policies planted by hand; wall time (target: under a minute), IAM calls by
   action, throttled answers, findings by kind.

Prints JSON: {"principals", "iam_rate", "index": {...}, "reconcile": {...}}.
Run: nice -n 10 .venv/bin/python bench/bench_iam_scale.py [--roles 5000] [--users 1000]
     [--rate 20] [--lookups 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_scheduler import ACCOUNT, CREDENTIALS, REGION, TRUST
from doubles import InMemoryReconcileStore
from throttling_iam import ThrottlingIamProxy

from bot.aws.granter import IamGranter
from bot.aws.principal_index import SLACK_USER_TAG
from bot.aws.principals import IamPrincipalDirectory
from bot.aws.reconcile import reconcile
from bot.aws.sessions import AwsSessions
from bot.ports import GrantPlan, PolicyDocument
from bot.reconcile_model import ExpectedGrant, ReconcileProgress

TAGGED_EVERY = 5  # one principal in five belongs to a Slack user found by tag


def document(marker: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": f"ConnectAccess{marker}", "Effect": "Allow",
        "Action": ["connect:DescribeInstance", "connect:ListQueues"],
        "Resource": f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/*",
        "Condition": {"DateLessThan": {"aws:CurrentTime": "2027-01-01T00:00:00Z"}}}]}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def setup(moto_url: str, roles: int, users: int, grants: int) -> dict[str, Any]:
    iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_url)
    slack_of: dict[str, str] = {}

    def make(item: tuple[str, int]) -> None:
        # moto's IAM is not thread-safe when creating (a 500 now and then): try again.
        for attempt in range(5):
            try:
                return create(item)
            except iam.exceptions.EntityAlreadyExistsException:
                return None
            except Exception:
                if attempt == 4:
                    raise
        return None

    def create(item: tuple[str, int]) -> None:
        kind, i = item
        slack = f"U{kind[0].upper()}{i:06d}"
        tags = [{"Key": SLACK_USER_TAG, "Value": slack}] if i % TAGGED_EVERY == 0 else []
        if kind == "role":
            iam.create_role(RoleName=f"scale-r{i:05d}", AssumeRolePolicyDocument=TRUST,
                            Tags=tags)
            arn = f"arn:aws:iam::{ACCOUNT}:role/scale-r{i:05d}"
        else:
            iam.create_user(UserName=f"scale-u{i:05d}", Tags=tags)
            arn = f"arn:aws:iam::{ACCOUNT}:user/scale-u{i:05d}"
        if tags:
            slack_of[slack] = arn

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, [("role", i) for i in range(roles)]
                      + [("user", i) for i in range(users)]))
    # Active grants on the first `grants` roles (inline, as the granter leaves them), and
    # drift planted by hand: 50 orphans, 10 tampered, 10 missing.
    expires = datetime.now(UTC) + timedelta(hours=4)
    plans = [GrantPlan(f"g{i:05d}", f"arn:aws:iam::{ACCOUNT}:role/scale-r{i:05d}", "inline",
                       (PolicyDocument(f"connect-access-g{i:05d}", document("A")),), expires)
             for i in range(grants)]

    def put(plan: GrantPlan) -> None:
        index = int(plan.grant_id[1:])
        if index >= grants - 10:
            return  # missing: never put
        doc = document("Tampered" if index < 10 else "A")
        iam.put_role_policy(RoleName=plan.principal_arn.rsplit("/", 1)[-1],
                            PolicyName=plan.policies[0].name, PolicyDocument=json.dumps(doc))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, plans))
        list(pool.map(lambda i: iam.put_role_policy(
            RoleName=f"scale-r{roles - 1 - i:05d}", PolicyName=f"connect-access-orphan{i:03d}",
            PolicyDocument=json.dumps(document("O"))), range(50)))
    principals = [f"arn:aws:iam::{ACCOUNT}:role/scale-r{i:05d}" for i in range(roles)] + [
        f"arn:aws:iam::{ACCOUNT}:user/scale-u{i:05d}" for i in range(users)]
    return {"slack_of": slack_of, "plans": plans, "principals": principals,
            "setup_s": round(time.monotonic() - started, 1)}


def bench_index(proxy: ThrottlingIamProxy, rate: float, slack_of: dict[str, str],
                lookups: int) -> dict[str, Any]:
    aws = AwsSessions(REGION, proxy.url, max_attempts=5, retry_mode="adaptive",
                      iam_requests_per_second=rate, iam_burst=1)
    people = IamPrincipalDirectory(aws.iam_for_account, {}, tag_lookup=True)
    chosen = random.Random(18).sample(sorted(slack_of), min(lookups + 1, len(slack_of)))
    proxy.reset()
    started = time.monotonic()
    assert people.principal_for(chosen[0]) == slack_of[chosen[0]]
    warm_up_s = time.monotonic() - started
    warm_up_calls = dict(proxy.counts.requests)
    per_request: list[int] = []
    latencies: list[float] = []
    for slack in chosen[1:]:
        before = proxy.total_requests
        started = time.monotonic()
        assert people.principal_for(slack) == slack_of[slack]
        latencies.append(time.monotonic() - started)
        per_request.append(proxy.total_requests - before)
    assert people.index is not None
    started = time.monotonic()
    people.index.refresh()
    refresh_s = time.monotonic() - started
    return {
        "warm_up_s": round(warm_up_s, 2), "warm_up_iam_calls": warm_up_calls,
        "lookups_after_warm_up": len(per_request),
        "iam_calls_per_request_max": max(per_request),
        "iam_calls_per_request_mean": round(sum(per_request) / len(per_request), 3),
        "lookup_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "lookup_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "full_refresh_s": round(refresh_s, 2),
        "index_refreshes": people.index.refreshes,
        "throttled_answers": proxy.total_throttled,
    }


def bench_reconcile(proxy: ThrottlingIamProxy, rate: float, plans: list[GrantPlan],
                    principals: list[str]) -> dict[str, Any]:
    aws = AwsSessions(REGION, proxy.url, max_attempts=5, retry_mode="adaptive",
                      iam_requests_per_second=rate, iam_burst=1)
    granter = IamGranter(aws.iam_for_principal)
    store = InMemoryReconcileStore(grants=[ExpectedGrant(**vars(p)) for p in plans],
                                   principals=principals)
    progress: list[ReconcileProgress] = []
    proxy.reset()
    started = time.monotonic()
    findings = reconcile(granter, store, now=datetime.now(UTC), progress=progress.append)
    elapsed = time.monotonic() - started
    kinds = Counter(f.kind for f in findings)
    return {
        "principals": len(principals), "active_grants": len(plans),
        "reconcile_s": round(elapsed, 1), "under_a_minute": elapsed < 60,
        "findings": dict(kinds), "repair_errors": sum(1 for f in findings if f.error),
        "iam_calls": dict(proxy.counts.requests),
        "iam_calls_total": proxy.total_requests,
        "throttled_answers": proxy.total_throttled,
        "progress_reports": len(progress),
        # Reading principal by principal (what reconcile does when the one-pass read is
        # not allowed): ListRolePolicies + ListAttachedRolePolicies per principal, plus a
        # GetRolePolicy per connect-access policy. Computed, not measured.
        "per_principal_read_calls_estimate": 2 * len(principals) + len(plans) + 50,
        "per_principal_read_s_estimate": round((2 * len(principals) + len(plans) + 50) / rate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roles", type=int, default=5000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--lookups", type=int, default=300)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    proxy = ThrottlingIamProxy(moto_url).start()
    try:
        world = setup(moto_url, args.roles, args.users, args.grants)
        print(json.dumps({"setup_s": world["setup_s"]}), file=sys.stderr)
        proxy.set_rate(args.rate)
        index = bench_index(proxy, args.rate, world["slack_of"], args.lookups)
        print(json.dumps(index), file=sys.stderr)
        recon = bench_reconcile(proxy, args.rate, world["plans"], world["principals"])
        print(json.dumps(recon), file=sys.stderr)
    finally:
        proxy.stop()
        server.stop()
    print(json.dumps({"roles": args.roles, "users": args.users,
                      "tagged": len(world["slack_of"]), "iam_rate": args.rate,
                      "setup_s": world["setup_s"], "index": index, "reconcile": recon,
                      "targets": {"iam_calls_per_request_after_warm_up": 1,
                                  "reconcile_s": 60}}, indent=2))


if __name__ == "__main__":
    main()
