"""The services stack: what must hold for workers, beat and Flower in every environment."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from config import CONFIG_DIR, load_environment, parse_environment
from stacks.parts.celery_fargate_service import APP_CONTAINER
from tests.config.test_config import merged
from tests.stacks.test_data_stack import joins_the_clients_group, own_ingress
from tests.synth import Synth, resources, synthesize


def services_template(synth: Synth) -> dict[str, Any]:
    return synth.template_json(synth.platform.services)


def task_definition_of(template: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    task: dict[str, Any] = template["Resources"][service["Properties"]["TaskDefinition"]["Ref"]]
    return task


def app_container(task_definition: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [
        c
        for c in task_definition["Properties"]["ContainerDefinitions"]
        if c["Name"] == APP_CONTAINER
    ]
    assert len(containers) == 1
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["Name"]: e["Value"] for e in container.get("Environment", [])}


def services_by_command(template: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for service in resources(template, "AWS::ECS::Service").values():
        command = app_container(task_definition_of(template, service))["Command"][0]
        found.setdefault(command, []).append(service)
    return found


def test_one_worker_service_per_group_consuming_exactly_its_queues(env_synth: Synth) -> None:
    template = services_template(env_synth)
    workers = services_by_command(template)["worker"]
    assert len(workers) == len(env_synth.config.worker_groups)
    seen = {}
    for service in workers:
        env = env_of(app_container(task_definition_of(template, service)))
        group = env["CELERY_WORKER_GROUP"]
        catalog = json.loads(env["CELERY_CATALOG"])
        assert catalog == json.loads(json.dumps(env_synth.config.runtime_catalog()))
        seen[group] = catalog["worker_groups"][group]["queues"]
    assert seen == {n: g.queues for n, g in env_synth.config.worker_groups.items()}


def test_beat_can_never_run_two_tasks(env_synth: Synth) -> None:
    template = services_template(env_synth)
    (beat,) = services_by_command(template)["beat"]
    props = beat["Properties"]
    assert props["DesiredCount"] == 1
    deployment = props["DeploymentConfiguration"]
    assert deployment["MinimumHealthyPercent"] == 0
    assert deployment["MaximumPercent"] == 100
    assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}


def test_worker_services_leave_the_desired_count_to_the_autoscaler(env_synth: Synth) -> None:
    """Without `DesiredCount`, CloudFormation keeps the live count on every update (a literal
    one would reset the autoscaler's count on each deploy); there is no resource that reads
    it back, so nothing can fail during an update or a rollback."""
    template = services_template(env_synth)
    for service in services_by_command(template)["worker"]:
        assert "DesiredCount" not in service["Properties"]
        assert service["Properties"]["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
            "Enable": True,
            "Rollback": True,
        }
    assert not [r for r in template["Resources"].values() if r["Type"].startswith("Custom::")]


# Two kinds that the old count keeper got wrong: one it never re-read the count for (a tag),
# one that changes the bounds the count must respect.
UPDATES: dict[str, dict[str, Any]] = {
    "a new tag": {"tags": {"cost-center": "1234"}},
    "new scaling bounds": {"worker_groups": {"general": {"min_tasks": 2, "max_tasks": 3}}},
}


@pytest.mark.parametrize("change", sorted(UPDATES))
def test_no_kind_of_update_sets_a_worker_desired_count(change: str, tmp_path: Path) -> None:
    """A deploy of any kind leaves the count out, so each one keeps what the autoscaler set
    (the moto test of the handler shows the next run bringing it into new bounds)."""
    config = parse_environment("dev", merged(**UPDATES[change]), CONFIG_DIR)
    synth = synthesize(config, tmp_path, checks=False)
    workers = services_by_command(services_template(synth))["worker"]
    assert workers
    assert all("DesiredCount" not in w["Properties"] for w in workers)


def test_every_container_stops_at_the_fargate_maximum_with_the_token_as_a_secret(
    env_synth: Synth,
) -> None:
    template = services_template(env_synth)
    for service in resources(template, "AWS::ECS::Service").values():
        container = app_container(task_definition_of(template, service))
        assert container["StopTimeout"] == 120
        secrets = {s["Name"] for s in container["Secrets"]}
        assert "CELERY_BROKER_AUTH_TOKEN" in secrets
        env = env_of(container)
        assert "CELERY_BROKER_AUTH_TOKEN" not in env
        assert env["CELERY_BROKER_TLS"] == "true"
        assert int(env["CELERY_SHUTDOWN_BUDGET_S"]) < 120
        assert (
            service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"]
            == "DISABLED"
        )


def test_workers_may_protect_only_tasks_of_their_cluster(env_synth: Synth) -> None:
    template = services_template(env_synth)
    statements = [
        s
        for p in resources(template, "AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if "ecs:UpdateTaskProtection" in json.dumps(s["Action"])
    ]
    assert len(statements) == len(env_synth.config.worker_groups)
    for statement in statements:
        assert sorted(statement["Action"]) == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
        resource = json.dumps(statement["Resource"])
        assert ":task/" in resource
        assert '"Ref": "Cluster' in resource


def test_every_service_joins_the_broker_clients_group(env_synth: Synth) -> None:
    template = services_template(env_synth)
    services = resources(template, "AWS::ECS::Service").values()
    assert len(services) == len(env_synth.config.worker_groups) + 2
    for service in services:
        groups = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert joins_the_clients_group(groups["SecurityGroups"])
    # No rule on the broker lives here: the data stack admits the clients group, only.
    assert "BrokerSecurityGroup" not in json.dumps(template)
    own_ingress(env_synth.template_json(env_synth.platform.data))


def flower_parts(template: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    (alb,) = resources(template, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    listeners = list(resources(template, "AWS::ElasticLoadBalancingV2::Listener").values())
    return alb, listeners


def rules_of(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        r["Properties"]
        for r in resources(template, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
    ]


def assert_metrics_blocked(template: dict[str, Any], listeners: int) -> None:
    blocked = [
        r
        for r in rules_of(template)
        if any(
            "/metrics" in c.get("PathPatternConfig", {}).get("Values", []) for c in r["Conditions"]
        )
    ]
    assert len(blocked) == listeners
    for rule in blocked:
        assert rule["Priority"] == 1
        (action,) = rule["Actions"]
        assert action["Type"] == "fixed-response"
        assert action["FixedResponseConfig"]["StatusCode"] == "403"


def test_internal_flower_is_private_logged_and_password_protected(synth_env: Any) -> None:
    synth = synth_env("dev")
    template = services_template(synth)
    alb, listeners = flower_parts(template)
    assert alb["Properties"]["Scheme"] == "internal"
    attributes = {a["Key"]: a["Value"] for a in alb["Properties"]["LoadBalancerAttributes"]}
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    (listener,) = listeners
    assert listener["Properties"]["Port"] == 80
    assert_metrics_blocked(template, listeners=1)
    (group,) = [
        g
        for g in resources(template, "AWS::EC2::SecurityGroup").values()
        if g["Properties"]["GroupDescription"] == "Flower load balancer"
    ]
    ingress = group["Properties"]["SecurityGroupIngress"]
    assert [(r["CidrIp"], r["FromPort"]) for r in ingress] == [(synth.config.network.cidr, 80)]
    (target_group,) = resources(template, "AWS::ElasticLoadBalancingV2::TargetGroup").values()
    assert target_group["Properties"]["HealthCheckPath"] == "/healthcheck"
    (flower,) = services_by_command(template)["flower"]
    container = app_container(task_definition_of(template, flower))
    assert "FLOWER_PASSWORD" in {s["Name"] for s in container["Secrets"]}
    assert "FLOWER_PASSWORD" not in env_of(container)


OIDC = {
    "internet_facing": True,
    "certificate_arn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc",
    "oidc_issuer": "https://login.example.com",
    "oidc_authorization_endpoint": "https://login.example.com/authorize",
    "oidc_token_endpoint": "https://login.example.com/token",
    "oidc_user_info_endpoint": "https://login.example.com/userinfo",
    "oidc_client_id": "flower",
    "oidc_client_secret_name": "flower/oidc-client-secret",
}


@pytest.fixture(scope="module")
def public_flower(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    with (CONFIG_DIR / "catalog.toml").open("rb") as fh:
        data = tomllib.load(fh)
    config = parse_environment("qa", {**data, "region": "eu-west-1", "flower": OIDC})
    return synthesize(config, tmp_path_factory.mktemp("public"))


def test_internet_facing_flower_needs_https_and_sign_in(public_flower: Synth) -> None:
    template = services_template(public_flower)
    alb, listeners = flower_parts(template)
    assert alb["Properties"]["Scheme"] == "internet-facing"
    by_port = {listener["Properties"]["Port"]: listener["Properties"] for listener in listeners}
    assert set(by_port) == {80, 443}
    assert by_port[80]["DefaultActions"][0]["Type"] == "redirect"
    https = by_port[443]
    assert https["Protocol"] == "HTTPS"
    assert https["Certificates"] == [{"CertificateArn": OIDC["certificate_arn"]}]
    actions = sorted(https["DefaultActions"], key=lambda a: a["Order"])
    assert [a["Type"] for a in actions] == ["authenticate-oidc", "forward"]
    secret = actions[0]["AuthenticateOidcConfig"]["ClientSecret"]
    assert secret.startswith("{{resolve:secretsmanager:flower/oidc-client-secret")
    assert_metrics_blocked(template, listeners=1)


def test_no_listener_forwards_to_flower_without_authentication(
    env_synth: Synth, public_flower: Synth
) -> None:
    for synth in (env_synth, public_flower):
        template = services_template(synth)
        alb, listeners = flower_parts(template)
        public = alb["Properties"]["Scheme"] == "internet-facing"
        for listener in listeners:
            props = listener["Properties"]
            types = [
                a["Type"] for a in sorted(props["DefaultActions"], key=lambda a: a.get("Order", 0))
            ]
            if "forward" not in types:
                continue
            if public:
                assert props["Protocol"] == "HTTPS"
                assert types.index("authenticate-oidc") < types.index("forward")
            else:
                # Internal: reachable from the VPC only, and Flower asks for its password.
                assert alb["Properties"]["Scheme"] == "internal"


def test_bad_flower_exposure_is_refused() -> None:
    with (CONFIG_DIR / "catalog.toml").open("rb") as fh:
        data = tomllib.load(fh)
    from config import ConfigError

    with pytest.raises(ConfigError, match="internet_facing = true needs HTTPS and OIDC"):
        parse_environment(
            "qa", {**data, "region": "eu-west-1", "flower": {"internet_facing": True}}
        )
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0/0 would open Flower"):
        parse_environment(
            "qa", {**data, "region": "eu-west-1", "flower": {"allowed_cidrs": ["0.0.0.0/0"]}}
        )


def test_spot_and_architecture_follow_the_config(tmp_path: Path) -> None:
    with (CONFIG_DIR / "catalog.toml").open("rb") as fh:
        data = tomllib.load(fh)
    config = parse_environment(
        "qa",
        {
            **data,
            "region": "eu-west-1",
            "services": {"fargate_spot": True, "architecture": "x86_64", "enable_exec": True},
        },
    )
    template = services_template(synthesize(config, tmp_path))
    for service in services_by_command(template)["worker"]:
        strategy = service["Properties"]["CapacityProviderStrategy"]
        assert [s["CapacityProvider"] for s in strategy] == ["FARGATE_SPOT"]
        assert service["Properties"]["EnableExecuteCommand"] is True
        platform = task_definition_of(template, service)["Properties"]["RuntimePlatform"]
        assert platform["CpuArchitecture"] == "X86_64"
    (beat,) = services_by_command(template)["beat"]
    assert "CapacityProviderStrategy" not in beat["Properties"], "beat stays on on-demand"


def test_datadog_sidecar_when_enabled(tmp_path: Path) -> None:
    with (CONFIG_DIR / "catalog.toml").open("rb") as fh:
        data = tomllib.load(fh)
    config = parse_environment("qa", {**data, "region": "eu-west-1", "datadog": {"enabled": True}})
    template = services_template(synthesize(config, tmp_path))
    for service in resources(template, "AWS::ECS::Service").values():
        task = task_definition_of(template, service)
        (agent,) = [
            c for c in task["Properties"]["ContainerDefinitions"] if c["Name"] == "datadog-agent"
        ]
        agent_env = env_of(agent)
        assert agent_env["ECS_FARGATE"] == "true"
        assert [s["Name"] for s in agent["Secrets"]] == ["DD_API_KEY"]
        assert agent["Essential"] is False
        app_env = env_of(app_container(task))
        assert app_env["DD_AGENT_HOST"] == "127.0.0.1"
        assert {app_env["DD_ENV"], agent_env["DD_ENV"]} == {"qa"}
        assert app_env["DD_SERVICE"] == agent_env["DD_SERVICE"]
        assert app_env["DD_VERSION"] == agent_env["DD_VERSION"]
        assert re.fullmatch(r"[0-9a-f]{12}", app_env["DD_VERSION"])
        labels = app_container(task)["DockerLabels"]
        assert labels["com.datadoghq.tags.service"] == app_env["DD_SERVICE"]


SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r'"(SecretString|AuthToken|ClientSecret)":\s*"(?!\{\{resolve:)'),
]


def test_no_secret_value_anywhere_in_cdk_out(
    env_synth: Synth, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Templates reference secrets ({{resolve:...}}, ECS secrets by ARN); nothing in the
    cloud assembly, staged image context included, holds a secret value."""
    scanned = 0
    for path in env_synth.outdir.rglob("*"):
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        text = path.read_text(errors="ignore")
        scanned += 1
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{pattern.pattern} in {path}"
        assert ".env" not in path.name
    assert scanned > 10
    template_text = json.dumps(services_template(env_synth))
    assert "FLOWER_BASIC_AUTH" not in template_text
    assert load_environment(env_synth.config.name).datadog.api_key_secret_name not in (
        template_text if not env_synth.config.datadog.enabled else ""
    )
