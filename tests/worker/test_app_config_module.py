"""A team that brings its existing Celery settings module instead of a list of task modules:
its `imports` register the tasks and its own settings hold, while the platform's (broker,
late acks, routes) are kept and the override is said once at start."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_service.factory import create_app
from celery_service.settings import Settings, SettingsError
from tests.conftest import RedisServer
from tests.worker.harness import base_env, publisher, running

MODULE = "tests.worker.team_celeryconfig"


def test_the_app_settings_hold_where_the_platform_sets_none(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    env = base_env(6379, tmp_path, task_modules=()) | {"CELERY_APP_CONFIG_MODULE": MODULE}
    with caplog.at_level(logging.WARNING):
        app = create_app(Settings.from_env(env))
    assert app.conf.result_compression == "zlib"
    assert app.conf.timezone == "UTC"
    assert app.conf.task_acks_late is True
    assert app.conf.broker_url.startswith("redis://127.0.0.1:6379/")
    (warning,) = [r.getMessage() for r in caplog.records if MODULE in r.getMessage()]
    assert "broker_url, task_acks_late, timezone;" in warning


def test_a_worker_registers_the_tasks_its_imports_name(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    app = publisher(server.port, task_modules=())
    with running(server.port, tmp_path, task_modules=(), CELERY_APP_CONFIG_MODULE=MODULE) as w:
        assert app.send_task("semantics.step", args=[41]).get(timeout=30) == 41
    assert "the platform's values apply" in w.output()


def test_a_module_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    env = base_env(6379, tmp_path, task_modules=()) | {"CELERY_APP_CONFIG_MODULE": "team.nope"}
    with pytest.raises(
        SettingsError, match=r"^CELERY_APP_CONFIG_MODULE: team.nope does not import"
    ):
        Settings.from_env(env).import_task_modules()
