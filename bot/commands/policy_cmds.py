"""`connect-access policy`: show the exact policy a grant would attach, without AWS."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from bot.catalog import DEFAULT_CATALOG_FILE, Catalog, CatalogError, load_catalog
from bot.config import ConfigError, load_config
from bot.durations import (
    DEFAULT_ROUTING_FILE,
    DurationError,
    load_default_tier_maxima,
    parse_duration,
)
from bot.iamref import IamReference
from bot.policy import CompiledPolicy, PolicyError, compile_policy
from bot.resolve import QueryError, Resolver
from bot.target_policy import compile_for_target
from bot.targets import IDENTITY_CENTER_PREFIX, TargetError, shared_role_target
from bot.times import TimeInputError, parse_utc


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _parse_start(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        return parse_utc(text, require_zone=True)
    except TimeInputError as exc:
        if str(exc) == "no time zone":
            raise _fail(f"--start {text!r} needs a time zone, e.g. a trailing Z for UTC"
                        ) from None
        raise _fail(f"--start {text!r} is not an ISO 8601 time such as "
                    f"2026-11-27T09:00:00Z ({exc})") from None


def _shared_role_preview(catalog: Catalog, entry_id: str, role_arn: str,
                         session_name: str | None, role_unique_id: str | None, *,
                         grant_id: str, start: datetime, duration: timedelta,
                         max_duration: timedelta | None, instance_arn: str | None,
                         existing_inline_chars: int) -> CompiledPolicy:
    """The policy a shared-role grant attaches: the role's, narrowed to one session by
    `aws:userid`. The role's unique id is given, not looked up (no AWS here)."""
    if session_name is None:
        raise _fail("--role-unique-id previews a shared role; give --session-name too")
    if role_unique_id is None:
        raise _fail(
            "--session-name previews a shared role, whose policy names the role's unique id; "
            "give --role-unique-id AROA... (aws iam get-role --role-name NAME "
            "--query Role.RoleId), since this command does not call AWS")
    target = shared_role_target(role_arn, session_name)
    return compile_for_target(
        catalog, entry_id, target.ref, grant_id=grant_id, start=start, duration=duration,
        max_duration=max_duration, iam=IamReference(), instance_arn=instance_arn,
        existing_inline_chars=existing_inline_chars,
        role_unique_id=lambda _arn: role_unique_id)


def register(app: typer.Typer) -> None:
    @app.command("policy")
    def policy(
        query: list[str] = typer.Argument(
            ..., help="Entry id or what you need, e.g. Edit chat transcripts"
        ),
        principal: str = typer.Option(
            ..., "--principal",
            help="IAM role, user or group ARN; or identity-center-user:NAME (user name or "
            "email) for an IAM Identity Center user's permission set (needs --instance)."),
        session_name: str | None = typer.Option(
            None, "--session-name",
            help="Preview a shared role's grant: the person's role session name "
            "(needs --role-unique-id).",
        ),
        role_unique_id: str | None = typer.Option(
            None, "--role-unique-id",
            help="The shared role's unique id (AROA...), as `aws iam get-role` returns it; "
            "this command does not call AWS.",
        ),
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
            if principal.startswith(IDENTITY_CENTER_PREFIX):
                if session_name is not None or role_unique_id is not None:
                    raise _fail("--session-name and --role-unique-id preview a shared role; "
                                "an Identity Center user's grant needs neither")
                if instance is None:
                    raise _fail("an Identity Center user's grant is a permission set assigned "
                                "on the instance's account: give --instance ARN (or an alias "
                                "from --config)")
                compiled = compile_for_target(
                    catalog, entry.id, principal, grant_id=grant_id or uuid.uuid4().hex[:12],
                    start=_parse_start(start), duration=parse_duration(duration),
                    max_duration=max_duration, iam=IamReference(), instance_arn=instance)
            elif session_name is None and role_unique_id is None:
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
            else:
                compiled = _shared_role_preview(
                    catalog, entry.id, principal, session_name, role_unique_id,
                    grant_id=grant_id or uuid.uuid4().hex[:12], start=_parse_start(start),
                    duration=parse_duration(duration), max_duration=max_duration,
                    instance_arn=instance, existing_inline_chars=existing_inline_chars)
        except (PolicyError, DurationError, ConfigError, TargetError) as exc:
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
