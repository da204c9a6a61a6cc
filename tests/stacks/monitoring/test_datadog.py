"""Datadog as code: the dashboard and monitors generated from the catalog, deployed as
CloudFormation registry resources or pushed through Datadog's API, in one vocabulary."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from moto import mock_aws

from celery_service import contract as m
from config import ConfigError, EnvironmentConfig, load_environment, parse_environment
from stacks.monitoring import datadog as dd
from tests.synth import ROOT, Synth, resources, synthesize
from tools import datadog_push

SCHEMAS = ROOT / "stacks" / "registry_schemas"


def with_datadog(name: str = "staging", **datadog: Any) -> EnvironmentConfig:
    data = load_environment(name).model_dump(exclude={"name"}, exclude_none=True)
    data["datadog"] = {"enabled": True, **datadog}
    return parse_environment(name, data)


@pytest.fixture(scope="module")
def registry_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    config = with_datadog(resources="cloudformation", notify=["@slack-celery-alerts"])
    return synthesize(config, tmp_path_factory.mktemp("datadog"))


def test_registry_resources_only_when_an_environment_asks(
    registry_synth: Synth, synth_env: Any
) -> None:
    template = registry_synth.template_json(registry_synth.platform.monitoring)
    config = registry_synth.config
    monitors = list(resources(template, "Datadog::Monitors::Monitor").values())
    expected = len(config.queues) + 2 * len(config.worker_groups) + 3 + 2 + 1 + 2
    assert len(monitors) == expected
    assert len(resources(template, "Datadog::Dashboards::Dashboard")) == 1
    for shipped in ("dev", "staging", "prod"):
        synth: Synth = synth_env(shipped)
        plain = synth.template_json(synth.platform.monitoring)
        assert not [r for r in plain["Resources"].values() if r["Type"].startswith("Datadog::")]


def test_registry_properties_follow_the_published_schemas(registry_synth: Synth) -> None:
    template = registry_synth.template_json(registry_synth.platform.monitoring)
    checked = 0
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        for resource in resources(template, schema["typeName"]).values():
            jsonschema.validate(resource["Properties"], schema)
            checked += 1
        # The schema is strict: a misspelt property is refused (so the check can fail).
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**resource["Properties"], "Titel": "x"}, schema)
    assert checked == len(dd.monitors(registry_synth.config)) + 1


def test_registry_template_passes_cfn_lint_and_holds_no_key(registry_synth: Synth) -> None:
    path = registry_synth.outdir / f"{registry_synth.platform.monitoring.stack_name}.template.json"
    # In its own process: cfn-lint caches the known resource types per process, so registry
    # schemas loaded after another lint in this session would be ignored.
    cfn_lint = str(Path(sys.executable).parent / "cfn-lint")
    result = subprocess.run(
        [cfn_lint, "--registry-schemas", str(SCHEMAS), "--regions", "us-east-1", "--", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")
    text = path.read_text()
    # Credentials live in the registry types' configuration, set once per account.
    assert "ApiKey" not in text
    assert "ApplicationKey" not in text


def test_monitors_follow_the_config(registry_synth: Synth) -> None:
    config = registry_synth.config
    by_key = {monitor.key: monitor for monitor in dd.monitors(config)}
    for name, group in config.worker_groups.items():
        assert by_key[f"pinned-{name}"].critical == group.max_tasks
        assert f">= {group.max_tasks}" in by_key[f"pinned-{name}"].query
        assert (
            f"last_{config.monitoring.max_tasks_alarm_minutes}m" in by_key[f"pinned-{name}"].query
        )
        assert by_key[f"backlog-{name}"].critical == group.target_wait_s
    for queue in config.queues:
        assert f"queue:{queue}" in by_key[f"dlq-{queue}"].query
    assert by_key["redis-memory"].critical == config.monitoring.redis_memory_percent
    assert by_key["autoscaler-not-running"].notify_no_data
    # No data for twice the alarm's window (three intervals), as Datadog requires at least.
    not_running = by_key["autoscaler-not-running"]
    assert not_running.no_data_minutes == 2 * 3 * config.autoscaler.schedule_minutes
    assert "last_" + str(3 * config.autoscaler.schedule_minutes) + "m" in not_running.query
    assert not by_key["dlq-" + next(iter(config.queues))].notify_no_data
    assert all("@slack-celery-alerts" in monitor.message for monitor in by_key.values())
    assert all(f"environment:{config.name}" in monitor.tags for monitor in by_key.values())


def test_the_beat_monitor_counts_beats_own_ticks_from_the_agent() -> None:
    """Beat's heartbeat age reaches Datadog only through the AWS integration's crawler, a
    quarter of an hour late; its ticks come from the agent within seconds. The monitor
    counts those over the same limit, without the crawler's evaluation delay, and a silent
    beat (no ticks at all) is no data, which alarms."""
    config = with_datadog()
    limit = config.monitoring.beat_heartbeat_max_age_s
    (beat,) = [monitor for monitor in dd.monitors(config) if monitor.key == "beat-heartbeat"]
    minutes = -(-limit // 60)
    assert beat.query == (
        f"sum(last_{minutes}m):sum:{m.BEAT_HEARTBEAT}{{env:{config.name}}}.as_count()"
        f".rollup(sum, {minutes * 60}) < 1"
    )
    assert beat.evaluation_delay_s == 0
    assert beat.notify_no_data
    assert beat.no_data_minutes == 2 * minutes
    assert str(limit) in beat.message
    # No other monitor reads the ticks.
    ticking = [monitor for monitor in dd.monitors(config) if m.BEAT_HEARTBEAT in monitor.query]
    assert ticking == [beat]


def test_the_errors_monitor_sees_a_crash_as_the_alarm_does(synth_env: Any) -> None:
    """A run that crashes before the autoscaler reports counts only in Lambda's errors: the
    monitor reads those of the autoscaler's function, found by its resource tag."""
    synth: Synth = synth_env("dev")
    errors = {monitor.key: monitor for monitor in dd.monitors(synth.config)}["autoscaler-errors"]
    selector = f"service:{m.AUTOSCALER_SERVICE}"
    assert re.search(r"default_zero\(sum:aws\.lambda\.errors\{[^}]*" + selector, errors.query)
    tag = {"Key": "service", "Value": m.AUTOSCALER_SERVICE}
    tagged = [
        stack.stack_name
        for stack in synth.assembly.stacks
        for function in resources(stack.template, "AWS::Lambda::Function").values()
        if tag in function["Properties"].get("Tags", [])
    ]
    # Only the autoscaler's function, of all the environment's (custom resources have more).
    assert tagged == [synth.platform.autoscaler.stack_name]


def queries(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("q", "query") and isinstance(item, str):
                found.append(item)
            else:
                found += queries(item)
    elif isinstance(value, list):
        for item in value:
            found += queries(item)
    return found


METRIC_IN_QUERY = re.compile(r"\b(?:sum|max|min|avg|p\d\d):([a-z0-9_.]+)\{")


def metric_names_in(query: str, prefix: str) -> set[str]:
    """Metric names in a Datadog query (`<aggregation>:<metric>{<scope>}`)."""
    return {name for name in METRIC_IN_QUERY.findall(query) if name.startswith(prefix)}


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_one_vocabulary_for_datadog(env: str) -> None:
    config = load_environment(env)
    board = queries(dd.dashboard(config))
    alerts = [monitor.query for monitor in dd.monitors(config)]
    platform_names = {m.datadog_name(name) for name in m.AUTOSCALER_METRICS}
    on_board = {name for q in board for name in metric_names_in(q, "celery")}
    in_alerts = {name for q in alerts for name in metric_names_in(q, "celery")}
    known = set(m.TASK_METRICS) | platform_names
    assert on_board | in_alerts <= known, (
        f"charted, never emitted: {(on_board | in_alerts) - known}"
    )
    assert known <= on_board, f"emitted, never charted: {known - on_board}"
    assert in_alerts, "the monitors' queries were not read"


def test_task_metrics_go_to_cloudwatch_only_without_datadog(
    registry_synth: Synth, synth_env: Any
) -> None:
    def emf_flags(synth: Synth) -> list[str | None]:
        template = synth.template_json(synth.platform.services)
        flags = []
        for task in resources(template, "AWS::ECS::TaskDefinition").values():
            for container in task["Properties"]["ContainerDefinitions"]:
                if container["Name"] == "celery":
                    env = {e["Name"]: e["Value"] for e in container.get("Environment", [])}
                    flags.append(env.get("CELERY_METRICS_EMF"))
        return flags

    dev = emf_flags(synth_env("dev"))
    assert len(dev) >= 3
    assert set(dev) == {"true"}
    assert set(emf_flags(registry_synth)) == {None}


def test_resources_need_the_agent() -> None:
    data = load_environment("dev").model_dump(exclude={"name"}, exclude_none=True)
    with pytest.raises(ConfigError, match=r"datadog\.resources 'api' needs datadog\.enabled"):
        parse_environment("dev", {**data, "datadog": {"resources": "api"}})
    with pytest.raises(ConfigError, match="notify"):
        parse_environment("dev", {**data, "datadog": {"enabled": True, "notify": ["ops team"]}})


# ------------------------------------------------------------------ push through the API


class FakeDatadog(BaseHTTPRequestHandler):
    """Datadog's dashboard and monitor endpoints, kept in memory, on 127.0.0.1."""

    state: dict[str, Any]

    def log_message(self, *_: Any) -> None:
        pass

    def _reply(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")  # type: ignore[no-any-return]

    def _authorized(self) -> bool:
        self.state["keys"].append(
            (self.headers.get("DD-API-KEY"), self.headers.get("DD-APPLICATION-KEY"))
        )
        if self.headers.get("DD-API-KEY") != "api-from-test":
            self._reply({"errors": ["Forbidden"]}, 403)
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.startswith("/api/v1/dashboard"):
            self._reply({"dashboards": list(self.state["dashboards"].values())})
        elif self.path.startswith("/api/v1/monitor"):
            self._reply(list(self.state["monitors"].values()))
        else:
            self._reply({"errors": ["not found"]}, 404)

    def do_POST(self) -> None:
        if not self._authorized():
            return
        body = self._body()
        self.state["next_id"] += 1
        key = "dashboards" if "/dashboard" in self.path else "monitors"
        body["id"] = self.state["next_id"] if key == "monitors" else f"d-{self.state['next_id']}"
        self.state[key][str(body["id"])] = body
        self.state["calls"].append(("create", key))
        self._reply(body)

    def do_PUT(self) -> None:
        if not self._authorized():
            return
        body = self._body()
        key = "dashboards" if "/dashboard" in self.path else "monitors"
        ident = self.path.rstrip("/").rsplit("/", 1)[1]
        body["id"] = int(ident) if key == "monitors" else ident
        self.state[key][ident] = body
        self.state["calls"].append(("update", key))
        self._reply(body)

    def do_DELETE(self) -> None:
        if not self._authorized():
            return
        ident = self.path.rstrip("/").rsplit("/", 1)[1]
        self.state["monitors"].pop(ident)
        self.state["calls"].append(("delete", "monitors"))
        self._reply({"deleted_monitor_id": int(ident)})


@pytest.fixture
def fake_datadog() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {
        "dashboards": {},
        "monitors": {},
        "next_id": 0,
        "calls": [],
        "keys": [],
    }
    handler = type("Handler", (FakeDatadog,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_push_creates_then_updates_in_place(
    fake_datadog: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, state = fake_datadog
    monkeypatch.setenv("DD_API_KEY", "api-from-test")
    monkeypatch.setenv("DD_APP_KEY", "app-from-test")
    config = load_environment("dev")
    expected = len(dd.monitors(config))

    assert datadog_push.main(["--env", "dev", "--api-host", url]) == 0
    assert state["calls"].count(("create", "monitors")) == expected
    assert state["calls"].count(("create", "dashboards")) == 1
    assert set(state["keys"]) == {("api-from-test", "app-from-test")}

    state["calls"].clear()
    assert datadog_push.main(["--env", "dev", "--api-host", url]) == 0
    assert state["calls"].count(("update", "monitors")) == expected
    assert ("create", "monitors") not in state["calls"]
    assert len(state["monitors"]) == expected
    assert len(state["dashboards"]) == 1
    dashboard = next(iter(state["dashboards"].values()))
    assert dashboard["title"] == dd.dashboard(config)["title"]

    # A monitor of a queue the catalog dropped: kept unless --prune.
    state["monitors"]["999"] = {"id": 999, "name": "[dev] Queue gone has dead letters"}
    assert datadog_push.main(["--env", "dev", "--api-host", url]) == 0
    assert "999" in state["monitors"]
    assert datadog_push.main(["--env", "dev", "--api-host", url, "--prune"]) == 0
    assert "999" not in state["monitors"]
    out = capsys.readouterr()
    assert "api-from-test" not in out.out + out.err
    assert "app-from-test" not in out.out + out.err


def test_push_refused_key_is_a_clear_error(
    fake_datadog: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, state = fake_datadog
    monkeypatch.setenv("DD_API_KEY", "wrong-key")
    monkeypatch.setenv("DD_APP_KEY", "app-from-test")
    assert datadog_push.main(["--env", "dev", "--api-host", url]) == 1
    err = capsys.readouterr().err
    assert "datadog push failed" in err
    assert "wrong-key" not in err
    assert state["monitors"] == {}


def test_keys_come_from_secrets_manager_when_not_in_the_environment() -> None:
    config = load_environment("dev")
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=config.region)
        client.create_secret(Name=config.datadog.api_key_secret_name, SecretString="api-sm")
        client.create_secret(Name=config.datadog.app_key_secret_name, SecretString="app-sm")
        keys = datadog_push.read_keys(config, {})
        assert (keys.api, keys.app) == ("api-sm", "app-sm")
        assert "api-sm" not in repr(keys)
        client.delete_secret(
            SecretId=config.datadog.app_key_secret_name, ForceDeleteWithoutRecovery=True
        )
        with pytest.raises(datadog_push.PushError, match="neither DD_API_KEY"):
            datadog_push.read_keys(config, {})


def test_dry_run_prints_the_definitions(capsys: pytest.CaptureFixture[str]) -> None:
    assert datadog_push.main(["--env", "prod", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dashboard"]["title"] == "Celery platform prod"
    assert len(printed["monitors"]) == len(dd.monitors(load_environment("prod")))


def test_no_push_where_cloudformation_owns_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = with_datadog(resources="cloudformation")
    monkeypatch.setattr(datadog_push, "load_environment", lambda _name, _config_dir: config)
    assert datadog_push.main(["--env", "staging", "--api-host", "http://127.0.0.1:9"]) == 2
    assert "the monitoring stack owns" in capsys.readouterr().err
