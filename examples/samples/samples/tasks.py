"""The sample app's tasks, one per pattern. Keep tasks thin: the real work lives in plain
functions. They use the runtime package's helpers as any team's tasks can."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from celery import chord, group, shared_task
from celery.utils.log import get_task_logger

from celery_service.idempotency import EffectInProgressError, applied_once
from celery_service.redis_client import client_for
from celery_service.tasks.base import PermanentError, PlatformTask, TransientError

# Every task name here has its routing and limits in the catalog (config/catalog.toml).

log = get_task_logger(__name__)

# Stand-in for a mail provider: the list of users emailed, so the effect can be counted.
EMAILS_SENT_KEY = "samples:emails-sent"


@shared_task(bind=True, base=PlatformTask, name="samples.send_welcome_email")
def send_welcome_email(self: PlatformTask, user_id: int) -> str:
    """Idempotent: a redelivered message does not send the email twice."""
    client = client_for(self.app.platform_settings)
    try:
        sent = applied_once(
            client, f"welcome-email:{user_id}", lambda: client.rpush(EMAILS_SENT_KEY, user_id)
        )
    except EffectInProgressError as exc:  # retried once the other delivery's lock may end
        raise self.retry(exc=exc, countdown=exc.retry_after_s) from exc
    return "sent" if sent else "already sent"


@shared_task(bind=True, base=PlatformTask, name="samples.fetch_exchange_rates")
def fetch_exchange_rates(self: PlatformTask, url: str) -> dict[str, Any]:
    """Retries: 5xx, timeouts and connection errors are retried with backoff; 4xx is final."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            rates: dict[str, Any] = json.loads(response.read())
            return rates
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise TransientError(f"rates service answered {exc.code}") from exc
        raise PermanentError(f"rates service refused the request: {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError) as exc:
        raise TransientError(f"rates service unreachable: {exc}") from exc


@shared_task(bind=True, base=PlatformTask, name="samples.build_report")
def build_report(
    self: PlatformTask, report_id: str, sections: int, seconds_per_section: float = 1.0
) -> str:
    """A long task that reports progress; read it with AsyncResult(id).info."""
    for done in range(sections):
        time.sleep(seconds_per_section)  # stand-in for one section's work
        self.update_state(state="PROGRESS", meta={"done": done + 1, "total": sections})
        log.info("report section done", extra={"report_id": report_id, "section": done + 1})
    return f"report {report_id}: {sections} sections"


@shared_task(base=PlatformTask, name="samples.purge_expired_sessions")
def purge_expired_sessions() -> int:
    """A periodic chore (a schedule in the catalog): stand-in for deleting expired rows."""
    return 0


@shared_task(base=PlatformTask, name="samples.square")
def square(x: int) -> int:
    return x * x


@shared_task(base=PlatformTask, name="samples.total")
def total(values: list[int]) -> int:
    return sum(values)


def sum_of_squares(numbers: list[int]) -> Any:
    """A chord: square every number in parallel (a group), then add the results."""
    return chord(group(square.s(n) for n in numbers), total.s())
