"""Shared test fixtures (owned by the database area; other areas use them, never edit).

Database fixtures — every test that takes one runs twice, on SQLite and on PostgreSQL:

- `database_url`: URL of a database migrated to Alembic head and empty (bar the audit
  chain-head row) for this test alone. SQLite: a copy of a template file migrated once per
  session. PostgreSQL: one schema per test session/xdist worker, migrated once; before each
  test every table in it is TRUNCATEd and the chain head reset. The URL carries the schema
  in `options=-csearch_path=...`, so subprocesses (CLI tests) see the same data.
- `engine`: bot.db.make_engine(database_url); disposed after the test.
- `session_factory`: bot.db.make_session_factory(engine).
- `empty_database_url`: an empty database (nothing migrated), for the migration tests.
- `db_backend`: "sqlite" or "postgresql" (the current parameter).

PostgreSQL comes from TEST_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test). When it is unreachable the PostgreSQL
variants are skipped with the reason shown — except when CI is set, where they fail.

Lifecycle fixtures (in-memory ports from tests/doubles.py, a routing config for tests):
`clock` (FakeClock), `granter` (InMemoryGranter), `notifier` (RecordingNotifier),
`approver_directory`, `operator_config_data` (raw dict), `operator_config`, `catalog`, `request_service` (a RequestService on
`session_factory` with a simple test plan builder). Test people: requesters U0ALICE and
U0BOB; S0LEADS = U0LEAD01..U0LEAD20 (read/write approvers); S0SECURITY = U0SEC1, U0SEC2
plus U0CISO (critical, 2 approvals).
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from doubles import (
    FakeClock,
    InMemoryGranter,
    RecordingNotifier,
    StaticApproverDirectory,
    StaticPrincipalDirectory,
)
from sqlalchemy import Engine

from bot.catalog import Catalog, load_catalog
from bot.config import OperatorConfig, parse_config
from bot.db import SessionFactory, make_engine, make_session_factory, upgrade
from bot.dbcheck import migration_head
from bot.lifecycle import GrantContext, RequestService
from bot.models import GENESIS_HASH
from bot.ports import GrantPlan, PolicyDocument

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", pytest.param("postgresql", marks=pytest.mark.postgres))


# -- scheduling on xdist workers --------------------------------------------------------

# Modules whose tests share an expensive module- or session-scoped fixture: test_packaging
# builds a wheel and installs it in a fresh venv, test_demo runs the whole demo. Each goes
# to one worker, so that is done once per run rather than once per worker.
SHARED_FIXTURE_MODULES = ("tests/integration/test_packaging.py",
                          "tests/integration/test_demo.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow (real processes and servers, most of the run's wall time) run
    first, in their collected order: on a few xdist workers the run then ends with many
    short tests that share out evenly, instead of one worker finishing a long test while
    the others idle. The order is the same on every worker, as xdist requires."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`-n` (xdist's default `--dist load`): test by test, except that each module in
    SHARED_FIXTURE_MODULES is one unit of work, handed out first (xdist's loadscope sends
    the largest units first). xdist's own `--dist loadgroup` would do this with markers,
    but xdist 3.8 tags the group onto `item._nodeid`, which pytest 9 no longer reads."""
    if config.getoption("dist") != "load":
        return None  # an explicit --dist other than load is the caller's choice
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_FIXTURE_MODULES else nodeid

    return SharedFixtureScheduling(config, log)


def _with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The base PostgreSQL URL, checked reachable once per session."""
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL at {url} is unreachable ({exc.orig}); set TEST_POSTGRES_URL"
        if os.environ.get("CI"):
            pytest.fail(f"{message} — in CI the database tests must run", pytrace=False)
        pytest.skip(message)
    finally:
        engine.dispose()
    return url


def _worker_schema_name(prefix: str) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{prefix}_{worker}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _postgres_migrated(postgres_url: str) -> Iterator[tuple[str, str]]:
    schema = _worker_schema_name("t")
    admin = sa.create_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = _with_search_path(postgres_url, schema)
    upgrade(url)
    yield url, schema
    with admin.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def _reset_postgres_schema(url: str, schema: str) -> None:
    """Empty the worker's schema for the next test. The schema is shared by every test of
    the worker, so a test that damaged it (deleted the alembic_version row, downgraded,
    removed the chain-head row) must not leak that into the tests after it: such a schema
    is rebuilt from the migrations instead of emptied."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            tables = connection.execute(sa.text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = :s "
                "AND table_name NOT IN ('alembic_version', 'audit_chain_head')"
            ), {"s": schema}).scalars().all()
            if tables:
                names = ", ".join(f'"{schema}"."{t}"' for t in tables)
                connection.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            intact = _schema_is_at_head(connection, schema) and connection.execute(sa.text(
                f'UPDATE "{schema}".audit_chain_head SET seq = 0, hash = :h WHERE id = 1'
            ), {"h": GENESIS_HASH}).rowcount == 1
            if not intact:
                connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    finally:
        engine.dispose()
    if not intact:
        upgrade(url)


def _schema_is_at_head(connection: sa.Connection, schema: str) -> bool:
    present = {name for name, in connection.execute(sa.text(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = :s "
        "AND table_name IN ('alembic_version', 'audit_chain_head')"), {"s": schema})}
    if present != {"alembic_version", "audit_chain_head"}:
        return False
    versions = connection.execute(
        sa.text(f'SELECT version_num FROM "{schema}".alembic_version')).scalars().all()
    return versions == [migration_head()]


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def database_url(db_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if db_backend == "sqlite":
        path = tmp_path / "test.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    url, schema = request.getfixturevalue("_postgres_migrated")
    _reset_postgres_schema(url, schema)
    return str(url)


@pytest.fixture
def empty_database_url(db_backend: str, request: pytest.FixtureRequest,
                       tmp_path: Path) -> Iterator[str]:
    if db_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    base: str = request.getfixturevalue("postgres_url")
    schema = _worker_schema_name("m")
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _with_search_path(base, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> SessionFactory:
    return make_session_factory(engine)


# -- lifecycle -------------------------------------------------------------------------

LEADS = tuple(f"U0LEAD{i:02d}" for i in range(1, 21))
TEST_CONFIG: dict[str, Any] = {
    "instances": [{"alias": "prod", "arn": "arn:aws:connect:us-east-1:111122223333:instance/"
                                           "11111111-2222-3333-4444-555555555555"}],
    "principals": {
        "U0ALICE": "arn:aws:iam::111122223333:role/alice-admin",
        "U0BOB": "arn:aws:iam::111122223333:role/bob-admin",
        "U0LEAD01": "arn:aws:iam::111122223333:role/lead01",
        "U0NOBODY": "arn:aws:iam::111122223333:role/nobody",
    },
    "routing": {
        "tiers": {
            "read": {"channel": "C0APPROVALS", "approvers": ["S0LEADS"], "approvals": 1},
            "write": {"channel": "C0APPROVALS", "approvers": ["S0LEADS"], "approvals": 1},
            "critical": {"channel": "C0SECURITY", "approvers": ["S0SECURITY", "U0CISO"],
                         "approvals": 2},
        },
    },
    "timings": {"pending_ttl": "24h", "pending_reminder_after": "1h",
                "remind_before_expiry": "10m", "irrevocable_retry": "15m"},
}


def simple_plan_builder(context: GrantContext) -> GrantPlan:
    """A small stand-in for the policy compiler: one inline policy, bounded in time."""
    document = {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "ConnectAccess",
            "Effect": "Allow",
            "Action": [f"connect:{context.entry_id.split('/')[-1]}"],
            "Resource": context.instance_arn or "*",
            "Condition": {"DateLessThan": {
                "aws:CurrentTime": context.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")}},
        }],
    }
    return GrantPlan(
        grant_id=context.grant_id, principal_arn=context.principal_arn, kind="inline",
        policies=(PolicyDocument(name=f"connect-access-{context.grant_id}", document=document),),
        expires_at=context.expires_at, instance_arn=context.instance_arn,
    )




@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def operator_config_data() -> dict[str, Any]:
    """The raw test config (a fresh copy: tests may change it and re-parse)."""
    return copy.deepcopy(TEST_CONFIG)


@pytest.fixture
def operator_config(operator_config_data: dict[str, Any]) -> OperatorConfig:
    return parse_config(operator_config_data, "test-config")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def granter() -> InMemoryGranter:
    return InMemoryGranter()


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
def approver_directory() -> StaticApproverDirectory:
    return StaticApproverDirectory({"S0LEADS": LEADS, "S0SECURITY": ("U0SEC1", "U0SEC2")})


@pytest.fixture
def request_service(session_factory: SessionFactory, catalog: Catalog,
                    operator_config: OperatorConfig, granter: InMemoryGranter,
                    notifier: RecordingNotifier, approver_directory: StaticApproverDirectory,
                    clock: FakeClock) -> RequestService:
    return RequestService(
        sessions=session_factory, catalog=catalog, config=operator_config, granter=granter,
        notifier=notifier, approvers=approver_directory,
        principals=StaticPrincipalDirectory(operator_config.principals), clock=clock,
        plan_builder=simple_plan_builder,
    )
