"""A burst of approvals against a rate-limited IAM: N requests approved over a minute
(evenly), each granted at once by the lifecycle as the web process's lazy listeners do
(a pool of `--workers` threads), with the whole runtime built as production builds it
(build_runtime: principal check, policy compiler, IAM granter, client-side rate limit) on
PostgreSQL, and IAM reached through tests/throttling_iam.py at R requests a second.

Goal (issue 18): every grant ends active, none fails for throttling, and requesters whose
grant waits behind the rate limit are told (a `grant_queued` notification).

Prints JSON: {"runs": [{"approvals", "over_s", "iam_rate", "client_rate", "active",
"failed", "queued_notices", "approval_to_active_p50_s", "..._p99_s", "..._max_s",
"last_active_after_first_approval_s", "iam_requests", "iam_requests_per_grant",
"throttled_answers", ...}]}

Run: nice -n 10 .venv/bin/python bench/bench_approval_burst.py [--approvals 200]
     [--over 60] [--rate 20,10] [--workers 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import yaml
from moto.server import ThreadedMotoServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_scheduler import (
    ACCOUNT,
    CREDENTIALS,
    DEFAULT_URL,
    REGION,
    TRUST,
    drop_schema,
    scratch_schema,
)
from doubles import RecordingNotifier
from throttling_iam import ThrottlingIamProxy

from bot.db import upgrade
from bot.durations import parse_duration
from bot.runtime import build_runtime
from bot.settings import load_settings

ENTRY = "home/describe-instance"
INSTANCE = f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/11111111-2222-3333-4444-555555555555"
APPROVER = "U0LEAD01"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def run_once(base_url: str, approvals: int, over_s: float, rate: float, workers: int,
             workdir: Path) -> dict[str, Any]:
    admin, schema, url = scratch_schema(base_url, "bench_burst")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    proxy = ThrottlingIamProxy(moto_url).start()
    runtime = None
    try:
        upgrade(url)
        iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_url)
        people = [f"U0B{schema[-6:].upper()}{i:04d}" for i in range(approvals)]
        roles = {person: f"burst-{schema[-8:]}-{i:04d}" for i, person in enumerate(people)}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: iam.create_role(RoleName=r, AssumeRolePolicyDocument=TRUST),
                          roles.values()))
        tier = {"channel": "C0APPROVALS", "approvers": [APPROVER], "approvals": 1}
        config = workdir / f"{schema}.yaml"
        config.write_text(yaml.safe_dump({
            "instances": [{"alias": "prod", "arn": INSTANCE}],
            "principals": {p: f"arn:aws:iam::{ACCOUNT}:role/{r}" for p, r in roles.items()},
            "routing": {"tiers": {"read": tier, "write": tier, "critical": tier}},
            "iam": {"requests_per_second": rate, "burst": 1, "retry_mode": "adaptive"},
        }))
        settings = load_settings(database_url=url, connect_access_config=config,
                                 aws_endpoint_url=proxy.url, aws_region=REGION)
        notifier = RecordingNotifier()
        runtime = build_runtime(settings, notifier=notifier, db_pool_size=workers + 2)
        service = runtime.service
        requests = [service.submit(requester=p, entry_id=ENTRY, reason="incident INC-18",
                                   duration=parse_duration("1h"), instance="prod").id
                    for p in people]
        submit_calls = proxy.total_requests

        proxy.set_rate(rate)
        proxy.reset()
        approved_at: dict[int, float] = {}
        active_at: dict[int, float] = {}
        states: dict[int, str] = {}
        lock = threading.Lock()

        def approve(request_id: int) -> None:
            with lock:
                approved_at[request_id] = time.monotonic()
            request = service.approve(request_id, APPROVER)
            with lock:
                active_at[request_id] = time.monotonic()
                states[request_id] = request.state

        started = time.monotonic()
        with ThreadPoolExecutor(workers, thread_name_prefix="lazy-listener") as pool:
            futures = []
            for index, request_id in enumerate(requests):
                # Approvals arrive evenly over `over_s` (a click every over_s/N seconds).
                delay = started + index * over_s / approvals - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(approve, request_id))
            for future in futures:
                future.result()
        # The web process queues a grant behind the listener pool; the time a person waits
        # is from their approval click, not from when a thread took it up.
        clicked = {request_id: started + index * over_s / approvals
                   for index, request_id in enumerate(requests)}
        waits = [active_at[r] - clicked[r] for r in requests]
        outcome = Counter(states.values())
        events = Counter(n.event for n in notifier.sent)
        queued_requests = {n.request_id for n in notifier.sent if n.event == "grant_queued"}
        slow = [r for r in requests if active_at[r] - clicked[r] >= 5]
        left = sum(len(iam.list_role_policies(RoleName=r)["PolicyNames"]) for r in roles.values())
        return {
            "approvals": approvals, "over_s": over_s, "iam_rate": rate,
            "client_rate": rate, "workers": workers,
            "active": outcome.get("active", 0), "failed": outcome.get("failed", 0),
            "other_states": {k: v for k, v in outcome.items() if k not in ("active", "failed")},
            "policies_in_iam": left,
            "queued_notices": events.get("grant_queued", 0),
            "waited_5s_or_more": len(slow),
            "waited_5s_or_more_and_told": len(set(slow) & queued_requests),
            "approval_to_active_p50_s": round(percentile(waits, 0.5), 2),
            "approval_to_active_p99_s": round(percentile(waits, 0.99), 2),
            "approval_to_active_max_s": round(max(waits), 2),
            "last_active_after_first_approval_s": round(max(active_at.values()) - started, 1),
            "iam_requests": proxy.total_requests,
            "iam_requests_per_grant": round(proxy.total_requests / approvals, 2),
            "iam_requests_at_submit": submit_calls,
            "iam_min_drain_s": round(proxy.total_requests / rate, 1),
            "throttled_answers": proxy.total_throttled,
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        }
    finally:
        if runtime is not None:
            runtime.close()
        proxy.stop()
        server.stop()
        drop_schema(admin, schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--approvals", type=int, default=200)
    parser.add_argument("--over", type=float, default=60.0)
    parser.add_argument("--rate", default="20,10")
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    base_url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_URL)
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        for rate in (float(r) for r in args.rate.split(",")):
            runs.append(run_once(base_url, args.approvals, args.over, rate, args.workers,
                                 Path(workdir)))
            print(json.dumps(runs[-1]), file=sys.stderr)
    print(json.dumps({"runs": runs, "goal": {"active": args.approvals, "failed": 0}},
                     indent=2))


if __name__ == "__main__":
    main()
