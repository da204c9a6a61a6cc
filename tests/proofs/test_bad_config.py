"""Malformed configs: every leaf of the shipped settings given a wrong type, a negative
number or removed, every table given an unknown key, broken TOML; the same for the worker's
CELERY_CATALOG. Each gives a clear error (one line per problem, naming the field, no
traceback) or, for a removed setting with a default, a valid config.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_service.settings import Settings as WorkerSettings
from celery_service.settings import SettingsError
from config import CONFIG_DIR, ConfigError, load_environment, parse_environment
from tests.proofs.figures import EXHAUSTIVE, FIGURES
from tests.synth import run_app

SECTION = "Bad input: configs"
# Values of every JSON/TOML type; each leaf gets those of another type than its own.
SUBSTITUTES: list[Any] = ["text", "", 3, -1, 2.5, True, None, [], ["x"], {}, {"k": 1}]
Path_ = tuple[str, ...]


def merged(env: str) -> dict[str, Any]:
    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    with (CONFIG_DIR / "catalog.toml").open("rb") as fh:
        catalog = tomllib.load(fh)
    with (CONFIG_DIR / f"{env}.toml").open("rb") as fh:
        return merge(catalog, tomllib.load(fh))


def leaves(data: dict[str, Any], prefix: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def tables(data: dict[str, Any], prefix: Path_ = ()) -> Iterator[Path_]:
    yield prefix
    for key, value in data.items():
        if isinstance(value, dict):
            yield from tables(value, (*prefix, key))


def mutated(data: dict[str, Any], path: Path_, value: Any = ..., remove: bool = False) -> Any:
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    if remove:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def same_type(a: Any, b: Any) -> bool:
    number = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, number) and isinstance(b, number):
        return isinstance(a, int) == isinstance(b, int)
    return type(a) is type(b)


def valid_alternative(shipped: Any, variant: Any) -> bool:
    """A substitute that is a legal value of the field: null for an optional setting, or a
    positive whole number where the shipped value is an unset optional number."""
    if variant is None:
        return True
    whole = isinstance(variant, int) and not isinstance(variant, bool)
    return shipped is None and whole and variant > 0


def check_message(message: str, env: str, path: Path_) -> None:
    """One line per problem, each naming the environment; one names the field or table."""
    lines = message.splitlines()
    assert lines, "empty error"
    assert "Traceback" not in message
    assert all(line.startswith(f"{env}: ") for line in lines), message
    names = {path[-1], ".".join(path[:-1])} - {""}
    assert any(name in message for name in names), f"{'.'.join(path)} not named in: {message}"


ENVIRONMENTS = ["dev", "staging", "prod"] if EXHAUSTIVE else ["dev"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_setting_wrong_typed_negative_or_missing_gets_a_clear_error(env: str) -> None:
    base = merged(env)
    parse_environment(env, base)  # the shipped config itself is valid
    tried = rejected = accepted = 0
    for path, value in leaves(base):
        variants = [v for v in SUBSTITUTES if not same_type(v, value)]
        if isinstance(value, int | float) and not isinstance(value, bool):
            variants.append(-abs(value) - 1)  # negative, of the right type
        for variant in variants:
            tried += 1
            try:
                parse_environment(env, mutated(base, path, variant))
            except ConfigError as exc:
                check_message(str(exc), env, path)
                rejected += 1
                continue
            assert valid_alternative(value, variant), f"{path} = {variant!r} was accepted"
            accepted += 1
        # Removed: a default applies (the config stays valid) or the error says it is needed.
        tried += 1
        try:
            parse_environment(env, mutated(base, path, remove=True))
            accepted += 1
        except ConfigError as exc:
            check_message(str(exc), env, path)
            rejected += 1
    FIGURES.count(SECTION, "settings mutated (wrong type, negative, removed)", tried)
    FIGURES.count(SECTION, "rejected with a one-line-per-problem error", rejected)
    FIGURES.count(
        SECTION, "accepted: removed with a default, or null/valid for an option", accepted
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_an_unknown_key_in_any_table_is_named(env: str) -> None:
    base = merged(env)
    count = 0
    for path in tables(base):
        count += 1
        with pytest.raises(ConfigError) as raised:
            parse_environment(env, mutated(base, (*path, "bogus_key"), {"x": 1}))
        message = str(raised.value)
        assert "bogus_key" in message, message
        assert all(line.startswith(f"{env}: ") for line in message.splitlines())
    FIGURES.count(SECTION, "unknown keys, one per table", count)


BROKEN_TOML = [
    "[redis\nreplicas = 1\n",
    "[redis]\nreplicas = = 2\n",
    "[redis]\nreplicas = 1\nreplicas = 2\n",
    'region = "eu-west-1\n',
    "[worker_groups.general]\nqueues = [default]\n",
    "[[redis]]\nreplicas = 1\n",
    "\x00\x01binary",
    "max_tasks = 3\n[worker_groups.general]\nmax_tasks = 1e999999\n",
    "[worker_groups.general]\nmax_tasks = 0x\n",
    'region = """\n',
]


def test_broken_toml_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "catalog.toml").write_bytes((CONFIG_DIR / "catalog.toml").read_bytes())
    for index, text in enumerate(BROKEN_TOML):
        (tmp_path / "qa.toml").write_text(text)
        with pytest.raises(ConfigError) as raised:
            load_environment("qa", config_dir=tmp_path)
        lines = str(raised.value).splitlines()
        assert lines, index
        assert all(line.startswith("qa: ") for line in lines), (index, lines)
        assert "Traceback" not in str(raised.value)
    FIGURES.count(SECTION, "broken TOML files", len(BROKEN_TOML))


def test_synth_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    """The user-facing path: `cdk synth` runs app.py, which prints one line and exits 1."""
    cases = [
        'region = "eu-west-1"\n[redis]\nreplicas = "two"\n',
        "[redis\n",
        'region = "eu-west-1"\n[worker_groups.general]\nconcurrency = -4\n',
    ]
    if not EXHAUSTIVE:
        cases = cases[:1]  # tests/config/test_config.py covers another; each run costs seconds
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "catalog.toml").write_bytes((CONFIG_DIR / "catalog.toml").read_bytes())
    for text in cases:
        (config_dir / "qa.toml").write_text(text)
        result = run_app(tmp_path / "out", {"env": "qa", "config_dir": str(config_dir)})
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("config error: qa: "), result.stderr
    FIGURES.count(SECTION, "bad configs through app.py (synth)", len(cases))


# ---------------------------------------------------------------- the worker's settings


def worker_env(**overrides: str) -> dict[str, str]:
    env = {
        "CELERY_BROKER_HOST": "127.0.0.1",
        "CELERY_BROKER_PORT": "6379",
        "CELERY_BROKER_TLS": "false",
        "CELERY_CATALOG": json.dumps(load_environment("dev").runtime_catalog()),
        "CELERY_WORKER_GROUP": "general",
        "PATH": os.environ.get("PATH", ""),
    }
    env.update(overrides)
    return env


WORKER_VARIABLES = {
    "CELERY_BROKER_PORT": ["abc", "-1", "70000", "6379.5", " "],
    "CELERY_BROKER_TLS": ["maybe", "2"],
    "CELERY_BROKER_DB": ["x", "-3", "99"],
    "CELERY_WORKER_GROUP": ["gpu", "General", "0"],
    "CELERY_SHUTDOWN_BUDGET_S": ["-1", "soon", "1e9"],
    "CELERY_PROTECTION_MINUTES": ["0", "99999", "x"],
    "DD_DOGSTATSD_PORT": ["x", "0"],
    "CELERY_METRIC_TAGS": ["{", "[1]", '{"a": [1]}'],
    "CELERY_LOG_LEVEL": ["LOUD"],
    "CELERY_CATALOG": ["", "{", "[]", "null", "42", '{"queues": []}'],
}


def test_worker_settings_bad_values_give_one_line_per_problem() -> None:
    WorkerSettings.from_env(worker_env())  # valid as given
    tried = 0
    for variable, values in WORKER_VARIABLES.items():
        for value in values:
            tried += 1
            try:
                WorkerSettings.from_env(worker_env(**{variable: value}))
            except SettingsError as exc:
                message = str(exc)
                assert "Traceback" not in message
                assert message.strip(), f"{variable}={value!r}: empty error"
                continue
            pytest.fail(f"{variable}={value!r} was accepted")
    catalog = load_environment("dev").runtime_catalog()
    for path, value in leaves(catalog):
        for variant in [v for v in SUBSTITUTES if not same_type(v, value)]:
            tried += 1
            text = json.dumps(mutated(catalog, path, variant))
            try:
                WorkerSettings.from_env(worker_env(CELERY_CATALOG=text))
            except SettingsError as exc:
                message = str(exc)
            else:
                assert valid_alternative(value, variant), f"{path} = {variant!r} was accepted"
                continue
            assert all(line.startswith("CELERY_CATALOG") for line in message.splitlines()), (
                path,
                variant,
                message,
            )
    FIGURES.count(SECTION, "worker environment variables and catalog leaves mutated", tried)
