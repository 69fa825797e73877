"""A web server in a process of its own (gunicorn, `connect-access serve`), for the tests
that check the app under the production server."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(command: Sequence[str], *, port: int, env: Mapping[str, str], log_path: Path,
            timeout: float = 30.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` (a server that will listen on 127.0.0.1:`port`) with its output in
    `log_path`; yields once the port accepts connections, stops the server on the way out.
    A server that exits or does not listen within `timeout` seconds fails the test with
    its log."""
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"`{' '.join(command)}` did not start:\n"
                                             + log_path.read_text()) from None
                    time.sleep(0.05)
            yield process
        finally:
            process.terminate()
            process.wait(timeout=20)
