"""`connect-access policy`: show the exact policy a grant would attach, without AWS."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import typer

from bot.catalog import DEFAULT_CATALOG_FILE, CatalogError, load_catalog
from bot.config import ConfigError, load_config
from bot.durations import (
    DEFAULT_ROUTING_FILE,
    DurationError,
    load_default_tier_maxima,
    parse_duration,
)
from bot.iamref import IamReference
from bot.policy import PolicyError, compile_policy
from bot.resolve import QueryError, Resolver


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _parse_start(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(
            f"--start {text!r} is not an ISO 8601 time such as 2026-11-27T09:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise _fail(f"--start {text!r} needs a time zone, e.g. a trailing Z for UTC")
    return moment


def register(app: typer.Typer) -> None:
    @app.command("policy")
    def policy(
        query: list[str] = typer.Argument(
            ..., help="Entry id or what you need, e.g. Edit chat transcripts"
        ),
        principal: str = typer.Option(..., "--principal", help="IAM role, user or group ARN."),
        instance: str | None = typer.Option(None, "--instance", help="Connect instance ARN."),
        duration: str = typer.Option("1h", "--duration", help="How long, e.g. 30m, 4h, 1d."),
        existing_inline_chars: int = typer.Option(
            0,
            "--existing-inline-chars",
            help="Characters the principal's other inline policies use.",
        ),
        grant_id: str | None = typer.Option(None, "--grant-id", help="Default: a new random id."),
        start: str | None = typer.Option(None, "--start", help="ISO 8601 start; default now."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        catalog_file: Path = typer.Option(
            DEFAULT_CATALOG_FILE, "--catalog", envvar="CONNECT_ACCESS_CATALOG"
        ),
        routing_file: Path = typer.Option(
            DEFAULT_ROUTING_FILE, "--routing", help="Tier maxima (tiers.<tier>.max_duration)."
        ),
        config_file: Path | None = typer.Option(
            None,
            "--config",
            envvar="CONNECT_ACCESS_CONFIG",
            help="Operator config: its routing (with overrides) sets the maximum duration, "
            "and --instance may name one of its instance aliases.",
        ),
    ) -> None:
        """Compile the time-boxed IAM policy a grant of one catalog entry would attach."""
        try:
            catalog = load_catalog(catalog_file)
        except CatalogError as exc:
            raise _fail(str(exc)) from None
        text = " ".join(query).strip()
        if text in catalog.entries:
            entry = catalog.get(text)
        else:
            try:
                resolution = Resolver(catalog).resolve(text)
            except QueryError as exc:
                raise _fail(str(exc)) from None
            if resolution.entry is None:
                options = resolution.matches or resolution.suggestions
                hint = "; ".join(f"{c.entry.id} ({c.entry.name})" for c in options)
                problem = "matches several entries" if resolution.matches else "matches no entry"
                raise _fail(f"{text!r} {problem}." + (f" Did you mean: {hint}" if hint else ""))
            entry = resolution.entry
        try:
            if config_file is not None:
                config = load_config(config_file)
                max_duration = config.router.route_for(entry).max_duration
                if instance is not None and not instance.startswith("arn:"):
                    instance = config.instance(instance).arn
            else:
                max_duration = load_default_tier_maxima(routing_file)[entry.tier]
            compiled = compile_policy(
                catalog,
                entry.id,
                principal,
                grant_id=grant_id or uuid.uuid4().hex[:12],
                start=_parse_start(start),
                duration=parse_duration(duration),
                max_duration=max_duration,
                iam=IamReference(),
                instance_arn=instance,
                existing_inline_chars=existing_inline_chars,
            )
        except (PolicyError, DurationError, ConfigError) as exc:
            raise _fail(str(exc)) from None
        if as_json:
            typer.echo(json.dumps(compiled.to_json(), indent=2))
            return
        typer.echo(f"{entry.name} ({entry.id}), tier {entry.tier}")
        typer.echo(f"  principal: {compiled.principal_arn}")
        window = f"{compiled.starts_at.isoformat()} -> {compiled.expires_at.isoformat()}"
        typer.echo(f"  window:    {window}")
        typer.echo(
            f"  kind:      {compiled.kind}, {compiled.size} characters (quota {compiled.quota})"
        )
        for note in compiled.notes:
            typer.echo(f"  note: {note}")
        for policy_doc, size in zip(compiled.policies, compiled.sizes, strict=True):
            typer.echo(f"\n{policy_doc.name} ({size} characters)")
            typer.echo(json.dumps(policy_doc.document, indent=2))
