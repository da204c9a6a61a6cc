"""`make datadog-push ENV=<env>`: create or update the environment's Datadog dashboard and
monitors through Datadog's API, for accounts without the CloudFormation registry types.

The definitions are the ones the monitoring stack deploys as registry resources
(stacks/monitoring/datadog.py). Re-running updates in place: the dashboard is matched by
title, monitors by name among those tagged as managed by this project for the environment;
`--prune` deletes such monitors that the catalog no longer generates (a removed queue).

Keys: DD_API_KEY and DD_APP_KEY from the environment, otherwise from the Secrets Manager
secrets named by `datadog.api_key_secret_name` / `datadog.app_key_secret_name` in the
environment's region. They are never printed or written anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import CONFIG_DIR, ConfigError, EnvironmentConfig, load_environment
from stacks.monitoring import datadog as dd


class PushError(Exception):
    """A one-line reason the push stopped."""


@dataclass(frozen=True)
class Keys:
    api: str
    app: str

    def __repr__(self) -> str:  # never show a key, even in a traceback
        return "Keys(api=***, app=***)"


def read_keys(
    config: EnvironmentConfig,
    environ: Mapping[str, str],
    secret_reader: Callable[[str], str] | None = None,
) -> Keys:
    api, app = environ.get("DD_API_KEY"), environ.get("DD_APP_KEY")
    if api and app:
        return Keys(api, app)
    reader = secret_reader or _secrets_manager_reader(config.region)
    names = (config.datadog.api_key_secret_name, config.datadog.app_key_secret_name)
    try:
        return Keys(api or reader(names[0]), app or reader(names[1]))
    except PushError:
        raise
    except Exception as exc:
        raise PushError(
            f"Datadog keys: neither DD_API_KEY/DD_APP_KEY are set nor could the secrets "
            f"{names[0]!r} and {names[1]!r} be read ({type(exc).__name__})"
        ) from None


def _secrets_manager_reader(region: str | None) -> Callable[[str], str]:
    import boto3

    client = boto3.client("secretsmanager", region_name=region)

    def read(name: str) -> str:
        value = client.get_secret_value(SecretId=name).get("SecretString")
        if not value:
            raise PushError(f"secret {name!r} has no string value")
        return str(value)

    return read


class DatadogApi:
    """The few calls the push needs, through the `datadog` package."""

    def __init__(self, keys: Keys, api_host: str) -> None:
        from datadog import api, initialize

        initialize(
            api_key=keys.api,
            app_key=keys.app,
            api_host=api_host,
            # A fixed host name: the package would otherwise look one up (agent config, EC2).
            host_name="celery-platform-push",
            hostname_from_config=False,
            mute=False,  # raise on API errors instead of returning them
        )
        self.api: Any = api  # the package is untyped

    def dashboards(self) -> list[dict[str, Any]]:
        return list(self.api.Dashboard.get_all().get("dashboards", []))

    def create_dashboard(self, body: dict[str, Any]) -> str:
        return str(self.api.Dashboard.create(**body)["id"])

    def update_dashboard(self, dashboard_id: str, body: dict[str, Any]) -> None:
        self.api.Dashboard.update(dashboard_id, **body)

    def monitors(self, tags: list[str]) -> list[dict[str, Any]]:
        return list(self.api.Monitor.get_all(monitor_tags=",".join(tags)))

    def create_monitor(self, body: dict[str, Any]) -> int:
        return int(self.api.Monitor.create(**body)["id"])

    def update_monitor(self, monitor_id: int, body: dict[str, Any]) -> None:
        self.api.Monitor.update(monitor_id, **body)

    def delete_monitor(self, monitor_id: int) -> None:
        self.api.Monitor.delete(monitor_id)


def push(config: EnvironmentConfig, client: DatadogApi, *, prune: bool) -> list[str]:
    """Upsert the dashboard and every monitor; returns one line per action."""
    actions = []
    board = dd.dashboard(config)
    same_title = [d for d in client.dashboards() if d.get("title") == board["title"]]
    if len(same_title) > 1:
        raise PushError(f"{len(same_title)} dashboards are titled {board['title']!r}; keep one")
    if same_title:
        client.update_dashboard(str(same_title[0]["id"]), board)
        actions.append(f"updated dashboard {board['title']!r}")
    else:
        client.create_dashboard(board)
        actions.append(f"created dashboard {board['title']!r}")

    managed = [dd.MANAGED_BY_TAG, f"environment:{config.name}"]
    existing = {m["name"]: m for m in client.monitors(managed)}
    wanted = dd.monitors(config)
    for monitor in wanted:
        body = monitor.api_body()
        if monitor.name in existing:
            client.update_monitor(int(existing[monitor.name]["id"]), body)
            actions.append(f"updated monitor {monitor.name!r}")
        else:
            client.create_monitor(body)
            actions.append(f"created monitor {monitor.name!r}")
    stale = sorted(set(existing) - {m.name for m in wanted})
    for name in stale:
        if prune:
            client.delete_monitor(int(existing[name]["id"]))
            actions.append(f"deleted monitor {name!r}")
        else:
            actions.append(f"kept monitor {name!r}, no longer generated (--prune deletes it)")
    return actions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="the app's config")
    parser.add_argument("--env", default="dev", help="environment name (<config dir>/<env>.toml)")
    parser.add_argument("--dry-run", action="store_true", help="print the definitions as JSON")
    parser.add_argument("--prune", action="store_true", help="delete stale managed monitors")
    parser.add_argument(
        "--api-host", help="Datadog API URL (default: https://api.<datadog.site>)", default=None
    )
    args = parser.parse_args(argv)
    try:
        config = load_environment(args.env, args.config_dir)
        if args.dry_run:
            definitions = {
                "dashboard": dd.dashboard(config),
                "monitors": [m.api_body() for m in dd.monitors(config)],
            }
            print(json.dumps(definitions, indent=2, sort_keys=True))
            return 0
        if config.datadog.resources == "cloudformation":
            raise PushError(
                f"{config.name}: datadog.resources is 'cloudformation': the monitoring stack "
                "owns the dashboard and monitors; a push would create copies outside it"
            )
        keys = read_keys(config, os.environ)
        host = args.api_host or f"https://api.{config.datadog.site}"
        for line in push(config, DatadogApi(keys, host), prune=args.prune):
            print(line)
    except (ConfigError, PushError) as exc:
        print(f"datadog push: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the API's errors: say what failed, not the keys
        print(f"datadog push failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
