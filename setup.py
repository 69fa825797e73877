"""Packs the bot's data files into the package at build time.

The catalog, the tier routing defaults, the Alembic migrations and alembic.ini have one
home, the project root: that is where people edit them and where `alembic upgrade head`
runs in a checkout. A wheel (or a wheel built from the sdist) gets a copy under bot/_data,
so an installed bot finds them without the source tree (bot/resources.py looks there
first). Editable installs read them from the tree instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
RESOURCES = ("catalog", "migrations", "alembic.ini")


class BuildPyWithResources(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "bot" / "_data"
        for name in RESOURCES:
            source = ROOT / name
            if not source.exists():
                raise FileNotFoundError(f"{source} is missing; the package needs it at run time")
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildPyWithResources})
