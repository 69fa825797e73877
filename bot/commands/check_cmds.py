"""`connect-access check [--json]`: is this deployment ready to run? Each item passes or
fails with what to do about it:

settings (the environment) · catalog (loads, every action known to IAM) · config
(CONNECT_ACCESS_CONFIG loads, has instances, every tier routes to a channel and approvers)
· database (reachable, at the migration head) · slack (SLACK_SIGNING_SECRET set, Slack
accepts SLACK_BOT_TOKEN in `auth.test`, the token has the scopes the bot needs) · aws, one
item per account the instances live in (credentials work: `sts:GetCallerIdentity`, through
`assume_role_arn` where set, in the right account; IAM answers) · audit anchors, when
`audit:` is configured (the key can sign, the bucket has Object Lock, the channel's history
is readable, the retired keys, the last checkpoint).

Exit status 0 when every item passes, 1 otherwise. Nothing is changed anywhere.
"""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import typer

from bot.settings import Settings, SettingsError, load_settings


@dataclass(frozen=True)
class Item:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _settings_item() -> tuple[Item, Settings | None]:
    try:
        settings = load_settings()
    except SettingsError as exc:
        return Item("settings", False, str(exc),
                    f"set {exc.setting} to a valid value (see README, Operator configuration)"
                    ), None
    from bot.logs import describe_database

    return Item("settings", True, f"read from the environment; database "
                                  f"{describe_database(settings)}"), settings


def _catalog_item(settings: Settings) -> tuple[Item, Any]:
    from bot.catalog import CatalogError, load_catalog, validate_catalog
    from bot.iamref import IamReference

    path = settings.connect_access_catalog
    try:
        catalog = load_catalog(path)
    except CatalogError as exc:
        return Item("catalog", False, str(exc), "fix the catalog file, then run "
                                                "`connect-access catalog validate`"), None
    faults = validate_catalog(catalog, IamReference())
    if faults:
        return Item("catalog", False, f"{len(faults)} fault(s) in {path}, first: {faults[0]}",
                    "run `connect-access catalog validate` and fix each fault"), None
    return Item("catalog", True, f"{path}: {len(catalog)} entries, all actions known to IAM"
                ), catalog


def _config_item(settings: Settings, catalog: Any) -> tuple[Item, Any]:
    from bot.config import ConfigError, load_config
    from bot.slack.wsgi import check_routing

    if settings.connect_access_config is None:
        return Item("config", False, "CONNECT_ACCESS_CONFIG is not set",
                    "point CONNECT_ACCESS_CONFIG at the operator YAML (instances, principals, "
                    "routing; see deploy/connect-access.example.yaml)"), None
    source = str(settings.connect_access_config)
    try:
        config = load_config(settings.connect_access_config)
        if not config.instances:
            raise ConfigError(source, "instances", "no Amazon Connect instance is configured")
        if catalog is not None:
            check_routing(config, catalog, source)
    except ConfigError as exc:
        return Item("config", False, str(exc), f"edit {exc.key_path} in {source}"), None
    detail = (f"{source}: {len(config.instances)} instance(s), "
              f"{len(config.principals)} mapped principal(s)")
    if catalog is None:
        detail += "; routing not checked (the catalog did not load)"
    return Item("config", catalog is not None, detail,
                "" if catalog is not None else "fix the catalog first"), config


def _database_item(settings: Settings) -> Item:
    from bot.db import make_engine
    from bot.dbcheck import DatabaseNotReady, require_current_schema
    from bot.logs import describe_database

    engine = make_engine(settings.database_url)
    try:
        state = require_current_schema(engine, describe_database(settings))
    except DatabaseNotReady as exc:
        fix = ("check DATABASE_URL, the network and the database server"
               if exc.reason == "unreachable" else
               "install the connect-access version that migrated it (or newer)"
               if exc.reason == "unknown_revision" else
               "run `connect-access db upgrade` (the Procfile's release)")
        return Item("database", False, str(exc), fix)
    finally:
        engine.dispose()
    return Item("database", True, f"{describe_database(settings)} at the latest migration "
                                  f"({state.current})")


def _slack_item(settings: Settings) -> Item:
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    from bot.slack.scopes import REQUIRED_BOT_SCOPES

    if not settings.slack_bot_token:
        return Item("slack", False, "SLACK_BOT_TOKEN is not set",
                    "copy the Bot User OAuth Token (xoxb-...) from the Slack app's OAuth & "
                    "Permissions page")
    if not settings.slack_signing_secret and not settings.slack_app_token:
        return Item("slack", False, "SLACK_SIGNING_SECRET is not set (needed for HTTP; "
                                    "Socket Mode needs SLACK_APP_TOKEN instead)",
                    "copy the Signing Secret from the Slack app's Basic Information page")
    client = WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url,
                       timeout=10)
    try:
        response = client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error", "unknown_error")
        return Item("slack", False, f"Slack at {settings.slack_api_url} refused "
                                    f"SLACK_BOT_TOKEN ({error})",
                    "check the token and that the app is installed in the workspace")
    except (urllib.error.URLError, OSError) as exc:
        return Item("slack", False, f"cannot reach Slack at {settings.slack_api_url} ({exc})",
                    "check SLACK_API_URL and outbound HTTPS to Slack")
    headers = {str(k).lower(): str(v) for k, v in (response.headers or {}).items()}
    granted = {s.strip() for s in headers.get("x-oauth-scopes", "").split(",") if s.strip()}
    missing = [s for s in REQUIRED_BOT_SCOPES if s not in granted]
    who = f"bot {response.get('user', '?')} in {response.get('team', '?')}"
    if "x-oauth-scopes" not in headers:
        return Item("slack", False, f"token accepted ({who}) but Slack did not report its "
                                    "scopes", "check SLACK_API_URL points at Slack's Web API")
    if missing:
        return Item("slack", False, f"token accepted ({who}) but it lacks the scope(s) "
                                    f"{', '.join(missing)}",
                    "add them under OAuth & Permissions > Bot Token Scopes (slack-manifest.yaml "
                    "lists them) and reinstall the app")
    return Item("slack", True, f"token accepted ({who}); scopes "
                               f"{', '.join(REQUIRED_BOT_SCOPES)} granted")


def _aws_items(settings: Settings, config: Any) -> list[Item]:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from bot.aws.errors import AwsConfigError, error_code
    from bot.aws.sessions import AwsSessions, account_of
    from bot.runtime import DEFAULT_REGION

    try:
        sessions = AwsSessions(settings.aws_region or DEFAULT_REGION, settings.aws_endpoint_url,
                               instances=config.instances, max_attempts=1)
    except AwsConfigError as exc:
        return [Item("aws", False, str(exc), "fix the instance's assume_role_arn/external_id")]
    groups: dict[tuple[str, str | None], list[Any]] = {}
    for instance in config.instances:
        groups.setdefault((instance.account, instance.assume_role_arn), []).append(instance)
    items = []
    for (account, role), instances in groups.items():
        aliases = ", ".join(i.alias for i in instances)
        name = f"aws {account} ({aliases})"
        via = f" through {role}" if role else " with the bot's own credentials"
        try:
            identity = sessions.client("sts", instances[0]).get_caller_identity()
            # One call the bot's policy allows (ListPolicies) proves IAM answers.
            sessions.client("iam", instances[0]).list_policies(
                Scope="Local", PathPrefix="/connect-access/", MaxItems=1)
        except NoCredentialsError:
            items.append(Item(name, False, "no AWS credentials found",
                              "give the process a role (instance profile, task role) or set "
                              "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"))
            continue
        except ClientError as exc:
            fix = (f"let the bot assume {role} (its trust policy, external_id) and attach "
                   "deploy/bot-iam-policy.json to it" if role else
                   "attach deploy/bot-iam-policy.json to the bot's role")
            items.append(Item(name, False, f"AWS refused{via}: {error_code(exc)}: "
                                           f"{exc.response.get('Error', {}).get('Message', '')}",
                              fix))
            continue
        except (BotoCoreError, AwsConfigError) as exc:
            items.append(Item(name, False, f"cannot reach AWS{via}: {exc}",
                              "check AWS_REGION, AWS_ENDPOINT_URL and outbound HTTPS to AWS"))
            continue
        caller = str(identity.get("Arn", "?"))
        if account_of(caller) != account:
            items.append(Item(name, False, f"credentials{via} are for account "
                                           f"{account_of(caller)}, not {account}",
                              f"set assume_role_arn on {aliases} to a role in {account}"))
            continue
        items.append(Item(name, True, f"{caller}; IAM answers"))
    return items


def _audit_item(settings: Settings, config: Any) -> Item:
    """Only when `audit:` is configured: the key signs and the bucket is locked."""
    from bot.anchors import AnchorError
    from bot.audit_runtime import build_anchoring
    from bot.aws.sessions import AwsSessions
    from bot.runtime import DEFAULT_REGION

    aws = AwsSessions(settings.aws_region or DEFAULT_REGION, settings.aws_endpoint_url,
                      max_attempts=1)
    try:
        anchoring = build_anchoring(config.audit, aws, slack_token=settings.slack_bot_token,
                                    slack_api_url=settings.slack_api_url)
        assert anchoring is not None
        latest = anchoring.reader.latest()
    except AnchorError as exc:
        return Item("audit anchors", False, str(exc),
                    "fix the audit: section of the operator config (the key, the bucket's "
                    "Object Lock) and deploy/bot-iam-policy.json's audit statements")
    last = ("no checkpoint yet" if latest is None else
            f"last checkpoint: event {latest.checkpoint.seq} at "
            f"{latest.checkpoint.at.isoformat(timespec='seconds')}")
    stores = "; ".join(
        f"{r.name} has Object Lock" if r.name.startswith("s3://") else f"{r.name} readable"
        for r in anchoring.readers or (anchoring.reader,))
    retired = (f"; {len(anchoring.retired)} retired key(s) readable" if anchoring.retired
               else "")
    return Item("audit anchors", True, f"signs with {anchoring.signer.key_id}{retired}; "
                                       f"{stores}; {last}")


def run_checks() -> list[Item]:
    settings_item, settings = _settings_item()
    items = [settings_item]
    if settings is None:
        return [*items, *(Item(name, False, "not checked: the settings are invalid",
                               "fix the settings first")
                          for name in ("catalog", "config", "database", "slack", "aws"))]
    catalog_item, catalog = _catalog_item(settings)
    config_item, config = _config_item(settings, catalog)
    items += [catalog_item, config_item, _database_item(settings), _slack_item(settings)]
    if config is None:
        items.append(Item("aws", False, "not checked: no usable operator config",
                          "fix the config first"))
    else:
        items += _aws_items(settings, config)
        if config.audit.anchored:
            items.append(_audit_item(settings, config))
    return items


def register(app: typer.Typer, checks: Callable[[], list[Item]] = run_checks) -> None:
    @app.command("check")
    def check(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Check this deployment (settings, catalog, config, database, Slack, AWS); each
        item passes or fails with the fix. Changes nothing."""
        items = checks()
        ok = all(item.ok for item in items)
        if as_json:
            typer.echo(json.dumps({"ok": ok, "checks": [asdict(i) for i in items]}, indent=2))
        else:
            for item in items:
                typer.echo(f"{'PASS' if item.ok else 'FAIL'}  {item.name}: {item.detail}")
                if not item.ok and item.fix:
                    typer.echo(f"      fix: {item.fix}")
            failed = sum(not item.ok for item in items)
            typer.echo("all checks passed" if ok else f"{failed} check(s) failed")
        if not ok:
            raise typer.Exit(1)
