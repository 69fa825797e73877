"""Audit trail at scale: load N hash-chained events into PostgreSQL (COPY), then time
`connect-access audit verify` and `audit export --format jsonl` as separate processes and
record each one's peak RSS. Measured at several log sizes to show memory stays flat.

verify runs against anchors: a checkpoint every --anchor-every events, signed with a local
Ed25519 key and stored in an Object Lock bucket on moto's S3 server (so it reads and checks
every checkpoint over HTTP), plus the table cross-checks over the seeded requests.

Prints JSON: {"checkpoints": [{"events", "load_s", "verify_s", "verify_peak_rss_mb",
"export_s", "export_peak_rss_mb", "export_bytes"}], "targets": {...}}.
Run: .venv/bin/python bench/bench_audit.py [--events 1000000] [--checkpoints 100000,1000000]
(needs the PostgreSQL of TEST_POSTGRES_URL; works in its own schema, dropped at the end)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import boto3
import psycopg

from bot.anchors import Checkpoint, SignedCheckpoint
from bot.audit import event_hash, format_at
from bot.aws.anchors import S3AnchorStore
from bot.db import upgrade
from bot.models import GENESIS_HASH
from bot.signing import write_new_key

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCHEMA = "bench_audit"
REQUESTS = 5000
ACTIONS = ("submitted", "vote", "approved", "granting", "granted", "revoking", "revoked")


def load_events(conninfo: str, start_seq: int, end_seq: int, prev_hash: str,
                marks: dict[int, str] | None = None, every: int = 0) -> str:
    """Append events start_seq..end_seq (inclusive) with COPY; return the last hash. The
    hash at every `every`-th seq goes into `marks` (where checkpoints are signed)."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY audit_events (seq, at, actor, action, request_id, details, "
            "prev_hash, hash) FROM STDIN"
        ) as copy:
            for seq in range(start_seq, end_seq + 1):
                at = base + timedelta(seconds=seq)
                request_id = seq % REQUESTS + 1
                action = ACTIONS[seq % len(ACTIONS)]
                if seq <= REQUESTS:  # each seeded request opens with its submitted event
                    request_id, action = seq, "submitted"
                actor = f"U{request_id % 97:05d}"
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
                if marks is not None and every and seq % every == 0:
                    marks[seq] = digest
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


class Anchors:
    """moto's S3 over HTTP with an Object Lock bucket, a local key, and the config file that
    points `connect-access audit verify` at both."""

    bucket = "bench-audit-anchors"

    def __init__(self, folder: Path) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        self.env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                    "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint,
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
        self.signer = write_new_key(folder / "audit-ed25519.pem")
        self.store = S3AnchorStore(s3, self.bucket, retention=timedelta(days=1))
        config = folder / "config.yaml"
        config.write_text(f"audit:\n  signing_key_file: {folder / 'audit-ed25519.pem'}\n"
                          f"  anchor_bucket: {self.bucket}\n")
        self.env["CONNECT_ACCESS_CONFIG"] = str(config)
        self.count = 0

    def write(self, marks: dict[int, str]) -> None:
        for seq, head in sorted(marks.items()):
            checkpoint = Checkpoint(seq=seq, head_hash=head, event_count=seq,
                                    at=datetime.now(UTC), key_id=self.signer.key_id)
            self.store.put(SignedCheckpoint(checkpoint, self.signer.algorithm,
                                            self.signer.sign(checkpoint.payload())))
            self.count += 1

    def close(self) -> None:
        self.server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", default="100000,1000000")
    parser.add_argument("--anchor-every", type=int, default=10_000,
                        help="Events between signed checkpoints (0: verify without anchors).")
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
    work = tempfile.TemporaryDirectory()
    anchors = Anchors(Path(work.name)) if options.anchor_every else None
    if anchors is not None:
        env.update(anchors.env)
    command = [str(Path(sys.executable).with_name("connect-access"))]
    results = []
    loaded, prev_hash = 0, GENESIS_HASH
    try:
        for target in checkpoints:
            started = time.perf_counter()
            marks: dict[int, str] = {}
            prev_hash = load_events(conninfo, loaded + 1, target, prev_hash, marks,
                                    options.anchor_every)
            if anchors is not None:
                marks[target] = prev_hash  # as the scheduler would: the head, last
                anchors.write(marks)
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
                    "anchors": 0 if anchors is None else anchors.count,
                    "export_s": round(export_s, 1),
                    "export_peak_rss_mb": round(export_mb, 1),
                    "export_bytes": export_bytes,
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        with psycopg.connect(conninfo_base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        if anchors is not None:
            anchors.close()
        work.cleanup()
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
