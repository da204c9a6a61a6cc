"""The pinned CDK CLI accepts what this aws-cdk-lib writes, and `make synth` lists stacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.synth import ROOT

CDK = ROOT / "node_modules" / ".bin" / "cdk"


def test_pinned_cli_matches_package_json() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["aws-cdk"]
    assert pinned.startswith("2."), "CDK CLI 3.x refuses the cloud assembly of aws-cdk-lib 2.x"
    installed = json.loads((ROOT / "node_modules" / "aws-cdk" / "package.json").read_text())
    assert installed["version"] == pinned


def test_the_pinned_node_is_a_maintained_lts() -> None:
    """jsii warns on end-of-life Node versions; the project runs its own (package.json)."""
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["node"]
    major = int(pinned.split(".")[0])
    assert major % 2 == 0, "even majors are the LTS lines"
    assert major >= 22, "Node.js 20 reached its end of life in April 2026"
    version = subprocess.run(
        [str(ROOT / "node_modules" / ".bin" / "node"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == f"v{pinned}"


def test_cli_synthesizes_from_a_fresh_shell_without_credentials(tmp_path: Path) -> None:
    """`npx cdk ...` as a person types it: no virtual environment on PATH, no make, no
    credentials. cdk.json names the project's interpreter; npx puts the pinned node first."""
    outdir = tmp_path / "cdk.out"
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "CDK_DEFAULT_", "JSII_", "VIRTUAL_ENV"))
    }
    env["PATH"] = os.pathsep.join(
        p
        for p in env.get("PATH", "").split(os.pathsep)
        if p not in (venv_bin, str(ROOT / "node_modules" / ".bin"))
    )
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # never ask an instance role
    npx = shutil.which("npx", path=env["PATH"])
    assert npx is not None
    command = [npx, "--no-install", "cdk", "synth", "--quiet", "--no-notices"]
    result = subprocess.run(
        [*command, "--context", "env=staging", "--output", str(outdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "end-of-life" not in result.stderr, "the jsii Node banner is not silenced"
    listing = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "stacks.list_stacks", str(outdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "synthesized 5 stacks" in listing
    for part in ("network", "data", "services", "autoscaler", "monitoring"):
        stack = f"celery-staging-{part}"
        assert stack in listing
        assert (outdir / f"{stack}.template.json").is_file()
