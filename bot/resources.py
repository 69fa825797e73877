"""Where the bot's data files live: the catalog, the tier routing defaults, the Alembic
migrations and alembic.ini.

An installed wheel carries them inside the package, under bot/_data (setup.py copies them
there at build time); a source checkout (editable install) has them at the project root,
their one home. Paths only: nothing is read here.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_DATA_DIR = PACKAGE_DIR / "_data"
SOURCE_ROOT = PACKAGE_DIR.parent


def data_root() -> Path:
    """bot/_data when the package was installed from a wheel, else the project root."""
    if (PACKAGED_DATA_DIR / "alembic.ini").is_file():
        return PACKAGED_DATA_DIR
    return SOURCE_ROOT


DATA_ROOT = data_root()
CATALOG_DIR = DATA_ROOT / "catalog"
MIGRATIONS_DIR = DATA_ROOT / "migrations"
ALEMBIC_INI = DATA_ROOT / "alembic.ini"
