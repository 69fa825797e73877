"""`connect-access scheduler` (the expiry loop's process) and `connect-access stats`
(revocation lag from the grants table)."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
from datetime import UTC, datetime
from types import FrameType

import typer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from bot.anchors import AnchorError, run_checkpoint_loop
from bot.audit_runtime import build_anchoring
from bot.aws.errors import AwsConfigError
from bot.catalog import CatalogError
from bot.commands.db_cmds import open_database, require_database_or_exit, settings_or_exit
from bot.config import ConfigError
from bot.expiry import LifecycleExpiryWork
from bot.heartbeat import HeartbeatWriter
from bot.leader import LeadershipError, leadership_for
from bot.logs import configure_logging, startup_line
from bot.models import Grant
from bot.reconcile_job import ScheduledReconcile
from bot.runtime import Runtime, scheduler_runtime
from bot.scheduler import ExpiryLoop
from bot.slack.wsgi import check_routing
from bot.states import LIVE_STATES


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (non-empty)."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def build_scheduler(runtime: Runtime, *, revoke_workers: int = 8,
                    batch_size: int = 200) -> ExpiryLoop:
    """The scheduler exactly as `connect-access scheduler` runs it, on a scheduler_runtime.
    A request left approved or granting for a whole sweep interval counts as abandoned (a
    grant takes a second or two), so a crash is settled within two sweeps."""
    timings = runtime.config.timings
    return ExpiryLoop(
        work=LifecycleExpiryWork(runtime.service, runtime.sessions,
                                 revoke_workers=revoke_workers, batch_size=batch_size,
                                 stuck_after=timings.sweep_interval),
        clock=runtime.clock,
        leadership=leadership_for(runtime.engine),
        sweep_interval=timings.sweep_interval,
        reconcile=ScheduledReconcile(runtime),
        reconcile_interval=timings.reconcile_interval,
    )


def run_scheduler(revoke_workers: int, batch_size: int = 200) -> None:
    settings = settings_or_exit()
    configure_logging(settings, "scheduler")
    if settings.connect_access_config is None:
        # As `serve` does: without the operator file the scheduler would time requests out
        # and revoke against an empty config, silently.
        typer.echo("error: CONNECT_ACCESS_CONFIG: not set; point it at the operator YAML "
                   "the web process uses (see deploy/connect-access.example.yaml).", err=True)
        raise typer.Exit(2)
    try:
        # Its revoke threads (two batches in flight), the loop, the reconcile, heartbeat
        # and checkpoint threads each hold a connection for a moment.
        runtime = scheduler_runtime(settings, db_pool_size=revoke_workers + 6)
    except (ConfigError, CatalogError, AwsConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        source = str(settings.connect_access_config)
        if not runtime.config.instances:
            raise ConfigError(source, "instances", "no Amazon Connect instance is configured")
        check_routing(runtime.config, runtime.catalog, source)
    except ConfigError as exc:
        runtime.close()
        typer.echo(f"error: invalid operator config (CONNECT_ACCESS_CONFIG): {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        anchoring = build_anchoring(runtime.config.audit, runtime.aws,
                                    slack_token=settings.slack_bot_token,
                                    slack_api_url=settings.slack_api_url)
    except AnchorError as exc:
        runtime.close()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # Fail now, clearly, rather than log the same error every sweep.
    require_database_or_exit(runtime.engine, settings)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("%s received; finishing work in flight",
                                         signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logging.getLogger(__name__).info(startup_line(
        "scheduler", settings,
        f"sweep every {runtime.config.timings.sweep_interval.total_seconds():g}s, "
        f"{revoke_workers} revoke worker(s)"))
    heartbeat: HeartbeatWriter | None = None
    try:
        scheduler = build_scheduler(runtime, revoke_workers=revoke_workers,
                                    batch_size=batch_size)
        if anchoring is not None:
            # Checkpoints are the leader's job, on their own thread (bot.anchors).
            writer = anchoring.writer(runtime.sessions, runtime.clock, runtime.config.audit,
                                      runtime.alerter)
            threading.Thread(target=run_checkpoint_loop, name="audit-checkpoints",
                             args=(writer, stop, lambda: scheduler.leading),
                             daemon=True).start()
        heartbeat = HeartbeatWriter(runtime.sessions, runtime.clock, scheduler,
                                    sweep_interval=runtime.config.timings.sweep_interval)
        heartbeat.start()
        scheduler.run_forever(stop)
    except LeadershipError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        typer.echo(f"error: the scheduler stopped on a database error: {exc}; a process "
                   "supervisor should restart it", err=True)
        raise typer.Exit(1) from None
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        runtime.close()
    logging.getLogger(__name__).info("scheduler stopped")


def register(app: typer.Typer) -> None:
    @app.command("scheduler")
    def scheduler(
        revoke_workers: int = typer.Option(
            8, "--revoke-workers", min=1, max=64,
            help="Threads that revoke due grants in parallel."),
        batch_size: int = typer.Option(
            200, "--batch-size", min=1, max=5000,
            help="Grants claimed, revoked and recorded together when many are due at once."),
    ) -> None:
        """Run the expiry scheduler until SIGTERM/SIGINT: revoke grants at expiry, catch
        up after downtime, time out pending requests, send reminders. Several may run on
        PostgreSQL (one leads, the others stand by); on SQLite only one."""
        run_scheduler(revoke_workers, batch_size)

    @app.command("stats")
    def stats(
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Revocation lag (revoked_at - expires_at) of grants revoked at expiry: p50, p99,
        max; and how many grants are overdue right now."""
        now = datetime.now(UTC)
        engine, sessions = open_database()
        try:
            with sessions() as session:
                lags = sorted(
                    max(0.0, (revoked_at - expires_at).total_seconds())
                    for revoked_at, expires_at in session.execute(
                        select(Grant.revoked_at, Grant.expires_at).where(
                            Grant.revoked_at.is_not(None), Grant.revoke_reason == "expiry"))
                    if revoked_at is not None
                )
                overdue = len(session.execute(
                    select(Grant.id).where(Grant.state.in_(LIVE_STATES),
                                           Grant.expires_at <= now)).all())
        except SQLAlchemyError as exc:
            typer.echo(f"error: could not read grants: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            engine.dispose()
        figures: dict[str, float | int | None] = {
            "revoked_at_expiry": len(lags),
            "lag_p50_seconds": percentile(lags, 0.50) if lags else None,
            "lag_p99_seconds": percentile(lags, 0.99) if lags else None,
            "lag_max_seconds": lags[-1] if lags else None,
            "overdue_now": overdue,
        }
        if as_json:
            typer.echo(json.dumps(figures, indent=2))
            return
        if not lags:
            typer.echo("no grants have been revoked at expiry yet")
        else:
            typer.echo(f"revoked at expiry: {len(lags)} grant(s)")
            typer.echo(f"revocation lag p50: {figures['lag_p50_seconds']:.1f}s  "
                       f"p99: {figures['lag_p99_seconds']:.1f}s  "
                       f"max: {figures['lag_max_seconds']:.1f}s")
        typer.echo(f"overdue now: {overdue}")
