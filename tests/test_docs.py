"""The docs a newcomer follows: every link between them resolves, every `make` target they
name exists, the README maps every doc, and the configuration reference names every
setting."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from config.model import EnvironmentConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces as dashes."""
    found = set()
    for line in markdown.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        missing_anchor = resolved.suffix == ".md" and anchor and anchor not in anchors(resolved)
        if not resolved.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{doc.name}: {broken}"


def test_the_operations_doc_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in ("docs/operations.md", "docs/cost.md"):
        assert f"]({doc}" in readme, doc


def test_the_readme_maps_every_doc() -> None:
    readme = (ROOT / "README.md").read_text()
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert docs
    assert [d.name for d in docs if f"](docs/{d.name})" not in readme] == []


def settings(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf setting of a config model, as a dotted path (`<name>` for a table's keys)."""
    found = []
    for name, field in model.model_fields.items():
        inner = [
            t
            for t in (field.annotation, *typing.get_args(field.annotation))
            for t in (t, *typing.get_args(t))
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if inner:
            keyed = "dict[" in str(field.annotation)
            for sub in dict.fromkeys(inner):
                found += settings(sub, f"{prefix}{name}.{'<name>.' if keyed else ''}")
        else:
            found.append(f"{prefix}{name}")
    return found


def test_the_configuration_reference_names_every_setting() -> None:
    """Each setting has a row of the reference's table that names its section and itself
    (`redis.port`, or `redis.node_type`, `port` in one row)."""
    reference = (ROOT / "docs" / "configuration.md").read_text()
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    assert rows
    words = [
        {word for span in re.findall(r"`([^`]+)`", row) for word in re.findall(r"\w+", span)}
        for row in rows
    ]
    every = settings(EnvironmentConfig)
    assert "worker_groups.<name>.target_wait_s" in every
    # `name` is the environment file's name, not a setting.
    missing = [
        path
        for path in every
        if path != "name"
        and not any({path.split(".")[0], path.rsplit(".", 1)[-1]} <= row for row in words)
    ]
    assert not missing, f"settings the reference does not name: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_make_targets_named_in_docs_exist(doc: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    named = set(re.findall(r"`make (?:-s )?([a-z][\w-]*)", doc.read_text()))
    if doc.name in ("README.md", "operations.md"):
        assert named, "a doc a newcomer follows names its commands"
    assert named <= targets, sorted(named - targets)
