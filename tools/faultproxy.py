"""A TCP proxy on 127.0.0.1 that injects network faults between a client and a server.

Modes: `pass` forwards both ways; `blackhole` swallows requests, so the client times out;
`reset` answers every request with a TCP reset; `reset_reply` forwards the request and resets
the connection half-way through the reply. A fault applies to connections already open as
well as new ones. `budget` limits how many times the fault fires before the proxy passes
traffic again (a transient fault); None keeps it until the mode is changed.

Two faults apply to the connections open at the moment only: `sever()` makes them go silent
both ways while new connections pass (a dropped NAT entry, a host gone mid-session: nothing
closes, nothing answers; `sever_after(pattern)` does it to the next connection to send a
request containing the pattern, once that request is through: the server acts, the client
never hears), and `retarget(port)` sends new connections to another server (the
endpoint name moved to a promoted replica) while the open ones stay on the old.

`delay(seconds)` holds every chunk that long before passing it on, both ways, in order, on
open and new connections: a slow link (a replica's replication stream lagging its primary).
What is on its way when one side hangs up still arrives, on time, before the other side
is closed, as it would on a real network; `sever()` drops it (a host gone: nothing more
leaves it).

The benchmarks (bench/failover) and the tests (tests/proofs, tests/worker) share it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import deque
from typing import Literal

Mode = Literal["pass", "blackhole", "reset", "reset_reply"]
CHUNK_BYTES = 65536


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: what a dropped NAT entry or a crashed peer looks like."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._mode: Mode = "pass"
        self._budget: int | None = None
        self.fired = 0  # faults actually injected (a reset sent, a request swallowed)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._silent: set[socket.socket] = set()  # severed: read and dropped, never answered
        self._subscribers: set[socket.socket] = set()  # client sockets that sent SUBSCRIBE
        self._sever_after: bytes | None = None
        self._delay_s = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def set(self, mode: Mode, budget: int | None = None) -> None:
        with self._lock:
            self._mode, self._budget = mode, budget

    def _take(self, wanted: tuple[Mode, ...]) -> Mode:
        """The mode to apply to one chunk; counts the fault and spends the budget."""
        with self._lock:
            mode = self._mode
            if mode not in wanted:
                return "pass"
            self.fired += 1
            if self._budget is not None:
                self._budget -= 1
                if self._budget <= 0:
                    self._mode, self._budget = "pass", None
            return mode

    def sever(self, *, subscribers_only: bool = False) -> int:
        """Silence every open connection (or those that sent SUBSCRIBE), both ways; returns
        how many."""
        with self._lock:
            chosen = self._subscribers & self._open if subscribers_only else set(self._open)
            self._silent.update(chosen)
            return len(chosen) if subscribers_only else len(chosen) // 2

    def sever_after(self, pattern: bytes) -> None:
        with self._lock:
            self._sever_after = pattern

    def retarget(self, upstream_port: int) -> None:
        with self._lock:
            self.upstream_port = upstream_port

    def delay(self, seconds: float) -> None:
        with self._lock:
            self._delay_s = seconds

    def reset_open(self) -> int:
        """Reset every open connection (new ones pass); returns how many."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _reset(sock)
        return len(sockets) // 2

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            with self._lock:
                port = self.upstream_port
            upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            _reset(client)  # the server is down: the client sees the connection dropped
            return
        with self._lock:
            self._open.update((client, upstream))
        poisoned = False  # this connection's current reply is to be cut
        # Delayed chunks by destination: (when due, monotonic seconds; data).
        held: dict[socket.socket, deque[tuple[float, bytes]]] = {client: deque(), upstream: deque()}
        try:
            while not self._closed:
                readable, _, _ = select.select([client, upstream], [], [], _wait_s(held))
                if client in self._silent:  # what was held never arrives either
                    for queue in held.values():
                        queue.clear()
                    for sock in readable:
                        if not sock.recv(CHUNK_BYTES):
                            return
                    continue
                _flush(held)
                if client in readable:
                    data = client.recv(CHUNK_BYTES)
                    if not data:
                        _flush(held, wait=True)
                        return
                    mode = self._take(("blackhole", "reset", "reset_reply"))
                    if mode == "blackhole":
                        continue
                    if mode == "reset":
                        _reset(client)
                        return
                    poisoned = mode == "reset_reply"
                    self._send(upstream, data, held)
                    with self._lock:
                        if b"SUBSCRIBE" in data.upper():
                            self._subscribers.add(client)
                        if self._sever_after is not None and self._sever_after in data:
                            self._sever_after = None
                            self._silent.add(client)
                if upstream in readable:
                    data = upstream.recv(CHUNK_BYTES)
                    if not data:
                        _flush(held, wait=True)
                        return
                    if poisoned:
                        client.sendall(data[: max(1, len(data) // 2)])
                        _reset(client)
                        return
                    self._send(client, data, held)
        except (OSError, ValueError):  # ValueError: a socket reset_open() or close() closed
            return
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
                self._silent.discard(client)
                self._subscribers.discard(client)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def _send(
        self,
        dest: socket.socket,
        data: bytes,
        held: dict[socket.socket, deque[tuple[float, bytes]]],
    ) -> None:
        with self._lock:
            delay_s = self._delay_s
        if delay_s > 0 or held[dest]:  # behind held chunks even once the delay is off
            held[dest].append((time.monotonic() + delay_s, data))
        else:
            dest.sendall(data)


def _wait_s(held: dict[socket.socket, deque[tuple[float, bytes]]]) -> float:
    """How long select may wait: until the next held chunk is due, at most 0.5 s."""
    due = [queue[0][0] for queue in held.values() if queue]
    return max(0.0, min([*due, time.monotonic() + 0.5]) - time.monotonic())


def _flush(held: dict[socket.socket, deque[tuple[float, bytes]]], *, wait: bool = False) -> None:
    """Send the held chunks that are due; with `wait`, all of them, each when it is due."""
    for dest, queue in held.items():
        while queue:
            due, data = queue[0]
            if due > time.monotonic():
                if not wait:
                    break
                time.sleep(due - time.monotonic())
            queue.popleft()
            dest.sendall(data)
