"""`make local` (tools/run_local.py): the platform comes up on loopback, serves a task, keeps
Flower behind its password, and leaves nothing running once it stops."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from config import load_environment
from tools import run_local

ROOT = Path(__file__).resolve().parent.parent
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


def test_local_platform_serves_a_task_and_stops_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.run_local", "--env", "dev", "--duration", "25"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        assert output.banner.wait(timeout=60), f"no banner; output:\n{output.text}"
        text = output.text
        flower = re.search(
            r"Flower:\s+(http://127\.0\.0\.1:(\d+)/)\s+user (\S+)\s+password (\S+)", text
        )
        broker = re.search(r"broker:\s+redis://127\.0\.0\.1:(\d+)/0", text)
        pids = re.search(r"pids:\s+(.+)", text)
        submit = re.search(r"Submit a sample task.*\n\s+(.+)", text)
        assert flower, text
        assert broker, text
        assert pids, text
        assert submit, text
        url, flower_port, user, password = flower[1], int(flower[2]), flower[3], flower[4]
        started = {name: int(pid) for name, pid in (item.split("=") for item in pids[1].split())}
        assert set(started) == {"redis-server", "worker-general", "worker-batch", "beat", "flower"}
        assert text.count(password) == 1, "the Flower password is printed once"

        # The printed command, as a user would paste it, from another folder.
        result = subprocess.run(
            ["/bin/sh", "-c", submit[1]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=40,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "49"

        for path in ("", "api/workers"):
            assert status(url + path) == 401
            assert status(url + path, (user, "wrong")) == 401
            assert status(url + path, (user, password)) == 200

        assert process.wait(timeout=60) == 0, output.text
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        output.join()
    assert "run_local: stopped" in output.text
    for name, pid in started.items():
        assert not group_alive(pid), f"{name} (pid {pid}) or one of its children still runs"
    assert not port_open(int(broker[1]))
    assert not port_open(flower_port)


def test_a_process_that_dies_at_start_fails_the_start(tmp_path: Path) -> None:
    """A worker group missing from the catalog makes its worker exit with code 2 at once."""
    tool = run_local
    platform = tool.LocalPlatform("dev", tmp_path, tmp_path)
    platform.groups.append("missing")
    try:
        platform.start_redis()
        platform.start_celery()
        with pytest.raises(tool.StartError, match=r"worker-missing exited with code 2") as info:
            platform.wait_ready(threading.Event(), timeout=40)
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
    with pytest.raises(tool.StartError, match="redis-server is missing"):
        tool.LocalPlatform("dev", tmp_path, tmp_path).start_redis()


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
