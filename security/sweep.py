"""`make security`: every security check on every environment, and a report of the figures.

For each environment (dev, staging, prod): cdk-nag AwsSolutions and NIST 800-53 rev. 5 at
synthesis, cfn-lint, checkov (offline) on the templates, the IAM wildcard listing, and the
secret scan of the cloud assembly; then the secret scan of the image context and the repo.
Exits 1 if anything is unacknowledged or unexplained. Writes `security/report.md`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aws_cdk import App, Validations
from cfnlint.api import ManualArgs, lint

from config import load_environment
from security.checkov_skips import SKIPS, Skip, skip_for
from security.iam_wildcards import Grant, grants_in
from security.secret_scan import (
    Finding,
    assembly_files,
    image_context_files,
    repo_files,
    scan_files,
)
from stacks.checks import attach_checks, cfn_lint_ignored
from stacks.compliance import Accepted, accepted_findings, attach_compliance_checks
from stacks.platform import build_platform

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ("dev", "staging", "prod")
REPORT = Path(__file__).resolve().parent / "report.md"
# The same cfn-lint exceptions as tests/stacks/test_checks.py, for the same reasons.
# Any connection checkov tries goes here and fails at once: the scan must stay offline.
NO_NETWORK = "http://127.0.0.1:9"


@dataclass
class Acknowledged:
    pack: str
    rule: str
    reason: str
    resources: int = 0


@dataclass
class EnvResult:
    name: str
    synth_s: float = 0.0
    templates: list[Path] = field(default_factory=list)
    nag_violations: list[str] = field(default_factory=list)
    nist_findings: int = 0  # before the acceptances of stacks/compliance.py
    nist_accepted: dict[Accepted, int] = field(default_factory=dict)
    acknowledged: dict[tuple[str, str], Acknowledged] = field(default_factory=dict)
    cfn_lint: list[str] = field(default_factory=list)
    checkov_passed: int = 0
    checkov_skipped: list[tuple[str, str, str]] = field(default_factory=list)
    checkov_skips_used: set[Skip] = field(default_factory=set)
    checkov_failed: list[str] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    files_scanned: int = 0
    secrets: list[Finding] = field(default_factory=list)


def cdk_context() -> dict[str, Any]:
    context: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]
    return context


ANNOTATION = "Annotation::"  # cdk-nag's findings; others are CDK's own template checks


def _violations(outdir: Path) -> list[tuple[str, str]]:
    report = json.loads((outdir / "validation-report.json").read_text())
    return [
        (violation["ruleName"], construct["constructPath"])
        for plugin in report["pluginReports"]
        for violation in plugin["violations"]
        for construct in violation.get("violatingConstructs", [])
    ]


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Keep the report of a synthesis that fails on purpose off the terminal. jsii forwards
    Node's stderr from a thread that writes to the current `sys.stderr`; the short wait lets
    it drain before the real stream is back."""
    saved = sys.stderr
    sys.stderr = io.TextIOWrapper(io.BytesIO())
    try:
        yield
    finally:
        time.sleep(0.5)
        sys.stderr = saved


def measure_nist(result: EnvResult, scratch: Path) -> None:
    """Synthesize without the NIST acceptances: what the pack finds, and which acceptance
    covers how many of those findings (so a stale acceptance shows)."""
    app = App(outdir=str(scratch), context=cdk_context())
    build_platform(app, load_environment(result.name))
    attach_compliance_checks(app, accept=False)
    try:
        with quiet_stderr():
            app.synth()
        violations: list[tuple[str, str]] = []
    except RuntimeError:
        violations = [v for v in _violations(scratch) if v[0].startswith("NIST")]
    result.nist_findings = len(violations)
    result.nist_accepted = accepted_findings(app, violations)


def synthesize(result: EnvResult, outdir: Path) -> None:
    """Synthesize with both cdk-nag packs; record violations and every acknowledgement."""
    config = load_environment(result.name)
    app = App(outdir=str(outdir), context=cdk_context())
    build_platform(app, config)
    attach_compliance_checks(app)
    attach_checks(app)
    started = time.monotonic()
    try:
        app.synth()
    except RuntimeError:
        result.nag_violations = [f"{rule} on {path}" for rule, path in _violations(outdir)]
    result.synth_s = time.monotonic() - started
    for construct in app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type != Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                continue
            for rule, reason in dict(entry.data).items():
                if not str(rule).startswith(ANNOTATION):
                    continue
                name = str(rule).removeprefix(ANNOTATION)
                pack = name.split("-", 1)[0]
                key = (name, str(reason))
                ack = result.acknowledged.setdefault(key, Acknowledged(pack, name, str(reason)))
                ack.resources += 1
    result.templates = sorted(outdir.glob("*.template.json"))
    args = ManualArgs(
        regions=[config.region or "us-east-1"], ignore_checks=cfn_lint_ignored(config)
    )
    for path in result.templates:
        result.cfn_lint += [
            f"{path.name}: {m.rule.id} {m.message}" for m in lint(path.read_text(), config=args)
        ]
    result.grants = grants_in(result.templates)
    result.files_scanned, result.secrets = scan_files(assembly_files(outdir), outdir)


def run_checkov(checkov: Path, result: EnvResult, outdir: Path) -> None:
    env = {
        **os.environ,
        "HTTPS_PROXY": NO_NETWORK,
        "HTTP_PROXY": NO_NETWORK,
        "https_proxy": NO_NETWORK,
        "http_proxy": NO_NETWORK,
        "NO_PROXY": "",  # no host may bypass the closed proxy
        "no_proxy": "",
        "BC_SKIP_MAPPING": "TRUE",  # no download of the guideline mapping
        "CHECKOV_NO_VERSION_CHECK": "1",
    }
    completed = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(outdir),
            "--framework",
            "cloudformation",
            "--skip-download",
            "--output",
            "json",
            "--quiet",
            "--compact",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if completed.returncode not in (0, 1):  # 1: failed checks, read below
        raise RuntimeError(f"checkov failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    reports = json.loads(completed.stdout or "[]")
    for report in reports if isinstance(reports, list) else [reports]:
        result.checkov_passed += int(report.get("summary", {}).get("passed", 0))
        for check in report.get("results", {}).get("failed_checks", []):
            where = f"{check['file_path'].lstrip('/')}#{check['resource']}"
            skip = skip_for(check["check_id"], check["resource"])
            if skip is None:
                result.checkov_failed.append(f"{check['check_id']} {where}: {check['check_name']}")
            else:
                result.checkov_skipped.append((check["check_id"], where, skip.reason))
                result.checkov_skips_used.add(skip)


def unacknowledged(
    results: list[EnvResult], shared_secrets: list[Finding], checkov_ran: bool = False
) -> list[str]:
    problems: list[str] = []
    for r in results:
        problems += [f"{r.name}: cdk-nag {v}" for v in r.nag_violations]
        problems += [f"{r.name}: cfn-lint {m}" for m in r.cfn_lint]
        problems += [f"{r.name}: checkov {m}" for m in r.checkov_failed]
        problems += [
            f"{r.name}: IAM {g.kind} without a reason: {g.template}#{g.logical_id} "
            f"{','.join(g.actions)} {g.resource}"
            for g in r.grants
            if not g.explained
        ]
        problems += [f"{r.name}: secret {s.kind} in {s.path}:{s.line}" for s in r.secrets]
    problems += [f"secret {s.kind} in {s.path}:{s.line} ({s.excerpt})" for s in shared_secrets]
    if results and all(r.nist_accepted for r in results):
        for accepted in results[0].nist_accepted:
            if not any(r.nist_accepted[accepted] for r in results):
                problems.append(
                    f"stale NIST acceptance {accepted.rule} on {accepted.resource_type} "
                    f"{accepted.path}: no environment has that finding"
                )
    if checkov_ran:
        used = set().union(*(r.checkov_skips_used for r in results))
        problems += [
            f"stale checkov skip {skip.check_id} on {skip.resource_type} {skip.logical_id}: "
            "no environment has that finding"
            for skip in SKIPS
            if skip not in used
        ]
    return problems


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_report(
    results: list[EnvResult],
    repo: tuple[int, list[Finding]],
    image: tuple[int, list[Finding]],
    checkov_ran: bool,
    problems: list[str],
) -> str:
    lines = [
        "# Security sweep",
        "",
        "Written by `make security` (`security/sweep.py`); do not edit by hand.",
        "",
        "| environment | templates | cdk-nag unacknowledged (AwsSolutions + NIST 800-53 R5) "
        "| AwsSolutions acknowledgements | NIST findings / accepted | cfn-lint "
        "| checkov passed / accepted / failed | IAM wildcard grants (unexplained) "
        "| files scanned for secrets | secrets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        packs: Counter[str] = Counter()
        for ack in r.acknowledged.values():
            packs[ack.pack] += ack.resources
        checkov = (
            f"{r.checkov_passed} / {len(r.checkov_skipped)} / {len(r.checkov_failed)}"
            if checkov_ran
            else "not run"
        )
        unexplained = sum(not g.explained for g in r.grants)
        lines.append(
            f"| {r.name} | {len(r.templates)} | {len(r.nag_violations)} "
            f"| {packs['AwsSolutions']} | {r.nist_findings} / {sum(r.nist_accepted.values())} "
            f"| {len(r.cfn_lint)} "
            f"| {checkov} | {len(r.grants)} ({unexplained}) | {r.files_scanned} "
            f"| {len(r.secrets)} |"
        )
    lines += [
        "",
        f"Repository (git-tracked and untracked, not ignored): {repo[0]} files scanned, "
        f"{len(repo[1])} secrets. Image context (`worker_image/` after `.dockerignore`): "
        f"{image[0]} files, {len(image[1])} secrets.",
        "",
        f"**Unacknowledged findings: {len(problems)}.**",
        "",
    ]
    lines += [f"- {_cell(p)}" for p in problems]
    lines += [
        "",
        "## IAM statements with a wildcard resource",
        "",
        "| environment | template#resource | kind | actions | resource | why |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for g in r.grants:
            lines.append(
                f"| {r.name} | {g.template}#{g.logical_id} | {g.kind} "
                f"| {_cell(', '.join(g.actions) or '(managed)')} | `{_cell(g.resource)}` "
                f"| {_cell(g.reason or '**UNEXPLAINED**')} |"
            )
    lines += [
        "",
        "## cdk-nag AwsSolutions acknowledgements",
        "",
        "Counted over all environments; each sits on the one resource it concerns (`stacks/*.py`).",
        "",
        "| rule | resources | reason |",
        "|---|---|---|",
    ]
    merged: dict[tuple[str, str], int] = Counter()
    for r in results:
        for key, ack in r.acknowledged.items():
            if ack.pack == "AwsSolutions":
                merged[key] += ack.resources
    for (rule, reason), count in sorted(merged.items()):
        lines.append(f"| {rule} | {count} | {_cell(reason)} |")
    lines += [
        "",
        "## NIST 800-53 rev. 5 findings accepted",
        "",
        "Findings of all environments each acceptance covers (`stacks/compliance.py`).",
        "",
        "| rule | resource type | construct path | findings | reason |",
        "|---|---|---|---|---|",
    ]
    for accepted in results[0].nist_accepted if results else []:
        count = sum(r.nist_accepted.get(accepted, 0) for r in results)
        lines.append(
            f"| {accepted.rule} | {accepted.resource_type} | `{_cell(accepted.path or '*')}` "
            f"| {count} | {_cell(accepted.reason)} |"
        )
    if checkov_ran:
        lines += [
            "",
            "## checkov findings accepted",
            "",
            "| check | resources | reason |",
            "|---|---|---|",
        ]
        skipped: dict[tuple[str, str], int] = Counter()
        for r in results:
            for check_id, _, reason in r.checkov_skipped:
                skipped[(check_id, reason)] += 1
        for (check_id, reason), count in sorted(skipped.items()):
            lines.append(f"| {check_id} | {count} | {_cell(reason)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", action="append", choices=ENVIRONMENTS, dest="envs")
    parser.add_argument("--outdir", type=Path, default=ROOT / "cdk.out" / "security")
    parser.add_argument("--checkov", type=Path, help="checkov executable (its own virtualenv)")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    results: list[EnvResult] = []
    for name in args.envs or ENVIRONMENTS:
        outdir = args.outdir / name
        # A fresh directory: a previous run's assets would be scanned and counted again.
        shutil.rmtree(outdir, ignore_errors=True)
        result = EnvResult(name)
        measure_nist(result, args.outdir / f"{name}-without-acceptances")
        synthesize(result, outdir)
        if args.checkov:
            run_checkov(args.checkov, result, outdir)
        results.append(result)
        print(
            f"{name}: cdk-nag {len(result.nag_violations)} (NIST accepted "
            f"{sum(result.nist_accepted.values())} of {result.nist_findings}), "
            f"cfn-lint {len(result.cfn_lint)}, "
            f"checkov failed {len(result.checkov_failed)} (accepted {len(result.checkov_skipped)})"
            f", IAM wildcards {len(result.grants)}, secrets {len(result.secrets)}",
            flush=True,
        )
    repo = scan_files(repo_files(ROOT), ROOT)
    image = scan_files(image_context_files(ROOT / "worker_image"), ROOT)
    problems = unacknowledged(results, repo[1] + image[1], checkov_ran=args.checkov is not None)
    args.report.write_text(render_report(results, repo, image, args.checkov is not None, problems))
    for problem in problems:
        print(f"UNACKNOWLEDGED {problem}", file=sys.stderr)
    print(f"{len(problems)} unacknowledged findings; report: {args.report}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
