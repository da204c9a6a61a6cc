"""The fault modes: what each does to the endpoint and the servers, as data and one function.

Each `inject` runs while workers, beat and the publisher are busy, and returns the `Fault`:
when it began, when it ended (the endpoint answering from a writable primary again: the
promotion, or the forwarder passing again), and for a lossy failover the replication window
(acknowledged writes the replica may never have received).
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.failover.cluster import Cluster

REPLICATION_DELAY_S = 0.2  # the lossy mode's replication lag (seconds)
# A write acknowledged this long before the primary died may still have been on its way to
# the replica: the lag, plus scheduling slack of the forwarder thread (seconds).
WINDOW_MARGIN_S = 0.3
LAG_PROBES = 5


@dataclass
class Timing:
    read_only_s: float = 8.0  # the endpoint answers from the read-only replica this long
    stall_s: float = 8.0  # the forwarder swallows everything this long
    detect_s: float = 2.0  # a vanished primary until the replica is promoted


@dataclass
class Fault:
    start: float  # epoch seconds
    end: float
    # Acknowledged writes in [window[0], window[1]] may be lost with the primary.
    window: tuple[float, float] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mode:
    name: str
    summary: str  # what it stands for and what it does, for the report
    inject: Callable[[Cluster, Timing], Fault]
    rate: float = 30.0  # tasks published per second
    replication_delay_s: float = 0.0
    catalog: dict[str, Any] = field(default_factory=dict)  # over the run's catalog
    publishers: int = 1  # threads sharing the rate (a publish that waits takes longer)


def _reset(cluster: Cluster, _timing: Timing) -> Fault:
    start = time.time()
    return Fault(start, start, notes={"connections reset": cluster.proxy.reset_open()})


def _silent(cluster: Cluster, _timing: Timing) -> Fault:
    start = time.time()
    return Fault(start, start, notes={"connections silenced": cluster.proxy.sever()})


def _failover_silent(cluster: Cluster, timing: Timing) -> Fault:
    start = time.time()
    severed = cluster.proxy.sever()
    # Frozen, the old primary keeps new connections open and never answers them either.
    cluster.primary.signal(signal.SIGSTOP)
    time.sleep(timing.detect_s)
    end = cluster.promote()
    cluster.proxy.retarget(cluster.replica.port)
    return Fault(start, end, notes={"connections silenced": severed})


def _read_only(cluster: Cluster, timing: Timing) -> Fault:
    start = time.time()
    cluster.proxy.retarget(cluster.replica.port)
    reset = cluster.proxy.reset_open()
    time.sleep(timing.read_only_s)
    end = cluster.promote()
    return Fault(start, end, notes={"connections reset": reset})


def _stall(cluster: Cluster, timing: Timing) -> Fault:
    start = time.time()
    cluster.proxy.set("blackhole")
    time.sleep(timing.stall_s)
    cluster.proxy.set("pass")
    return Fault(start, time.time(), notes={"requests swallowed": cluster.proxy.fired})


def _lossy_replication(cluster: Cluster, timing: Timing) -> Fault:
    lags = [cluster.replication_lag_s() for _ in range(LAG_PROBES)]
    start = time.time()
    # The host is gone: what it had not yet delivered to the replica never arrives.
    if cluster.link is not None:
        cluster.link.sever()
    cluster.primary.signal(signal.SIGKILL)
    time.sleep(timing.detect_s)
    end = cluster.promote()
    cluster.proxy.retarget(cluster.replica.port)
    window = (start - cluster.replication_delay_s - WINDOW_MARGIN_S, start)
    measured = [round(lag, 3) for lag in lags if lag is not None]
    return Fault(start, end, window, notes={"replication lag measured (s)": measured})


def _lossy_replication_waited(cluster: Cluster, timing: Timing) -> Fault:
    # Every acknowledged write was on the replica first: no loss is excused.
    return dataclasses.replace(_lossy_replication(cluster, timing), window=None)


# The catalog's option that closes the window (celery_service.redis_client.write_replicated).
WAIT_FOR_REPLICA = {"wait_for_replicas": 1, "replica_wait_ms": 1000}

MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode(
            "reset",
            "Every open connection through the endpoint is reset (RST), as by a restarted "
            "proxy or a node replaced in place; Redis stays up, new connections pass.",
            _reset,
        ),
        Mode(
            "silent",
            "Every established connection goes silent both ways (a dropped NAT entry, a "
            "host gone mid-session): nothing closes, nothing answers; Redis stays up and "
            "new connections pass.",
            _silent,
        ),
        Mode(
            "failover-silent",
            "The primary vanishes without a word: its connections go silent and the server "
            "is frozen (SIGSTOP), so new connections hang too; after the detection time "
            "the replica is promoted (REPLICAOF NO ONE) and the endpoint moves to it.",
            _failover_silent,
        ),
        Mode(
            "read-only",
            "The endpoint moves to the replica before it is promoted: connections are "
            "reset and reconnect to a read-only server answering READONLY to every write "
            "for the read-only time, then the replica is promoted.",
            _read_only,
        ),
        Mode(
            "stall",
            "The endpoint swallows every request, on open and new connections, for the "
            "stall time (a network partition that heals), then passes again.",
            _stall,
        ),
        Mode(
            "lossy-replication",
            f"The replica's link to the primary lags {REPLICATION_DELAY_S * 1000:.0f} ms at "
            "50 tasks/s; the primary is killed (SIGKILL), the replica promoted after the "
            "detection time and the endpoint moved to it. Acknowledged writes of the last "
            f"{REPLICATION_DELAY_S + WINDOW_MARGIN_S:.1f} s before the kill (the lag plus "
            f"{WINDOW_MARGIN_S} s slack) may be lost, and effects applied then may be "
            "applied again (their applied_once marker lost): the stated replication window. "
            "The catalog's default where the broker has no replica (wait_for_replicas = 0).",
            _lossy_replication,
            rate=50.0,
            replication_delay_s=REPLICATION_DELAY_S,
        ),
        Mode(
            "lossy-replication-waited",
            "The same failover with the catalog's wait_for_replicas = 1: every publish, "
            "requeue and applied_once marker returns once the replica holds it (Redis "
            "WAIT, at most 1 s), so nothing acknowledged may be lost; 8 publishers share "
            "the rate, each publish taking the round trip to the lagging replica.",
            _lossy_replication_waited,
            rate=50.0,
            replication_delay_s=REPLICATION_DELAY_S,
            catalog=WAIT_FOR_REPLICA,
            publishers=8,
        ),
    )
}
