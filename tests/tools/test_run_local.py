"""`make local` (tools/run_local.py) with each example app: the platform comes up on loopback
from the app's own config and code, serves its tasks, keeps Flower behind its password, and
leaves nothing running once it stops, however it is stopped."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_service import contract
from config import load_environment
from tests.synth import ROOT
from tests.worker.harness import wait_for
from tools import run_local

BANNER_END = "Stop with Ctrl-C."


class Output:
    """Drains the tool's stdout on a thread so it never blocks on a full pipe."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.banner = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)
            if line.strip() == BANNER_END:
                self.banner.set()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> None:
        self._thread.join(timeout=10)


def status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            code: int = response.status
            return code
    except urllib.error.HTTPError as exc:
        return exc.code


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the id now belongs to someone else's process group
        return False
    return True


# The example apps: each has its config directory (examples/ci is a workflow, not an app).
EXAMPLES = {path.parent.name: path.parent for path in sorted((ROOT / "examples").glob("*/config"))}


def started_local(config_dir: Path, *extra: str, stdout: Any = subprocess.PIPE) -> Any:
    return subprocess.Popen(
        [sys.executable, "-m", "tools.run_local", "--config-dir", str(config_dir), *extra],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
    )


def banner_values(text: str) -> dict[str, Any]:
    flower = re.search(
        r"Flower:\s+(http://127\.0\.0\.1:(\d+)/)\s+user (\S+)\s+password (\S+)", text
    )
    broker = re.search(r"broker:\s+redis://127\.0\.0\.1:(\d+)/0", text)
    pids = re.search(r"pids:\s+(.+)", text)
    submit = re.search(r"Publish a task.*\n\s+(.+)", text)
    assert flower, text
    assert broker, text
    assert pids, text
    assert submit, text
    return {
        "url": flower[1],
        "flower_port": int(flower[2]),
        "user": flower[3],
        "password": flower[4],
        "redis_port": int(broker[1]),
        "pids": {name: int(pid) for name, pid in (item.split("=") for item in pids[1].split())},
        "submit": submit[1],
    }


def assert_all_stopped(values: dict[str, Any]) -> None:
    for name, pid in values["pids"].items():
        assert not group_alive(pid), f"{name} (pid {pid}) or one of its children still runs"
    assert not port_open(values["redis_port"])
    assert not port_open(values["flower_port"])


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_an_example_app_runs_locally_from_its_config_and_stops_cleanly(
    example: str, tmp_path: Path
) -> None:
    """Its own config directory and code: a worker per group of its catalog, beat firing its
    schedule, Flower behind basic auth, and its producer's chain, chord and progress."""
    config_dir = EXAMPLES[example] / "config"
    config = load_environment("dev", config_dir)
    process = started_local(config_dir, "--env", "dev")
    output = Output(process)
    values: dict[str, Any] = {}
    try:
        assert output.banner.wait(timeout=90), f"no banner; output:\n{output.text}"
        values = banner_values(output.text)
        groups = {f"worker-{g}" for g in config.worker_groups}
        assert set(values["pids"]) == {"redis-server", "beat", "flower"} | groups
        assert output.text.count(values["password"]) == 1, "the Flower password is printed once"
        env_file = values["submit"].split("&&")[0].strip("( .")

        # The app's producer, as a user would run it from another folder with the printed
        # environment: enqueue, poll progress, a chain and a chord.
        package = config.app.task_modules[0].split(".")[0]
        result = subprocess.run(
            ["/bin/sh", "-c", f". {env_file} && {sys.executable} -m {package}.producer"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert {"chain", "chord", "progress"} <= set(summary)

        # The printed command publishes by name: the first scheduled task takes no arguments.
        task = next(iter(config.schedules.values())).task
        command = values["submit"].replace("<task name> [JSON args...]", task)
        sent = subprocess.run(
            ["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert json.loads(sent.stdout.splitlines()[-1])["state"] == "SUCCESS"

        # Beat fires every schedule due within the run.
        client = redis.Redis(host="127.0.0.1", port=values["redis_port"], socket_timeout=5)
        short = [name for name, s in config.schedules.items() if s.every_s and s.every_s <= 10]
        assert short, "the example's dev config runs a schedule often"
        for name in short:
            key = f"{contract.REDBEAT_KEY_PREFIX}{name}"

            def ran(key: str = key) -> bool:
                meta = json.loads(client.hget(key, "meta") or "{}")
                return int(meta.get("total_run_count", 0)) >= 1

            wait_for(ran, 30, f"beat to run {name}")
        url, user, password = values["url"], values["user"], values["password"]
        for path in ("", "api/workers"):
            assert status(url + path) == 401
            assert status(url + path, (user, "wrong")) == 401
            assert status(url + path, (user, password)) == 200

        process.send_signal(signal.SIGINT)  # Ctrl-C, however long the checks took
        assert process.wait(timeout=90) == 0, output.text
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        output.join()
    assert "run_local: stopped" in output.text
    assert_all_stopped(values)


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:  # the parent's pid
                found.add(int(stat.parent.name))
    return found


@pytest.mark.parametrize("stop", ["ctrl-c while starting", "ctrl-c with a closed stdout"])
def test_ctrl_c_always_stops_everything(stop: str) -> None:
    """`make local | tee log` and an impatient Ctrl-C: the signal arrives before everything
    is up, or once the tool's stdout is gone; nothing may be left running either way."""
    read, write = os.pipe()
    process = started_local(EXAMPLES["samples"] / "config", "--env", "dev", stdout=write)
    os.close(write)
    reader = os.fdopen(read)
    groups: set[int] = set()
    try:
        if "closed" in stop:
            text = ""
            while "Stop with Ctrl-C." not in text:
                line = reader.readline()
                assert line, f"the tool ended early:\n{text}"
                text += line
            groups = set(banner_values(text)["pids"].values())
            reader.close()  # as `tee` does when the terminal's Ctrl-C reaches it first
        else:
            wait_for(lambda: len(children_of(process.pid)) >= 2, 30, "processes to start")
            groups = children_of(process.pid)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) in (0, 1)
    finally:
        if process.poll() is None:
            process.kill()
        if not reader.closed:
            reader.close()
    # Each service leads its own process group: pool children are in their leader's.
    wait_for(lambda: not any(group_alive(g) for g in groups), 10, "every process to stop")


def test_a_process_that_dies_at_start_fails_the_start(tmp_path: Path) -> None:
    """A worker group missing from the catalog makes its worker exit with code 2 at once."""
    tool = run_local
    config = load_environment("dev")
    platform = tool.LocalPlatform(config, tool.app_dir_of(config, None), tmp_path, tmp_path)
    platform.groups.append("missing")
    try:
        platform.start_redis()
        platform.start_celery()
        with pytest.raises(tool.StartError, match=r"worker-missing exited with code 2") as info:
            platform.wait_ready(tool.StopRequest(), timeout=40)
        assert "CELERY_WORKER_GROUP" in str(info.value), "the worker's own error is shown"
    finally:
        platform.stop_all()
    for service in platform.services:
        assert service.process.poll() is not None
        assert not group_alive(service.process.pid)


def test_a_missing_redis_server_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = run_local
    monkeypatch.setenv("PATH", str(tmp_path))
    config = load_environment("dev")
    with pytest.raises(tool.StartError, match="redis-server is missing"):
        tool.LocalPlatform(config, None, tmp_path, tmp_path).start_redis()


def test_print_env_writes_a_compose_env_file(capsys: pytest.CaptureFixture[str]) -> None:
    tool = run_local
    values: list[dict[str, str]] = []
    for _ in range(2):
        assert tool.main(["--env", "dev", "--print-env"]) == 0
        lines = capsys.readouterr().out.splitlines()
        pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
        for key, value in pairs:
            # Compose takes single-quoted values literally.
            assert value.startswith("'"), key
            assert value.endswith("'"), key
            assert "'" not in value[1:-1], key
        values.append({key: value[1:-1] for key, value in pairs})
    first, second = values
    assert set(first) == {"CELERY_CATALOG", "FLOWER_BASIC_AUTH"}
    assert json.loads(first["CELERY_CATALOG"]) == load_environment("dev").runtime_catalog()
    user, password = first["FLOWER_BASIC_AUTH"].split(":")
    assert user == "admin"
    assert len(password) >= 24
    assert first["FLOWER_BASIC_AUTH"] != second["FLOWER_BASIC_AUTH"], "a new password each time"
