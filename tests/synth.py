"""Synthesize an environment the way app.py does, for tests to read templates from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import App, Stack, cx_api
from aws_cdk.assertions import Template

from config import EnvironmentConfig
from stacks.checks import attach_checks
from stacks.platform import Platform, build_platform

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ("dev", "staging", "prod")


def subprocess_env() -> dict[str, str]:
    """The environment for a child that runs jsii (app.py, the CDK CLI): the project's pinned
    Node.js first on PATH, as the Makefile arranges."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(ROOT / "node_modules" / ".bin"), env.get("PATH", "")])
    return env


def run_app(outdir: Path, context: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """app.py in a child process, as `cdk synth` runs it, with `context` and its output in
    `outdir`."""
    env = {**subprocess_env(), "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(outdir)}
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cdk_context() -> dict[str, Any]:
    """The feature flags of cdk.json, so tests synthesize exactly what `cdk synth` does."""
    context: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]
    return context


@dataclass
class Synth:
    """A synthesized environment: the app (for the construct tree) and its templates."""

    config: EnvironmentConfig
    app: App
    platform: Platform
    assembly: cx_api.CloudAssembly
    outdir: Path

    def template(self, stack: Stack) -> Template:
        return Template.from_json(self.assembly.get_stack_by_name(stack.stack_name).template)

    def template_json(self, stack: Stack) -> dict[str, Any]:
        template: dict[str, Any] = self.assembly.get_stack_by_name(stack.stack_name).template
        return template


def synthesize(
    config: EnvironmentConfig,
    outdir: Path,
    extend: Callable[[App, Platform], None] | None = None,
    context: dict[str, Any] | None = None,
    checks: bool = True,
) -> Synth:
    """Build and synthesize like app.py does, cdk-nag included (a finding raises).

    `context` adds entries as cdk.context.json would, e.g. the result of a VPC lookup.
    """
    app = App(outdir=str(outdir), context={**cdk_context(), **(context or {})})
    platform = build_platform(app, config)
    if extend is not None:
        extend(app, platform)
    if checks:
        attach_checks(app)
    assembly = app.synth()
    return Synth(config=config, app=app, platform=platform, assembly=assembly, outdir=outdir)


def resources(template: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """A template's resources of one type, by logical ID."""
    return {key: r for key, r in template["Resources"].items() if r["Type"] == kind}
