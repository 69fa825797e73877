"""The core reaches Slack and AWS only through ports: no core module imports an SDK or an
adapter package, directly or through another bot module (function-level imports count)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

BOT = Path(__file__).resolve().parents[2] / "bot"
FORBIDDEN_ROOTS = ("boto3", "botocore", "slack_bolt", "slack_sdk", "moto")
ADAPTERS = ("bot.aws", "bot.slack", "bot.sandbox", "bot.commands", "bot.cli", "bot.runtime",
            "bot.audit_runtime", "bot.reconcile_job", "bot.gunicorn_conf", "bot.__main__")
CORE = ("bot.catalog", "bot.resolve", "bot.policy", "bot.lifecycle", "bot.audit",
        "bot.audit_verify", "bot.audit_review", "bot.anchors", "bot.evidence", "bot.models",
        "bot.ports", "bot.states", "bot.targets", "bot.target_policy", "bot.scoping",
        "bot.persistence", "bot.tiers", "bot.durations", "bot.config", "bot.alerts",
        "bot.reconcile_model", "bot.reconcile_store", "bot.expiry", "bot.scheduler",
        "bot.leader", "bot.heartbeat", "bot.request_ids", "bot.slacklimits", "bot.iamref",
        "bot.times", "bot.decisions", "bot.request_rules", "bot.lifecycle.errors",
        "bot.lifecycle.transitions", "bot.lifecycle.intake", "bot.lifecycle.granting",
        "bot.lifecycle.revocation", "bot.lifecycle.timers")


def _path(module: str) -> Path:
    relative = Path(*module.split("."))
    package = BOT.parent / relative / "__init__.py"
    return package if package.exists() else BOT.parent / relative.with_suffix(".py")


@cache
def _imports(module: str) -> frozenset[str]:
    tree = ast.parse(_path(module).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if _path(f"{node.module}.{alias.name}").exists())
    return frozenset(names)


def _reach(module: str) -> dict[str, str]:
    """Every module `module` imports, transitively within bot, with who imported it."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        for name in _imports(current):
            if name in seen:
                continue
            seen[name] = current
            if name.split(".")[0] == "bot" and _path(name).exists():
                todo.append(name)
    return seen


@pytest.mark.parametrize("module", CORE)
def test_core_module_reaches_no_sdk_and_no_adapter(module: str) -> None:
    assert _path(module).exists(), f"{module} is listed as core but does not exist"
    bad = {name: via for name, via in _reach(module).items()
           if name.split(".")[0] in FORBIDDEN_ROOTS
           or any(name == a or name.startswith(a + ".") for a in ADAPTERS)}
    assert not bad, f"{module} reaches adapters or SDKs: " + ", ".join(
        f"{name} (imported by {via})" for name, via in sorted(bad.items()))


def test_every_bot_module_is_classified() -> None:
    """A new module must be placed on one side, so the rule above covers it."""
    modules = {".".join(p.relative_to(BOT.parent).with_suffix("").parts)
               for p in BOT.rglob("*.py")}
    modules = {m.removesuffix(".__init__") for m in modules}
    unclassified = {m for m in modules if m != "bot" and m not in CORE and not any(
        m == a or m.startswith(a + ".") for a in ADAPTERS)}
    assert unclassified <= {"bot.db", "bot.dbcheck", "bot.resources", "bot.settings",
                            "bot.logs", "bot.signing"}, sorted(unclassified)


# What runs in production: the console script, `python -m bot`, and the Procfile's
# gunicorn config and app factory; migrations/env.py imports bot modules too.
ENTRY_POINTS = ("bot.cli", "bot.__main__", "bot.gunicorn_conf", "bot.slack.wsgi")


def _named_modules(path: Path) -> set[str]:
    """Modules a file imports, by statement or by name in a string (importlib, gunicorn's
    `logger_class`), within bot."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            parts = node.value.split(".")
            names.update(".".join(parts[:n]) for n in range(2, len(parts) + 1)
                         if parts[0] == "bot")
    return {n for n in names if n.split(".")[0] == "bot" and _path(n).exists()}


def test_every_bot_module_is_reached_from_an_entry_point() -> None:
    """bot/ ships only what runs: a module nothing but tests imports belongs under tests/."""
    modules = {".".join(p.relative_to(BOT.parent).with_suffix("").parts).removesuffix(
        ".__init__") for p in BOT.rglob("*.py")}
    todo = [*ENTRY_POINTS, *_named_modules(BOT.parent / "migrations" / "env.py")]
    reached: set[str] = set()
    while todo:
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        # Importing bot.x.y runs bot/x/__init__.py first.
        todo.extend(".".join(module.split(".")[:n]) for n in range(1, module.count(".") + 1))
        todo.extend(_named_modules(_path(module)) - reached)
    unreached = sorted(m for m in modules if m not in reached)
    assert not unreached, f"only tests import: {unreached}"


def test_no_aws_call_is_built_by_name() -> None:
    """Every boto3 call is spelled out, so it is typed and findable (`put_role_policy`
    appears in the source): no getattr in the AWS adapters."""
    found = [f"{path.relative_to(BOT.parent)}:{node.lineno}"
             for path in sorted((BOT / "aws").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id == "getattr"]
    assert not found, found
