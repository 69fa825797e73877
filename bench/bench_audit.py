"""Audit trail at scale: load N hash-chained events into PostgreSQL (COPY), then time
`connect-access audit verify` and `audit export --format jsonl` as separate processes and
record each one's peak RSS. Measured at several log sizes to show memory stays flat.

Prints JSON: {"checkpoints": [{"events", "load_s", "verify_s", "verify_peak_rss_mb",
"export_s", "export_peak_rss_mb", "export_bytes"}], "targets": {...}}.
Run: .venv/bin/python bench/bench_audit.py [--events 1000000] [--checkpoints 100000,1000000]
(needs the PostgreSQL of TEST_POSTGRES_URL; works in its own schema, dropped at the end)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg

from bot.audit import event_hash, format_at
from bot.db import upgrade
from bot.models import GENESIS_HASH

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCHEMA = "bench_audit"
REQUESTS = 5000
ACTIONS = ("submitted", "vote", "approved", "granting", "granted", "revoking", "revoked")


def load_events(conninfo: str, start_seq: int, end_seq: int, prev_hash: str) -> str:
    """Append events start_seq..end_seq (inclusive) with COPY; return the last hash."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY audit_events (seq, at, actor, action, request_id, details, "
            "prev_hash, hash) FROM STDIN"
        ) as copy:
            for seq in range(start_seq, end_seq + 1):
                at = base + timedelta(seconds=seq)
                request_id = seq % REQUESTS + 1
                actor = f"U{request_id % 97:05d}"
                action = ACTIONS[seq % len(ACTIONS)]
                details = {
                    "entry_id": "contact-control-panel/access-ccp",
                    "note": f"event {seq}",
                    "duration_seconds": 3600,
                }
                digest = event_hash(seq, at, actor, action, request_id, details, prev_hash)
                details_text = json.dumps(details, separators=(",", ":"))
                copy.write(
                    f"{seq}\t{format_at(at)}\t{actor}\t{action}\t{request_id}\t"
                    f"{details_text}\t{prev_hash}\t{digest}\n"
                )
                prev_hash = digest
        cur.execute(
            "UPDATE audit_chain_head SET seq = %s, hash = %s WHERE id = 1", (end_seq, prev_hash)
        )
    return prev_hash


def seed_requests(conninfo: str) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with (
        psycopg.connect(conninfo) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY access_requests (id, requester, principal_arn, entry_id, entry_hash, tier, "
            "reason, duration_seconds, state, required_approvals, approval_round, created_at, "
            "updated_at, version) FROM STDIN"
        ) as copy,
    ):
        for request_id in range(1, REQUESTS + 1):
            copy.write_row(
                (
                    request_id,
                    f"U{request_id % 97:05d}",
                    "arn:aws:iam::111122223333:role/bench",
                    "home/list-instance",
                    "0" * 64,
                    "read",
                    "bench",
                    3600,
                    "revoked",
                    1,
                    0,
                    now,
                    now,
                    1,
                )
            )


def run_measured(args: list[str], env: dict[str, str], stdout_path: str) -> tuple[float, float]:
    """Run a command; return (seconds, peak RSS in MB) of that process alone."""
    with open(stdout_path, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(args, env=env, stdout=out)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {process.returncode}")
    return elapsed, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", default="100000,1000000")
    options = parser.parse_args()
    wanted = {int(c) for c in options.checkpoints.split(",")}
    checkpoints = sorted({c for c in wanted if c <= options.events} | {options.events})

    base_url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_URL)
    conninfo_base = base_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo_base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
    options_param = quote(f"-csearch_path={SCHEMA}")
    separator = "&" if "?" in base_url else "?"
    url = f"{base_url}{separator}options={options_param}"
    conninfo = f"{conninfo_base}{separator}options={options_param}"
    upgrade(url)
    seed_requests(conninfo)

    env = {**os.environ, "DATABASE_URL": url}
    command = [str(Path(sys.executable).with_name("connect-access"))]
    results = []
    loaded, prev_hash = 0, GENESIS_HASH
    try:
        for target in checkpoints:
            started = time.perf_counter()
            prev_hash = load_events(conninfo, loaded + 1, target, prev_hash)
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE audit_events")
            load_s = time.perf_counter() - started
            loaded = target
            with tempfile.TemporaryDirectory() as tmp:
                verify_s, verify_mb = run_measured([*command, "audit", "verify"], env, os.devnull)
                export_file = os.path.join(tmp, "export.jsonl")
                export_s, export_mb = run_measured(
                    [*command, "audit", "export", "--format", "jsonl"], env, export_file
                )
                export_bytes = os.path.getsize(export_file)
            results.append(
                {
                    "events": target,
                    "load_s": round(load_s, 1),
                    "verify_s": round(verify_s, 1),
                    "verify_peak_rss_mb": round(verify_mb, 1),
                    "export_s": round(export_s, 1),
                    "export_peak_rss_mb": round(export_mb, 1),
                    "export_bytes": export_bytes,
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        with psycopg.connect(conninfo_base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    print(
        json.dumps(
            {
                "checkpoints": results,
                "targets": {"verify_s": 60, "export_s": 60, "peak_rss_mb": 200},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
