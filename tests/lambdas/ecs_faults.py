"""What the autoscaler's tests share to put ECS faults under botocore, and to read the
errors a run reports."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from botocore.awsrequest import AWSResponse, HTTPHeaders

from lambdas.autoscaler.ecs import BotoEcs


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def throttle(
    ecs: BotoEcs,
    operation: str,
    attempts: int | None,
    when: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> list[int]:
    """Answer `operation` with ThrottlingException for `attempts` HTTP attempts (None: all)
    whose parameters `when` accepts, below moto, so botocore's own retries see real
    throttling responses. Returns the count of answers given, updated as they are."""
    fired = [0]

    def answer(request: Any, **_: Any) -> AWSResponse | None:
        if attempts is not None and fired[0] >= attempts:
            return None
        if not when(json.loads(request.body or b"{}")):
            return None
        fired[0] += 1
        # Every before-send handler runs; moto's comes after this one and would still apply
        # the call. Pointing the request elsewhere keeps a throttled call from taking effect.
        request.url = "https://throttled.invalid/"
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
        headers = HTTPHeaders()
        headers["x-amzn-RequestId"] = "proof"
        return AWSResponse(request.url, 400, headers, _Body(body.encode()))

    hook: Any = answer  # botocore's stubs type handlers as returning None; this one answers
    ecs.client.meta.events.register_first(f"before-send.ecs.{operation}", hook)
    return fired


def error_kinds(out: str) -> list[tuple[str, str | None]]:
    """(kind, worker_group) of every AutoscalerErrors metric printed as EMF."""
    found = []
    for line in out.splitlines():
        if '"_aws"' in line:
            record = json.loads(line)
            if "AutoscalerErrors" in record and "kind" in record:
                found.append((record["kind"], record.get("worker_group")))
    return found
