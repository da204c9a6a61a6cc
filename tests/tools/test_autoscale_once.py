"""`make autoscale-once`: the handler runs once on a local Redis and prints its decisions."""

from __future__ import annotations

import subprocess
import sys

from config import load_environment
from tests.synth import ROOT


def test_autoscale_once_prints_a_decision_per_worker_group() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.autoscale_once",
            "--env",
            "dev",
            "--backlog",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    groups = load_environment("dev").worker_groups
    assert len(lines) == len(groups)
    for line, (name, group) in zip(sorted(lines), sorted(groups.items()), strict=True):
        assert line.startswith(name)
        assert f"-> {group.max_tasks}" in line, "300 waiting messages need every allowed task"
        assert "300 waiting" in line or "600 waiting" in line
    assert "_aws" not in result.stdout
