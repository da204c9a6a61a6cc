"""A scripted HTTP server on loopback: answers from a list and records every request. The
tests stand it in for what tasks and the worker call over HTTP (the ECS agent, a rates
API); the worker benchmark for the ECS agent's task-protection endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class StandIn:
    url: str
    # Answers in order; the last one repeats. (status, JSON body)
    answers: list[tuple[int, Any]] = field(default_factory=lambda: [(200, {})])
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def standin(
    answers: list[tuple[int, Any]] | None = None, delay_s: float = 0.0
) -> Iterator[StandIn]:
    state = StandIn(url="", answers=answers or [(200, {})], delay_s=delay_s)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with lock:
                state.requests.append(
                    {"method": self.command, "path": self.path, "body": body, "at": time.time()}
                )
                index = min(len(state.requests) - 1, len(state.answers) - 1)
                status, payload = state.answers[index]
            time.sleep(state.delay_s)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting, as a slow-agent test expects

        do_GET = _answer  # noqa: N815  (http.server's method names)
        do_PUT = _answer  # noqa: N815

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
