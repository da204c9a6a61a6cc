"""A replication group on loopback: a primary and a replica `redis-server`, and a forwarder
standing in for the endpoint name every client connects to (ElastiCache's primary endpoint).

The replica follows the primary straight, or through a second forwarder that delays the
replication stream (`replication_delay_s`): the replica then lags by that much, and a
primary that dies takes its last writes with it, as an asynchronous replica does.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import redis

from tools.faultproxy import FaultProxy
from tools.local_redis import redis_server_binary, start_server

SYNC_TIMEOUT_S = 20  # for the replica's first full sync (seconds)


class Node:
    """One redis-server, stopped (even when frozen) by `stop()`."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.port = 0  # a free one chosen at the first start, kept by the restarts
        self.process: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    def start(self) -> None:
        # Queue data is never evicted (the platform's rule for the broker); no persistence,
        # as ElastiCache has none a failover could use.
        with (self.dir / "redis.log").open("ab") as log:
            self.port, self.process = start_server(
                redis_server_binary(),
                self.dir,
                {"maxmemory_policy": "noeviction"},
                port=self.port or None,
                stdout=log,
                start_new_session=True,
            )

    def client(self) -> redis.Redis:
        """A client straight to this server, past the endpoint; shared by the threads."""
        if self._client is None:
            self._client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        return self._client

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class Cluster:
    def __init__(self, workdir: Path, *, replication_delay_s: float = 0.0) -> None:
        self.primary = Node("primary", workdir)
        self.replica = Node("replica", workdir)
        self.replication_delay_s = replication_delay_s
        self.link: FaultProxy | None = None  # the replica's delayed way to the primary
        self.endpoint: FaultProxy | None = None
        self.current = self.primary  # the node that holds the primary role now

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        upstream = self.primary.port
        if self.replication_delay_s > 0:
            self.link = FaultProxy(self.primary.port)
            self.link.delay(self.replication_delay_s)
            upstream = self.link.port
        self.replica.client().replicaof("127.0.0.1", upstream)
        self.endpoint = FaultProxy(self.primary.port)
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while self.replica.client().info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync with the primary")
            time.sleep(0.05)

    @property
    def proxy(self) -> FaultProxy:
        assert self.endpoint is not None, "start() first"
        return self.endpoint

    def promote(self) -> float:
        """REPLICAOF NO ONE on the replica; returns when (epoch seconds)."""
        self.replica.client().replicaof("NO", "ONE")
        self.current = self.replica
        return time.time()

    def replication_lag_s(self, timeout_s: float = 5.0) -> float | None:
        """How long a write to the primary takes to show on the replica (seconds)."""
        token = str(time.time())
        primary, replica = self.primary.client(), self.replica.client()
        written = time.monotonic()
        primary.set("failover:lag-probe", token)
        while time.monotonic() - written < timeout_s:
            if replica.get("failover:lag-probe") == token.encode():
                return time.monotonic() - written
            time.sleep(0.005)
        return None

    def stop(self) -> None:
        for proxy in (self.endpoint, self.link):
            if proxy is not None:
                with contextlib.suppress(OSError):
                    proxy.close()
        for node in (self.primary, self.replica):
            node.stop()
