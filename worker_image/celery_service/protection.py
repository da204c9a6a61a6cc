"""ECS task scale-in protection while the worker has work.

While any message is reserved or running, the worker keeps its ECS task protected through
the agent's endpoint, so neither a scale-in nor a deployment stops it mid-task; once idle it
releases the protection. Calls run on a background thread with short timeouts: a slow or
failing agent delays protection, never a task. Outside ECS (no ECS_AGENT_URI) it does nothing.

ECS never stops a protected task, and a busy worker keeps taking work, so without a bound a
deployment (or a scale-in) could wait for as long as the queue stays busy. The bound is
`max_minutes` of continuous protection: each lease ends by then, and at the bound the
worker releases it, busy or not, and asks for none until it has been idle. A deploy then
replaces it; its unfinished tasks go back to their queue at SIGTERM (late acks).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

AGENT_TIMEOUT_S = 2.0  # one call to the agent
POLL_S = 2.0  # how often the busy state is re-read without a wake-up
IDLE_GRACE_S = 5.0  # idle this long before releasing (a steady trickle should not flap)


class TaskMonitor:
    """A daemon thread in the worker's main process: protection, and for a solo pool (whose
    tasks run on the event loop that otherwise touches it) the liveness file."""

    def __init__(
        self,
        *,
        busy: Callable[[], int],
        agent_uri: str | None,
        protection_minutes: int,
        heartbeat_file: str | None,
        max_minutes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.busy = busy
        self.agent_uri = agent_uri.rstrip("/") if agent_uri else None
        self.minutes = protection_minutes  # one lease: its expiry if the worker dies
        self.max_minutes = max_minutes  # continuous protection, renewals included
        self.heartbeat_file = Path(heartbeat_file) if heartbeat_file else None
        self.clock = clock
        self.protected_until = 0.0  # monotonic; 0 means not protected
        self.lease_s = 0.0  # length of the current lease
        self.idle_since: float | None = None
        self.message_at = -math.inf  # when a message last found the worker idle (wake)
        self.busy_since: float | None = None  # start of the current busy stretch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A message found the worker idle: protect now rather than at the next poll. While
        a fresh lease holds (not past half-life), only note the time: the next poll counts
        the idle spell from it, so the lease is not released under the message. Each
        wake-up is a thread switch in the main process, on the path of the message that
        caused it."""
        now = self.message_at = self.clock()
        if self.agent_uri is None or now < self.protected_until - self.lease_s / 2:
            return
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=AGENT_TIMEOUT_S * 2)
        if self.protected_until:
            self._set_protection(False)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the monitor must never die: log and go on
                log.exception("task monitor step failed")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def step(self) -> None:
        now = self.clock()
        if self.heartbeat_file is not None:
            self.heartbeat_file.touch()
        if self.agent_uri is None:
            return
        if self.busy() > 0:
            self.idle_since = None
            self.busy_since = now if self.busy_since is None else self.busy_since
            left_s = self._left_s(now)
            if left_s <= 0:
                if self.protected_until and self._set_protection(False):
                    self.protected_until = 0.0
                    log.warning(
                        "scale-in protection released after %s minutes of work: a deploy or "
                        "scale-in may now replace this task",
                        self.max_minutes,
                    )
                return
            # Renew at half-life so a long task never outlives its protection.
            if now <= self.protected_until - self.lease_s / 2:
                return
            lease = (
                self.minutes if left_s == math.inf else min(self.minutes, math.ceil(left_s / 60))
            )
            if self._set_protection(True, lease):
                self.protected_until = now + lease * 60
                self.lease_s = lease * 60
            return
        self.idle_since = max(self.idle_since or now, self.message_at)
        if now - self.idle_since < IDLE_GRACE_S:
            return
        self.busy_since = None  # idle: the next busy stretch starts a new bound
        if self.protected_until and self._set_protection(False):
            self.protected_until = 0.0

    def _left_s(self, now: float) -> float:
        if self.max_minutes is None or self.busy_since is None:
            return math.inf
        return self.max_minutes * 60 - (now - self.busy_since)

    def _set_protection(self, enabled: bool, minutes: int | None = None) -> bool:
        body: dict[str, object] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = minutes or self.minutes
        request = urllib.request.Request(
            f"{self.agent_uri}/task-protection/v1/state",
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=AGENT_TIMEOUT_S) as response:
                reply = json.loads(response.read() or b"{}")
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            log.warning("scale-in protection %s failed: %s", "on" if enabled else "off", exc)
            return False
        if "failure" in reply or "error" in reply:
            log.warning("scale-in protection %s refused: %s", "on" if enabled else "off", reply)
            return False
        log.info("scale-in protection %s", "on" if enabled else "off")
        return True
