"""An HTTP/1.1 server on a local port in a daemon thread, for the fakes (FakeSlack here, the
tests' throttling IAM proxy): every GET and POST goes to one callable, nothing is logged."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handle = Callable[[BaseHTTPRequestHandler], None]


class LocalHttpServer:
    def __init__(self, handle: Handle, *, name: str, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        """`port` 0 takes a free one; `url` says which."""
        self._handle = handle
        self._name = name
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        handle = self._handle

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect

            def do_GET(self) -> None:
                handle(self)

            def do_POST(self) -> None:
                handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(self._address, Handler)
        server.daemon_threads = True
        self._server = server
        # A short poll interval so that stop() returns at once.
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=self._name, daemon=True).start()

    def stop(self) -> None:
        """Stop serving and free the port; stopping twice is fine."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{self._name} is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"
