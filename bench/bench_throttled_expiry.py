"""Mass expiry against a rate-limited IAM: N active grants (real inline policies in moto)
expiring at one instant, drained by a real `connect-access scheduler` process on
PostgreSQL that reaches IAM through tests/throttling_iam.py, which answers IAM's
`Throttling` error beyond R requests a second.

Goal (issue 18): drained within 1.15 x N/R + one sweep interval, zero grants lost, zero
double deletes, zero irrevocable, fewer throttled answers than N/2.

Prints JSON: {"runs": [{"grants", "iam_rate", "client_rate", "retry_mode", "drained_s",
"n_over_r_s", "drain_ratio", "goal_s", "within_goal", "throttled_answers",
"throttled_per_grant", "iam_requests", "irrevocable", "revoked", "double_deletes",
"policies_left", ...}]}

Run: nice -n 10 .venv/bin/python bench/bench_throttled_expiry.py --grants 1000 --rate 20
     [--client-rate 20] [--client-burst 1] [--retry-mode standard|adaptive]
     [--proxy-burst 5] [--sweep-interval 10s] [--revoke-workers 8]
(--client-rate 0 runs without the bot's rate limit, botocore's retries alone; needs the
PostgreSQL of TEST_POSTGRES_URL; each run uses its own schema, dropped after)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import sqlalchemy as sa
import yaml
from moto.server import ThreadedMotoServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_scheduler import (
    ACCOUNT,
    BENCH_INSTANCES,
    BENCH_ROUTING,
    CLI,
    CREDENTIALS,
    DEFAULT_URL,
    REGION,
    TRUST,
    drop_schema,
    insert_grants,
    policy_document,
    process_cpu_s,
    scratch_schema,
    stop_scheduler,
)
from throttling_iam import ThrottlingIamProxy

from bot.db import make_engine, upgrade
from bot.durations import parse_duration
from bot.models import Grant

GRANTS_PER_ROLE = 100


def run_once(base_url: str, count: int, rate: float, client_rate: float | None,
             client_burst: float | None, retry_mode: str, proxy_burst: float | None,
             sweep_interval: str, revoke_workers: int, workdir: Path) -> dict[str, Any]:
    admin, schema, url = scratch_schema(base_url, "bench_thr")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    proxy = ThrottlingIamProxy(moto_url, rate=None).start()
    engine = make_engine(url)
    scheduler: subprocess.Popen[bytes] | None = None
    try:
        upgrade(url)
        # Setup straight to moto, not counted and not throttled.
        iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_url)
        roles = [f"thr-{schema[-8:]}-{i:04d}" for i in range(math.ceil(count / GRANTS_PER_ROLE))]
        for role in roles:
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=TRUST)
        grants = [(uuid.uuid4().hex[:12], roles[i // GRANTS_PER_ROLE]) for i in range(count)]
        lead = timedelta(seconds=25 + count / 250)
        started_setup = time.monotonic()
        planned = (datetime.now(UTC) + lead + timedelta(seconds=count / 300)).replace(
            microsecond=0)
        document = policy_document(planned + timedelta(hours=1))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda g: iam.put_role_policy(
                RoleName=g[1], PolicyName=f"connect-access-{g[0]}", PolicyDocument=document),
                grants))
        expires_at = max(planned, (datetime.now(UTC) + lead).replace(microsecond=0))
        insert_grants(engine, grants, expires_at)
        setup_s = time.monotonic() - started_setup

        iam_config: dict[str, Any] = {"retry_mode": retry_mode}
        if client_rate:
            iam_config["requests_per_second"] = client_rate
            if client_burst:
                iam_config["burst"] = client_burst
        config = workdir / f"{schema}.yaml"
        config.write_text(yaml.safe_dump({"instances": BENCH_INSTANCES, "routing": BENCH_ROUTING,
                                          "timings": {"sweep_interval": sweep_interval},
                                          "iam": iam_config}))
        env = {**os.environ, **CREDENTIALS, "DATABASE_URL": url,
               "CONNECT_ACCESS_CONFIG": str(config), "AWS_ENDPOINT_URL": proxy.url}
        env.pop("SLACK_BOT_TOKEN", None)
        log_path = workdir / f"{schema}.log"
        with log_path.open("wb") as log:
            scheduler = subprocess.Popen(
                [CLI, "scheduler", "--revoke-workers", str(revoke_workers)],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        # IAM is rate limited from just before the expiry: the drain is what is measured.
        while datetime.now(UTC) < expires_at - timedelta(seconds=2):
            if scheduler.poll() is not None:
                raise RuntimeError(f"scheduler exited: {log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        proxy.set_rate(rate, proxy_burst)
        proxy.reset()
        cpu_at_expiry = process_cpu_s(scheduler.pid)
        done_query = sa.text(
            "SELECT count(*) FROM grants WHERE state IN ('revoked', 'irrevocable')")
        n_over_r = count / rate
        deadline = expires_at + timedelta(seconds=3 * n_over_r + 180)
        while datetime.now(UTC) < deadline:
            if scheduler.poll() is not None:
                raise RuntimeError(f"scheduler exited: {log_path.read_text()[-3000:]}")
            with engine.connect() as connection:
                if connection.execute(done_query).scalar_one() >= count:
                    break
            time.sleep(0.5)
        cpu_at_end = process_cpu_s(scheduler.pid)

        with engine.connect() as connection:
            rows = list(connection.execute(
                sa.select(Grant.id, Grant.state, Grant.expires_at, Grant.revoked_at,
                          Grant.revoke_attempts)))
        states = Counter(state for _, state, _, _, _ in rows)
        revoked = [(at, gid) for gid, state, _, at, _ in rows if at is not None]
        last = max((at for at, _ in revoked), default=None)
        deletes = Counter((r.params.get("RoleName"), r.params.get("PolicyName"))
                          for r in proxy.records("DeleteRolePolicy") if not r.throttled)
        left = sum(len(iam.list_role_policies(RoleName=r)["PolicyNames"]) for r in roles)
        drained = (last - expires_at).total_seconds() if last and len(revoked) == count else None
        sweep_s = parse_duration(sweep_interval).total_seconds()
        goal = 1.15 * n_over_r + sweep_s
        throttled = proxy.total_throttled
        return {
            "grants": count, "iam_rate": rate, "proxy_burst": proxy_burst or max(1.0, rate / 4),
            "client_rate": client_rate or None, "client_burst": client_burst,
            "retry_mode": retry_mode, "revoke_workers": revoke_workers,
            "sweep_interval": sweep_interval, "setup_s": round(setup_s, 1),
            "revoked": states.get("revoked", 0), "irrevocable": states.get("irrevocable", 0),
            "lost": count - states.get("revoked", 0) - states.get("irrevocable", 0),
            "drained_s": None if drained is None else round(drained, 1),
            "n_over_r_s": round(n_over_r, 1),
            "drain_ratio": None if drained is None else round(drained / n_over_r, 3),
            "goal_s": round(goal, 1),
            "within_goal": drained is not None and drained <= goal,
            "iam_requests": proxy.total_requests,
            "throttled_answers": throttled,
            "throttled_per_grant": round(throttled / count, 3),
            "throttled_below_half_n": throttled < count / 2,
            "double_deletes": sum(1 for n in deletes.values() if n > 1),
            "policies_left": left,
            "max_revoke_attempts": max((a for *_, a in rows), default=0),
            "scheduler_cpu_s": None if cpu_at_expiry is None or cpu_at_end is None
            else round(cpu_at_end - cpu_at_expiry, 1),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        }
    finally:
        stop_scheduler(scheduler)
        engine.dispose()
        proxy.stop()
        server.stop()
        drop_schema(admin, schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", default="1000")
    parser.add_argument("--rate", default="20", help="IAM's rate(s), comma-separated")
    parser.add_argument("--client-rate", type=float, default=None,
                        help="the bot's iam.requests_per_second (default: IAM's rate; "
                             "0: no client-side limit)")
    parser.add_argument("--client-burst", type=float, default=1.0)
    parser.add_argument("--retry-mode", default="adaptive", choices=("standard", "adaptive"))
    parser.add_argument("--proxy-burst", type=float, default=None,
                        help="IAM's burst (default: a quarter second's worth)")
    parser.add_argument("--sweep-interval", default="10s")
    parser.add_argument("--revoke-workers", type=int, default=8)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    base_url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_URL)
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        for rate in (float(r) for r in args.rate.split(",")):
            for count in (int(n) for n in args.grants.split(",")):
                client_rate = rate if args.client_rate is None else args.client_rate
                runs.append(run_once(base_url, count, rate, client_rate, args.client_burst,
                                     args.retry_mode, args.proxy_burst, args.sweep_interval,
                                     args.revoke_workers, Path(workdir)))
                print(json.dumps(runs[-1]), file=sys.stderr)
    print(json.dumps({"account": ACCOUNT, "runs": runs, "goal": {
        "drained_within": "1.15 * N/R + sweep interval", "lost": 0, "double_deletes": 0,
        "irrevocable": 0, "throttled_answers_below": "N/2"}}, indent=2))


if __name__ == "__main__":
    main()
