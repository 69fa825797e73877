"""Slash-command ack latency of the gunicorn-served Slack app on the real core.

For each database (SQLite, then PostgreSQL) this starts `connect-access serve` (gunicorn,
`--workers` x `--threads`, the app built by bot.slack.wsgi.create_app with DbSlackServices
on the real RequestService), pointed at an in-process FakeSlack (Web API and response_urls)
and at moto's HTTP server for AWS, then sends correctly signed `/connect-access Edit chat
transcripts` commands from `--clients` concurrent clients (keep-alive connections, spread
over `--load-processes` processes so the load generator is not one GIL) for `--duration`
seconds.

Reported per database: ack latency (HTTP response to the signed POST, what Slack's 3 s limit
applies to) p50/p99/max, throughput, errors, and whether each command's answer (the entry
preview) came back: catalog lookups are answered in the ack itself; should an answer come
through response_url instead (an empty ack), those posts are counted and timed too.

Prints JSON: {"machine": {...}, "runs": [{"database", "clients", "mode", "duration_s",
"requests", "errors", "throughput_rps", "ack_ms": {"p50", "p99", "max"}, "answered_in_ack",
"answered_later", "wrong_answers", "later_answer_ms": {"p50", "p99", "max"}}],
"target": {"ack_p99_ms": 100}}

Closed loop (the default) finds the saturation point: every client sends its next command
the moment the last is acked, far beyond any real workspace's rate. `--rate R` paces the
same clients to R commands per second in total, to read the latency at a given load.

Run: .venv/bin/python bench/bench_slack.py [--duration 30] [--clients 50] [--rate 0]
     [--databases sqlite,postgresql] [--workers 2] [--threads 4] [--load-processes 2]
(PostgreSQL from TEST_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/test;
each run uses its own schema, dropped after. The load generator shares the machine's cores
with the server, the fake Slack and moto.)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import math
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import yaml

# The load processes import this module too (spawn): heavy imports (boto3, moto,
# SQLAlchemy) happen in the functions the parent runs, so the children start fast.
if TYPE_CHECKING:
    from bot.sandbox.fake_slack import FakeSlack

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REGION = "us-east-1"
ACCOUNT = "123456789012"
SIGNING_SECRET = "bench-signing-secret"
QUERY = "Edit chat transcripts"
TARGET_P99_MS = 100.0
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
               "AWS_REGION": REGION}


def operator_config() -> dict[str, Any]:
    return {
        "instances": [{"alias": "prod", "arn": f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/"
                                               "11111111-2222-3333-4444-555555555555"}],
        "principals": {"U0ALICE": f"arn:aws:iam::{ACCOUNT}:role/alice-admin"},
        "routing": {"tiers": {
            "read": {"channel": "C0APPROVALS", "approvers": ["S0LEADS"], "approvals": 1},
            "write": {"channel": "C0APPROVALS", "approvers": ["S0LEADS"], "approvals": 1},
            "critical": {"channel": "C0SECURITY", "approvers": ["S0SECURITY", "U0CISO"],
                         "approvals": 2},
        }},
    }


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank on an ascending list."""
    return values[max(1, math.ceil(fraction * len(values))) - 1]


def summary_ms(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(seconds)
    return {"p50": round(percentile(ordered, 0.50) * 1000, 2),
            "p99": round(percentile(ordered, 0.99) * 1000, 2),
            "max": round(ordered[-1] * 1000, 2)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the load generator (runs in its own processes) -------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    port: int
    response_base: str  # FakeSlack's base URL; each command gets its own response_url
    clients: int
    duration: float
    start_at: float  # time.time() at which every process starts sending
    tag: str
    # Commands per second per client; 0: closed loop (the next as soon as one is acked).
    client_rate: float = 0.0


def _signed_command(response_url: str, user: str) -> tuple[bytes, dict[str, str]]:
    body = urlencode({
        "token": "legacy", "team_id": "T0FAKE", "team_domain": "fake",
        "channel_id": "C0GENERAL", "channel_name": "general", "user_id": user,
        "user_name": user.lower(), "command": "/connect-access", "text": QUERY,
        "api_app_id": "A0CONNECT", "response_url": response_url,
        "trigger_id": f"{time.time():.0f}.{user}",
    }).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(SIGNING_SECRET.encode(), b"v0:" + stamp.encode() + b":" + body,
                      hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/x-www-form-urlencoded",
                  "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


# (token, sent at, latency, HTTP status or 0 for a transport error, the ack's answer:
# "" for an empty ack, "right" when it shows the queried entry, "wrong" otherwise)
Row = tuple[str, float, float, int, str]


async def _send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int,
                body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 POST; returns (status, body). Hand-written on raw streams
    because http.client in threads costs the load generator more CPU than the server
    spends answering, on cores the two share."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    status_line, _, header_block = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
    length = 0
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    payload = await reader.readexactly(length) if length else b""
    return int(status_line.split()[1]), payload


async def _client(spec: LoadSpec, index: int, out: list[Row]) -> None:
    """Send commands until the duration is over: back to back (closed loop), or on a fixed
    schedule (open loop), where latency counts from the scheduled time so a stalled server
    cannot hide the queue behind it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", spec.port)
    end = spec.start_at + spec.duration
    interval = 1.0 / spec.client_rate if spec.client_rate > 0 else 0.0
    # Clients spread their schedules over one interval instead of firing together.
    next_at = time.time() + (interval * index / max(spec.clients, 1))
    count = 0
    while (now := time.time()) < end:
        if interval and next_at > now:
            await asyncio.sleep(next_at - now)
            now = time.time()
            if now >= end:
                break
        count += 1
        token = f"{spec.tag}-{index}-{count}"
        body, headers = _signed_command(f"{spec.response_base}/response/{token}", "U0ALICE")
        started = time.perf_counter() - (max(0.0, now - next_at) if interval else 0.0)
        next_at += interval
        try:
            status, payload = await asyncio.wait_for(
                _send(reader, writer, spec.port, body, headers), timeout=10)
            answer = "" if not payload.strip() else (
                "right" if QUERY.encode() in payload else "wrong")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status, answer = 0, ""
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.port)
        out.append((token, now, time.perf_counter() - started, status, answer))
    writer.close()


def run_load(spec: LoadSpec) -> list[Row]:
    results: list[list[Row]] = [[] for _ in range(spec.clients)]

    async def everyone() -> None:
        delay = spec.start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*(_client(spec, i, results[i]) for i in range(spec.clients)))

    asyncio.run(everyone())
    return [row for rows in results for row in rows]


# -- one run ----------------------------------------------------------------------------


def prepare_database(backend: str, postgres_url: str, workdir: Path
                     ) -> tuple[str, Callable[[], None]]:
    """A migrated, empty database; returns its URL and a cleanup function."""
    import sqlalchemy as sa

    from bot.db import upgrade

    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
        upgrade(url)
        return url, lambda: None
    schema = f"bench_slack_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{separator}options={quote(f'-csearch_path={schema}')}"
    upgrade(url)

    def drop() -> None:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    return url, drop


def start_server(env: dict[str, str], port: int, workers: int, threads: int, log: Path
                 ) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", "from bot.cli import main; main()", "serve", "--port",
         str(port), "--workers", str(workers), "--threads", str(threads)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"the server did not start:\n{log.read_text()}") from None
            time.sleep(0.1)


def bench_one(backend: str, args: argparse.Namespace, fake: FakeSlack, moto_url: str,
              workdir: Path) -> dict[str, Any]:
    database_url, cleanup = prepare_database(backend, args.postgres_url, workdir)
    config_path = workdir / f"config-{backend}.yaml"
    config_path.write_text(yaml.safe_dump(operator_config()))
    env = {**os.environ, **CREDENTIALS,
           "DATABASE_URL": database_url, "CONNECT_ACCESS_CONFIG": str(config_path),
           "SLACK_BOT_TOKEN": fake.bot_token, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
           "SLACK_API_URL": fake.api_url, "AWS_ENDPOINT_URL": moto_url}
    port = free_port()
    server = start_server(env, port, args.workers, args.threads,
                          workdir / f"server-{backend}.log")
    try:
        # Warm-up: every worker imports, resolves once and opens its connections.
        run_load(LoadSpec(port, fake.base_url, min(args.clients, 8), args.warmup,
                          time.time(), f"warm{backend}"))
        seen_before = len(fake.responses())
        base, extra = divmod(args.clients, args.load_processes)
        per_process = [base + (i < extra) for i in range(args.load_processes)]
        start_at = time.time() + 3.0  # every load process starts sending at once
        client_rate = args.rate / args.clients if args.rate else 0.0
        specs = [LoadSpec(port, fake.base_url, n, args.duration, start_at, f"{backend}{i}",
                          client_rate)
                 for i, n in enumerate(per_process) if n]
        context = multiprocessing.get_context("spawn")
        with context.Pool(len(specs)) as pool:
            rows = [row for chunk in pool.map(run_load, specs) for row in chunk]
        acks = [latency for _, _, latency, status, _ in rows if status == 200]
        errors = len(rows) - len(acks)
        in_ack = [answer for _, _, _, status, answer in rows if status == 200 and answer]
        # Empty acks: the answer should follow on the response_url; give the backlog time.
        later = {token: at for token, at, _, status, answer in rows
                 if status == 200 and not answer}
        deadline = time.monotonic() + args.drain
        while later and time.monotonic() < deadline:
            answered = sum(1 for r in fake.responses()[seen_before:] if r.token in later)
            if answered >= len(later):
                break
            time.sleep(0.2)
        posts = [r for r in fake.responses()[seen_before:] if r.token in later]
        later_latency = [r.at - later[r.token] for r in posts]
        wrong = (sum(1 for answer in in_ack if answer == "wrong")
                 + sum(1 for r in posts if QUERY not in json.dumps(r.body)))
        return {
            "database": backend,
            "clients": args.clients,
            "mode": f"open loop at {args.rate:g}/s" if args.rate else "closed loop",
            "duration_s": args.duration,
            "server": {"workers": args.workers, "threads": args.threads},
            "requests": len(rows),
            "errors": errors,
            "throughput_rps": round(len(acks) / args.duration, 1),
            "ack_ms": summary_ms(acks),
            "answered_in_ack": len(in_ack),
            "answered_later": len(posts),
            "unanswered": len(acks) - len(in_ack) - len(posts),
            "wrong_answers": wrong,
            "later_answer_ms": summary_ms(later_latency),
            "meets_target": bool(acks) and errors == 0 and wrong == 0
            and len(in_ack) + len(posts) == len(acks)
            and (summary_ms(acks)["p99"] or 0) < TARGET_P99_MS,
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="total commands per second, paced (open loop); 0 (default): "
                             "each client sends the next as soon as one is acked")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=60.0,
                        help="seconds to wait for the last answers after the load")
    parser.add_argument("--postgres-url",
                        default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    args = parser.parse_args()
    backends = [b.strip() for b in args.databases.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"--databases: unknown database {backend!r} (sqlite, postgresql)")

    import boto3
    from moto.server import ThreadedMotoServer

    from bot.sandbox.fake_slack import FakeSlack

    os.environ.update(CREDENTIALS)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, moto_port = moto.get_host_and_port()
    moto_url = f"http://{host}:{moto_port}"
    boto3.client("iam", region_name=REGION, endpoint_url=moto_url).create_role(
        RoleName="alice-admin", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action":
                                                     "sts:AssumeRole", "Principal":
                                                     {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}}]}))
    runs = []
    try:
        with FakeSlack(usergroups={"S0LEADS": ["U0BOB"], "S0SECURITY": ["U0CAROL"]}) as fake, \
                tempfile.TemporaryDirectory() as tmp:
            for backend in backends:
                runs.append(bench_one(backend, args, fake, moto_url, Path(tmp)))
    finally:
        moto.stop()
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "note": "load generator, server, fake Slack and moto share these cores"},
        "query": f"/connect-access {QUERY}",
        "runs": runs,
        "target": {"ack_p99_ms": TARGET_P99_MS},
    }, indent=2))


if __name__ == "__main__":
    main()
