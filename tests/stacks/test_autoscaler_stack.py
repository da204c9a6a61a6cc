"""The autoscaler's stack: least privilege, never overlapping, in the VPC, and watched."""

from __future__ import annotations

import compileall
import json
from pathlib import Path
from typing import Any

from config import load_environment
from stacks.parts.app_image import IMAGE_DIR
from stacks.parts.autoscaler import CODE_DIR
from tests.stacks.test_data_stack import joins_the_clients_group
from tests.synth import Synth, resources, synthesize


def with_tokens_as_text(value: Any) -> str:
    """An Fn::Join of JSON text and references (cluster and service names) as plain JSON."""
    if isinstance(value, str):
        return value
    separator, parts = value["Fn::Join"]
    return str(separator).join(p if isinstance(p, str) else "TOKEN" for p in parts)


def autoscaler(synth: Synth) -> dict[str, Any]:
    return synth.template_json(synth.platform.autoscaler)


def test_function_runs_in_the_vpc_within_its_interval(env_synth: Synth) -> None:
    template = autoscaler(env_synth)
    (function,) = resources(template, "AWS::Lambda::Function").values()
    props = function["Properties"]
    assert props["PackageType"] == "Image"
    assert props["Timeout"] < env_synth.config.autoscaler.schedule_minutes * 60
    assert props["VpcConfig"]["SubnetIds"]
    config = json.loads(with_tokens_as_text(props["Environment"]["Variables"]["AUTOSCALER_CONFIG"]))
    assert set(config["targets"]) == set(env_synth.config.worker_groups)
    for name, target in config["targets"].items():
        assert target["queues"] == env_synth.config.worker_groups[name].queues
    assert "REDIS_AUTH_TOKEN" not in props["Environment"]["Variables"]
    (rule,) = resources(template, "AWS::Events::Rule").values()
    minutes = env_synth.config.autoscaler.schedule_minutes
    assert rule["Properties"]["ScheduleExpression"] == f"rate({minutes} minutes)"


def test_no_reserved_concurrency_so_new_accounts_can_create_it(env_synth: Synth) -> None:
    """Reserving any concurrency fails in accounts whose quota is the default 10 (unreserved
    may not drop below 10); the Redis run lock keeps runs apart instead."""
    template = autoscaler(env_synth)
    functions = list(resources(template, "AWS::Lambda::Function").values())
    assert functions
    assert [f for f in functions if "ReservedConcurrentExecutions" in f["Properties"]] == []


def test_it_may_only_touch_worker_services_and_read_the_redis_secret(env_synth: Synth) -> None:
    template = autoscaler(env_synth)
    statements = [
        s
        for p in resources(template, "AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    ecs = [s for s in statements if "ecs:UpdateService" in json.dumps(s["Action"])]
    (statement,) = ecs
    assert sorted(statement["Action"]) == ["ecs:DescribeServices", "ecs:UpdateService"]
    resources_text = json.dumps(statement["Resource"])
    prefix = f"{env_synth.config.project}-{env_synth.config.name}"
    for group in env_synth.config.worker_groups:
        # By literal name, not an export: removing a group releases nothing in use.
        assert f'"/{prefix}-worker-{group}"' in resources_text
    assert len(statement["Resource"]) == len(env_synth.config.worker_groups)
    assert "Beat" not in resources_text
    assert "Flower" not in resources_text
    assert "*" not in resources_text
    secrets = [s for s in statements if "secretsmanager:GetSecretValue" in json.dumps(s["Action"])]
    (secret,) = secrets
    assert "BrokerAuthToken" in json.dumps(secret["Resource"])


def test_the_autoscaler_joins_the_broker_clients_group(env_synth: Synth) -> None:
    template = autoscaler(env_synth)
    (function,) = resources(template, "AWS::Lambda::Function").values()
    assert joins_the_clients_group(function["Properties"]["VpcConfig"]["SecurityGroupIds"])
    assert not resources(template, "AWS::EC2::SecurityGroupIngress")


def test_alarms_on_errors_and_on_missed_runs(env_synth: Synth) -> None:
    # The alarms live in the monitoring stack, with the topic and dashboard that use them.
    template = env_synth.template_json(env_synth.platform.monitoring)
    alarms = {
        a["Properties"]["AlarmDescription"]: a["Properties"]
        for a in resources(template, "AWS::CloudWatch::Alarm").values()
    }
    missed = alarms[
        "The Celery autoscaler has not run for three intervals: worker counts are frozen"
    ]
    assert missed["TreatMissingData"] == "breaching"
    assert missed["Period"] == env_synth.config.autoscaler.schedule_minutes * 60 * 3
    assert missed["MetricName"] == "Invocations"
    errors = alarms[
        "The Celery autoscaler failed or reported an error (Redis, ECS or a worker group): "
        "see its logs"
    ]
    # Both the function's own failures and the errors a run reports and survives.
    watched = {
        (query["MetricStat"]["Metric"]["Namespace"], query["MetricStat"]["Metric"]["MetricName"])
        for query in errors["Metrics"]
        if "MetricStat" in query
    }
    assert watched == {("AWS/Lambda", "Errors"), ("CeleryPlatform", "AutoscalerErrors")}


def test_the_image_installs_the_runtime_for_its_wire_contract(env_synth: Synth) -> None:
    """The Lambda reads Redis keys and emits metric names from celery_service.contract: its
    build gets the runtime package as a second build context."""
    stack = env_synth.platform.autoscaler
    manifest = json.loads((env_synth.outdir / f"{stack.artifact_id}.assets.json").read_text())
    (asset,) = [a["source"] for a in manifest["dockerImages"].values()]
    assert asset["dockerBuildContexts"] == {"runtime": str(IMAGE_DIR)}
    staged = env_synth.outdir / asset["directory"]
    dockerfile = (staged / "Dockerfile").read_text()
    assert "COPY --from=runtime celery_service/" in dockerfile


def test_staged_assets_leave_bytecode_out(tmp_path: Path) -> None:
    """What a test run or an editor leaves in the source folders never reaches an image:
    it would change the asset hash (a rebuild and a restart for nothing)."""
    compileall.compile_dir(str(CODE_DIR), quiet=1)  # as importing the handler in tests does
    assert list(CODE_DIR.glob("__pycache__/*.pyc")), "the source has bytecode to leave out"
    synth = synthesize(load_environment("dev"), tmp_path, checks=False)
    staged = [p for p in synth.outdir.glob("asset.*") if p.is_dir()]
    assert staged
    for asset in staged:
        leftovers = [p for p in asset.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]
        assert not leftovers, leftovers
