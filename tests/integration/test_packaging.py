"""The bot as a deployer installs it: an sdist, a wheel built from that sdist, installed
without -e into a fresh virtual environment outside the source tree, and run from there.

Slow (a venv and a dependency install): one wheel and one installed venv per session. pip's
cache makes the install itself quick after the first run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from bot.resources import SOURCE_ROOT

pytestmark = pytest.mark.slow

SANDBOX_PACKAGES = {"moto", "flask", "werkzeug", "flask-cors"}
RUNTIME_FILES = ("bot/_data/alembic.ini", "bot/_data/catalog/connect-console.yaml",
                 "bot/_data/catalog/routing.yaml", "bot/_data/migrations/env.py",
                 "bot/_data/migrations/script.py.mako")

CONFIG = textwrap.dedent("""\
    instances:
      - alias: prod
        arn: arn:aws:connect:us-east-1:111122223333:instance/11111111-2222-3333-4444-555555555555
    principals:
      U0ALICE: arn:aws:iam::111122223333:role/alice-admin
    routing:
      tiers:
        read: {channel: C0APPROVALS, approvers: [U0LEAD1]}
        write: {channel: C0APPROVALS, approvers: [U0LEAD1]}
        critical: {channel: C0SECURITY, approvers: [U0SEC1, U0SEC2], approvals: 2}
    """)


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _build(backend_call: str, source: Path, out: Path) -> Path:
    """Run one setuptools build hook in `source`, as pip or `python -m build` would."""
    completed = _run([sys.executable, "-c",
                      f"from setuptools import build_meta; "
                      f"print(build_meta.{backend_call}({str(out)!r}))"], cwd=source)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out / completed.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist of the checkout, and the wheel built from that sdist (so the sdist is
    proven to carry everything the wheel needs)."""
    from importlib.metadata import version

    if Version(version("setuptools")) < Version("77"):
        pytest.fail("setuptools>=77 builds the package (the dev extra has it): run "
                    "`make install`", pytrace=False)
    out = tmp_path_factory.mktemp("dist")
    sdist = _build("build_sdist", SOURCE_ROOT, out)
    unpacked = tmp_path_factory.mktemp("sdist")
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (root,) = unpacked.iterdir()
    wheel = _build("build_wheel", root, out)
    return Built(sdist=sdist, wheel=wheel)


@dataclass(frozen=True)
class Installed:
    bin: Path
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        # Nothing of the checkout's environment leaks in: no PYTHONPATH, no venv, no bot
        # settings from the caller.
        keep = {k: v for k, v in os.environ.items()
                if k.startswith(("PIP_", "LANG", "LC_")) or k in ("PATH", "HOME", "TMPDIR")}
        keep["PATH"] = f"{self.bin}{os.pathsep}{keep.get('PATH', '')}"
        return {**keep, **extra}

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return _run([str(self.bin / args[0]), *args[1:]], cwd=self.home, env=self.env(**env))


@pytest.fixture(scope="session")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    home = tmp_path_factory.mktemp("deploy")
    assert SOURCE_ROOT not in home.parents
    venv = home / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], cwd=home)
    assert created.returncode == 0, created.stderr
    target = Installed(bin=venv / "bin", home=home)
    # --no-compile: pip would byte-compile every module of every dependency (most of the
    # install's time, for modules never imported here); Python compiles what it imports.
    pip = target.run("pip", "install", "--quiet", "--no-compile", str(built.wheel))
    assert pip.returncode == 0, pip.stderr[-3000:]
    yield target


def test_sdist_carries_the_runtime_files(built: Built) -> None:
    with tarfile.open(built.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in ("alembic.ini", "catalog/connect-console.yaml", "catalog/routing.yaml",
                 "migrations/env.py", "migrations/versions/0001_initial_schema.py",
                 "setup.py", "LICENSE", "Procfile", "constraints.txt"):
        assert name in names


def test_wheel_carries_catalog_migrations_and_alembic_config(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(archive.read(next(
            n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    for name in RUNTIME_FILES:
        assert name in names
    versions = {Path(n).name for n in names if n.startswith("bot/_data/migrations/versions/")}
    assert versions == {p.name for p in (SOURCE_ROOT / "migrations" / "versions").glob("*.py")}
    assert metadata["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_runtime_dependencies_are_bounded_and_leave_the_sandbox_out(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        metadata = Parser().parsestr(archive.read(next(
            n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    runtime, demo = [], []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        marker = str(requirement.marker or "")
        if not marker:
            runtime.append(requirement)
        elif 'extra == "demo"' in marker:
            demo.append(requirement)
    assert runtime
    for requirement in runtime:
        assert requirement.name.lower() not in SANDBOX_PACKAGES
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators and "<" in operators, f"{requirement} is not bounded"
    assert {r.name for r in demo} == {"moto"}


def test_constraints_pin_every_runtime_dependency(built: Built, installed: Installed) -> None:
    """The Docker image installs with constraints.txt: it must pin (==) exactly what a
    production install pulls in, and nothing of the sandbox."""
    pins = {}
    for line in (SOURCE_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "=="
            pins[requirement.name.lower().replace("_", "-")] = spec.version
    frozen = installed.run("pip", "freeze", "--exclude", "connect-access")
    assert frozen.returncode == 0, frozen.stderr
    present = {Requirement(line).name.lower().replace("_", "-")
               for line in frozen.stdout.splitlines() if "==" in line}
    assert present <= set(pins), f"not pinned: {sorted(present - set(pins))}"
    assert not SANDBOX_PACKAGES & set(pins)


def test_installed_wheel_migrates_validates_and_checks(installed: Installed) -> None:
    database = installed.home / "bot.db"
    config = installed.home / "connect-access.yaml"
    config.write_text(CONFIG)
    env = {"DATABASE_URL": f"sqlite:///{database}", "CONNECT_ACCESS_CONFIG": str(config)}

    version = installed.run("connect-access", "--version")
    assert version.returncode == 0 and version.stdout.startswith("connect-access ")
    module = installed.run("python", "-m", "bot", "--version")
    assert module.stdout == version.stdout

    upgraded = installed.run("connect-access", "db", "upgrade", **env)
    assert upgraded.returncode == 0, upgraded.stderr
    validated = installed.run("connect-access", "catalog", "validate", **env)
    assert validated.returncode == 0, validated.stderr
    assert "/site-packages/bot/_data/catalog/connect-console.yaml" in validated.stdout

    # `check` runs from the installed package: the local items pass; Slack and AWS are not
    # configured here, and say so with the fix.
    check = installed.run("connect-access", "check", "--json", **env)
    assert check.returncode == 1, check.stderr
    report = {item["name"]: item for item in json.loads(check.stdout)["checks"]}
    for name in ("settings", "catalog", "config", "database"):
        assert report[name]["ok"] is True, report[name]
    assert report["slack"] == {"name": "slack", "ok": False,
                               "detail": "SLACK_BOT_TOKEN is not set",
                               "fix": report["slack"]["fix"]}
    assert "Traceback" not in check.stderr

    no_moto = installed.run("python", "-c", "import moto")
    assert no_moto.returncode != 0 and "No module named 'moto'" in no_moto.stderr
    demo = installed.run("connect-access", "demo")
    assert demo.returncode == 2
    assert "pip install 'connect-access[demo]'" in demo.stderr
    assert "Traceback" not in demo.stderr


def test_installed_scheduler_and_web_process_run(installed: Installed) -> None:
    """`connect-access scheduler` leads and `serve` answers its probes, from the wheel."""
    from bot.sandbox.fake_slack import FakeSlack  # the test's own Slack, over HTTP

    database = installed.home / "processes.db"
    config = installed.home / "processes.yaml"
    config.write_text(CONFIG + "timings: {sweep_interval: 1s}\n")
    env = {"DATABASE_URL": f"sqlite:///{database}", "CONNECT_ACCESS_CONFIG": str(config),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    assert installed.run("connect-access", "db", "upgrade", **env).returncode == 0
    scheduler = subprocess.Popen([str(installed.bin / "connect-access"), "scheduler"],
                                 cwd=installed.home, env=installed.env(**env),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = installed.run("connect-access", "status", "--json", **env)
            if status.returncode == 0:
                break
            time.sleep(0.2)
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["leader"].endswith(f":{scheduler.pid}")
    finally:
        scheduler.send_signal(signal.SIGTERM)
        output, _ = scheduler.communicate(timeout=30)
    assert scheduler.returncode == 0, output
    assert "Traceback" not in output

    with FakeSlack() as fake:
        port = free_port()
        web_env = {**env, "SLACK_BOT_TOKEN": fake.bot_token, "SLACK_SIGNING_SECRET": "s",
                   "SLACK_API_URL": fake.api_url}
        web = subprocess.Popen([str(installed.bin / "connect-access"), "serve", "--port",
                                str(port), "--workers", "1"], cwd=installed.home,
                               env=installed.env(**web_env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        try:
            ready = None
            deadline = time.monotonic() + 90
            while ready is None and time.monotonic() < deadline and web.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz",
                                                timeout=2) as response:
                        ready = json.loads(response.read())
                except OSError:
                    time.sleep(0.2)
            assert ready is not None and ready["status"] == "ready", web.poll()
        finally:
            web.terminate()
            output, _ = web.communicate(timeout=30)
    assert "Traceback" not in output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_alembic_command_line_finds_the_packaged_migrations(installed: Installed) -> None:
    """The image's `release:` is `alembic upgrade head` with ALEMBIC_CONFIG at the packaged
    alembic.ini (see the Dockerfile); no source tree anywhere."""
    ini = installed.run("python", "-c", "from bot.resources import ALEMBIC_INI; "
                                        "print(ALEMBIC_INI)").stdout.strip()
    assert "/site-packages/bot/_data/" in ini
    database = installed.home / "alembic.db"
    upgraded = installed.run("alembic", "upgrade", "head", ALEMBIC_CONFIG=ini,
                             DATABASE_URL=f"sqlite:///{database}")
    assert upgraded.returncode == 0, upgraded.stderr
    current = installed.run("alembic", "current", ALEMBIC_CONFIG=ini,
                            DATABASE_URL=f"sqlite:///{database}")
    assert "(head)" in current.stdout
