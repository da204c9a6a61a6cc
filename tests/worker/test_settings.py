"""Process settings from the environment: the catalog contract, TLS, and clear refusals."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import crontab
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from celery_service.catalog import CRON_FIELDS, Catalog, check_cron
from celery_service.contract import PRIORITY_SEPARATOR, PRIORITY_STEPS
from celery_service.factory import (
    celery_config,
    create_app,
    unregistered_catalog_entries,
    unregistered_schedules,
)
from celery_service.settings import Settings, SettingsError, variables_for
from config import available_environments, load_environment
from tests.worker.harness import (
    IMAGE_DIR,
    ROOT,
    SAMPLE_APP_DIR,
    SAMPLE_TASK_MODULES,
    TEST_CATALOG,
)

TOKEN = "s3cr3t-t0ken-value-0123456789abcdef"


def env(**overrides: str) -> dict[str, str]:
    values = {
        "CELERY_BROKER_HOST": "broker.example.internal",
        "CELERY_CATALOG": json.dumps(TEST_CATALOG),
        "CELERY_BROKER_AUTH_TOKEN": TOKEN,
        "CELERY_TASK_MODULES": ",".join(SAMPLE_TASK_MODULES),
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v != "<unset>"}


@pytest.mark.parametrize("name", available_environments())
def test_every_environment_catalog_is_accepted_by_the_worker(name: str) -> None:
    cfg = load_environment(name)
    settings = Settings.from_env(env(CELERY_CATALOG=json.dumps(cfg.runtime_catalog())))
    assert settings.catalog.queues == sorted(cfg.queues)
    for group, spec in cfg.worker_groups.items():
        assert settings.catalog.worker_groups[group].queues == spec.queues
        assert settings.catalog.worker_groups[group].time_limit_s == spec.time_limit_s
    config = celery_config(settings)
    assert config["broker_transport_options"]["visibility_timeout"] == (
        cfg.broker.visibility_timeout_s
    )


def test_tls_verifies_certificates_and_the_token_stays_out_of_printed_urls() -> None:
    settings = Settings.from_env(env())
    url = settings.redis_url()
    assert url.startswith("rediss://")
    assert url.endswith("?ssl_cert_reqs=required")
    assert TOKEN not in settings.redis_url(with_password=False)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings.model_dump())
    config = celery_config(settings)
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert config["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert config["redbeat_redis_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_transport_options_match_kombu_defaults_every_publisher_uses() -> None:
    """A publisher with other priority steps or separator strands messages (measured)."""
    from kombu.transport.redis import PRIORITY_STEPS as KOMBU_STEPS
    from kombu.transport.redis import Channel

    options = celery_config(Settings.from_env(env()))["broker_transport_options"]
    assert options["priority_steps"] == list(PRIORITY_STEPS) == list(KOMBU_STEPS)
    assert options["sep"] == PRIORITY_SEPARATOR == Channel.sep
    assert celery_config(Settings.from_env(env()))["worker_prefetch_multiplier"] == 1


def with_group(**settings: object) -> dict[str, object]:
    general = {**TEST_CATALOG["worker_groups"]["general"], **settings}
    return {**TEST_CATALOG, "worker_groups": {**TEST_CATALOG["worker_groups"], "general": general}}


BAD = {
    "missing host": ({"CELERY_BROKER_HOST": "<unset>"}, "CELERY_BROKER_HOST: required"),
    "catalog not JSON": ({"CELERY_CATALOG": "{nope"}, "CELERY_CATALOG: not valid JSON"),
    "port out of range": ({"CELERY_BROKER_PORT": "70000"}, "CELERY_BROKER_PORT: Input should"),
    "unknown group": ({"CELERY_WORKER_GROUP": "gpu"}, "CELERY_WORKER_GROUP 'gpu' is not in"),
    "budget above Fargate's stop timeout": (
        {"CELERY_SHUTDOWN_BUDGET_S": "150"},
        "CELERY_SHUTDOWN_BUDGET_S: Input should be less than 110",
    ),
    "threads group with limits it cannot enforce": (
        {"CELERY_CATALOG": json.dumps(with_group(pool="threads"))},
        "CELERY_CATALOG.worker_groups.general: pool 'threads' does not enforce soft_time_limit_s",
    ),
    "rate limit written wrong": (
        {
            "CELERY_CATALOG": json.dumps(
                {**TEST_CATALOG, "tasks": {"x": {"queue": "default", "rate_limit": "ten/s"}}}
            )
        },
        "CELERY_CATALOG.tasks.x.rate_limit: 'ten/s' must be a number of tasks per second, "
        "minute or hour, such as 10/s",
    ),
    "cron field out of range": (
        {
            "CELERY_CATALOG": json.dumps(
                {**TEST_CATALOG, "schedules": {"n": {"task": "x", "cron": "0 24 * * *"}}}
            )
        },
        "CELERY_CATALOG.schedules.n: cron '0 24 * * *': hour '24' is not in 0-23",
    ),
    "task module list that names nothing": (
        {"CELERY_TASK_MODULES": "app.tasks,,not a module"},
        "CELERY_TASK_MODULES.1: String should match pattern",
    ),
    "visibility timeout too short": (
        {"CELERY_CATALOG": json.dumps({**TEST_CATALOG, "visibility_timeout_s": 15})},
        "visibility_timeout_s (15) must be at least 20",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_settings_give_one_line(case: str) -> None:
    overrides, expected = BAD[case]
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env(**overrides))
    message = str(raised.value)
    assert "\n" not in message
    assert expected in message
    assert TOKEN not in message


def test_worker_refuses_to_start_with_a_short_visibility_timeout(tmp_path: Path) -> None:
    catalog = {**TEST_CATALOG, "visibility_timeout_s": 12}
    result = subprocess.run(
        [sys.executable, "-m", "celery_service", "worker"],
        cwd=IMAGE_DIR,
        env={
            **env(CELERY_CATALOG=json.dumps(catalog)),
            "CELERY_WORKER_GROUP": "general",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(IMAGE_DIR),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "settings error: CELERY_CATALOG: visibility_timeout_s (12) must be at least 20: the "
        "longest hard limit (worker_groups.general = 9 s) + retry_backoff_max_s (1 s) + 10 s, "
        "or Redis redelivers waiting and running tasks"
    )


def run_image(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_service", *args],
        cwd=IMAGE_DIR,
        env={
            **env(**variables),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": os.pathsep.join((str(IMAGE_DIR), str(SAMPLE_APP_DIR), str(ROOT))),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_task_module_that_does_not_import_is_one_line_naming_it() -> None:
    result = run_image(
        "worker",
        CELERY_WORKER_GROUP="general",
        CELERY_TASK_MODULES="samples.tasks,team_app.tasks",
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "settings error: CELERY_TASK_MODULES: team_app.tasks does not import: "
        "ModuleNotFoundError: No module named 'team_app'"
    )


def test_dlq_of_an_unknown_queue_lists_the_queues() -> None:
    result = run_image("dlq", "list", "reprots")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: 'reprots' is not a queue; queues: default, priority, reports"
    )


def test_check_fails_when_the_catalog_names_a_task_no_module_registers() -> None:
    catalog = {
        **TEST_CATALOG,
        "tasks": {
            **TEST_CATALOG["tasks"],
            "samples.send_welcom_email": {"queue": "default"},
            "reports.*": {"queue": "reports"},
        },
    }
    result = run_image("check", CELERY_CATALOG=json.dumps(catalog))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "settings error: CELERY_CATALOG: tasks samples.send_welcom_email, reports.* match no "
        "task of the app (CELERY_TASK_MODULES: samples.tasks)"
    )
    assert run_image("check").returncode == 0  # the test catalog's names all register


def test_check_fails_when_a_schedule_names_a_task_no_module_registers() -> None:
    schedules = {"purge": {"task": "samples.purge_expird_sessions", "every_s": 60}}
    result = run_image("check", CELERY_CATALOG=json.dumps({**TEST_CATALOG, "schedules": schedules}))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "settings error: CELERY_CATALOG: schedules purge (samples.purge_expird_sessions) name "
        "no task of the app (CELERY_TASK_MODULES: samples.tasks)"
    )


@pytest.mark.parametrize("name", available_environments())
def test_every_catalog_task_and_schedule_of_the_shipped_environments_is_registered(
    name: str,
) -> None:
    settings = Settings.from_env(
        env(CELERY_CATALOG=json.dumps(load_environment(name).runtime_catalog()))
    )
    app = create_app(settings, main="check")
    assert unregistered_catalog_entries(app) == []
    assert unregistered_schedules(app) == []


def test_the_catalog_overrides_only_what_it_sets_and_patterns_apply_it_all() -> None:
    catalog = {
        **TEST_CATALOG,
        "retry_backoff_max_s": 1,
        "tasks": {
            "semantics.decorated": {"queue": "default"},
            "semantics.flaky": {"queue": "priority", "max_retries": 3},
            "semantics.limits.*": {
                "queue": "reports",
                "priority": "low",
                "rate_limit": "2/m",
                "max_retries": 0,
                "soft_time_limit_s": 4,
                "time_limit_s": 5,
            },
            "semantics.limits.sleep": {"queue": "default"},  # the exact name wins
        },
    }
    settings = Settings.from_env(
        env(
            CELERY_CATALOG=json.dumps(catalog),
            CELERY_TASK_MODULES="tests.worker.semantics_tasks",
        )
    )
    app = create_app(settings, main="precedence")
    app.loader.import_default_modules()
    decorated = app.tasks["semantics.decorated"]
    # The entry sets only the queue: the decorator's retries and rate limit stand, and its
    # backoff maximum is capped by the catalog's (what the visibility timeout allows).
    assert (decorated.max_retries, decorated.rate_limit) == (7, "5/s")
    assert decorated.retry_backoff_max == 1  # 30 in the decorator
    assert app.tasks["semantics.flaky"].max_retries == 3
    patterned = app.tasks["semantics.limits.sleep_through_soft"]
    assert (patterned.queue, patterned.priority, patterned.rate_limit) == ("reports", 6, "2/m")
    assert (patterned.max_retries, patterned.soft_time_limit, patterned.time_limit) == (0, 4, 5)
    exact = app.tasks["semantics.limits.sleep"]
    assert (exact.queue, exact.priority, exact.rate_limit) == ("default", None, None)
    route = app.amqp.router.route({}, "semantics.limits.sleep_through_soft")
    assert (route["queue"].name, route["priority"]) == ("reports", 6)
    app.close()
    roomier = Settings.from_env(
        env(
            CELERY_CATALOG=json.dumps(
                {**catalog, "retry_backoff_max_s": 60, "visibility_timeout_s": 80}
            ),
            CELERY_TASK_MODULES="tests.worker.semantics_tasks",
        )
    )
    app = create_app(roomier, main="precedence")
    app.loader.import_default_modules()
    assert app.tasks["semantics.decorated"].retry_backoff_max == 30  # below the cap: kept
    app.close()


def test_events_started_and_the_results_database_follow_the_catalog() -> None:
    shipped = celery_config(Settings.from_env(env()))
    assert (shipped["worker_send_task_events"], shipped["task_track_started"]) == (False, False)
    assert shipped["result_backend"].startswith("rediss://")
    assert "/1?" in shipped["result_backend"]  # results apart from the queues (database 0)
    assert "/0?" in shipped["broker_url"]
    chosen = {**TEST_CATALOG, "task_events": True, "track_started": True, "result_db": 5}
    config = celery_config(Settings.from_env(env(CELERY_CATALOG=json.dumps(chosen))))
    assert (config["worker_send_task_events"], config["task_track_started"]) == (True, True)
    assert "/5?" in config["result_backend"]


def test_prefork_groups_run_the_platform_pool_and_others_their_own() -> None:
    shipped = celery_config(Settings.from_env(env(CELERY_WORKER_GROUP="general")))
    assert shipped["worker_pool"] == "celery_service.pool:TaskPool"
    catalog = json.loads(json.dumps(TEST_CATALOG))
    catalog["worker_groups"]["general"].update(pool="gevent", soft_time_limit_s=None)
    gevent = celery_config(
        Settings.from_env(env(CELERY_WORKER_GROUP="general", CELERY_CATALOG=json.dumps(catalog)))
    )
    assert "worker_pool" not in gevent


def test_variables_for_is_what_from_env_reads_back() -> None:
    """The one rendering of settings into variables (stacks, local tools, tests) round-trips."""
    fields: dict[str, Any] = {
        "broker_host": "broker.internal",
        "broker_port": 6380,
        "broker_tls": False,
        "catalog": TEST_CATALOG,
        "worker_group": "batch",
        "task_modules": ["samples.tasks", "tests.worker.semantics_tasks"],
        "shutdown_budget_s": 12.5,
        "service_tags": {"team": "shop"},
        "emf_metrics": True,
    }
    settings = Settings.from_env(variables_for(**fields))
    for field, value in fields.items():
        read = getattr(settings, field)
        if field == "catalog":
            read = read.model_dump(exclude_none=True, exclude_defaults=True)
            value = Catalog.model_validate(value).model_dump(
                exclude_none=True, exclude_defaults=True
            )
        assert read == value, field
    with pytest.raises(KeyError):
        variables_for(broker_hots="typo")


def _cron_field(name: str, low: int, high: int, names: tuple[str, ...]) -> Any:
    """Cron field text of every form, valid or not: numbers in and just out of range,
    names, ranges (wrapping too), steps after *, ranges, numbers and names, lists."""
    value = st.integers(low - 1, high + 1).map(str)
    if names:
        value = st.one_of(value, st.sampled_from(names))
    step = st.integers(0, high + 2).map(str)
    part = st.one_of(
        st.just("*"),
        step.map(lambda s: f"*/{s}"),
        value,
        st.tuples(value, value).map("-".join),
        st.tuples(value, value, step).map(lambda p: f"{p[0]}-{p[1]}/{p[2]}"),
        st.tuples(value, step).map("/".join),
    )
    return st.lists(part, min_size=1, max_size=3).map(",".join)


@hypothesis_settings(max_examples=1000, deadline=None)
@given(st.tuples(*(_cron_field(*spec) for spec in CRON_FIELDS)).map(" ".join))
def test_every_cron_line_the_catalog_accepts_celery_accepts_too(line: str) -> None:
    """The catalog checks cron lines without Celery (the CDK app has none); a line it lets
    through that Celery refuses would stop beat and every worker at start."""
    try:
        check_cron(line)
    except ValueError:
        return
    minute, hour, day_of_month, month, day_of_week = line.split()
    crontab(minute, hour, day_of_week, day_of_month, month)
