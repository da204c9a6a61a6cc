"""Load one environment's settings: `<config dir>/catalog.toml` overlaid with `<env>.toml`.

The catalog declares the queues and worker groups once; an environment file sets what is
specific to it (sizes, network, Redis) and may override any catalog value, for example a
worker group's `max_tasks` (a setting that stands in for others replaces them: REPLACES).
The merged result is validated by `EnvironmentConfig`, and any problem is raised as a
`ConfigError` with one line per problem naming the environment, the field and what is
allowed.
"""

from __future__ import annotations

import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from celery_service.catalog import QUEUE_NAME, TIME_LIMITS
from config import model
from config.model import EnvironmentConfig, WorkerGroupConfig

__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "EnvironmentConfig",
    "WorkerGroupConfig",
    "available_environments",
    "load_environment",
    "parse_environment",
]

# The config directory used when none is given: the sample app's (examples/samples). A team
# points the tools at its own with CONFIG=<dir> (make) or `-c config_dir=<dir>` (cdk).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "examples" / "samples" / "config"
CATALOG_FILE = "catalog.toml"


# What each name pattern of the model means, in words.
PATTERN_HINTS = {
    QUEUE_NAME: "lowercase letters, digits, '_', '.' or '-', starting with a letter, "
    "at most 63 characters",
    model.GROUP_NAME: "lowercase letters, digits or '-', starting with a letter, "
    "at most 24 characters",
    model.ENV_NAME: "lowercase letters, digits or '-', starting with a letter, 2-16 characters",
    model.PROJECT_NAME: "lowercase letters, digits or '-', starting with a letter, 2-24 characters",
    model.ACCOUNT_ID: "a 12-digit AWS account id",
    model.REGION: "an AWS region such as eu-west-1",
    model.VPC_ID: "a VPC id such as vpc-0123456789abcdef0",
    model.NODE_TYPE: "an ElastiCache node type such as cache.t4g.micro",
    model.EMAIL: "an email address such as ops@example.com",
}


# Tables keyed by names that may contain dots (task names, queue names).
DOTTED_NAMES = ("tasks", "queues")


class ConfigError(Exception):
    """An environment's settings are invalid; the message is meant for the user as is."""


def available_environments(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.toml") if p.name != CATALOG_FILE)


def load_environment(
    name: str, config_dir: Path = CONFIG_DIR, image_digest: str | None = None
) -> EnvironmentConfig:
    """Read, merge and validate the settings of environment `name`; `image_digest` (a
    deploy's `IMAGE_DIGEST`) sets `app.image.digest` of a config that names a repository."""
    env_file = config_dir / f"{name}.toml"
    if name == Path(CATALOG_FILE).stem or not env_file.is_file():
        known = ", ".join(available_environments(config_dir)) or "none"
        raise ConfigError(f"unknown environment {name!r}; known environments: {known}")
    if not (config_dir / CATALOG_FILE).is_file():
        raise ConfigError(
            f"{name}: {config_dir / CATALOG_FILE} is missing: it declares the app, its queues "
            "and worker groups, which every environment file overlays"
        )
    catalog = _read_toml(name, config_dir / CATALOG_FILE)
    overrides = _read_toml(name, env_file)
    _check_overrides(name, env_file.name, catalog, overrides)
    merged = _merge(catalog, overrides)
    if image_digest:
        merged = _merge(merged, {"app": {"image": {"digest": image_digest}}})
    return parse_environment(name, merged, config_dir)


def parse_environment(
    name: str, data: dict[str, Any], config_dir: Path = CONFIG_DIR
) -> EnvironmentConfig:
    """Validate already-merged settings; `name` is the environment they belong to, and
    relative paths in them are relative to `config_dir`."""
    data = _resolve_paths(data, config_dir)
    if "name" in data:
        raise ConfigError(f"{name}: name: not a setting, the environment is named by its file")
    try:
        return EnvironmentConfig.model_validate({**data, "name": name})
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(name, err) for err in exc.errors())) from None


def _check_overrides(
    env: str, file: str, catalog: dict[str, Any], overrides: dict[str, Any]
) -> None:
    """An environment file adjusts the catalog's worker groups; it cannot add one (a typo
    such as [worker_groups.gneral] would otherwise be a new group missing its queues)."""
    groups = catalog.get("worker_groups")
    if not isinstance(groups, dict) or not isinstance(overrides.get("worker_groups"), dict):
        return
    stray = [group for group in overrides["worker_groups"] if group not in groups]
    if stray:
        raise ConfigError(
            "\n".join(
                f"{env}: {file}: worker_groups.{group}: not a catalog group; groups are: "
                f"{', '.join(groups)}"
                for group in stray
            )
        )


def _resolve_paths(data: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """A relative `app.image.build_dir` is relative to the config directory, wherever the
    CDK app runs from."""
    image = data.get("app", {}).get("image") if isinstance(data.get("app"), dict) else None
    if isinstance(image, dict) and isinstance(image.get("build_dir"), str):
        build_dir = (config_dir / image["build_dir"]).resolve()
        data = {**data, "app": {**data["app"], "image": {**image, "build_dir": str(build_dir)}}}
    return data


def _read_toml(env: str, path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{env}: {path.name}: not valid TOML: {exc}") from None


# Settings that stand in for others (TOML cannot unset a key): where an environment file
# changes one of the first, the catalog's settings of the second at the same place are
# dropped. So one environment can build its image while another promotes a prebuilt one, a
# schedule can run on a cron line in one and every few seconds in another, and a group whose
# pool an environment changes takes its limits and recycling from that file or the new
# pool's defaults, not those the catalog chose for the other pool.
POOL_SETTINGS = frozenset(
    {*TIME_LIMITS, "longest_task_s", "max_tasks_per_child", "max_memory_per_child_mib"}
)
# What an unset trigger of REPLACES means: setting it to this is no change.
IMPLIED = {"pool": WorkerGroupConfig.model_fields["pool"].default}
REPLACES: dict[tuple[str, ...], tuple[tuple[frozenset[str], frozenset[str]], ...]] = {
    ("app", "image"): (
        (frozenset({"build_dir"}), frozenset({"repository", "digest"})),
        (frozenset({"repository", "digest"}), frozenset({"build_dir", "build_args"})),
    ),
    ("schedules", "*"): (
        (frozenset({"every_s"}), frozenset({"cron"})),
        (frozenset({"cron"}), frozenset({"every_s"})),
    ),
    ("worker_groups", "*"): ((frozenset({"pool"}), POOL_SETTINGS),),
}


def _merge(
    catalog: dict[str, Any], overrides: dict[str, Any], path: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Tables merge key by key and any other value (including a list) replaces the catalog's,
    except that a changed setting drops the catalog's settings it replaces (REPLACES)."""
    changed = {k for k, v in overrides.items() if catalog.get(k, IMPLIED.get(k)) != v}
    replaced = {
        key
        for pattern, rules in REPLACES.items()
        if _matches(pattern, path)
        for keys, gone in rules
        if keys & changed
        for key in gone
    }
    merged = {k: v for k, v in catalog.items() if k not in replaced}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, (*path, key))
        else:
            merged[key] = value
    return merged


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    return len(pattern) == len(path) and all(
        p in ("*", k) for p, k in zip(pattern, path, strict=True)
    )


def _describe(env: str, err: Any) -> str:
    loc = tuple(str(part) for part in err["loc"])
    kind = err["type"]
    if loc[-1:] == ("[key]",):  # a bad name used as a table key, e.g. [worker_groups.Bad]
        loc = (*loc[:-2], f"<name {loc[-2]!r}>")
    where = ".".join(loc)
    prefix = f"{env}: {where}: " if where else f"{env}: "
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        if loc[0] in DOTTED_NAMES and len(loc) >= 3 and isinstance(err.get("input"), dict):
            # A table where a setting belongs: TOML reads [tasks.shop.send_email] as tables
            # nested in each other, as deep as the name has dots.
            parts, table = list(loc[1:]), err["input"]
            while len(table) == 1 and isinstance(nested := next(iter(table.values())), dict):
                parts.append(next(iter(table)))
                table = nested
            hint += f'; a name with dots is quoted: [{loc[0]}."{".".join(parts)}"]'
        return f"{prefix}unknown setting{hint}"
    if kind == "missing":
        return f"{prefix}required setting is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        message = "must be " + PATTERN_HINTS.get(pattern, f"text matching {pattern}")
    if kind.startswith(
        ("string_", "int_", "literal_", "bool_", "list_", "dict_", "greater", "less")
    ):
        got = err.get("input")
        if not isinstance(got, dict | list):
            message += f" (got {got!r})"
    return f"{prefix}{message}"


def _fields_at(loc: tuple[str, ...]) -> list[str]:
    """Names of the settings allowed at `loc`, found by walking the model types."""
    model: Any = EnvironmentConfig
    expect_key = False
    for part in loc:
        if expect_key:  # a free-form key of a dict[str, Model], e.g. a worker group name
            expect_key = False
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model, expect_key = _unwrap(field.annotation)
    if expect_key or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [name for name in model.model_fields if name != "name"]


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(model type, whether a dict key comes next) for Model, Model | None, dict[k, Model]."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return typing.get_args(annotation)[1], True
    if origin in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (models[0], False) if len(models) == 1 else (None, False)
    return annotation, False
