"""Process settings from the environment: the catalog contract, TLS, and clear refusals."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from celery_service.factory import PRIORITY_SEPARATOR, celery_config
from celery_service.settings import PRIORITY_STEPS, Settings, SettingsError
from config import available_environments, load_environment
from tests.worker.harness import IMAGE_DIR, TEST_CATALOG

TOKEN = "s3cr3t-t0ken-value-0123456789abcdef"


def env(**overrides: str) -> dict[str, str]:
    values = {
        "CELERY_BROKER_HOST": "broker.example.internal",
        "CELERY_CATALOG": json.dumps(TEST_CATALOG),
        "CELERY_BROKER_AUTH_TOKEN": TOKEN,
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
    assert options["priority_steps"] == PRIORITY_STEPS == list(KOMBU_STEPS)
    assert options["sep"] == PRIORITY_SEPARATOR == Channel.sep
    assert celery_config(Settings.from_env(env()))["worker_prefetch_multiplier"] == 1


BAD = {
    "missing host": ({"CELERY_BROKER_HOST": "<unset>"}, "CELERY_BROKER_HOST: required"),
    "catalog not JSON": ({"CELERY_CATALOG": "{nope"}, "CELERY_CATALOG: not valid JSON"),
    "port out of range": ({"CELERY_BROKER_PORT": "70000"}, "CELERY_BROKER_PORT: Input should"),
    "unknown group": ({"CELERY_WORKER_GROUP": "gpu"}, "CELERY_WORKER_GROUP 'gpu' is not in"),
    "budget above Fargate's stop timeout": (
        {"CELERY_SHUTDOWN_BUDGET_S": "150"},
        "CELERY_SHUTDOWN_BUDGET_S: Input should be less than 110",
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
