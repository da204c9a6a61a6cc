"""`make template-diff BASE=<ref>`: what a change did to the synthesized templates, against
another commit, stack by stack; it fails when a stateful resource loses its logical ID.

Stateful resources keep their logical IDs: a changed ID replaces the broker on the next
deploy and loses every queued message. A refactor proves it did not with this command.
Each environment of the config is synthesized twice, from a temporary `git worktree` of
BASE and from the work tree, each by its own app.py in a child process as `cdk synth` runs
it. The templates are then compared by logical ID: resources added, removed and changed
(the names of the top-level properties that changed, and any change of DeletionPolicy or
UpdateReplacePolicy). A new asset hash (an image or a Lambda bundle rebuilt from changed
code) is reported as "asset changed", not as property changes.

A resource of a stateful type (STATEFUL_TYPES) that is gone from its stack, or whose type
changed, under its logical ID is an error: one line each, and exit status 1. Exit status 2
when a side could not be synthesized.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from config import CONFIG_DIR, available_environments

ROOT = Path(__file__).resolve().parent.parent

# What loses data or cuts every client off when CloudFormation replaces it: the broker and
# its groups, its AUTH token, buckets, keys (and all they encrypt), logs, the network.
STATEFUL_TYPES = frozenset(
    {
        "AWS::ElastiCache::ReplicationGroup",
        "AWS::ElastiCache::SubnetGroup",
        "AWS::ElastiCache::ParameterGroup",
        "AWS::SecretsManager::Secret",
        "AWS::S3::Bucket",
        "AWS::KMS::Key",
        "AWS::Logs::LogGroup",
        "AWS::EC2::VPC",
        "AWS::EC2::Subnet",
    }
)
POLICIES = ("DeletionPolicy", "UpdateReplacePolicy")
# CDK names an asset by the SHA-256 of its content, and this project tags images with the
# hash's first 12 characters (stacks/parts/app_image.py).
ASSET_HASH = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
SHORT_HASH = 12
ASSET = "<asset>"
SYNTH_TIMEOUT_S = 300

Template = Mapping[str, Any]


@dataclass(frozen=True)
class Resource:
    logical_id: str
    type: str
    deletion_policy: str | None = None


@dataclass(frozen=True)
class Changed:
    """A resource under the same logical ID on both sides, with something different."""

    logical_id: str
    type: str
    old_type: str | None = None  # set when the type changed
    properties: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()  # "DeletionPolicy Retain -> Delete"
    attributes: tuple[str, ...] = ()  # other resource attributes: DependsOn, Metadata, ...
    asset: bool = False


@dataclass
class StackDiff:
    name: str
    # "added"/"removed" when the whole stack is new or gone, else "".
    status: str = ""
    added: list[Resource] = field(default_factory=list)
    removed: list[Resource] = field(default_factory=list)
    changed: list[Changed] = field(default_factory=list)
    # Other template sections that differ: "Outputs: added X; removed Y".
    sections: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        return not (self.status or self.added or self.removed or self.changed or self.sections)


@dataclass
class TemplatesDiff:
    stacks: list[StackDiff]

    @property
    def errors(self) -> list[str]:
        return [error for stack in self.stacks for error in stack.errors]

    @property
    def unchanged(self) -> bool:
        return all(stack.unchanged for stack in self.stacks)


def compare(base: Mapping[str, Template], current: Mapping[str, Template]) -> TemplatesDiff:
    """The difference between two sets of templates, each by stack name: the base's (the
    ref's) and the current tree's."""
    # A stateful resource gone from one place may be new elsewhere: its error names them.
    added = [
        (name, resource)
        for name in current
        for resource in _resources(current[name], base.get(name, {}), only_new=True)
    ]
    stacks = []
    for name in sorted(base.keys() | current.keys()):
        stack = _compare_stack(name, base.get(name), current.get(name))
        for resource in stack.removed:
            if resource.type in STATEFUL_TYPES:
                renamed = [f"{s}/{r.logical_id}" for s, r in added if r.type == resource.type]
                stack.errors.append(_removal_error(name, resource, renamed))
        for change in stack.changed:
            if change.old_type in STATEFUL_TYPES:
                stack.errors.append(
                    f"{name}: {change.old_type} {change.logical_id} changes type to "
                    f"{change.type}: the next deploy deletes it"
                )
        stacks.append(stack)
    return TemplatesDiff(stacks)


def _compare_stack(name: str, base: Template | None, current: Template | None) -> StackDiff:
    stack = StackDiff(name)
    if base is None or current is None:
        stack.status = "added" if base is None else "removed"
        listing = _resources(current or base or {}, {}, only_new=False)
        (stack.added if base is None else stack.removed).extend(listing)
        return stack
    hashes = _asset_hashes(base) | _asset_hashes(current)
    old, new = base.get("Resources", {}), current.get("Resources", {})
    stack.added = _resources(current, base, only_new=True)
    stack.removed = _resources(base, current, only_new=True)
    for logical_id in sorted(old.keys() & new.keys()):
        if old[logical_id] != new[logical_id]:
            stack.changed.append(_changed(logical_id, old[logical_id], new[logical_id], hashes))
    for section in sorted((base.keys() | current.keys()) - {"Resources"}):
        line = _section_change(section, base.get(section), current.get(section), hashes)
        if line:
            stack.sections.append(line)
    return stack


def _resources(template: Template, other: Template, *, only_new: bool) -> list[Resource]:
    """The template's resources, or with only_new those whose logical ID `other` lacks."""
    theirs = other.get("Resources", {})
    return [
        Resource(logical_id, body["Type"], body.get("DeletionPolicy"))
        for logical_id, body in sorted(template.get("Resources", {}).items())
        if not (only_new and logical_id in theirs)
    ]


def _changed(
    logical_id: str, old: Mapping[str, Any], new: Mapping[str, Any], hashes: set[str]
) -> Changed:
    old_props, new_props = old.get("Properties", {}), new.get("Properties", {})
    properties = tuple(
        key
        for key in sorted(old_props.keys() | new_props.keys())
        if _normalized(old_props.get(key), hashes) != _normalized(new_props.get(key), hashes)
    )
    policies = tuple(
        f"{policy} {old.get(policy, '(none)')} -> {new.get(policy, '(none)')}"
        for policy in POLICIES
        if old.get(policy) != new.get(policy)
    )
    others = (old.keys() | new.keys()) - {"Type", "Properties", *POLICIES}
    attributes = tuple(
        key
        for key in sorted(others)
        if _normalized(old.get(key), hashes) != _normalized(new.get(key), hashes)
    )
    return Changed(
        logical_id,
        new["Type"],
        old_type=old["Type"] if old["Type"] != new["Type"] else None,
        properties=properties,
        policies=policies,
        attributes=attributes,
        asset=_asset_hashes(old) != _asset_hashes(new),
    )


def _section_change(section: str, old: Any, new: Any, hashes: set[str]) -> str:
    """One line for a template section other than Resources that differs, else ""."""
    old, new = _normalized(old, hashes), _normalized(new, hashes)
    if old == new:
        return ""
    if not (isinstance(old, dict | None) and isinstance(new, dict | None)):
        return f"{section}: changed"
    old, new = old or {}, new or {}
    parts = [
        f"{what} {', '.join(sorted(keys))}"
        for what, keys in (
            ("added", new.keys() - old.keys()),
            ("removed", old.keys() - new.keys()),
            ("changed", {k for k in old.keys() & new.keys() if old[k] != new[k]}),
        )
        if keys
    ]
    return f"{section}: {'; '.join(parts)}"


def _removal_error(stack: str, resource: Resource, renamed: list[str]) -> str:
    policy = resource.deletion_policy
    if policy in ("Retain", "RetainExceptOnCreate"):
        fate = f"orphans it (DeletionPolicy {policy}) and its replacement starts empty"
    elif policy == "Snapshot":
        fate = "deletes it after a final snapshot"
    else:
        fate = "deletes it"
    hint = f" (added as {', '.join(renamed)}?)" if renamed else ""
    return f"{stack}: {resource.type} {resource.logical_id} is gone{hint}: the next deploy {fate}"


def _asset_hashes(value: Any) -> set[str]:
    return set(ASSET_HASH.findall(json.dumps(value)))


def _normalized(value: Any, hashes: set[str]) -> Any:
    """`value` with every asset hash (and its short form) replaced by ASSET."""
    if isinstance(value, str):
        for digest in hashes:
            value = value.replace(digest, ASSET)
        for digest in hashes:
            value = value.replace(digest[:SHORT_HASH], ASSET)
        return value
    if isinstance(value, dict):
        return {key: _normalized(item, hashes) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalized(item, hashes) for item in value]
    return value


def render(env: str, diff: TemplatesDiff) -> list[str]:
    """The report's lines for one environment."""
    if diff.unchanged:
        return [f"{env}: no change ({len(diff.stacks)} stacks)"]
    lines = [f"{env}:"]
    for stack in diff.stacks:
        if stack.unchanged:
            lines.append(f"  {stack.name}: no change")
            continue
        counts = [
            f"{len(items)} {what}"
            for what, items in (
                ("added", stack.added),
                ("removed", stack.removed),
                ("changed", stack.changed),
            )
            if items
        ]
        status = f"stack {stack.status}, " if stack.status else ""
        lines.append(f"  {stack.name}: {status}{', '.join(counts) or 'no resource changed'}")
        for resource in stack.added:
            lines.append(f"    + {resource.type} {resource.logical_id}")
        for resource in stack.removed:
            stateful = " (stateful)" if resource.type in STATEFUL_TYPES else ""
            lines.append(f"    - {resource.type} {resource.logical_id}{stateful}")
        for change in stack.changed:
            what = [f"type {change.old_type} -> {change.type}"] if change.old_type else []
            what += [", ".join(change.properties)] if change.properties else []
            what += list(change.policies) + list(change.attributes)
            what += ["asset changed"] if change.asset else []
            lines.append(f"    ~ {change.type} {change.logical_id}: {'; '.join(what)}")
        lines += [f"    {line}" for line in stack.sections]
    return lines


class SynthError(Exception):
    """app.py failed in one tree; the message says which and why."""


@dataclass(frozen=True)
class Tree:
    """A checkout to synthesize: its project directory and what it reads."""

    label: str
    root: Path
    config_dir: Path

    def node_bin(self) -> Path:
        """Its pinned Node.js and CDK CLI, or this tree's when the checkout has none (a
        fresh worktree has no node_modules)."""
        own = self.root / "node_modules" / ".bin"
        return own if own.is_dir() else ROOT / "node_modules" / ".bin"


def synthesize(tree: Tree, env: str, outdir: Path) -> dict[str, dict[str, Any]]:
    """The environment's templates by stack name, from the tree's own app.py run as
    `cdk synth` runs it: cdk.json's context (its feature flags) under env and config_dir."""
    cdk_json = json.loads((tree.root / "cdk.json").read_text())
    context = {**cdk_json.get("context", {}), "env": env, "config_dir": str(tree.config_dir)}
    child_env = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps(context),
        "CDK_OUTDIR": str(outdir),
        "PATH": os.pathsep.join([str(tree.node_bin()), os.environ.get("PATH", "")]),
        # The virtual environment installs worker_image/ in editable mode from this tree;
        # the tree's own copy comes first so each side imports its own celery_service.
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(tree.root / "worker_image"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    try:
        result = subprocess.run(
            [sys.executable, str(tree.root / "app.py")],
            cwd=tree.root,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=SYNTH_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SynthError(f"{tree.label}: {env}: app.py took over {exc.timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join(f"  {line}" for line in result.stderr.strip().splitlines()[-15:])
        raise SynthError(f"{tree.label}: {env}: app.py exited {result.returncode}\n{tail}")
    return {
        path.name.removesuffix(".template.json"): json.loads(path.read_text())
        for path in sorted(outdir.glob("*.template.json"))
    }


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SynthError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (a CI job cancelled) unwinds like Ctrl-C, so the worktree is removed too."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: nothing to restore
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _worktree(commit: str, scratch: Path) -> Iterator[Path]:
    """A detached worktree of `commit`, removed afterwards whatever happens."""
    path = scratch / "base"
    _git("worktree", "add", "--quiet", "--detach", str(path), commit)
    try:
        yield path
    finally:
        # --force: the synthesis leaves __pycache__ behind in it.
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
            capture_output=True,
            check=False,
        )


def _base_config_dir(config_dir: Path, base_root: Path) -> tuple[Path, str]:
    """The config directory the base reads, and a note when it is not the base's own: a
    config inside the repository is read from each tree's copy, one outside from the same
    directory for both; one the base does not have (untracked, new) from this tree's."""
    if not config_dir.is_relative_to(ROOT):
        return config_dir, ""
    own = base_root / config_dir.relative_to(ROOT)
    if own.is_dir():
        return own, ""
    missing = config_dir.relative_to(ROOT)
    return config_dir, f"the base has no {missing}: both sides read this tree's"


def run(base_ref: str, config_dir: Path, envs: Sequence[str]) -> int:
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{base_ref}^{{commit}}")
    except SynthError:
        raise SynthError(f"{base_ref!r} names no commit of this repository") from None
    short = _git("rev-parse", "--short", commit)
    print(f"templates at {base_ref} ({short}) -> the work tree; config {_shown(config_dir)}")
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="template-diff-")))
        worktree = stack.enter_context(_worktree(commit, scratch))
        # The project may sit below the repository's top level; so does the worktree's copy.
        base_root = worktree / _git("rev-parse", "--show-prefix")
        base_config, note = _base_config_dir(config_dir, base_root)
        if note:
            print(f"note: {note}")
        trees = (Tree(base_ref, base_root, base_config), Tree("work tree", ROOT, config_dir))
        jobs = [
            (tree, env, scratch / f"{side}-{env}")
            for env in envs
            for side, tree in enumerate(trees)
        ]
        # Each synthesis is a child process of its own: two at a time halve the wait. A
        # failure cancels the ones not started.
        pool = ThreadPoolExecutor(max_workers=2)
        try:
            futures = [pool.submit(synthesize, tree, env, outdir) for tree, env, outdir in jobs]
            templates = [future.result() for future in futures]
        finally:
            pool.shutdown(cancel_futures=True)
    errors, differing = [], 0
    for index, env in enumerate(envs):
        diff = compare(templates[2 * index], templates[2 * index + 1])
        print("\n".join(render(env, diff)))
        errors += [f"ERROR {env}: {error}" for error in diff.errors]
        differing += sum(not stack.unchanged for stack in diff.stacks)
    print(
        f"{len(envs)} environment(s): {differing} stack(s) differ, "
        f"{len(errors)} stateful resource(s) lose their logical ID"
    )
    for error in errors:
        print(error)
    return 1 if errors else 0


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", default="HEAD", help="the git ref to compare with (HEAD)")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="the app's config")
    parser.add_argument(
        "--env", action="append", help="an environment to compare (repeatable; default: all)"
    )
    args = parser.parse_args(argv)
    config_dir = args.config_dir.resolve()
    envs = args.env or available_environments(config_dir)
    if not envs:
        print(f"no environments in {config_dir}", file=sys.stderr)
        return 2
    try:
        with _terminate_as_exit():
            return run(args.base, config_dir, envs)
    except SynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130  # the worktree and the outputs are gone already


if __name__ == "__main__":
    sys.exit(main())
