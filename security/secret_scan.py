"""Find secret values in files: the synthesized cloud assembly, the image context, the repo.

Offline and dependency-free, for the shapes of secret this platform handles: AWS access
keys, private keys, Datadog API/application keys, GitHub and Slack tokens, passwords in
broker URLs, and (in CloudFormation templates) a literal where only a Secrets Manager
reference may stand: a secret's `SecretString`, an ElastiCache `AuthToken`, or a container
environment variable named like a secret. Generic high-entropy detection is left out on
purpose: the cloud assembly is full of asset hashes.

A line that must hold a secret-shaped value (a test's planted key) carries
`secret-scan: allow` and a reason in a comment on the same line.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec

ALLOW_MARKER = re.compile(r"secret-scan: allow\b.{10,}")
MAX_BYTES = 5_000_000  # larger files are bundles or data, not configuration

# Values that are obviously not secrets: placeholders, masks, templates, references.
_PLACEHOLDER = re.compile(
    r"^(\*+|x+|<[^>]*>|\$\{?[A-Za-z_][^}]*\}?|\{\{.*\}\}|\{[^}]*\}|%\(?\w*\)?s|"
    r"(change|replace)[-_]?me|example|dummy|placeholder|redacted|secret|password)$",
    re.IGNORECASE,
)

PATTERNS: dict[str, re.Pattern[str]] = {
    "AWS access key id": re.compile(r"\b((?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})\b"),
    "AWS secret access key": re.compile(
        r"(?i)aws_?secret_?(?:access_?)?key['\"]?\s*[:=]\s*['\"]?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
    ),
    "private key": re.compile(r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"),
    "Datadog key": re.compile(
        r"(?i)\b(?:dd|datadog)_?(?:api|app|application)_?key['\"]?\s*[:=]\s*['\"]?"
        r"([a-f0-9]{32}|[a-f0-9]{40})\b"
    ),
    "GitHub token": re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,})\b"),
    "Slack token": re.compile(r"\b(xox[abposr]-[A-Za-z0-9-]{10,})\b"),
    "password in URL": re.compile(
        r"\b(?:rediss?|amqps?|https?|postgres(?:ql)?|mysql)://[^:/\s@'\"]*:([^@\s/'\"\\]+)@"
    ),
}

# CloudFormation properties that must never hold a literal string.
_SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|api_?key|app_?key|private_?key)")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str
    excerpt: str  # masked: never print the value itself


def _mask(value: str) -> str:
    return value[:4] + "…" if len(value) > 8 else "…"


def scan_text(text: str, path: str) -> list[Finding]:
    findings: list[Finding] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if ALLOW_MARKER.search(line):
            continue
        for kind, pattern in PATTERNS.items():
            for match in pattern.finditer(line):
                value = match.group(1)
                if _PLACEHOLDER.match(value):
                    continue
                findings.append(Finding(path, number, kind, _mask(value)))
    return findings


def _is_literal(value: Any) -> bool:
    """A plain string that is not a dynamic reference (`{{resolve:secretsmanager:...}}`)."""
    return isinstance(value, str) and bool(value) and not value.startswith("{{resolve:")


def scan_template(template: dict[str, Any], path: str) -> list[Finding]:
    """Literal secrets where a template must reference Secrets Manager instead."""
    findings: list[Finding] = []
    for logical_id, resource in template.get("Resources", {}).items():
        kind = resource.get("Type")
        properties = resource.get("Properties", {})
        where = f"{path}#{logical_id}"
        if kind == "AWS::SecretsManager::Secret" and _is_literal(properties.get("SecretString")):
            findings.append(Finding(where, 0, "literal SecretString", "…"))
        if kind == "AWS::ElastiCache::ReplicationGroup" and _is_literal(
            properties.get("AuthToken")
        ):
            findings.append(Finding(where, 0, "literal AuthToken", "…"))
        if kind == "AWS::ECS::TaskDefinition":
            for container in properties.get("ContainerDefinitions", []):
                for variable in container.get("Environment", []):
                    name = str(variable.get("Name", ""))
                    value = variable.get("Value")
                    if (
                        _SECRET_NAME.search(name)
                        and _is_literal(value)
                        and not _PLACEHOLDER.match(str(value))
                    ):
                        findings.append(
                            Finding(where, 0, f"secret in container environment ({name})", "…")
                        )
    for parameter_name, parameter in template.get("Parameters", {}).items():
        if _SECRET_NAME.search(parameter_name) and _is_literal(parameter.get("Default")):
            findings.append(Finding(f"{path}#{parameter_name}", 0, "secret parameter default", "…"))
    return findings


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", errors="replace")


def scan_files(files: Iterable[Path], root: Path) -> tuple[int, list[Finding]]:
    """(files scanned, findings) for text files, templates also checked structurally."""
    scanned = 0
    findings: list[Finding] = []
    for path in files:
        text = _read(path)
        if text is None:
            continue
        scanned += 1
        name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        findings += scan_text(text, name)
        if path.name.endswith(".template.json"):
            try:
                template = json.loads(text)
            except json.JSONDecodeError:
                continue
            findings += scan_template(template, name)
    return scanned, findings


def repo_files(root: Path) -> list[Path]:
    """The files git tracks (and untracked ones not ignored): what a commit could carry."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [root / name for name in listed.split("\0") if name and (root / name).is_file()]


def _anchored(pattern: str) -> str:
    """A .dockerignore pattern in gitignore syntax: Docker matches from the context root
    (`tests` is only the top-level folder), git at any depth unless the pattern has a `/`."""
    pattern = pattern.strip()
    if not pattern or pattern.startswith("#"):
        return ""
    negated = pattern.startswith("!")
    body = pattern.lstrip("!").lstrip("/")
    if not body.startswith("**"):
        body = "/" + body
    return ("!" if negated else "") + body


def image_context_files(context: Path) -> list[Path]:
    """The files `docker build` sends from `context`, after its .dockerignore."""
    ignore_file = context / ".dockerignore"
    lines = ignore_file.read_text().splitlines() if ignore_file.exists() else []
    spec = pathspec.PathSpec.from_lines("gitignore", [_anchored(line) for line in lines])
    return sorted(
        path
        for path in context.rglob("*")
        if path.is_file() and not spec.match_file(str(path.relative_to(context)))
    )


def assembly_files(outdir: Path) -> Iterator[Path]:
    """Every file of a cloud assembly: templates, manifests, staged assets."""
    return (path for path in sorted(outdir.rglob("*")) if path.is_file())
