"""The cheap parts of `make security`: NIST 800-53 on one environment, the IAM wildcard
listing, the secret scanner (against planted secrets, the cloud assembly and the repo), and
the acceptance tables' reasons. checkov runs only in `make security` (its own virtualenv)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_s3 as s3

from config import load_environment
from security.checkov_skips import SKIPS, reason_for
from security.iam_wildcards import grants_in, grants_in_template
from security.secret_scan import (
    Finding,
    assembly_files,
    image_context_files,
    repo_files,
    scan_files,
    scan_template,
    scan_text,
)
from security.sweep import EnvResult, unacknowledged
from stacks.compliance import ACCEPTED, accepted_findings, attach_compliance_checks
from stacks.platform import Platform
from tests.synth import ROOT, Synth, synthesize

# Secret-shaped values are assembled at run time, so this file holds none itself.
AWS_KEY_ID = "AKIA" + "Q7RZ2XW4M9PLK3TB"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYzZ8XQ4mN2a"  # 40 characters
DD_API_KEY = "3f9a" * 8
PEM_HEADER = "-----BEGIN " + "RSA PRIVATE KEY-----"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
URL_PASSWORD = "s3cr3t" + "Value42"


def test_nist_800_53_pack_passes(tmp_path: Path) -> None:
    def add_nist(app: App, platform: Platform) -> None:
        assert attach_compliance_checks(app) > 0

    # synthesize() raises on any unacknowledged finding of either pack.
    result = synthesize(load_environment("dev"), tmp_path, extend=add_nist)
    report = json.loads((result.outdir / "validation-report.json").read_text())
    assert report["pluginReports"] == []


def test_every_nist_finding_is_covered_and_every_acceptance_used(tmp_path: Path) -> None:
    """Without the acceptances: each finding has one, and each acceptance meets a finding."""

    app_holder: list[App] = []

    def keep(app: App, platform: Platform) -> None:
        attach_compliance_checks(app, accept=False)
        app_holder.append(app)

    with pytest.raises(RuntimeError):
        synthesize(load_environment("dev"), tmp_path, extend=keep)
    report = json.loads((tmp_path / "validation-report.json").read_text())
    violations = [
        (violation["ruleName"], construct["constructPath"])
        for plugin in report["pluginReports"]
        for violation in plugin["violations"]
        for construct in violation.get("violatingConstructs", [])
    ]
    assert all(rule.startswith("NIST") for rule, _ in violations)
    covered = accepted_findings(app_holder[0], violations)
    assert sum(covered.values()) == len(violations)  # each finding covered exactly once
    assert [a for a, count in covered.items() if count == 0] == []


def test_nist_pack_fails_what_no_acceptance_covers(tmp_path: Path) -> None:
    """Acceptances are per resource: a bucket other than Flower's log bucket still fails."""
    app = App(outdir=str(tmp_path))
    s3.Bucket(Stack(app, "Other"), "Data", enforce_ssl=True)
    attach_compliance_checks(app)
    with pytest.raises(RuntimeError, match=r"NIST\.800\.53\.R5-S3BucketVersioningEnabled"):
        app.synth()


def test_acceptances_carry_real_reasons() -> None:
    for accepted in ACCEPTED:
        assert len(accepted.reason) >= 60, accepted.rule
    for skip in SKIPS:
        assert len(skip.reason) >= 60, skip.check_id


def test_every_wildcard_grant_of_every_environment_is_explained(env_synth: Synth) -> None:
    grants = grants_in(env_synth.outdir.glob("*.template.json"))
    assert [g for g in grants if not g.explained] == []
    # The ECR login token is the one `Resource: *` grant, on every task execution role.
    star = [g for g in grants if g.kind == "Resource *"]
    assert star
    assert {g.actions for g in star} == {("ecr:GetAuthorizationToken",)}


def _role_template(statement: dict[str, Any], managed: list[Any] | None = None) -> dict[str, Any]:
    return {
        "Resources": {
            "Policy": {
                "Type": "AWS::IAM::Policy",
                "Properties": {"PolicyDocument": {"Statement": [statement]}},
            },
            "Role": {
                "Type": "AWS::IAM::Role",
                "Properties": {"ManagedPolicyArns": managed or []},
            },
        }
    }


def test_unexplained_wildcards_are_reported() -> None:
    grants = grants_in_template(
        "t.json",
        _role_template(
            {"Effect": "Allow", "Action": ["ecr:GetAuthorizationToken", "s3:*"], "Resource": "*"},
            managed=[
                {
                    "Fn::Join": [
                        "",
                        ["arn:", {"Ref": "AWS::Partition"}, ":iam::aws:policy/AdministratorAccess"],
                    ]
                }
            ],
        ),
    )
    assert [(g.kind, g.explained) for g in grants] == [
        ("Resource *", False),  # s3:* has no reason, so the statement is unexplained
        ("managed policy", False),
    ]
    deny = _role_template({"Effect": "Deny", "Action": "s3:*", "Resource": "*"})
    assert grants_in_template("t.json", deny) == []


def test_scanner_finds_planted_secrets_and_masks_them() -> None:
    text = "\n".join(
        [
            f"aws_access_key_id = {AWS_KEY_ID}",
            f'AWS_SECRET_ACCESS_KEY="{AWS_SECRET}"',
            PEM_HEADER,
            f"DD_API_KEY={DD_API_KEY}",
            f"token: {GITHUB_TOKEN}",
            f"CELERY_BROKER_URL=rediss://:{URL_PASSWORD}@broker.example:6379/0",
        ]
    )
    findings = scan_text(text, "planted.env")
    assert [(f.line, f.kind) for f in findings] == [
        (1, "AWS access key id"),
        (2, "AWS secret access key"),
        (3, "private key"),
        (4, "Datadog key"),
        (5, "GitHub token"),
        (6, "password in URL"),
    ]
    for finding in findings:
        assert AWS_KEY_ID not in finding.excerpt
        assert URL_PASSWORD not in finding.excerpt


def test_scanner_ignores_placeholders_and_allowed_lines() -> None:
    text = "\n".join(
        [
            "url = redis://:${AUTH_TOKEN}@host:6379",
            "url = redis://:**@host:6379/0",
            f"key = {AWS_KEY_ID}  # secret-scan: allow (AWS's documented example key id)",
            "DD_API_KEY=<your key>",
        ]
    )
    assert scan_text(text, "ok.txt") == []
    bare_marker = f"key = {AWS_KEY_ID}  # secret-scan: allow"
    assert scan_text(bare_marker, "x") != []  # the marker needs a reason


def test_template_literals_where_a_secret_reference_belongs() -> None:
    template = {
        "Resources": {
            "Broker": {
                "Type": "AWS::ElastiCache::ReplicationGroup",
                "Properties": {"AuthToken": "hunter2hunter2hunter2"},
            },
            "Safe": {
                "Type": "AWS::ElastiCache::ReplicationGroup",
                "Properties": {
                    "AuthToken": "{{resolve:secretsmanager:arn:aws:secretsmanager:x:1:secret:t}}"
                },
            },
            "Task": {
                "Type": "AWS::ECS::TaskDefinition",
                "Properties": {
                    "ContainerDefinitions": [
                        {
                            "Environment": [
                                {"Name": "DD_API_KEY", "Value": "abc123abc123"},
                                {"Name": "DD_ENV", "Value": "prod"},
                            ]
                        }
                    ]
                },
            },
        }
    }
    kinds = [(f.path, f.kind) for f in scan_template(template, "t")]
    assert kinds == [
        ("t#Broker", "literal AuthToken"),
        ("t#Task", "secret in container environment (DD_API_KEY)"),
    ]


def test_cloud_assembly_holds_no_secret(synth_env: Callable[[str], Synth]) -> None:
    outdir = synth_env("prod").outdir
    scanned, findings = scan_files(assembly_files(outdir), outdir)
    assert scanned > 5  # templates, manifests and staged assets were read
    assert findings == []


def test_repository_and_image_context_hold_no_secret() -> None:
    scanned, findings = scan_files(repo_files(ROOT), ROOT)
    assert scanned > 50
    assert findings == []
    context = image_context_files(ROOT / "worker_image")
    names = {str(p.relative_to(ROOT / "worker_image")) for p in context}
    assert "requirements.txt" in names
    assert "Dockerfile" not in names  # .dockerignore lists it
    assert not any("__pycache__" in name for name in names)
    assert scan_files(context, ROOT)[1] == []


def test_checkov_skips_match_only_their_resources() -> None:
    assert reason_for("CKV_AWS_158", "AWS::Logs::LogGroup.WorkergeneralLogsFC5A9EA5")
    assert reason_for("CKV_AWS_2", "AWS::ElasticLoadBalancingV2::Listener.FlowerAlbHttp4E5D9BD2")
    assert (
        reason_for("CKV_AWS_2", "AWS::ElasticLoadBalancingV2::Listener.OtherHttp4E5D9BD2") is None
    )
    assert reason_for("CKV_AWS_18", "AWS::S3::Bucket.DataBucketAB12CD34") is None


def test_sweep_counts_every_kind_of_unacknowledged_finding() -> None:
    stale = next(iter(ACCEPTED))
    result = EnvResult(
        "dev",
        nag_violations=["NIST.800.53.R5-S3BucketVersioningEnabled on x/Bucket/Resource"],
        nist_accepted={accepted: 1 for accepted in ACCEPTED} | {stale: 0},
        cfn_lint=["t.json: E3012 wrong type"],
        checkov_failed=["CKV_AWS_1 t.json#AWS::S3::Bucket.B: something"],
        secrets=[Finding("t.json", 3, "AWS access key id", "AKIA…")],
    )
    problems = unacknowledged([result], [Finding("README.md", 1, "private key", "…")])
    assert len(problems) == 6
    assert any(problem.startswith("stale NIST acceptance") for problem in problems)
    assert unacknowledged([EnvResult("dev")], []) == []
    # After a checkov run, a skip that matched nothing is stale.
    assert len(unacknowledged([EnvResult("dev")], [], checkov_ran=True)) == len(SKIPS)
