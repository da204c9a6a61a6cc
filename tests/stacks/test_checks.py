"""cdk-nag AwsSolutions and cfn-lint on every shipped environment, and what they accept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk import App, CfnResource, Stack, Stage, Validations
from aws_cdk import aws_ec2 as ec2
from cfnlint.api import ManualArgs, lint

from config import load_environment
from stacks.checks import PACK, cfn_lint_ignored
from stacks.platform import Platform
from tests.synth import Synth, synthesize


def test_nag_reports_no_unacknowledged_finding(env_synth: Synth) -> None:
    """The fixture synthesized with AwsSolutions attached; a finding would have raised."""
    report = json.loads((env_synth.outdir / "validation-report.json").read_text())
    violations = [
        (plugin["pluginName"], violation["ruleName"])
        for plugin in report["pluginReports"]
        for violation in plugin["violations"]
    ]
    assert violations == []


def test_nag_is_attached_and_fails_the_synth(tmp_path: Path) -> None:
    """Proof the gate can close: a VPC without flow logs must stop the synthesis."""

    def add_bad_vpc(app: App, platform: Platform) -> None:
        ec2.Vpc(platform.data, "VpcWithoutFlowLogs", max_azs=1, nat_gateways=0)

    with pytest.raises(RuntimeError, match=r"AwsSolutions-VPC7"):
        synthesize(load_environment("dev"), tmp_path, extend=add_bad_vpc)


def test_each_acknowledgement_is_on_one_resource_with_a_reason(env_synth: Synth) -> None:
    found = []
    for construct in env_synth.app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type != Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                continue
            for rule, reason in dict(entry.data).items():
                if f"{PACK}-" not in rule:
                    continue  # CDK's own acknowledgements of its built-in template checks
                found.append(rule)
                assert not isinstance(construct, Stack | Stage | App), (
                    f"{rule} acknowledged on a whole stack ({construct.node.path}); "
                    "attach it to the resource it concerns"
                )
                # One resource: a role may carry its own inline policy, nothing more.
                resources = [
                    c
                    for c in construct.node.find_all()
                    if isinstance(c, CfnResource) and c.cfn_resource_type != "AWS::IAM::Policy"
                ]
                assert len(resources) <= 1, (
                    f"{rule} on {construct.node.path} covers {len(resources)} resources"
                )
                assert len(str(reason)) >= 60, f"{rule} on {construct.node.path}: reason too thin"
    assert "Annotation::AwsSolutions-SMG4" in found  # the AUTH token's rotation, explained
    if not env_synth.config.redis.multi_az:
        assert "Annotation::AwsSolutions-AEC4" in found
    else:
        assert "Annotation::AwsSolutions-AEC4" not in found


def test_cfn_lint_finds_nothing(env_synth: Synth) -> None:
    region = env_synth.config.region or "us-east-1"
    templates = sorted(env_synth.outdir.glob("*.template.json"))
    assert len(templates) == len(env_synth.platform.stacks)
    args = ManualArgs(regions=[region], ignore_checks=cfn_lint_ignored(env_synth.config))
    findings = []
    for path in templates:
        findings += [
            f"{path.name}: {m.rule.id} {m.message}" for m in lint(path.read_text(), config=args)
        ]
    assert findings == []
