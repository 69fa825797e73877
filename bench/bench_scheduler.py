"""Expiry at scale: N active grants (real inline policies in moto's HTTP server) expiring
together, drained by a real `connect-access scheduler` process on PostgreSQL. By default all
expire at the same instant (the harshest case); `--spread 60` spreads the expiries evenly
over one minute instead. Reports how long after the first expiry the last policy came off
(and after the last expiry), and the p50/p99/max revocation lag (revoked_at - expires_at,
each grant against its own expiry), per N.

By default the grants exist before the scheduler starts. `--after-start S` makes them as
the web process does instead: once the scheduler leads (and has gone to sleep), expiring S
seconds later, so the lag shows how soon the scheduler finds grants it was not told about.

Prints JSON: {"runs": [{"grants", "revoke_workers", "sweep_interval", "granted_after_start",
"leader_after_s", "drained_s", "first_claim_after_expiry_s", "lag_p50_s", "lag_p99_s",
"lag_max_s", "revoked", "iam_deletes", "double_deletes", "policies_left",
"scheduler_cpu_s", "moto_process_cpu_s", "postgres_cpu_s", "machine_busy_cpu_s", ...}],
"targets": {...}}
The CPU figures cover the drain (expiry to the last revocation): the scheduler process, this
process (moto's server threads and the polling), a local PostgreSQL, and every process on
the machine; on a shared machine the last shows how much of the cores others took.

Run: .venv/bin/python bench/bench_scheduler.py [--grants 1000,10000] [--revoke-workers 8]
     [--batch-size N] [--sweep-interval 10s] [--spread 0]
     [--after-start S] [--profile DIR]
(needs the PostgreSQL of TEST_POSTGRES_URL; each run uses its own schema, dropped after;
--profile samples the scheduler and this process during the drain with py-spy, if
installed, into DIR)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import boto3
import sqlalchemy as sa
import yaml
from moto.server import ThreadedMotoServer

from bot.db import make_engine, upgrade
from bot.models import AccessRequest, AuditEvent, Grant

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REGION = "us-east-1"
ACCOUNT = "123456789012"
GRANTS_PER_ROLE = 100
CLI = str(Path(sys.executable).parent / "connect-access")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
               "AWS_REGION": REGION}
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})


class DeleteCounter:
    """WSGI middleware in front of moto counting DeleteRolePolicy per (role, policy)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.deletes: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = parse_qs(body.decode(errors="replace"))
        if form.get("Action") == ["DeleteRolePolicy"]:
            with self._lock:
                self.deletes[(form["RoleName"][0], form["PolicyName"][0])] += 1
        return self.app(environ, start_response)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# The scheduler refuses to start without a valid operator config, which names an instance.
BENCH_INSTANCES = [{"alias": "bench", "arn": f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/"
                                             "11111111-2222-3333-4444-555555555555"}]
BENCH_ROUTING = {"tiers": {tier: {"channel": "C0BENCH", "approvers": ["U0BENCH1", "U0BENCH2"]}
                           for tier in ("read", "write", "critical")}}

def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def postgres_cpu_s() -> float | None:
    """CPU seconds of a local PostgreSQL: the postmaster, its exited backends (counted in
    its children's time) and its live ones. None when there is none on this machine."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()
        if name != "postgres":
            continue
        found = True
        total += (int(fields[11]) + int(fields[12])) / _TICKS
        if fields[1] == "1":  # the postmaster (a child of init): add its exited backends
            total += (int(fields[13]) + int(fields[14])) / _TICKS
    return total if found else None


def machine_busy_cpu_s() -> float | None:
    """CPU seconds every core spent busy since boot (Linux /proc/stat; None elsewhere)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def own_cpu_s() -> float:
    return time.process_time()


def delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(after - before, 1)


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` into collapsed stacks; None when py-spy is not installed."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        print("py-spy is not installed; --profile ignored", file=sys.stderr)
        return None
    return subprocess.Popen(
        # --gil: only the thread holding the GIL, i.e. where the process's CPU goes.
        [str(py_spy), "record", "--nonblocking", "--gil", "--rate", "50", "--format", "raw",
         "--threads", "--output", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[max(1, math.ceil(fraction * len(sorted_values))) - 1]


def policy_document(expires_at: datetime) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "ConnectAccess", "Effect": "Allow", "Action": ["connect:DescribeInstance"],
        "Resource": f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/*",
        "Condition": {"DateLessThan": {
            "aws:CurrentTime": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")}}}]})


def insert_grants(engine: sa.Engine, grants: list[tuple[str, str]], expires_at: datetime,
                  spread: float = 0.0) -> None:
    """Active requests and grants as the lifecycle leaves them after attaching; the grants
    expire evenly over [expires_at, expires_at + spread seconds)."""
    created = expires_at - timedelta(hours=1)
    requests, rows = [], []
    for index, (grant_id, role) in enumerate(grants, start=1):
        arn = f"arn:aws:iam::{ACCOUNT}:role/{role}"
        requests.append({
            "id": index, "requester": f"U0B{index:07d}", "principal_arn": arn,
            "entry_id": "home/list-instance", "entry_hash": "0" * 64, "tier": "read",
            "instance_arn": None, "instance_alias": None, "reason": "bench",
            "duration_seconds": 3600, "state": "active", "required_approvals": 1,
            "approval_round": 0, "created_at": created, "approved_at": created,
            "granting_at": created, "granted_at": created, "updated_at": created,
            "version": 1})
        rows.append({
            "id": grant_id, "request_id": index, "policy_names": [f"connect-access-{grant_id}"],
            "kind": "inline", "principal_arn": arn, "account": ACCOUNT, "state": "active",
            "created_at": created, "starts_at": created,
            "expires_at": expires_at + timedelta(seconds=spread * (index - 1) / len(grants)),
            "attached_at": created, "revoke_attempts": 0})
    with engine.begin() as connection:
        for start in range(0, len(requests), 2000):
            connection.execute(sa.insert(AccessRequest),
                               requests[start:start + 2000])
            connection.execute(sa.insert(Grant), rows[start:start + 2000])


def run_once(base_url: str, count: int, revoke_workers: int, batch_size: int | None,
             sweep_interval: str, workdir: Path, profile: Path | None = None,
             spread: float = 0.0, after_start: float | None = None) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    admin, schema, url = scratch_schema(base_url, "bench_sched")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    counter = DeleteCounter(server._server.app)  # type: ignore[union-attr]
    server._server.app = counter  # type: ignore[union-attr]
    host, port = server.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    engine = make_engine(url)
    scheduler: subprocess.Popen[bytes] | None = None
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(url)
        iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_url)
        # moto keeps its state per process, not per server: names unique to this run.
        role_count = max(1, math.ceil(count / GRANTS_PER_ROLE))
        roles = [f"bench-{schema[-8:]}-{i:04d}" for i in range(role_count)]
        for role in roles:
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=TRUST)
        grants = [(uuid.uuid4().hex[:12], roles[i // GRANTS_PER_ROLE]) for i in range(count)]

        config = workdir / f"{schema}.yaml"
        config.write_text(yaml.safe_dump({"instances": BENCH_INSTANCES, "routing": BENCH_ROUTING,
                                          "timings": {"sweep_interval": sweep_interval}}))
        env = {**os.environ, **CREDENTIALS, "DATABASE_URL": url,
               "CONNECT_ACCESS_CONFIG": str(config), "AWS_ENDPOINT_URL": moto_url}
        env.pop("SLACK_BOT_TOKEN", None)
        log_path = workdir / f"{schema}.log"

        def start_scheduler() -> subprocess.Popen[bytes]:
            with log_path.open("wb") as log:
                return subprocess.Popen(
                    [CLI, "scheduler", "--revoke-workers", str(revoke_workers),
                     *(["--batch-size", str(batch_size)] if batch_size else [])],
                    env=env, stdout=log, stderr=subprocess.STDOUT)

        def make_grants(lead: timedelta) -> tuple[datetime, float]:
            """Policies in moto and rows in the database, expiring `lead` from now (the
            puts' own time added); returns (expiry, setup seconds)."""
            started_setup = time.monotonic()
            planned = (datetime.now(UTC) + lead + timedelta(seconds=count / 400)).replace(
                microsecond=0)
            document = policy_document(planned)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda g: iam.put_role_policy(
                    RoleName=g[1], PolicyName=f"connect-access-{g[0]}",
                    PolicyDocument=document), grants))
            # On a busy machine the puts can eat into the lead; the scheduler still gets
            # all of it (the documents' end time is then a little early, which nothing
            # here checks).
            expiry = max(planned, (datetime.now(UTC) + lead).replace(microsecond=0))
            insert_grants(engine, grants, expiry, spread)
            return expiry, time.monotonic() - started_setup

        started = time.monotonic()
        leader_after_s: float | None = None
        if after_start is None:
            # Lead time for the scheduler to start and lead before the expiry.
            lead = timedelta(seconds=20 + count / 250)
            expires_at, setup_s = make_grants(lead)
            started = time.monotonic()
            scheduler = start_scheduler()
        else:
            lead = timedelta(seconds=after_start)
            scheduler = start_scheduler()
            deadline_lead = time.monotonic() + 60
            while "now the scheduler leader" not in log_path.read_text(errors="replace"):
                if scheduler.poll() is not None or time.monotonic() > deadline_lead:
                    raise RuntimeError(f"scheduler did not lead: {log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            leader_after_s = time.monotonic() - started
            time.sleep(1.0)  # past its start-up sweep: it sleeps, not knowing the grants
            expires_at, setup_s = make_grants(lead)
        # CPU at expiry and at the end of the drain: scheduler, this process, PostgreSQL,
        # machine.
        at_expiry: tuple[float | None, ...] | None = None
        at_end: tuple[float | None, ...] | None = None
        done_query = sa.text("SELECT count(*) FROM grants WHERE state = 'revoked'")
        deadline = expires_at + timedelta(seconds=600 + spread)
        while datetime.now(UTC) < deadline:
            if scheduler.poll() is not None:
                raise RuntimeError(f"scheduler exited: {log_path.read_text()[-3000:]}")
            if leader_after_s is None and "now the scheduler leader" in log_path.read_text(
                    errors="replace"):
                leader_after_s = time.monotonic() - started
            if at_expiry is None and datetime.now(UTC) >= expires_at:
                at_expiry = (process_cpu_s(scheduler.pid), own_cpu_s(), postgres_cpu_s(),
                             machine_busy_cpu_s())
                if profile is not None:  # the drain only, not the start-up before it
                    profile.mkdir(parents=True, exist_ok=True)
                    for name, pid in (("scheduler", scheduler.pid), ("moto", os.getpid())):
                        profiler = start_profiler(pid, profile / f"{name}-{count}.txt")
                        if profiler is not None:
                            profilers.append(profiler)
            with engine.connect() as connection:
                if connection.execute(done_query).scalar_one() >= count:
                    at_end = (process_cpu_s(scheduler.pid), own_cpu_s(), postgres_cpu_s(),
                              machine_busy_cpu_s())
                    break
            time.sleep(0.25)
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            profiler.wait(60)

        with engine.connect() as connection:
            rows = [(revoked, expiry) for revoked, expiry in connection.execute(
                sa.select(Grant.revoked_at, Grant.expires_at)) if revoked is not None]
            # When the first batch was claimed (its "revoking" events carry the claim's
            # time): how soon after the expiry the scheduler started, the drain aside.
            first_claim = connection.execute(sa.select(sa.func.min(AuditEvent.at)).where(
                AuditEvent.action == "revoking")).scalar()
        lags = sorted((revoked - expiry).total_seconds() for revoked, expiry in rows)
        last_revoked = max((revoked for revoked, _ in rows), default=None)
        last_expiry = expires_at + timedelta(seconds=spread * (count - 1) / count)
        left = sum(len(iam.list_role_policies(RoleName=r)["PolicyNames"]) for r in roles)
        return {
            "grants": count, "revoke_workers": revoke_workers, "batch_size": batch_size,
            "sweep_interval": sweep_interval, "setup_s": round(setup_s, 1),
            "lead_s": round(lead.total_seconds(), 1),
            "granted_after_start": after_start is not None,
            "leader_after_s": None if leader_after_s is None else round(leader_after_s, 1),
            "revoked": len(lags),
            "expiries_spread_s": spread,
            # From the first expiry, and from the last one, to the last revocation.
            "drained_s": round((last_revoked - expires_at).total_seconds(), 2)
            if last_revoked is not None and len(lags) == count else None,
            "drained_after_last_expiry_s": round((last_revoked - last_expiry).total_seconds(), 2)
            if last_revoked is not None and len(lags) == count else None,
            "first_claim_after_expiry_s": None if first_claim is None
            else round((first_claim - expires_at).total_seconds(), 3),
            "lag_p50_s": round(percentile(lags, 0.5), 2) if lags else None,
            "lag_p99_s": round(percentile(lags, 0.99), 2) if lags else None,
            "lag_max_s": round(lags[-1], 2) if lags else None,
            "revocations_per_s": round(count / (last_revoked - expires_at).total_seconds(), 1)
            if last_revoked is not None and last_revoked > expires_at else None,
            "iam_deletes": sum(counter.deletes.values()),
            "double_deletes": sum(1 for n in counter.deletes.values() if n > 1),
            "policies_left": left,
            "scheduler_cpu_s": None if not (at_expiry and at_end) else delta(
                at_end[0], at_expiry[0]),
            "moto_process_cpu_s": None if not (at_expiry and at_end) else delta(
                at_end[1], at_expiry[1]),
            "postgres_cpu_s": None if not (at_expiry and at_end) else delta(
                at_end[2], at_expiry[2]),
            "machine_busy_cpu_s": None if not (at_expiry and at_end) else delta(
                at_end[3], at_expiry[3]),
            # Other work on the machine (the target assumes the scheduler and moto can
            # use the 2 cores): compare runs only at similar load.
            "load_average_1m_before": round(load_before, 2),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        }
    finally:
        for profiler in profilers:
            if profiler.poll() is None:
                profiler.kill()
        stop_scheduler(scheduler)
        engine.dispose()
        server.stop()
        drop_schema(admin, schema)


def scratch_schema(base_url: str, prefix: str) -> tuple[sa.Engine, str, str]:
    """A new PostgreSQL schema for one run: (admin engine, schema, URL whose search_path
    is the schema, so subprocesses see it too). Drop it with drop_schema."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{base_url}{'&' if '?' in base_url else '?'}options=" + quote(
        f"-csearch_path={schema}")
    return admin, schema, url


def drop_schema(admin: sa.Engine, schema: str) -> None:
    with admin.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def stop_scheduler(scheduler: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (a clean stop, as an orchestrator does), SIGKILL after 60 s."""
    if scheduler is not None and scheduler.poll() is None:
        scheduler.send_signal(signal.SIGTERM)
        try:
            scheduler.wait(60)
        except subprocess.TimeoutExpired:
            scheduler.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", default="1000,10000")
    parser.add_argument("--revoke-workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="the scheduler's --batch-size (default: its own default)")
    parser.add_argument("--sweep-interval", default="10s")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="seconds over which the expiries are spread evenly "
                             "(0: all at one instant)")
    parser.add_argument("--after-start", type=float, default=None, metavar="S",
                        help="make the grants once the scheduler leads, expiring S seconds "
                             "later (as the web process does); default: before it starts")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write py-spy samples of the scheduler and moto here")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    base_url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_URL)
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        for count in (int(n) for n in args.grants.split(",")):
            runs.append(run_once(base_url, count, args.revoke_workers, args.batch_size,
                                 args.sweep_interval, Path(workdir), args.profile,
                                 args.spread, args.after_start))
            print(json.dumps(runs[-1]), file=sys.stderr)
    print(json.dumps({"runs": runs, "targets": {
        "grants": 10000, "drained_within_s": 60, "lag_p99_below_s": 30}}, indent=2))


if __name__ == "__main__":
    main()
