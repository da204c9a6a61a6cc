"""The CI workflow a team copies (examples/ci/github-actions.yml): actionlint finds nothing in
it, and it keeps the properties a deploy pipeline must have."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"
# actionlint and shellcheck come with requirements-dev.txt, beside this interpreter.
TOOLS = Path(sys.executable).parent
SEARCH_PATH = f"{TOOLS}{os.pathsep}{os.environ.get('PATH', '')}"
FULL_SHA = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("actionlint", path=SEARCH_PATH)
    if binary is None:
        pytest.fail("actionlint is missing: `make setup` installs it (requirements-dev.txt)")
    return subprocess.run(
        [binary, "-no-color", str(path)],
        env={**os.environ, "PATH": SEARCH_PATH},  # where it looks for shellcheck
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def broken_copy(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = WORKFLOW.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    copy = tmp_path / "broken.yml"
    copy.write_text(text)
    return copy


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def test_actionlint_finds_nothing_in_the_example() -> None:
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_reports_a_broken_copy(tmp_path: Path) -> None:
    copy = broken_copy(
        tmp_path,
        ("needs: [build, deploy-staging]", "needs: [build, deploy-stagign]"),
        ("steps.push.outputs.digest", "steps.pushed.outputs.digest"),
    )
    result = actionlint(copy)
    assert result.returncode == 1
    assert 'needs job "deploy-stagign" which does not exist' in result.stdout
    assert 'property "pushed" is not defined' in result.stdout


def test_shell_scripts_are_checked_by_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck", path=SEARCH_PATH) is None:
        pytest.skip(
            "shellcheck is not installed (no wheel for this platform), so actionlint "
            "skips shell checks"
        )
    copy = broken_copy(tmp_path, ('docker push "$image"', "docker push $image"))
    result = actionlint(copy)
    assert result.returncode == 1
    assert "SC2086" in result.stdout


def test_actions_are_pinned_to_full_commit_shas(workflow: dict[str, Any]) -> None:
    uses = [
        step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step
    ]
    assert uses
    assert [u for u in uses if not FULL_SHA.match(u)] == []


def test_credentials_come_from_oidc_only(workflow: dict[str, Any]) -> None:
    assert workflow["permissions"] == {"id-token": "write", "contents": "read"}
    text = WORKFLOW.read_text()
    assert "secrets." not in text
    assert "aws-access-key-id" not in text
    for job in workflow["jobs"].values():
        (creds,) = [s for s in job["steps"] if "configure-aws-credentials" in s.get("uses", "")]
        assert creds["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"


def test_prod_deploys_the_built_digest_after_staging_behind_its_environment(
    workflow: dict[str, Any],
) -> None:
    jobs = workflow["jobs"]
    assert "digest" in jobs["build"]["outputs"]
    assert jobs["deploy-prod"]["environment"] == "prod"
    assert set(jobs["deploy-prod"]["needs"]) == {"build", "deploy-staging"}
    for env in ("staging", "prod"):
        job = jobs[f"deploy-{env}"]
        (deploy,) = [s for s in job["steps"] if "make deploy" in s.get("run", "")]
        assert deploy["working-directory"] == "platform"
        assert deploy["env"]["IMAGE_DIGEST"] == "${{ needs.build.outputs.digest }}"
        assert f"ENV={env} " in deploy["run"]
        assert 'IMAGE_DIGEST="$IMAGE_DIGEST"' in deploy["run"]


def test_two_deploys_of_one_environment_never_overlap(workflow: dict[str, Any]) -> None:
    groups = []
    for env in ("staging", "prod"):
        concurrency = workflow["jobs"][f"deploy-{env}"]["concurrency"]
        assert concurrency["cancel-in-progress"] is False  # never cut a stack update short
        groups.append(concurrency["group"])
    assert len(set(groups)) == 2
