"""The container image runs exactly the Procfile's processes.

The entry point reads the Procfile it is given, so the test runs it with stand-ins for
gunicorn, alembic and connect-access on PATH that print the command line they received,
and compares that with the Procfile's lines as a shell runs them. `docker build` runs only
where a Docker daemon answers.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from bot.resources import SOURCE_ROOT
from bot.slack.health import HealthRoutes

ENTRYPOINT = SOURCE_ROOT / "deploy" / "docker-entrypoint.sh"
PROCFILE = SOURCE_ROOT / "Procfile"
DOCKERFILE = SOURCE_ROOT / "Dockerfile"
PROGRAMS = ("gunicorn", "alembic", "connect-access")


def procfile() -> dict[str, str]:
    lines = [line for line in PROCFILE.read_text().splitlines() if line.strip()]
    return dict((name.strip(), command.strip())
                for name, command in (line.split(":", 1) for line in lines))


@pytest.fixture
def stub_path(tmp_path: Path) -> str:
    """A PATH whose gunicorn, alembic and connect-access print their argv, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in PROGRAMS:
        stub = bin_dir / program
        stub.write_text(f'#!/bin/sh\necho {program}\nfor a in "$@"; do echo "$a"; done\n')
        stub.chmod(0o755)
    return f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"


def run_entrypoint(stub_path: str, *args: str) -> list[str]:
    env = {"PATH": stub_path, "PROCFILE": str(PROCFILE), "PORT": "8123",
           "WEB_CONCURRENCY": "3"}
    completed = subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True,
                               text=True, timeout=30, check=False)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


def as_shell_runs_it(command: str, stub_path: str) -> list[str]:
    env = {"PATH": stub_path, "PORT": "8123", "WEB_CONCURRENCY": "3"}
    completed = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True,
                               timeout=30, check=True)
    return completed.stdout.splitlines()


def test_procfile_has_the_three_processes() -> None:
    processes = procfile()
    assert set(processes) == {"release", "web", "scheduler"}
    assert processes["release"] == "alembic upgrade head"
    assert "--no-control-socket" in processes["web"]


@pytest.mark.parametrize("process", ["release", "web", "scheduler"])
def test_entrypoint_runs_exactly_the_procfile_command(process: str, stub_path: str) -> None:
    expected = as_shell_runs_it(procfile()[process], stub_path)
    assert run_entrypoint(stub_path, process) == expected
    if process == "web":
        assert expected[:1] == ["gunicorn"] and "--no-control-socket" in expected
        assert "0.0.0.0:8123" in expected and "bot.slack.wsgi:create_app()" in expected


def test_entrypoint_runs_any_other_command_as_given(stub_path: str) -> None:
    assert run_entrypoint(stub_path, "connect-access", "check", "--json") == [
        "connect-access", "check", "--json"]


def test_dockerfile_wires_the_procfile_into_the_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert 'ENTRYPOINT ["docker-entrypoint.sh"]' in instructions
    assert "COPY Procfile /app/Procfile" in instructions
    assert re.search(r"PROCFILE=/app/Procfile\b", text)
    assert "COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" in text
    # Installed from the wheel with the pins, never editable.
    assert " -e " not in text and "--constraint /tmp/constraints.txt" in text
    # The image's processes are the Procfile's: the Dockerfile names none of its own.
    for command in procfile().values():
        program = shlex.split(command)[0]
        assert not re.search(rf'CMD \[?"?{re.escape(program)}\b', text)


def _docker_daemon() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker command on this machine"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30,
                          check=False)
    if info.returncode != 0:
        return f"no Docker daemon answers `docker info`: {info.stderr.strip()[:200]}"
    return None


@pytest.mark.slow
def test_docker_image_builds_and_runs_the_cli() -> None:
    reason = _docker_daemon()
    if reason is not None:
        pytest.skip(f"docker build not exercised: {reason}")
    tag = "connect-access:test"
    build = subprocess.run(["docker", "build", "-t", tag, str(SOURCE_ROOT)],
                           capture_output=True, text=True, timeout=1200, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    version = subprocess.run(["docker", "run", "--rm", tag, "connect-access", "--version"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert version.returncode == 0 and version.stdout.startswith("connect-access ")
    no_moto = subprocess.run(["docker", "run", "--rm", tag, "python", "-c", "import moto"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert no_moto.returncode != 0
    release = subprocess.run(["docker", "run", "--rm", "-e", "DATABASE_URL=sqlite:////tmp/x.db",
                              tag, "release"], capture_output=True, text=True, timeout=120,
                             check=False)
    assert release.returncode == 0, release.stderr


def run_healthcheck(tmp_path: Path, cmdline: list[str], path: str,
                    port: int) -> subprocess.CompletedProcess[str]:
    proc1 = tmp_path / "cmdline"
    proc1.write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    env = {"PATH": path, "PROCFILE": str(PROCFILE), "PORT": str(port),
           "HEALTHCHECK_CMDLINE": str(proc1)}
    return subprocess.run(["sh", str(ENTRYPOINT), "healthcheck"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)


def test_healthcheck_of_a_web_container_gets_healthz(tmp_path: Path, stub_path: str) -> None:

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    def slack(environ: Any, start_response: Any) -> list[bytes]:
        raise AssertionError("the probe must not reach the Slack app")

    python_path = f"{Path(sys.executable).parent}{os.pathsep}{stub_path}"
    gunicorn = ["/opt/venv/bin/python", "/opt/venv/bin/gunicorn", "--config",
                "python:bot.gunicorn_conf", "bot.slack.wsgi:create_app()"]
    server = make_server("127.0.0.1", 0, HealthRoutes(slack, lambda: []), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        healthy = run_healthcheck(tmp_path, gunicorn, python_path, server.server_port)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        server.shutdown()
        server.server_close()
    down = run_healthcheck(tmp_path, gunicorn, python_path, server.server_port)
    assert down.returncode != 0
    assert "GET /healthz on port" in down.stderr


def test_healthcheck_of_a_scheduler_container_asks_status_for_this_host(
        tmp_path: Path, stub_path: str) -> None:
    scheduler = ["/opt/venv/bin/python", "/opt/venv/bin/connect-access", "scheduler"]
    result = run_healthcheck(tmp_path, scheduler, stub_path, 3000)
    assert result.returncode == 0, result.stderr
    hostname = subprocess.run(["hostname"], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert result.stdout.splitlines() == ["connect-access", "status", "--host", hostname,
                                          "--quiet"]
    release = run_healthcheck(tmp_path, ["/opt/venv/bin/alembic", "upgrade", "head"],
                              stub_path, 3000)
    assert release.returncode == 0 and release.stdout == ""
