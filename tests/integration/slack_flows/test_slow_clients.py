"""Clients that announce more body than they send, against the Procfile's `web:` command
under gunicorn: each is answered (408 when it stalls, 400 when it hangs up early) and none
keeps a worker thread from Slack's next request."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest
from server_process import free_port, serving
from test_web_process import _gunicorn_env, fake, get, procfile_web, sqlite_web_settings

from bot.slack.guard import BODY_TIMEOUT_SECONDS

# The web process's fixtures (a fake Slack, settings on a SQLite file), shared by import.
__all__ = ["fake", "sqlite_web_settings"]

# The Procfile runs 4 threads a worker; _gunicorn_env runs one worker.
THREADS = 4


def _post_head(port: int, announced: int) -> bytes:
    return (f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nX-Slack-Request-Timestamp: {int(time.time())}"
            f"\r\nX-Slack-Signature: v0=00\r\nContent-Length: {announced}\r\n\r\n").encode()


def _status_line(client: socket.socket) -> str:
    client.settimeout(BODY_TIMEOUT_SECONDS + 20)
    answer = b""
    while b"\r\n" not in answer:
        chunk = client.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


@pytest.mark.slow
def test_stalled_and_short_bodies_are_answered_and_free_their_thread(
        sqlite_web_settings: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    with serving(["sh", "-c", f"exec {procfile_web()}"], port=port,
                 env=_gunicorn_env(sqlite_web_settings, port), log_path=tmp_path / "web.log"):
        stalled = []
        for _ in range(THREADS):  # every thread of the worker, each waiting for 90 bytes
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(_post_head(port, 100) + b"{" * 10)
            stalled.append(client)
        started = time.monotonic()
        # Answered once the stalled reads give up; without a read deadline, never.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                    timeout=BODY_TIMEOUT_SECONDS + 20) as health:
            assert health.status == 200
        waited = time.monotonic() - started
        for client in stalled:
            with client:
                assert _status_line(client) == "HTTP/1.1 408 Request Timeout"
        with socket.create_connection(("127.0.0.1", port)) as early:
            early.sendall(_post_head(port, 100) + b"{" * 10)
            early.shutdown(socket.SHUT_WR)  # hangs up 90 bytes short
            assert _status_line(early) == "HTTP/1.1 400 Bad Request"
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    log = (tmp_path / "web.log").read_text()
    assert "Traceback" not in log
    assert log.count("body did not arrive within") == THREADS
    assert "shorter than its Content-Length of 100" in log
    assert waited < BODY_TIMEOUT_SECONDS + 15
