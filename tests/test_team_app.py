"""A team's app declared in config: its image (built from its directory or prebuilt by digest),
its task modules, and per worker group and beat its environment, secrets and IAM grants."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from config import CONFIG_DIR, ConfigError, load_environment, parse_environment
from security.iam_wildcards import grants_in_template
from tests.stacks.test_services_stack import (
    app_container,
    env_of,
    services_by_command,
    task_definition_of,
)
from tests.synth import Synth, resources, run_app, synthesize

DIGEST = "sha256:" + "ab12" * 16
TEAM_DOCKERFILE = """ARG CELERY_PLATFORM_IMAGE
FROM ${CELERY_PLATFORM_IMAGE}
COPY team/ /app/team/
"""


def catalog() -> dict[str, Any]:
    with (CONFIG_DIR / "catalog.toml").open("rb") as fh:
        return {**tomllib.load(fh), "region": "eu-west-1"}


def team_dir(tmp_path: Path) -> Path:
    app = tmp_path / "team-app"
    (app / "team").mkdir(parents=True)
    (app / "Dockerfile").write_text(TEAM_DOCKERFILE)
    (app / "team" / "__init__.py").write_text("")
    (app / "team" / "tasks.py").write_text("")
    return app


def docker_assets(synth: Synth) -> list[dict[str, Any]]:
    manifest = json.loads(
        (synth.outdir / f"{synth.platform.services.artifact_id}.assets.json").read_text()
    )
    return [asset["source"] for asset in manifest.get("dockerImages", {}).values()]


def secrets_of(container: dict[str, Any]) -> dict[str, Any]:
    return {s["Name"]: s["ValueFrom"] for s in container.get("Secrets", [])}


def statements(template: dict[str, Any], role_ref: str) -> list[dict[str, Any]]:
    found = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        if {"Ref": role_ref} in policy["Properties"]["Roles"]:
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def test_a_build_directory_is_built_from_the_platform_base_with_the_team_modules(
    tmp_path: Path,
) -> None:
    app = team_dir(tmp_path)
    data = {**catalog(), "app": {"task_modules": ["team.tasks"], "image": {"build_dir": str(app)}}}
    synth = synthesize(parse_environment("qa", data), tmp_path / "out")
    (asset,) = docker_assets(synth)
    staged = synth.outdir / asset["directory"]
    assert (staged / "Dockerfile").read_text() == TEAM_DOCKERFILE, "the team's own Dockerfile"
    assert (staged / "team" / "tasks.py").is_file()
    assert asset["dockerBuildArgs"]["CELERY_PLATFORM_IMAGE"].startswith("celery-platform-runtime:")
    template = synth.template_json(synth.platform.services)
    for service in resources(template, "AWS::ECS::Service").values():
        container = app_container(task_definition_of(template, service))
        env = env_of(container)
        if container["Command"] == ["flower"]:  # imports none of the team's modules
            assert "CELERY_TASK_MODULES" not in env
        else:
            assert env["CELERY_TASK_MODULES"] == "team.tasks"


def test_an_app_may_bring_its_celery_settings_module_instead(tmp_path: Path) -> None:
    data = catalog()
    data["app"] = {"celery_config_module": "team.celeryconfig", "image": data["app"]["image"]}
    synth = synthesize(parse_environment("qa", data), tmp_path)
    template = synth.template_json(synth.platform.services)
    for service in resources(template, "AWS::ECS::Service").values():
        container = app_container(task_definition_of(template, service))
        env = env_of(container)
        assert "CELERY_TASK_MODULES" not in env
        if container["Command"] != ["flower"]:  # Flower imports none of the team's modules
            assert env["CELERY_APP_CONFIG_MODULE"] == "team.celeryconfig"
        else:
            assert "CELERY_APP_CONFIG_MODULE" not in env


def test_the_version_tag_follows_the_app_code(tmp_path: Path) -> None:
    """DD_VERSION (Datadog's deployment tracking) changes exactly when the image would."""
    app = team_dir(tmp_path)
    data = {**catalog(), "app": {"task_modules": ["team.tasks"], "image": {"build_dir": str(app)}}}

    def version(out: str) -> str:
        synth = synthesize(parse_environment("qa", data), tmp_path / out)
        template = synth.template_json(synth.platform.services)
        service = next(iter(resources(template, "AWS::ECS::Service").values()))
        return str(env_of(app_container(task_definition_of(template, service)))["DD_VERSION"])

    (app / ".dockerignore").write_text("README.md\n**/__pycache__\n")
    first = version("a")
    assert version("b") == first
    # What the image leaves out restarts nothing.
    (app / "README.md").write_text("# notes\n")
    (app / "team" / "__pycache__").mkdir()
    (app / "team" / "__pycache__" / "tasks.cpython-313.pyc").write_bytes(b"\0")
    assert version("c") == first
    (app / "team" / "tasks.py").write_text("X = 1\n")
    changed = version("d")
    assert changed != first
    data["app"]["image"]["build_args"] = {"EXTRA": "1"}
    assert version("e") not in (first, changed), "a build argument is part of the image"


def test_a_prebuilt_image_is_pulled_by_digest_and_nothing_is_built(tmp_path: Path) -> None:
    data = catalog()
    data["app"] = {**data["app"], "image": {"repository": "team/app", "digest": DIGEST}}
    synth = synthesize(parse_environment("qa", data), tmp_path)
    assert docker_assets(synth) == [], "one build, promoted unchanged: no image asset"
    template = synth.template_json(synth.platform.services)
    text = json.dumps(template)
    for service in resources(template, "AWS::ECS::Service").values():
        task = task_definition_of(template, service)
        image = json.dumps(app_container(task)["Image"])
        assert f"/team/app@{DIGEST}" in image, image
        assert env_of(app_container(task))["DD_VERSION"] == DIGEST.removeprefix("sha256:")[:12]
    assert "ecr:BatchGetImage" in text, "the execution roles may pull from that repository"
    assert ":repository/team/app" in text


def prebuilt_config_dir(tmp_path: Path) -> Path:
    """The sample config naming an ECR repository and leaving the digest to each deploy."""
    config_dir = Path(shutil.copytree(CONFIG_DIR, tmp_path / "config"))
    catalog_file = config_dir / "catalog.toml"
    text = catalog_file.read_text()
    assert 'build_dir = ".."' in text
    catalog_file.write_text(text.replace('build_dir = ".."', 'repository = "team/app"'))
    return config_dir


def test_a_deploy_supplies_the_digest_ci_built(tmp_path: Path) -> None:
    """`make deploy IMAGE_DIGEST=...`: the same image, promoted from one environment to the
    next, with nothing built at deploy."""
    config_dir = prebuilt_config_dir(tmp_path)
    context = {"env": "prod", "config_dir": str(config_dir)}
    result = run_app(tmp_path / "out", {**context, "image_digest": DIGEST})
    assert result.returncode == 0, result.stderr
    template = json.loads((tmp_path / "out" / "celery-prod-services.template.json").read_text())
    for service in resources(template, "AWS::ECS::Service").values():
        image = json.dumps(app_container(task_definition_of(template, service))["Image"])
        assert f"/team/app@{DIGEST}" in image, image
    assets = json.loads((tmp_path / "out" / "celery-prod-services.assets.json").read_text())
    assert not assets.get("dockerImages"), "nothing to build"

    missing = run_app(tmp_path / "missing", context)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    assert "IMAGE_DIGEST" in missing.stderr.strip().splitlines()[-1]
    bad = run_app(tmp_path / "bad", {**context, "image_digest": "latest"})
    assert bad.returncode == 1
    assert "app.image.digest" in bad.stderr


def test_per_group_environment_secrets_and_grants_reach_only_that_group(tmp_path: Path) -> None:
    data = catalog()
    data["worker_groups"]["batch"] |= {
        "environment": {"REPORTS_BUCKET": "team-reports"},
        "secrets": {
            "STRIPE_KEY": {"secretsmanager": "billing/stripe"},
            "DB_PASSWORD": {"secretsmanager": "prod/db", "field": "password"},
            "API_TOKEN": {"ssm": "/team/api-token"},
        },
        "grants": [{"s3_bucket": "team-reports", "access": "read_write", "prefix": "out/"}],
        "policy_statements": [
            {"actions": ["sqs:SendMessage"], "resources": ["arn:aws:sqs:eu-west-1:123456789012:q"]}
        ],
    }
    data["beat"] = {"environment": {"TZ_NAME": "UTC"}}
    synth = synthesize(parse_environment("qa", data), tmp_path)
    template = synth.template_json(synth.platform.services)
    tasks = {
        env_of(app_container(task_definition_of(template, s))).get(
            "CELERY_WORKER_GROUP", command
        ): (task_definition_of(template, s))
        for command, found in services_by_command(template).items()
        for s in found
    }
    batch = app_container(tasks["batch"])
    assert env_of(batch)["REPORTS_BUCKET"] == "team-reports"
    secrets = secrets_of(batch)
    assert set(secrets) == {"STRIPE_KEY", "DB_PASSWORD", "API_TOKEN", "CELERY_BROKER_AUTH_TOKEN"}
    rendered = {name: json.dumps(value) for name, value in secrets.items()}
    assert ":secret:billing/stripe" in rendered["STRIPE_KEY"]
    assert ":secret:prod/db" in rendered["DB_PASSWORD"]
    assert rendered["DB_PASSWORD"].endswith(':password::"]]}')
    assert ":parameter/team/api-token" in rendered["API_TOKEN"]
    assert not set(secrets) & set(env_of(batch)), "a secret is never a plain variable"
    general = app_container(tasks["general"])
    assert "REPORTS_BUCKET" not in env_of(general)
    assert set(secrets_of(general)) == {"CELERY_BROKER_AUTH_TOKEN"}
    assert env_of(app_container(tasks["beat"]))["TZ_NAME"] == "UTC"

    # The execution role reads exactly those secrets; the task role gets the grants.
    execution = tasks["batch"]["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]
    readable = json.dumps(statements(template, execution))
    for needed in ("secretsmanager:GetSecretValue", "billing/stripe", "prod/db"):
        assert needed in readable
    for needed in ("ssm:GetParameters", "parameter/team/api-token"):
        assert needed in readable
    role = tasks["batch"]["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0]
    granted = statements(template, role)

    def granting(action: str) -> list[dict[str, Any]]:
        return [
            s
            for s in granted
            if action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        ]

    for action in ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"):
        (statement,) = granting(action)
        assert statement["Resource"].endswith(":::team-reports/out/*"), statement
    (listing,) = granting("s3:ListBucket")
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["out/*"]}}
    assert "DeleteObject" not in json.dumps(granted)
    (send,) = granting("sqs:SendMessage")
    assert send["Resource"] == "arn:aws:sqs:eu-west-1:123456789012:q"
    general_role = tasks["general"]["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0]
    assert "s3:" not in json.dumps(statements(template, general_role))
    # `make security` explains every wildcard ARN: the grant's objects have a reason.
    wildcards = grants_in_template("services", template)
    assert any("s3:GetObject" in g.actions for g in wildcards)
    assert [g for g in wildcards if not g.explained] == []


BAD_APPS: dict[str, tuple[dict[str, Any], str]] = {
    "no task modules and no settings module": (
        {"app": {"task_modules": []}},
        "app: set task_modules (the modules of the app's tasks) or celery_config_module",
    ),
    "no image at all": (
        {"app": {"image": {}}},
        "app.image: set build_dir (a directory whose Dockerfile starts FROM the platform's",
    ),
    "build directory without a Dockerfile": (
        {"app": {"image": {"build_dir": "/nonexistent/team-app"}}},
        "app.image: build_dir '/nonexistent/team-app' has no Dockerfile",
    ),
    "a tag instead of a digest": (
        {"app": {"image": {"repository": "team/app", "digest": "latest"}}},
        "app.image.digest",
    ),
    "a repository without a digest": (
        {"app": {"image": {"repository": "team/app"}}},
        "a prebuilt image needs both repository",
    ),
    "a secret name that is no name": (
        {"worker_groups": {"general": {"secrets": {"KEY": {"secretsmanager": "my secret!"}}}}},
        "worker_groups.general.secrets.KEY: secretsmanager 'my secret!' is not a secret name",
    ),
    "a secret ARN of another service": (
        {"beat": {"secrets": {"KEY": {"secretsmanager": "arn:aws:s3:::bucket"}}}},
        "beat.secrets.KEY: secretsmanager 'arn:aws:s3:::bucket' is not a secret ARN",
    ),
    "a platform variable": (
        {"worker_groups": {"general": {"environment": {"CELERY_CATALOG": "{}"}}}},
        "environment.CELERY_CATALOG: names starting with CELERY_",
    ),
    "a task module that is no module": (
        {"app": {"task_modules": ["team tasks"]}},
        "app.task_modules.0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_APPS))
def test_a_bad_app_section_is_one_clear_line(case: str) -> None:
    overrides, expected = BAD_APPS[case]
    data = catalog()
    for key, value in overrides.items():
        if key == "worker_groups":
            for group, settings in value.items():
                data["worker_groups"][group] = {**data["worker_groups"][group], **settings}
        elif key == "app":
            data["app"] = {**data["app"], **value}
        else:
            data[key] = value
    with pytest.raises(ConfigError) as raised:
        parse_environment("qa", data)
    message = str(raised.value)
    assert "\n" not in message, message
    assert expected in message, message


def test_a_relative_build_directory_is_relative_to_the_config_directory(tmp_path: Path) -> None:
    config_dir = tmp_path / "deploy"
    config_dir.mkdir()
    team_dir(tmp_path)
    text = (CONFIG_DIR / "catalog.toml").read_text()
    assert 'build_dir = ".."' in text
    (config_dir / "catalog.toml").write_text(
        text.replace('build_dir = ".."', 'build_dir = "../team-app"')
    )
    (config_dir / "qa.toml").write_text('region = "eu-west-1"\n')
    config = load_environment("qa", config_dir)
    assert config.app.image.build_dir is not None
    assert Path(config.app.image.build_dir).resolve() == (tmp_path / "team-app").resolve()


def test_a_wildcard_in_a_team_statement_is_a_warning_not_an_error(tmp_path: Path) -> None:
    data = catalog()
    data["worker_groups"]["general"] = {
        **data["worker_groups"]["general"],
        "policy_statements": [{"actions": ["sqs:*"], "resources": ["*"]}],
    }
    config = parse_environment("qa", data)
    (warning,) = config.advisories()
    assert warning.startswith("worker_groups.general.policy_statements.0: sqs:*, * grants")
    synth = synthesize(config, tmp_path)  # cdk-nag: acknowledged with the config's reason
    assert '"sqs:*"' in json.dumps(synth.template_json(synth.platform.services))
