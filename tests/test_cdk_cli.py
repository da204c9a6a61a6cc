"""The pinned CDK CLI accepts what this aws-cdk-lib writes, and `make synth` lists stacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.synth import ROOT, subprocess_env

CDK = ROOT / "node_modules" / ".bin" / "cdk"


def test_pinned_cli_matches_package_json() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["aws-cdk"]
    assert pinned.startswith("2."), "CDK CLI 3.x refuses the cloud assembly of aws-cdk-lib 2.x"
    installed = json.loads((ROOT / "node_modules" / "aws-cdk" / "package.json").read_text())
    assert installed["version"] == pinned


def test_cli_synthesizes_an_environment_without_credentials(tmp_path: Path) -> None:
    outdir = tmp_path / "cdk.out"
    env = {
        key: value
        for key, value in subprocess_env().items()
        if not key.startswith(("AWS_", "CDK_DEFAULT_"))
    }
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # never ask an instance role
    # cdk.json runs `python3 app.py`: the interpreter running the tests must be that python3.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [str(CDK), "synth", "--quiet", "--no-notices"]
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
