"""`make template-diff`: the comparison on hand-made templates (a stateful resource renamed
fails, a stateless change and a new asset are reported), and one real run against HEAD."""

from __future__ import annotations

import copy
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tools import template_diff
from tools.template_diff import Changed, Resource, compare, render

HASH_A = "a" * 24 + "0123456789abcdef" * 2 + "b" * 8
HASH_B = "c" * 24 + "0123456789abcdef" * 2 + "d" * 8
IMAGE = "${AWS::AccountId}.dkr.ecr.us-east-1.${AWS::URLSuffix}/cdk-container-assets:"


def templates(image_hash: str = HASH_A) -> dict[str, dict[str, Any]]:
    """Two small stacks: the broker and its secret, and a service's task using an image."""
    return {
        "data": {
            "Resources": {
                "BrokerReplicationGroupC7814FB9": {
                    "Type": "AWS::ElastiCache::ReplicationGroup",
                    "Properties": {"Engine": "valkey", "NumCacheClusters": 2},
                    "DeletionPolicy": "Snapshot",
                    "UpdateReplacePolicy": "Snapshot",
                },
                "BrokerAuthToken5ACAD3C2": {
                    "Type": "AWS::SecretsManager::Secret",
                    "Properties": {"GenerateSecretString": {"PasswordLength": 64}},
                },
            },
            "Outputs": {"BrokerPort": {"Value": "6379"}},
        },
        "services": {
            "Resources": {
                "WorkerTask": {
                    "Type": "AWS::ECS::TaskDefinition",
                    "Properties": {
                        "Cpu": "256",
                        "ContainerDefinitions": [
                            {
                                "Image": IMAGE + image_hash,
                                "Environment": [{"Name": "DD_VERSION", "Value": image_hash[:12]}],
                            }
                        ],
                    },
                },
                "WorkerService": {
                    "Type": "AWS::ECS::Service",
                    "Properties": {"DesiredCount": 1, "TaskDefinition": {"Ref": "WorkerTask"}},
                },
            }
        },
    }


def test_identical_templates_are_no_change() -> None:
    diff = compare(templates(), templates())
    assert diff.unchanged
    assert diff.errors == []
    assert render("dev", diff) == ["dev: no change (2 stacks)"]


def test_a_renamed_stateful_resource_is_an_error() -> None:
    current = templates()
    resources = current["data"]["Resources"]
    resources["BrokerNewIdABCD1234"] = resources.pop("BrokerReplicationGroupC7814FB9")
    diff = compare(templates(), current)
    (data, _) = diff.stacks
    assert data.added == [
        Resource("BrokerNewIdABCD1234", "AWS::ElastiCache::ReplicationGroup", "Snapshot")
    ]
    assert [r.logical_id for r in data.removed] == ["BrokerReplicationGroupC7814FB9"]
    (error,) = diff.errors
    assert error == (
        "data: AWS::ElastiCache::ReplicationGroup BrokerReplicationGroupC7814FB9 is gone "
        "(added as data/BrokerNewIdABCD1234?): the next deploy deletes it after a final snapshot"
    )
    assert "    - AWS::ElastiCache::ReplicationGroup BrokerReplicationGroupC7814FB9 (stateful)" in (
        render("dev", diff)
    )


def test_a_stateful_resource_whose_type_changes_is_an_error() -> None:
    current = templates()
    current["data"]["Resources"]["BrokerAuthToken5ACAD3C2"]["Type"] = "AWS::SSM::Parameter"
    (error,) = compare(templates(), current).errors
    assert "AWS::SecretsManager::Secret BrokerAuthToken5ACAD3C2 changes type to" in error


def test_a_removed_stack_loses_its_stateful_resources() -> None:
    current = templates()
    del current["data"]
    diff = compare(templates(), current)
    assert diff.stacks[0].status == "removed"
    assert len(diff.errors) == 2  # the broker and its secret


def test_a_stateless_change_is_reported_without_error() -> None:
    current = templates()
    service = current["services"]["Resources"]["WorkerService"]
    service["Properties"]["DesiredCount"] = 2
    service["DeletionPolicy"] = "Retain"
    del current["services"]["Resources"]["WorkerTask"]
    current["data"]["Outputs"]["BrokerHost"] = {"Value": "x"}
    diff = compare(templates(), current)
    assert diff.errors == []
    (data, services) = diff.stacks
    assert data.sections == ["Outputs: added BrokerHost"]
    assert services.removed == [Resource("WorkerTask", "AWS::ECS::TaskDefinition")]
    assert services.changed == [
        Changed(
            "WorkerService",
            "AWS::ECS::Service",
            properties=("DesiredCount",),
            policies=("DeletionPolicy (none) -> Retain",),
        )
    ]
    assert render("dev", diff) == [
        "dev:",
        "  data: no resource changed",
        "    Outputs: added BrokerHost",
        "  services: 1 removed, 1 changed",
        "    - AWS::ECS::TaskDefinition WorkerTask",
        "    ~ AWS::ECS::Service WorkerService: DesiredCount; DeletionPolicy (none) -> Retain",
    ]


def test_a_new_asset_hash_is_reported_as_an_asset() -> None:
    diff = compare(templates(HASH_A), templates(HASH_B))
    assert diff.errors == []
    (data, services) = diff.stacks
    assert data.unchanged
    assert services.changed == [Changed("WorkerTask", "AWS::ECS::TaskDefinition", asset=True)]
    assert "    ~ AWS::ECS::TaskDefinition WorkerTask: asset changed" in render("dev", diff)


def test_an_asset_and_a_property_change_name_both() -> None:
    current = templates(HASH_B)
    current["services"]["Resources"]["WorkerTask"]["Properties"]["Cpu"] = "512"
    (change,) = compare(templates(HASH_A), current).stacks[1].changed
    assert change.properties == ("Cpu",)
    assert change.asset


def test_an_unknown_ref_is_refused_before_any_worktree(capsys: pytest.CaptureFixture[str]) -> None:
    assert template_diff.main(["--base", "no-such-ref-anywhere", "--env", "dev"]) == 2
    assert "names no commit" in capsys.readouterr().err


def _worktrees() -> str:
    return subprocess.run(
        ["git", "-C", str(template_diff.ROOT), "worktree", "list", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_real_run_against_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """dev synthesized at HEAD and from the work tree (about 15 s on two cores): every stack
    is reported, and the worktree and the outputs are gone afterwards."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = _worktrees()
    code = template_diff.main(["--base", "HEAD", "--env", "dev"])
    out = capsys.readouterr().out
    assert code in (0, 1), out
    stacks = ("network", "data", "services", "autoscaler", "monitoring")
    assert "dev: no change (5 stacks)" in out or all(f"celery-dev-{s}:" in out for s in stacks)
    tracked_clean = subprocess.run(
        ["git", "-C", str(template_diff.ROOT), "diff", "--quiet", "HEAD"], check=False
    )
    if tracked_clean.returncode == 0:
        # Nothing tracked changed: only assets built from untracked files could differ.
        assert code == 0, out
    assert _worktrees() == before
    assert list(tmp_path.iterdir()) == []


def test_copies_of_templates_are_not_mutated() -> None:
    base, current = templates(HASH_A), templates(HASH_B)
    kept = copy.deepcopy((base, current))
    compare(base, current)
    assert (base, current) == kept
