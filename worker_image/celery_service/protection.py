"""ECS task scale-in protection while the worker has work.

While any message is reserved or running, the worker keeps its ECS task protected through
the agent's endpoint, so neither a scale-in nor a deployment stops it mid-task; once idle it
releases the protection. Calls run on a background thread with short timeouts: a slow or
failing agent delays protection, never a task. Outside ECS (no ECS_AGENT_URI) it does nothing.
"""

from __future__ import annotations

import json
import logging
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
    """A daemon thread in the worker's main process: protection and the liveness file."""

    def __init__(
        self,
        *,
        busy: Callable[[], int],
        agent_uri: str | None,
        protection_minutes: int,
        heartbeat_file: str | None,
    ) -> None:
        self.busy = busy
        self.agent_uri = agent_uri.rstrip("/") if agent_uri else None
        self.minutes = protection_minutes
        self.heartbeat_file = Path(heartbeat_file) if heartbeat_file else None
        self.protected_until = 0.0  # monotonic; 0 means not protected
        self.idle_since: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A message arrived: protect now rather than at the next poll."""
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
        now = time.monotonic()
        if self.heartbeat_file is not None:
            self.heartbeat_file.touch()
        if self.agent_uri is None:
            return
        if self.busy() > 0:
            self.idle_since = None
            # Renew at half-life so a long task never outlives its protection.
            renew_due = now > self.protected_until - self.minutes * 30
            if renew_due and self._set_protection(True):
                self.protected_until = now + self.minutes * 60
        elif self.protected_until:
            self.idle_since = self.idle_since or now
            if now - self.idle_since >= IDLE_GRACE_S and self._set_protection(False):
                self.protected_until = 0.0

    def _set_protection(self, enabled: bool) -> bool:
        body: dict[str, object] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = self.minutes
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
