"""`make autoscale-once`: run the autoscaler's handler once against a local Redis with a
dry-run ECS client, and print each worker group's decision and its reason.

Without --redis-port it starts a throw-away redis-server on a free loopback port and puts a
sample backlog in it (--backlog messages on every queue), so the policy has something to do.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import redis

from config import CONFIG_DIR, ConfigError, load_environment
from config.services import worker_service_names
from lambdas.autoscaler.ecs import ServiceCounts
from lambdas.autoscaler.handler import run_once
from lambdas.autoscaler.settings import Settings
from lambdas.autoscaler.telemetry import logger
from tools.local_redis import (
    RedisServerMissingError,
    redis_server_binary,
    start_server,
)


class DryRunEcs:
    """Records what would change; starts every service at `initial` running tasks."""

    def __init__(self, initial: dict[str, int]) -> None:
        self.counts = dict(initial)
        self.updates: list[tuple[str, int]] = []

    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        found = {
            s: ServiceCounts(self.counts[s], 0, self.counts[s])
            for s in services
            if s in self.counts
        }
        return found, {s: "not in the dry run" for s in services if s not in self.counts}

    def set_desired(self, service: str, count: int) -> None:
        self.updates.append((service, count))
        self.counts[service] = count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="the app's config")
    parser.add_argument("--env", default="dev")
    parser.add_argument("--redis-port", type=int, help="use this local Redis instead")
    parser.add_argument("--backlog", type=int, default=500, help="messages per queue to add")
    parser.add_argument("--metrics", action="store_true", help="also print the EMF metrics")
    args = parser.parse_args()
    # Locally the decisions are printed as a table, not as per-decision JSON logs.
    logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"))
    try:
        config = load_environment(args.env, args.config_dir)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2

    server = None
    port = args.redis_port
    if port is None:
        try:
            binary = redis_server_binary()
        except RedisServerMissingError as exc:
            print(exc, file=sys.stderr)
            return 2
        workdir = Path(tempfile.mkdtemp(prefix="autoscale-once-"))
        port, server = start_server(binary, workdir)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        if server is not None and args.backlog:
            for queue in config.queues:
                client.lpush(queue, *[b"{}"] * args.backlog)
        prefix = f"{config.project}-{config.name}"
        settings = Settings.model_validate(
            {
                **config.autoscaler_config(prefix, worker_service_names(config)),
                "redis_host": "127.0.0.1",
                "redis_port": port,
                "redis_tls": False,
            }
        )
        ecs = DryRunEcs({t.service: t.min_tasks for t in settings.targets.values()})
        emf = io.StringIO()  # the metric lines CloudWatch would receive; --metrics shows them
        with contextlib.redirect_stdout(emf):
            results = run_once(settings, client, ecs)
        if args.metrics:
            print(emf.getvalue(), end="")
        for result in results:
            change = f"{result.before} -> {result.desired}" if result.changed else "no change"
            print(f"{result.group:<12} {result.service:<28} {change:<12} {result.reason}")
            if result.error:
                print(f"{'':<12} error: {result.error}")
    finally:
        client.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
