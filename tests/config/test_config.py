"""The per-environment config: shipped environments load, bad ones fail with one clear line."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from celery_service.catalog import VISIBILITY_MARGIN_S
from config import (
    CONFIG_DIR,
    ConfigError,
    available_environments,
    load_environment,
    parse_environment,
)
from tests.synth import run_app


def catalog() -> dict[str, Any]:
    with (CONFIG_DIR / "catalog.toml").open("rb") as fh:
        return tomllib.load(fh)


def merged(**overrides: Any) -> dict[str, Any]:
    """The catalog with top-level tables merged one level deep (enough for these cases); a
    None inside a table removes that setting."""
    data = {"region": "eu-west-1", **catalog()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            for sub, subvalue in value.items():
                if isinstance(subvalue, dict) and isinstance(data[key].get(sub), dict):
                    table = {**data[key][sub], **subvalue}
                    data[key][sub] = {k: v for k, v in table.items() if v is not None}
                else:
                    data[key][sub] = subvalue
        else:
            data[key] = value
    return data


def test_shipped_environments_are_dev_staging_prod() -> None:
    assert available_environments() == ["dev", "prod", "staging"]


def test_dev_is_cheap_and_prod_is_highly_available() -> None:
    dev, prod = load_environment("dev"), load_environment("prod")
    assert (dev.redis.replicas, dev.redis.multi_az) == (0, False)
    assert (dev.network.nat_gateways, dev.network.interface_endpoints) == (1, False)
    assert dev.redis.removal_policy == "destroy"

    assert prod.redis.replicas >= 1
    assert prod.redis.multi_az
    assert prod.network.az_count >= 3
    assert prod.network.nat_gateways == prod.network.az_count
    assert prod.redis.removal_policy in {"retain", "snapshot"}
    assert prod.redis.snapshot_retention_days >= 7


def test_writes_wait_for_a_replica_wherever_the_broker_has_one() -> None:
    """Publishes, requeues and applied_once markers survive a failover by default where
    there is a replica to fail over to; an environment may turn it off or wait for more."""
    waits = {name: load_environment(name).runtime_catalog() for name in ("dev", "prod")}
    assert [waits[n]["wait_for_replicas"] for n in ("dev", "prod")] == [0, 1]
    assert waits["prod"]["replica_wait_ms"] == 100
    for explicit in (0, 2):
        cfg = parse_environment(
            "staging", merged(redis={"replicas": 2}, broker={"wait_for_replicas": explicit})
        )
        assert cfg.runtime_catalog()["wait_for_replicas"] == explicit


def test_environment_file_overrides_catalog_values_only_where_it_says() -> None:
    dev, prod = load_environment("dev"), load_environment("prod")
    # prod.toml raises max_tasks of `general`; everything else comes from the catalog.
    assert prod.worker_groups["general"].max_tasks == 50
    assert dev.worker_groups["general"].max_tasks == 3
    assert prod.worker_groups["general"].queues == dev.worker_groups["general"].queues
    assert (
        prod.worker_groups["general"].time_limit_s
        == catalog()["worker_groups"]["general"]["time_limit_s"]
    )


def test_every_queue_has_exactly_one_consumer_in_every_environment() -> None:
    for name in available_environments():
        cfg = load_environment(name)
        for queue in cfg.queues:
            owners = [g for g, group in cfg.worker_groups.items() if queue in group.queues]
            assert owners == [cfg.group_of(queue)]


def test_visibility_timeout_exceeds_every_hard_limit_in_every_environment() -> None:
    for name in available_environments():
        cfg = load_environment(name)
        longest = max(g.longest_s for g in cfg.worker_groups.values())
        needed = longest + cfg.broker.retry_backoff_max_s + VISIBILITY_MARGIN_S
        assert cfg.broker.visibility_timeout_s >= needed


# Each case: the broken settings, then fragments the single error line must contain
# (the field, and what is allowed or what rule was broken).
MALFORMED: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "unknown engine": (
        {"redis": {"engine": "memcached"}},
        ("redis.engine", "'valkey' or 'redis'", "memcached"),
    ),
    "engine version of the other engine": (
        {"redis": {"engine": "redis", "engine_version": "8.1"}},
        ("redis", "engine_version '8.1'", "allowed: 7.0, 7.1"),
    ),
    "too many replicas": (
        {"redis": {"replicas": 9}},
        ("redis.replicas", "less than or equal to 5", "got 9"),
    ),
    "waiting for more replicas than there are": (
        {"broker": {"wait_for_replicas": 2}, "redis": {"replicas": 1}},
        ("broker.wait_for_replicas (2)", "redis.replicas (1)"),
    ),
    "multi-AZ without a replica": (
        {"redis": {"multi_az": True, "replicas": 0}},
        ("redis", "multi_az", "replicas >= 1"),
    ),
    "misspelled setting": (
        {"redis": {"engine_versoin": "8.1"}},
        ("redis.engine_versoin", "unknown setting", "allowed: engine, engine_version"),
    ),
    "min above max": (
        {"worker_groups": {"general": {"min_tasks": 5, "max_tasks": 2}}},
        ("worker_groups.general", "min_tasks (5) must be <= max_tasks (2)"),
    ),
    "number written as a string": (
        {"worker_groups": {"general": {"concurrency": "8"}}},
        ("worker_groups.general.concurrency", "valid integer", "got '8'"),
    ),
    "visibility timeout below a hard limit": (
        {"broker": {"visibility_timeout_s": 600}},
        (
            "broker.visibility_timeout_s (600)",
            "at least 3910",
            "worker_groups.batch.time_limit_s = 3600",
            "broker.retry_backoff_max_s = 300",
        ),
    ),
    "queue consumed by two groups": (
        {"worker_groups": {"general": {"queues": ["default", "priority", "reports"]}}},
        ("queues.reports", "exactly one worker group", "general, batch"),
    ),
    "queue consumed by nobody": (
        {"queues": {"orphans": {}}},
        ("queues.orphans", "exactly one worker group", "none"),
    ),
    "group consumes an undeclared queue": (
        {"worker_groups": {"batch": {"queues": ["reports", "exports"]}}},
        ("worker_groups.batch.queues", "'exports'", "declared queues: default, priority, reports"),
    ),
    "soft limit not below hard limit": (
        {"worker_groups": {"general": {"soft_time_limit_s": 300, "time_limit_s": 300}}},
        ("worker_groups.general", "soft_time_limit_s (300) must be < time_limit_s (300)"),
    ),
    "not a Fargate size": (
        {"worker_groups": {"general": {"cpu": 300}}},
        ("worker_groups.general", "cpu 300", "allowed: 256, 512, 1024"),
    ),
    "memory not valid for the cpu": (
        {"worker_groups": {"general": {"cpu": 256, "memory_mib": 4096}}},
        ("worker_groups.general", "memory_mib 4096", "512-2048 in steps of 512"),
    ),
    "no NAT and no endpoints": (
        {"network": {"nat_gateways": 0, "interface_endpoints": False}},
        ("network", "nat_gateways = 0", "interface_endpoints = true"),
    ),
    "more NAT gateways than AZs": (
        {"network": {"nat_gateways": 3}},
        ("network", "nat_gateways (3)", "az_count (2)"),
    ),
    "CIDR too large": (
        {"network": {"cidr": "10.0.0.0/8"}},
        ("network.cidr", "between /16 and /22", "/8"),
    ),
    "three AZs with no names and no region": (
        {"network": {"az_count": 3, "nat_gateways": 1}},
        ("network.az_count 3", "availability_zones", "account and region"),
    ),
    "AZ outside the region": (
        {
            "region": "eu-west-1",
            "network": {"az_count": 2, "availability_zones": ["us-east-1a", "us-east-1b"]},
        },
        ("network.availability_zones", "us-east-1a", "eu-west-1"),
    ),
    "existing VPC with new-VPC settings": (
        {
            "account": "123456789012",
            "region": "eu-west-1",
            "network": {"vpc_id": "vpc-0123456789abcdef0", "nat_gateways": 2},
        },
        ("network", "vpc_id", "nat_gateways cannot be set"),
    ),
    "existing VPC without account": (
        {"network": {"vpc_id": "vpc-0123456789abcdef0"}},
        ("network.vpc_id", "account and region"),
    ),
    "no region": (
        {"region": None},
        ("region: required", "access logs"),
    ),
    "malformed account": (
        {"account": "1234"},
        ("account", "12-digit AWS account id", "got '1234'"),
    ),
    "retention CloudWatch does not offer": (
        {"network": {"flow_log_retention_days": 10}},
        (
            "network.flow_log_retention_days",
            "10 is not a CloudWatch Logs retention",
            "allowed: 1, 3",
        ),
    ),
    "group name not usable in AWS names": (
        {"worker_groups": {"Bad_Group": {"queues": ["default"]}}},
        ("worker_groups.<name 'Bad_Group'>", "lowercase letters, digits or '-'"),
    ),
    "bad snapshot window": (
        {"redis": {"snapshot_window": "3am"}},
        ("redis.snapshot_window", "03:00-04:00", "'3am'"),
    ),
    "removal policy that would delete prod data": (
        {"redis": {"removal_policy": "destroy"}},
        ("redis.removal_policy", "prod's queued work", "allowed for a prod environment"),
    ),
    "alarm email that is not an address": (
        {"monitoring": {"alarm_email": "ops team"}},
        ("monitoring.alarm_email", "an email address", "got 'ops team'"),
    ),
    "memory alarm above 100 percent": (
        {"monitoring": {"redis_memory_percent": 120}},
        ("monitoring.redis_memory_percent", "less than or equal to 100", "got 120"),
    ),
    "beat heartbeat threshold the key outlives": (
        {"monitoring": {"beat_heartbeat_max_age_s": 300}},
        ("monitoring.beat_heartbeat_max_age_s", "less than 300", "got 300"),
    ),
    "threads pool with a time limit it cannot enforce": (
        {"worker_groups": {"general": {"pool": "threads", "soft_time_limit_s": None}}},
        (
            "worker_groups.general",
            "pool 'threads' does not enforce time_limit_s",
            "'prefork' or 'gevent'",
        ),
    ),
    "gevent pool with a soft limit": (
        {"worker_groups": {"general": {"pool": "gevent", "soft_time_limit_s": 60}}},
        ("worker_groups.general", "pool 'gevent' does not enforce soft_time_limit_s", "'prefork'"),
    ),
    "prefork group's longest task, which its default hard limit would cut short": (
        {
            "worker_groups": {
                "batch": {"soft_time_limit_s": None, "time_limit_s": None, "longest_task_s": 7200}
            }
        },
        ("worker_groups.batch", "pool 'prefork' enforces a hard limit", "set time_limit_s"),
    ),
    "prefork group with a soft limit only": (
        {"worker_groups": {"general": {"time_limit_s": None}}},
        ("worker_groups.general", "pool 'prefork' needs time_limit_s"),
    ),
    "solo pool with more than one slot": (
        {
            "worker_groups": {
                "general": {
                    "pool": "solo",
                    "concurrency": 4,
                    "longest_task_s": 60,
                    "soft_time_limit_s": None,
                    "time_limit_s": None,
                }
            }
        },
        ("worker_groups.general", "pool 'solo' runs one task at a time", "concurrency 1, not 4"),
    ),
    "threads pool without the longest task": (
        {
            "worker_groups": {
                "general": {"pool": "threads", "soft_time_limit_s": None, "time_limit_s": None}
            }
        },
        ("worker_groups.general", "pool 'threads' needs longest_task_s"),
    ),
    "task limit under a pool that cannot enforce it": (
        {
            "worker_groups": {
                "batch": {
                    "pool": "threads",
                    "longest_task_s": 3600,
                    "soft_time_limit_s": None,
                    "time_limit_s": None,
                }
            },
            "tasks": {"samples.build_report": {"queue": "reports", "time_limit_s": 1800}},
        },
        ("tasks.samples.build_report.soft_time_limit_s", "worker_groups.batch", "pool 'threads'"),
    ),
    "recycling a pool without child processes": (
        {
            "worker_groups": {
                "general": {
                    "pool": "solo",
                    "concurrency": 1,
                    "longest_task_s": 60,
                    "max_tasks_per_child": 100,
                    "soft_time_limit_s": None,
                    "time_limit_s": None,
                }
            }
        },
        ("worker_groups.general", "max_tasks_per_child", "need pool 'prefork'"),
    ),
    "memory bound the container cannot hold": (
        {"worker_groups": {"general": {"max_memory_per_child_mib": 512}}},
        ("worker_groups.general", "max_memory_per_child_mib (512) x concurrency (8)", "1024"),
    ),
    "cron minute out of range": (
        {"schedules": {"nightly-report": {"task": "samples.build_report", "cron": "61 2 * * *"}}},
        ("schedules.nightly-report", "minute '61' is not in 0-59"),
    ),
    "cron weekday that is not a day": (
        {"schedules": {"nightly-report": {"task": "samples.build_report", "cron": "0 2 * * fun"}}},
        ("schedules.nightly-report", "day-of-week 'fun'", "sun..sat"),
    ),
    "cron step after a single number": (
        {"schedules": {"nightly-report": {"task": "samples.build_report", "cron": "5/10 * * * *"}}},
        ("schedules.nightly-report", "minute '5/10': a step follows * or a range", "5-59/10"),
    ),
    "cron day that no month of the line has": (
        {"schedules": {"nightly-report": {"task": "samples.build_report", "cron": "0 0 30 feb *"}}},
        ("schedules.nightly-report", "day-of-month '30' never occurs in month 'feb'"),
    ),
    "rate limit written wrong": (
        {"tasks": {"samples.send_welcome_email": {"queue": "default", "rate_limit": "50 per s"}}},
        ("tasks.samples.send_welcome_email.rate_limit", "10/s", "100/m", "'50 per s'"),
    ),
    "pinned-at-max alarm shorter than a run": (
        {"autoscaler": {"schedule_minutes": 15}, "monitoring": {"max_tasks_alarm_minutes": 10}},
        ("monitoring.max_tasks_alarm_minutes (10)", "autoscaler.schedule_minutes (15)"),
    ),
}


def test_the_broker_survives_deleting_its_stack_unless_an_environment_says_otherwise() -> None:
    assert "removal_policy" not in catalog().get("redis", {})
    assert parse_environment("qa", merged()).redis.removal_policy == "snapshot"
    destroy = merged(redis={"removal_policy": "destroy"})
    assert parse_environment("qa", destroy).redis.removal_policy == "destroy"
    with pytest.raises(ConfigError, match="would delete production's queued work"):
        parse_environment("production", destroy)


def test_monitoring_defaults_are_the_documented_thresholds() -> None:
    monitoring = load_environment("dev").monitoring
    assert monitoring.alarm_email is None
    assert monitoring.max_tasks_alarm_minutes == 30
    assert (monitoring.redis_memory_percent, monitoring.redis_engine_cpu_percent) == (80, 80)
    assert monitoring.beat_heartbeat_max_age_s == 120
    with_email = parse_environment("dev", merged(monitoring={"alarm_email": "ops@example.com"}))
    assert with_email.monitoring.alarm_email == "ops@example.com"


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_config_fails_with_one_clear_line(case: str) -> None:
    overrides, fragments = MALFORMED[case]
    env = "prod" if "prod" in case else "staging"
    data = {k: v for k, v in merged(**overrides).items() if v is not None}
    if case == "group name not usable in AWS names":
        # the bad group takes `default` from `general`, which keeps the rest valid
        data["worker_groups"]["general"]["queues"] = ["priority"]
    with pytest.raises(ConfigError) as raised:
        parse_environment(env, data)
    message = str(raised.value)
    assert "\n" not in message, f"expected one line, got:\n{message}"
    assert message.startswith(f"{env}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_several_problems_give_one_line_each() -> None:
    data = merged(redis={"engine": "memcached"}, network={"cidr": "nonsense"})
    with pytest.raises(ConfigError) as raised:
        parse_environment("dev", data)
    lines = str(raised.value).splitlines()
    assert len(lines) == 2
    assert any(line.startswith("dev: redis.engine:") for line in lines)
    assert any(line.startswith("dev: network.cidr:") for line in lines)


def environment(tmp_path: Path, text: str, image: str = 'build_dir = "."') -> Path:
    """A config directory: the sample catalog with `image` as its `[app.image]`, and qa.toml
    holding `text`."""
    catalog_text = (CONFIG_DIR / "catalog.toml").read_text()
    assert 'build_dir = ".."' in catalog_text
    (tmp_path / "catalog.toml").write_text(catalog_text.replace('build_dir = ".."', image))
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "qa.toml").write_text('region = "us-east-1"\n' + text)
    return tmp_path


DIGEST = "sha256:" + "ab" * 32


def test_an_environment_promotes_a_prebuilt_image_where_the_catalog_builds_one(
    tmp_path: Path,
) -> None:
    config_dir = environment(tmp_path, '[app.image]\nrepository = "shop-worker"\n')
    image = load_environment("qa", config_dir, image_digest=DIGEST).app.image
    assert (image.build_dir, image.repository, image.digest) == (None, "shop-worker", DIGEST)


@pytest.mark.parametrize(
    "prebuilt",
    ['repository = "shop-worker"', f'repository = "shop-worker"\ndigest = "{DIGEST}"'],
    ids=["CI's layout: the digest comes at deploy", "digest in the catalog"],
)
def test_an_environment_builds_where_the_catalog_names_a_prebuilt_image(
    tmp_path: Path, prebuilt: str
) -> None:
    config_dir = environment(tmp_path, '[app.image]\nbuild_dir = "."\n', image=prebuilt)
    image = load_environment("qa", config_dir).app.image
    assert (image.build_dir, image.repository, image.digest) == (str(tmp_path), None, None)


def test_an_environment_changes_a_cron_schedule_to_an_interval(tmp_path: Path) -> None:
    config_dir = environment(tmp_path, "[schedules.nightly-report]\nevery_s = 60\n")
    schedule = load_environment("qa", config_dir).schedules["nightly-report"]
    assert (schedule.every_s, schedule.cron, schedule.args) == (60, None, ["nightly", 10])


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        # Another pool: the catalog's limits (soft 240 s, hard 300 s) went with the old one.
        ('pool = "gevent"\ntime_limit_s = 1800', (None, 1800, None)),
        ('pool = "threads"\nlongest_task_s = 900', (None, None, 900)),
        ('pool = "gevent"', (None, 300, None)),  # the pool's default, without a soft limit
        # The same pool written out changes nothing: the catalog's limits stay.
        ('pool = "prefork"\ntime_limit_s = 600', (240, 600, None)),
    ],
)
def test_an_environment_that_changes_a_pool_sets_its_limits_anew(
    tmp_path: Path, pool: str, expected: tuple[int | None, ...]
) -> None:
    config_dir = environment(tmp_path, f"[worker_groups.general]\n{pool}\n")
    general = load_environment("qa", config_dir).worker_groups["general"]
    assert (general.soft_time_limit_s, general.time_limit_s, general.longest_task_s) == expected


def test_a_dotted_name_left_unquoted_gets_the_quoted_form(tmp_path: Path) -> None:
    config_dir = environment(
        tmp_path,
        '[tasks.samples.build_report]\nqueue = "reports"\n[tasks."samples.nap"]\nqueu = "x"\n'
        '[tasks.shop.mail.send]\nqueue = "default"\n',
    )
    with pytest.raises(ConfigError) as raised:
        load_environment("qa", config_dir)
    lines = str(raised.value).splitlines()
    assert (
        "qa: tasks.samples.build_report: unknown setting; allowed: queue, priority, rate_limit, "
        "max_retries, soft_time_limit_s, time_limit_s; a name with dots is quoted: "
        '[tasks."samples.build_report"]'
    ) in lines
    assert any(line.endswith('quoted: [tasks."shop.mail.send"]') for line in lines)
    # A misspelt setting of a quoted name is only that.
    assert (
        "qa: tasks.samples.nap.queu: unknown setting; allowed: queue, priority, rate_limit, "
        "max_retries, soft_time_limit_s, time_limit_s" in lines
    )


def test_a_missing_catalog_is_named(tmp_path: Path) -> None:
    (tmp_path / "qa.toml").write_text('region = "us-east-1"\n')
    with pytest.raises(ConfigError, match=r"^qa: .*catalog\.toml is missing: it declares"):
        load_environment("qa", config_dir=tmp_path)


def test_an_environment_file_cannot_invent_a_worker_group(tmp_path: Path) -> None:
    shutil.copy(CONFIG_DIR / "catalog.toml", tmp_path / "catalog.toml")
    (tmp_path / "qa.toml").write_text(
        'region = "us-east-1"\n[worker_groups.gneral]\nmax_tasks = 5\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_environment("qa", config_dir=tmp_path)
    assert str(raised.value) == (
        "qa: qa.toml: worker_groups.gneral: not a catalog group; groups are: general, batch"
    )


def test_pools_get_the_limits_they_enforce_by_default() -> None:
    data = merged(
        worker_groups={
            "general": {"pool": "gevent", "soft_time_limit_s": None, "time_limit_s": None},
            "batch": {
                "pool": "threads",
                "longest_task_s": 3600,
                "soft_time_limit_s": None,
                "time_limit_s": None,
            },
        },
        tasks={"samples.build_report": {"soft_time_limit_s": None, "time_limit_s": None}},
    )
    groups = parse_environment("staging", data).worker_groups
    assert (groups["general"].soft_time_limit_s, groups["general"].time_limit_s) == (None, 300)
    assert (groups["batch"].soft_time_limit_s, groups["batch"].time_limit_s) == (None, None)
    assert groups["batch"].longest_s == 3600
    prefork = load_environment("dev").worker_groups["general"]
    assert (prefork.soft_time_limit_s, prefork.time_limit_s) == (240, 300)


def test_a_solo_group_runs_one_slot_per_task_unless_told_otherwise() -> None:
    solo = {"pool": "solo", "longest_task_s": 60, "soft_time_limit_s": None, "time_limit_s": None}
    data = merged(worker_groups={"general": {**solo, "concurrency": None}})
    assert parse_environment("dev", data).worker_groups["general"].concurrency == 1


def test_the_runtime_catalog_carries_only_what_the_catalog_sets() -> None:
    catalog = load_environment("dev").runtime_catalog()
    assert catalog["tasks"]["samples.send_welcome_email"] == {"queue": "default"}
    assert catalog["tasks"]["samples.build_report"]["rate_limit"] == "30/m"
    assert {"task_events", "track_started", "result_db"} <= set(catalog)


def test_a_rate_limited_task_beside_higher_priority_work_is_a_warning() -> None:
    for name in available_environments():
        assert load_environment(name).advisories() == []
    data = merged(tasks={"samples.send_welcome_email": {"rate_limit": "50/s", "priority": "low"}})
    [line] = parse_environment("staging", data).advisories()
    assert line.startswith(
        "tasks.samples.send_welcome_email: rate_limit 50/s shares worker_groups.general with "
        "higher-priority work (samples.fetch_exchange_rates, unlisted tasks)"
    )


def test_unknown_environment_names_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown environment 'qa'; known environments: dev, prod, staging"
    ):
        load_environment("qa")


def test_environment_cannot_rename_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dev: name: not a setting"):
        parse_environment("dev", {**merged(), "name": "prod"})


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    shutil.copy(CONFIG_DIR / "catalog.toml", tmp_path / "catalog.toml")
    (tmp_path / "qa.toml").write_text("[redis]\nreplicas = = 2\n")
    with pytest.raises(ConfigError, match=r"^qa: qa.toml: not valid TOML: .*line 2"):
        load_environment("qa", config_dir=tmp_path)


def test_config_is_immutable_once_loaded() -> None:
    cfg = load_environment("dev")
    with pytest.raises(ValueError, match="frozen"):
        cfg.redis.replicas = 3  # type: ignore[misc]


def test_app_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    app = shutil.copytree(CONFIG_DIR.parent, tmp_path / "app")  # the app, its config inside
    config_dir = app / "config"
    (config_dir / "qa.toml").write_text(
        'region = "eu-west-1"\n[worker_groups.general]\nmin_tasks = 20\nmax_tasks = 4\n'
    )
    result = run_app(tmp_path, {"env": "qa", "config_dir": str(config_dir)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "config error: qa: worker_groups.general: min_tasks (20) must be <= max_tasks (4)"
    )
