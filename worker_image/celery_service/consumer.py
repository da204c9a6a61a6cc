"""A worker consumer that keeps what it cannot decode instead of dropping it."""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)


class SafeConsumer(Consumer):  # type: ignore[misc]
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Celery logs and acks (deletes) such a message. Record it in the DLQ first; if the
        DLQ cannot be written, leave the message unacked so Redis restores it later."""
        from celery_service.signals import dead_letter_from_message, record_dead_letter

        if record_dead_letter(dead_letter_from_message(message, "undecodable", exc)):
            super().on_decode_error(message, exc)
        else:
            log.error("undecodable message left unacked: the DLQ is unreachable")
