"""`connect-access demo`: the whole product working on one machine, with nothing configured.

Everything is real except the two outside services, which are stood in for over real HTTP:
a SQLite database in a temporary folder migrated by the project's Alembic migrations;
moto's server as AWS (an Amazon Connect instance and IAM roles for alice and bob); the fake
Slack Web API; the real Bolt app served on 127.0.0.1; the real composition root
(bot.runtime.web_runtime) over an operator config file read by bot.config; and the real
expiry scheduler, run as its own process exactly as production runs it (`connect-access
scheduler`, its own Slack notifier and alerter on the fake Slack), leading on the temporary
database. Whatever the scheduler tells people therefore reaches Slack only if the scheduler
process itself is wired for it: the demo cannot hide a wiring gap.

A scripted conversation is then played through signed HTTP requests exactly as Slack sends
them, and each step prints what a Slack user would have seen (rendered from the Block Kit
the app sent) and a progress line. `run_demo` returns a DemoResult that tests assert on.

The demo never reaches real AWS or Slack: while it runs, every AWS_*, SLACK_*,
CONNECT_ACCESS_* and DATABASE_URL variable is hidden from the process (fake AWS
credentials and no config files stand in), and its Settings read nothing from the
environment. The previous environment is restored afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import boto3
import yaml
from botocore.exceptions import BotoCoreError, ClientError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from sqlalchemy import select

from bot.alerts import LoggingAlerter
from bot.anchors import CheckpointWriter
from bot.audit import verify_chain
from bot.audit_verify import verify_audit
from bot.aws.anchors import S3AnchorStore
from bot.aws.granter import iam_policy_size
from bot.aws.principals import MANAGED_TAG, SLACK_USER_TAG
from bot.catalog import DEFAULT_CATALOG_FILE
from bot.db import upgrade
from bot.lifecycle import RequestService
from bot.models import AccessRequest, AuditEvent, Grant
from bot.policy import INLINE_QUOTAS, MANAGED_POLICY_QUOTA
from bot.runtime import Runtime, web_runtime
from bot.sandbox.fake_slack import FakeSlack, Message, ResponsePost
from bot.sandbox.polling import wait_until
from bot.sandbox.slack_client import (
    AppServer,
    ButtonNotFound,
    SlackClient,
    SlackDriver,
    find_button,
)
from bot.settings import Settings
from bot.signing import write_new_key
from bot.slack.app import build_app, build_wsgi_app
from bot.slack.blocks import answers, approval, forms
from bot.slack.db_services import DbSlackServices
from bot.slack.render import render_message, render_view
from bot.states import ACTIVE, FAILED, PENDING, REVOKED

log = logging.getLogger(__name__)

REGION = "us-east-1"
ALICE, BOB = "U0ALICE", "U0BOB"
PEOPLE = {ALICE: "alice", BOB: "bob"}
APPROVAL_CHANNEL = "C0SECURITY"  # where critical-tier requests go
OTHER_CHANNEL = "C0APPROVALS"  # read and write tiers (unused by the script)
ENTRY_TEXT = "Edit chat transcripts"
COMMAND = "/connect-access"
INSTANCE_ALIAS = "demo"
REASON = "Customer escalation INC-4242: chat transcripts stopped landing in S3."
SWEEP_INTERVAL = "1s"
IC_USER = "alice@example.com"  # alice in the identity store, with --identity-center
# What `connect-access scheduler` logs once it leads (bot.scheduler.ExpiryLoop.run_forever).
LEADER_LINE = "this process is now the scheduler leader"
ANCHOR_BUCKET = "demo-connect-access-audit"
# moto's default account; a realistic id also keeps the config's ARN checks meaningful.
DEMO_ACCOUNT = "123456789012"
# Where the Connect instance comes from when moto cannot create one (moto 5.2 can).
FALLBACK_INSTANCE_ARN = (
    f"arn:aws:connect:{REGION}:{DEMO_ACCOUNT}:instance/4f1d5c2e-8c1a-4d9b-9f3e-2a7b6c0d1e55"
)
# The lifecycle refuses grants under a minute by default; the demo lowers that floor.
LIFECYCLE_MIN_SECONDS = 60
# Long enough to read the policy back from IAM before it expires; at most the shipped
# critical-tier maximum.
MIN_GRANT_SECONDS, MAX_GRANT_SECONDS = 3, 3600
SLACK_WAIT_SECONDS = 15.0
# After expiry the scheduled job fires at once; the sweep (every second) is the backstop.
REVOKE_GRACE_SECONDS = 20.0
INDENT = "    │ "


class DemoError(Exception):
    """A demo step did not happen as it should; the message says what was seen instead."""


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    number: int
    title: str
    ok: bool
    seconds: float
    shown: str = ""
    error: str | None = None


@dataclass
class DemoFacts:
    """What the demo observed, for tests and for the summary."""

    database_url: str = ""
    instance_arn: str = ""
    instance_created_by_moto: bool = False
    alice_role_arn: str = ""
    request_id: int | None = None
    grant_id: str | None = None
    policies_while_active: dict[str, dict[str, Any]] = field(default_factory=dict)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoke_reason: str | None = None
    iam_after_expiry: list[str] | None = None
    approval_message_active: str = ""
    approval_message_final: str = ""
    final_request_state: str | None = None
    audit_actions: list[str] = field(default_factory=list)
    audit_ok: bool = False
    audit_checked: int = 0
    anchored_seq: int | None = None  # the checkpoint verify checked the chain against


@dataclass
class DemoResult:
    steps: list[StepRecord]
    facts: DemoFacts
    total_steps: int
    seconds: float = 0.0
    kept_folder: Path | None = None

    @property
    def failed_step(self) -> StepRecord | None:
        return next((s for s in self.steps if not s.ok), None)

    @property
    def ok(self) -> bool:
        return len(self.steps) == self.total_steps and self.failed_step is None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


# --- settings and environment ----------------------------------------------------------------


class SandboxSettings(Settings):
    """Settings built only from what the demo passes in: nothing from the environment, so a
    user's SLACK_* / AWS_* / DATABASE_URL cannot point the demo at anything real."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


_HIDDEN_PREFIXES = ("AWS_", "SLACK_", "CONNECT_ACCESS_", "BOTO_")
_HIDDEN_NAMES = ("DATABASE_URL",)


@contextlib.contextmanager
def sandbox_environment(folder: Path) -> Iterator[None]:
    """Hide the user's AWS/Slack/bot variables and give boto3 fake credentials, no profile
    and no config files, for as long as the demo runs; then put everything back.

    boto3 resolves credentials from the process environment, and the composition root
    builds its session from it, so this is the one place that keeps the demo off real AWS
    (its clients also all point at moto's endpoint)."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(_HIDDEN_PREFIXES) or name in _HIDDEN_NAMES:
            del os.environ[name]
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "demo-fake-access-key",
        "AWS_SECRET_ACCESS_KEY": "demo-fake-secret-key",
        "AWS_SESSION_TOKEN": "demo-fake-session-token",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """moto's werkzeug server logs every request; the demo's output is the conversation."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# --- the sandbox -------------------------------------------------------------------------------


def operator_config_data(instance_arn: str, grant_seconds: int,
                         identity_center: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The demo operator's CONNECT_ACCESS_CONFIG. Principals are found by their IAM tags
    (no mapping), and only tagged, managed principals may receive grants; with
    `identity_center` (instance_arn, identity_store_id), alice is mapped to her Identity
    Center user instead."""
    extra: dict[str, Any] = {}
    principals: dict[str, Any] = {}
    if identity_center is not None:
        extra["identity_center"] = dict(identity_center)
        principals[ALICE] = {"identity_center_user": IC_USER}
    return {
        **extra,
        "instances": [{"alias": INSTANCE_ALIAS, "arn": instance_arn}],
        "principals": principals,
        "principal_tag_lookup": True,
        "require_managed_tag": True,
        "routing": {
            "tiers": {
                "read": {"channel": OTHER_CHANNEL, "approvers": [BOB], "approvals": 1},
                "write": {"channel": OTHER_CHANNEL, "approvers": [BOB], "approvals": 1},
                "critical": {
                    "channel": APPROVAL_CHANNEL,
                    "approvers": [BOB],
                    # The shipped default for critical is 2 approvals; one person approves
                    # in this demo.
                    "approvals": 1,
                    # The modal offers durations up to the tier maximum: capping it at the
                    # demo's grant makes that the choice Slack sends back.
                    "max_duration": f"{grant_seconds}s",
                },
            },
        },
        "timings": {"sweep_interval": SWEEP_INTERVAL},
    }


def _fake_aws_session() -> boto3.Session:
    return boto3.Session(aws_access_key_id="demo-fake-access-key",
                         aws_secret_access_key="demo-fake-secret-key",
                         aws_session_token="demo-fake-session-token", region_name=REGION)


class Sandbox:
    """Everything the demo starts, stopped in reverse order by close() (also on failure
    and Ctrl-C). Steps read its parts; tests may break one (stop moto) to see a step fail."""

    def __init__(self, folder: Path, grant_seconds: int, port: int,
                 identity_center: bool = False) -> None:
        self.folder = folder
        self.grant_seconds = grant_seconds
        self.port = port
        # alice as an IAM Identity Center user (moto's sso-admin and identitystore).
        self.identity_center = identity_center
        self.sso_instance_arn = ""
        self.identity_store_id = ""
        self.ic_user_id = ""
        self.database_path = folder / "connect-access.db"
        self.database_url = f"sqlite:///{self.database_path}"
        self.config_path = folder / "connect-access.yaml"
        self.signing_secret = secrets.token_hex(16)
        self._stack = contextlib.ExitStack()
        self.moto_url = ""
        self.instance_arn = ""
        self.instance_created_by_moto = False
        self.role_arns: dict[str, str] = {}
        self.moto: Any = None
        self.fake: FakeSlack | None = None
        self.runtime: Runtime | None = None
        self.service: RequestService | None = None
        self.services: DbSlackServices | None = None
        self.app_server: AppServer | None = None
        self.driver: SlackDriver | None = None
        self.scheduler_process: subprocess.Popen[bytes] | None = None
        self.scheduler_log: Path | None = None

    # -- starting -----------------------------------------------------------------------

    def start(self) -> list[str]:
        """Start every part; returns lines describing what runs where."""
        self._stack.enter_context(sandbox_environment(self.folder))
        self._stack.enter_context(quiet_loggers("werkzeug"))
        upgrade(self.database_url)
        self._start_aws()
        ic = ({"instance_arn": self.sso_instance_arn,
               "identity_store_id": self.identity_store_id} if self.identity_center else None)
        self.config_path.write_text(yaml.safe_dump(
            operator_config_data(self.instance_arn, self.grant_seconds, ic), sort_keys=False))
        self._start_slack_and_app()
        self._start_scheduler()
        assert self.runtime is not None and self.fake is not None
        assert self.app_server is not None
        route = self.runtime.config.router.route_for(self.runtime.catalog.get(
            "data-storage/edit-chat-transcripts"))
        how = ("created with connect:CreateInstance on moto" if self.instance_created_by_moto
               else "moto cannot create Connect instances here, so this is a made-up ARN")
        return [
            f"database   {self.database_url} (migrated to head by Alembic)",
            f"AWS        moto on {self.moto_url} (fake credentials; your AWS_* settings "
            "are ignored)",
            f"           Connect instance {INSTANCE_ALIAS}: {self.instance_arn} ({how})",
            *(f"           IAM role for {PEOPLE[u]}: {arn}  tags {SLACK_USER_TAG}={u}, "
              f"{MANAGED_TAG}=true" for u, arn in self.role_arns.items()),
            *([f"           IAM Identity Center {self.sso_instance_arn}, identity store "
               f"{self.identity_store_id}: alice is user {IC_USER} ({self.ic_user_id}), "
               "mapped in the config; she gets a permission set, not her IAM role"]
              if self.identity_center else []),
            f"Slack      fake Web API on {self.fake.api_url}; the Bolt app on "
            f"{self.app_server.url}",
            f"config     {self.config_path} (read by bot.config)",
            f"people     alice = {ALICE} asks, bob = {BOB} approves (Slack shows their ids "
            "as @mentions)",
            f"routing    '{ENTRY_TEXT}' is {route.tier} tier -> channel {route.channel}, "
            f"approver bob ({BOB}), {route.approvals} approval needed (the shipped "
            "default for critical is 2; this config sets 1, so bob alone approves), "
            f"longest grant {int(route.max_duration.total_seconds())} s",
            f"scheduler  `connect-access scheduler` as its own process (pid "
            f"{self.scheduler_process.pid if self.scheduler_process else '?'}), leading on "
            f"the demo database, sweep every {SWEEP_INTERVAL}, Slack through its own client"
            + ("" if self.grant_seconds >= LIFECYCLE_MIN_SECONDS else
               "; the demo allows grants under a minute (production's floor is 1m)"),
        ]

    def _start_aws(self) -> None:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self.moto = server
        self._stack.callback(self.stop_moto)
        host, port = server.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        # moto keeps its accounts per process, not per server: start from an empty one
        # (a second demo in the same process would find the first one's roles).
        self.reset_moto()
        session = _fake_aws_session()
        connect = session.client("connect", endpoint_url=self.moto_url)
        try:
            created = connect.create_instance(
                IdentityManagementType="CONNECT_MANAGED", InstanceAlias="connect-access-demo",
                InboundCallsEnabled=True, OutboundCallsEnabled=True)
            self.instance_arn = str(created["Arn"])
            self.instance_created_by_moto = True
        except (ClientError, BotoCoreError) as exc:  # a moto without Connect: say so
            log.warning("moto could not create a Connect instance (%s); using %s",
                        exc, FALLBACK_INSTANCE_ARN)
            self.instance_arn = FALLBACK_INSTANCE_ARN
        iam = session.client("iam", endpoint_url=self.moto_url)
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"AWS": f"arn:aws:iam::{DEMO_ACCOUNT}:root"}}]})
        for user_id, name in PEOPLE.items():
            role = iam.create_role(
                RoleName=f"{name}-connect-admin", AssumeRolePolicyDocument=trust,
                Description=f"{name}'s console role (connect-access demo)",
                Tags=[{"Key": SLACK_USER_TAG, "Value": user_id},
                      {"Key": MANAGED_TAG, "Value": "true"}])
            self.role_arns[user_id] = str(role["Role"]["Arn"])
        if self.identity_center:
            # moto makes one Identity Center instance per account on first use.
            sso = session.client("sso-admin", endpoint_url=self.moto_url)
            instance = sso.list_instances()["Instances"][0]
            self.sso_instance_arn = str(instance["InstanceArn"])
            self.identity_store_id = str(instance["IdentityStoreId"])
            user = session.client("identitystore", endpoint_url=self.moto_url).create_user(
                IdentityStoreId=self.identity_store_id, UserName=IC_USER,
                DisplayName="Alice", Name={"GivenName": "Alice", "FamilyName": "Demo"},
                Emails=[{"Value": IC_USER, "Primary": True}])
            self.ic_user_id = str(user["UserId"])

    def reset_moto(self) -> None:
        """Empty moto's in-process state through its own API (POST /moto-api/reset)."""
        request = urllib.request.Request(f"{self.moto_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop_moto(self) -> None:
        if self.moto is not None:
            # Leave no demo roles behind for whatever runs next in this process.
            with contextlib.suppress(OSError):
                self.reset_moto()
            self.moto.stop()
            self.moto = None

    def _start_slack_and_app(self) -> None:
        fake = self._stack.enter_context(FakeSlack(users={ALICE: "Alice", BOB: "Bob"}))
        self.fake = fake
        settings = SandboxSettings(
            database_url=self.database_url,
            connect_access_config=self.config_path,
            connect_access_catalog=DEFAULT_CATALOG_FILE,
            slack_bot_token=fake.bot_token,
            slack_signing_secret=self.signing_secret,
            slack_app_token=None,
            slack_api_url=fake.api_url,
            aws_region=REGION,
            aws_endpoint_url=self.moto_url,
        )
        runtime = web_runtime(
            settings,
            # The demo shows a whole expiry in seconds; production keeps the 1-minute floor.
            min_duration=(timedelta(seconds=1) if self.grant_seconds < LIFECYCLE_MIN_SECONDS
                          else None))
        approvers = runtime.approvers
        self.runtime = runtime
        self._stack.callback(runtime.close)
        self.service = runtime.service
        self.services = DbSlackServices(runtime.service)
        app = build_app(signing_secret=self.signing_secret, bot_token=fake.bot_token,
                        api_url=fake.api_url, services=self.services,
                        approvers=approvers, command=COMMAND, clock=runtime.clock)
        wsgi = build_wsgi_app(app, signing_secret=self.signing_secret)
        # Bolt's lazy-listener pool is not shut down by anyone else; let work in flight end.
        self._stack.callback(wsgi.app.listener_runner.listener_executor.shutdown, wait=True)
        try:
            server = AppServer(wsgi, port=self.port)
        except OSError as exc:
            raise DemoError(f"cannot serve the Bolt app on 127.0.0.1:{self.port} "
                            f"({exc.strerror}); pick another --port, or 0 for a free one"
                            ) from None
        self.app_server = self._stack.enter_context(server)
        client = SlackClient(self.app_server.url, self.signing_secret,
                             response_url_factory=fake.response_url)
        self.driver = SlackDriver(fake, client, timeout=SLACK_WAIT_SECONDS)

    def _start_scheduler(self) -> None:
        """`connect-access scheduler` in its own process, on the demo's database, moto and
        fake Slack, with the environment production gives it (and nothing of the user's:
        sandbox_environment has hidden that already)."""
        assert self.fake is not None
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": self.database_url,
            "CONNECT_ACCESS_CONFIG": str(self.config_path),
            "SLACK_BOT_TOKEN": self.fake.bot_token,
            "SLACK_API_URL": self.fake.api_url,
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_REGION": REGION,
        })
        log_path = self.folder / "scheduler.log"
        log_file = log_path.open("wb")
        self._stack.callback(log_file.close)
        process = subprocess.Popen(
            [*cli_command(), "scheduler", "--revoke-workers", "2"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
        self.scheduler_process = process
        self.scheduler_log = log_path

        def stop_scheduler() -> None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)

        self._stack.callback(stop_scheduler)

        def leads() -> bool:
            if process.poll() is not None:
                raise DemoError(f"the scheduler exited with {process.returncode}:\n"
                                f"{self.scheduler_output()}")
            return LEADER_LINE in log_path.read_text(errors="replace")

        wait_until(leads, 30.0, "the scheduler process to take the lead on the demo database",
                   DemoError)

    def scheduler_output(self, lines: int = 20) -> str:
        if self.scheduler_log is None or not self.scheduler_log.exists():
            return ""
        return "\n".join(self.scheduler_log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def scheduler_error(self) -> str | None:
        """Why the scheduler process is gone, while the demo still needs it."""
        process = self.scheduler_process
        if process is None or process.poll() is None:
            return None
        return f"exit status {process.returncode}; its last lines:\n{self.scheduler_output()}"

    def close(self) -> None:
        """Stop everything started, newest first. A part that fails to stop is logged, not
        raised: the demo's own outcome is what the person needs to see."""
        try:
            self._stack.close()
        except Exception:
            log.exception("stopping part of the demo sandbox failed")

    # -- reading state ------------------------------------------------------------------

    def iam_client(self) -> Any:
        assert self.runtime is not None
        return self.runtime.aws.iam()

    def policies_on(self, role_arn: str) -> dict[str, dict[str, Any]]:
        """Inline and attached managed policies of a role, read from IAM."""
        iam = self.iam_client()
        name = role_arn.rsplit("/", 1)[-1]
        found: dict[str, dict[str, Any]] = {}
        for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=name, PolicyName=policy_name)
            found[policy_name] = _as_document(document["PolicyDocument"])
        for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
            version = iam.get_policy_version(PolicyArn=attached["PolicyArn"],
                                             VersionId=policy["DefaultVersionId"])
            found[attached["PolicyName"]] = _as_document(version["PolicyVersion"]["Document"])
        return found

    def permission_sets(self) -> dict[str, tuple[dict[str, Any], list[str]]]:
        """connect-access-* permission sets: name -> (inline policy, assigned user ids on
        the instance's account), read from Identity Center."""
        assert self.runtime is not None
        sso = self.runtime.aws.client("sso-admin")
        account = self.instance_arn.split(":")[4]
        found: dict[str, tuple[dict[str, Any], list[str]]] = {}
        for arn in sso.list_permission_sets(InstanceArn=self.sso_instance_arn)["PermissionSets"]:
            name = sso.describe_permission_set(InstanceArn=self.sso_instance_arn,
                                               PermissionSetArn=arn)["PermissionSet"]["Name"]
            if not name.startswith("connect-access-"):
                continue
            inline = sso.get_inline_policy_for_permission_set(
                InstanceArn=self.sso_instance_arn, PermissionSetArn=arn)["InlinePolicy"]
            assigned = sso.list_account_assignments(
                InstanceArn=self.sso_instance_arn, AccountId=account,
                PermissionSetArn=arn)["AccountAssignments"]
            found[name] = (_as_document(inline), [a["PrincipalId"] for a in assigned])
        return found

    def request(self, request_id: int) -> AccessRequest:
        assert self.service is not None
        return self.service.get(request_id)

    def grant_failure(self, request_id: int) -> str:
        """Why granting failed, as the lifecycle recorded it in the audit trail."""
        assert self.runtime is not None
        with self.runtime.sessions() as session:
            details = session.execute(
                select(AuditEvent.details)
                .where(AuditEvent.request_id == request_id, AuditEvent.action == "grant_failed")
                .order_by(AuditEvent.seq.desc()).limit(1)
            ).scalar_one_or_none()
        return str((details or {}).get("error") or "no detail was recorded")

    def grant(self, request_id: int) -> Grant | None:
        request = self.request(request_id)
        return request.grants[-1] if request.grants else None


def _as_document(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        loaded: dict[str, Any] = json.loads(raw)
        return loaded
    return dict(raw)


def cli_command() -> list[str]:
    """How to run `connect-access` as a process: the console script beside this Python
    when it is installed there, else the same entry point through this interpreter."""
    script = Path(sys.executable).parent / "connect-access"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from bot.cli import main; main()"]


def _indent(text: str) -> str:
    return "\n".join(INDENT + line if line else INDENT.rstrip() for line in text.splitlines())


def _shown(message: Message) -> str:
    """A channel or DM message as Slack would display it now."""
    return render_message({"blocks": message.blocks, "text": message.text})


def _clock_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] + " UTC"


# --- the conversation --------------------------------------------------------------------------


class Conversation:
    """The scripted steps, each returning what a Slack user would have seen."""

    def __init__(self, sandbox: Sandbox, facts: DemoFacts) -> None:
        self.sandbox = sandbox
        self.facts = facts
        self.preview: ResponsePost | None = None
        self.modal: dict[str, Any] | None = None
        self.approval: Message | None = None
        self.request_id: int | None = None

    @property
    def driver(self) -> SlackDriver:
        assert self.sandbox.driver is not None, "the sandbox is not started"
        return self.sandbox.driver

    @property
    def fake(self) -> FakeSlack:
        assert self.sandbox.fake is not None, "the sandbox is not started"
        return self.sandbox.fake

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        seconds = self.sandbox.grant_seconds
        return [
            ("start the sandbox: SQLite + Alembic, moto (IAM, Connect), fake Slack, "
             "Bolt app, scheduler", self.start),
            (f"alice types `{COMMAND} {ENTRY_TEXT}`", self.alice_types_the_command),
            ("alice clicks Request", self.alice_clicks_request),
            (f"alice picks instance `{INSTANCE_ALIAS}`, {seconds} s and a reason, and sends",
             self.alice_sends_the_request),
            (f"bob approves in channel {APPROVAL_CHANNEL}", self.bob_approves),
            *([("the permission set and its assignment are read back from Identity Center",
                self.permission_set_is_assigned)] if self.sandbox.identity_center else
              [("the policy is read back from IAM", self.policy_is_in_iam)]),
            (f"the scheduler revokes it at expiry ({seconds} s)", self.scheduler_revokes),
            ("the approval message shows the outcome", self.message_shows_the_outcome),
            ("the audit trail is printed and verified", self.audit_trail_verifies),
        ]

    # 1
    def start(self) -> str:
        lines = self.sandbox.start()
        self.facts.database_url = self.sandbox.database_url
        self.facts.instance_arn = self.sandbox.instance_arn
        self.facts.instance_created_by_moto = self.sandbox.instance_created_by_moto
        self.facts.alice_role_arn = self.sandbox.role_arns[ALICE]
        return "\n".join(lines)

    # 2
    def alice_types_the_command(self) -> str:
        self.preview = self.driver.command(ALICE, ENTRY_TEXT)
        rendered = render_message(self.preview.body)
        try:
            find_button(self.preview.body.get("blocks", []), answers.REQUEST_BUTTON)
        except ButtonNotFound:
            raise DemoError(f"the answer has no Request button; it reads:\n{rendered}") from None
        return "what alice sees (only to her):\n" + rendered

    # 3
    def alice_clicks_request(self) -> str:
        assert self.preview is not None
        before = len(self.fake.calls("views.open"))
        self.driver.click_response(ALICE, self.preview, answers.REQUEST_BUTTON)
        self.modal = self.driver.wait_for_opened_view(before + 1)
        return "the modal alice sees:\n" + render_view(self.modal)

    # 4
    def alice_sends_the_request(self) -> str:
        assert self.modal is not None
        modal = self.modal
        before = len(self.fake.calls("chat.postMessage"))
        result = self.driver.submit(ALICE, modal, {
            forms.INSTANCE_BLOCK: INSTANCE_ALIAS,
            forms.DURATION_BLOCK: str(self.sandbox.grant_seconds),
            forms.REASON_BLOCK: REASON,
        })
        answer = result.json() or {}
        if answer.get("response_action") != "update":
            raise DemoError(f"the modal refused the form: {answer}")
        update = self.fake.wait_for(
            lambda f: [c for c in f.calls("views.update")
                       if c.params.get("view_id") == modal["id"]],
            SLACK_WAIT_SECONDS, "the modal to show the outcome")[-1]
        outcome = dict(update.params["view"])
        shown_outcome = render_view(outcome)
        if "Not sent" in shown_outcome:
            raise DemoError(f"the request was refused; the modal says:\n{shown_outcome}")
        call = self.fake.wait_for(
            lambda f: [c for c in f.calls("chat.postMessage")[before:]
                       if c.response.get("ok") and c.response.get("channel") == APPROVAL_CHANNEL],
            SLACK_WAIT_SECONDS, f"the approval message in {APPROVAL_CHANNEL}")[0]
        self.approval = self.fake.message(call.response["channel"], call.response["ts"])
        assert self.sandbox.services is not None
        mine = self.sandbox.services.status(ALICE)
        if not mine or mine[0].state != PENDING:
            raise DemoError(f"no pending request for alice in the database: {mine}")
        self.request_id = self.facts.request_id = mine[0].id
        return (f"the modal after sending:\n{shown_outcome}\n\n"
                f"the approval message in {APPROVAL_CHANNEL}:\n"
                + _shown(self.approval))

    # 5
    def bob_approves(self) -> str:
        assert self.approval is not None and self.request_id is not None
        request_id = self.request_id
        refusals_before = len(self.fake.ephemerals(BOB))
        self.driver.click_message(BOB, self.approval, approval.APPROVE)

        def settled() -> str | None:
            state = self.sandbox.request(request_id).state
            if state in (ACTIVE, FAILED):
                return state
            # A refused vote (e.g. bob's identity could not be checked against IAM) is told
            # to bob alone and leaves the request pending: report it instead of waiting.
            return "refused" if len(self.fake.ephemerals(BOB)) > refusals_before else None

        state = wait_until(settled, SLACK_WAIT_SECONDS, f"request #{request_id} to be granted",
                           DemoError)
        if state == FAILED:
            raise DemoError(f"the grant failed: {self.sandbox.grant_failure(request_id)}")
        if state == "refused":
            refusal = self.fake.ephemerals(BOB)[-1].text
            raise DemoError(f"bob's vote was refused: {refusal}")
        dm = self.driver.wait_for_dm(ALICE, "is active until")
        message = self.fake.message(self.approval.channel, self.approval.ts)
        rendered = _shown(message)
        self.facts.approval_message_active = rendered
        return f"the approval message now reads:\n{rendered}\n\nalice's DM:\n{_shown(dm)}"

    def _active_grant(self) -> Grant:
        """The request's grant, which must be active now; its id and expiry go in the facts."""
        assert self.request_id is not None
        grant = self.sandbox.grant(self.request_id)
        if grant is None or grant.state != ACTIVE:
            raise DemoError("the request has no active grant (did it expire already? use a "
                            f"longer --grant-seconds than {self.sandbox.grant_seconds})")
        self.facts.grant_id = grant.id
        self.facts.expires_at = grant.expires_at
        return grant

    # 6
    def policy_is_in_iam(self) -> str:
        grant = self._active_grant()
        role = self.sandbox.role_arns[ALICE]
        policies = self.sandbox.policies_on(role)
        self.facts.policies_while_active = policies
        if sorted(policies) != sorted(grant.policy_names):
            raise DemoError(f"IAM holds {sorted(policies)} on {role}, but the grant recorded "
                            f"{grant.policy_names}")
        window = (_iam_time(grant.starts_at), _iam_time(grant.expires_at))
        quota = INLINE_QUOTAS["role"] if grant.kind == "inline" else MANAGED_POLICY_QUOTA
        call = "GetRolePolicy" if grant.kind == "inline" else "GetPolicyVersion"
        lines = [f"read back with iam:{call} (boto3 against moto) on {role}"]
        for name, document in policies.items():
            statements = document.get("Statement", [])
            for statement in statements:
                held = _time_box(statement)
                if held != window:
                    raise DemoError(f"policy {name}, statement {statement.get('Sid')}: time "
                                    f"condition {held}, expected {window}")
            lines += [
                f"policy    {name} ({grant.kind})",
                f"size      {iam_policy_size(document):,} of {quota:,} characters (IAM's "
                f"{grant.kind} quota for a role, whitespace not counted)",
                f"time box  every statement: aws:CurrentTime DateGreaterThan {window[0]} "
                f"and DateLessThan {window[1]}",
                "          (the policy stops working at expiry even if nothing removed it)",
                "statements",
                *(f"  {_statement_line(s)}" for s in statements),
            ]
        return "\n".join(lines)

    # 6, with --identity-center
    def permission_set_is_assigned(self) -> str:
        grant = self._active_grant()
        sets = self.sandbox.permission_sets()
        self.facts.policies_while_active = {name: doc for name, (doc, _) in sets.items()}
        if sorted(sets) != sorted(grant.policy_names):
            raise DemoError(f"Identity Center holds permission sets {sorted(sets)}, but the "
                            f"grant recorded {grant.policy_names}")
        window = (_iam_time(grant.starts_at), _iam_time(grant.expires_at))
        (name, (document, assigned)), = sets.items()
        if assigned != [self.sandbox.ic_user_id]:
            raise DemoError(f"{name} is assigned to {assigned}, not to alice's user "
                            f"{self.sandbox.ic_user_id}")
        statements = document.get("Statement", [])
        for statement in statements:
            if _time_box(statement) != window:
                raise DemoError(f"{name}, statement {statement.get('Sid')}: time condition "
                                f"{_time_box(statement)}, expected {window}")
        account = self.sandbox.instance_arn.split(":")[4]
        return "\n".join([
            "read back with sso-admin (boto3 against moto)",
            f"permission set  {name}, assigned to alice ({IC_USER}, "
            f"{self.sandbox.ic_user_id}) on account {account}",
            f"size            {iam_policy_size(document):,} of 10,240 characters (a "
            "permission set's inline policy quota)",
            f"time box        every statement: aws:CurrentTime DateGreaterThan {window[0]} "
            f"and DateLessThan {window[1]}",
            "                (live sessions stop working at expiry, not only new sign-ins)",
            "statements",
            *(f"  {_statement_line(s)}" for s in statements),
        ])

    # 7
    def scheduler_revokes(self) -> str:
        assert self.request_id is not None and self.facts.expires_at is not None
        request_id = self.request_id
        expires_at = self.facts.expires_at
        wait = max(0.0, (expires_at - datetime.now(UTC)).total_seconds())

        def revoked() -> bool:
            if self.sandbox.scheduler_error is not None:
                raise DemoError(f"the scheduler stopped: {self.sandbox.scheduler_error}")
            return self.sandbox.request(request_id).state == REVOKED

        wait_until(revoked, wait + REVOKE_GRACE_SECONDS,
                   f"the scheduler to revoke request #{request_id}", DemoError)
        grant = self.sandbox.grant(request_id)
        assert grant is not None and grant.revoked_at is not None
        self.facts.revoked_at, self.facts.revoke_reason = grant.revoked_at, grant.revoke_reason
        if grant.revoke_reason != "expiry":
            raise DemoError(f"the grant was revoked for {grant.revoke_reason!r}, not expiry")
        if self.sandbox.identity_center:
            left = sorted(self.sandbox.permission_sets())
            now = "Identity Center now: no connect-access permission set, no assignment"
        else:
            left = sorted(self.sandbox.policies_on(self.sandbox.role_arns[ALICE]))
            now = (f"IAM now     {self.sandbox.role_arns[ALICE]}: no inline policies, no "
                   "attached managed policies")
        self.facts.iam_after_expiry = left
        if left:
            raise DemoError(f"still held after the revoke: {left}")
        lag = (grant.revoked_at - grant.expires_at).total_seconds()
        return "\n".join([
            f"expires at  {_clock_time(grant.expires_at)}",
            f"revoked at  {_clock_time(grant.revoked_at)} ({lag:+.2f} s, by the scheduler)",
            now,
        ])

    # 8
    def message_shows_the_outcome(self) -> str:
        assert self.approval is not None and self.request_id is not None
        channel, ts = self.approval.channel, self.approval.ts

        def final() -> str | None:
            text = _shown(self.fake.message(channel, ts))
            return text if "Expired" in text else None

        rendered: str = wait_until(final, SLACK_WAIT_SECONDS,
                                   "the approval message to show the expiry", DemoError)
        self.facts.approval_message_final = rendered
        self.facts.final_request_state = self.sandbox.request(self.request_id).state
        dm = self.driver.wait_for_dm(ALICE, "expired")
        return f"the approval message in {channel}:\n{rendered}\n\nalice's DM:\n{_shown(dm)}"

    # 9
    def audit_trail_verifies(self) -> str:
        assert self.sandbox.runtime is not None
        with self.sandbox.runtime.sessions() as session:
            events = list(session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars())
            result = verify_chain(session)
        self.facts.audit_actions = [e.action for e in events]
        self.facts.audit_ok, self.facts.audit_checked = result.ok, result.checked
        lines = [f"{'seq':>3}  {'at (UTC)':<12}  {'actor':<10} {'action':<10} details"]
        for event in events:
            lines.append(f"{event.seq:>3}  {event.at.strftime('%H:%M:%S.%f')[:-3]:<12}  "
                         f"{_person(event.actor):<10} {event.action:<10} "
                         f"{_brief(event.details)}")
        if not result.ok:
            raise DemoError(f"the audit chain is BROKEN at event {result.broken_seq}: "
                            f"{result.problem}\n" + "\n".join(lines))
        lines.append(f"audit chain intact: {result.checked} events verified "
                     "(bot.audit.verify_chain, the same check as `connect-access audit verify`)")
        lines.extend(self._anchor_the_chain())
        return "\n".join(lines)

    def _anchor_the_chain(self) -> list[str]:
        """Anchoring as production does it, against moto: a checkpoint of the chain signed
        with a local Ed25519 key, written to an S3 bucket with Object Lock (compliance
        mode), then the chain verified against it (bot.audit_verify)."""
        runtime = self.sandbox.runtime
        assert runtime is not None
        s3 = _fake_aws_session().client("s3", endpoint_url=self.sandbox.moto_url)
        s3.create_bucket(Bucket=ANCHOR_BUCKET, ObjectLockEnabledForBucket=True)
        store = S3AnchorStore(s3, ANCHOR_BUCKET, retention=timedelta(days=1))
        store.check()
        signer = write_new_key(self.sandbox.folder / "audit-ed25519.pem")
        writer = CheckpointWriter(sessions=runtime.sessions, signer=signer, stores=[store],
                                  clock=runtime.clock, alerter=LoggingAlerter(),
                                  interval=timedelta(minutes=5), every_events=1000)
        written = writer.write_now().written
        assert written is not None
        c = written.checkpoint
        lock = s3.head_object(Bucket=ANCHOR_BUCKET, Key=store.key_for(written))
        with runtime.sessions() as session:
            report = verify_audit(session, signer=signer, anchors=store.list(),
                                  anchor_store=store.name)
        self.facts.anchored_seq = c.seq if report.ok else None
        if not report.ok:
            raise DemoError("\n".join(report.lines()))
        return [f"checkpoint: event {c.seq}, head {c.head_hash[:16]}…, signed by {c.key_id}",
                f"  written to {store.name} with Object Lock {lock['ObjectLockMode']} until "
                f"{lock['ObjectLockRetainUntilDate']:%Y-%m-%d} (moto S3)",
                report.lines()[0]]


def _iam_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_box(statement: Mapping[str, Any]) -> tuple[str | None, str | None]:
    condition = statement.get("Condition") or {}
    return (condition.get("DateGreaterThan", {}).get("aws:CurrentTime"),
            condition.get("DateLessThan", {}).get("aws:CurrentTime"))


def _statement_line(statement: Mapping[str, Any]) -> str:
    actions = _as_list(statement.get("Action"))
    resources = _as_list(statement.get("Resource"))
    what = actions[0] if len(actions) == 1 else f"{len(actions)} actions"
    where = resources[0] if len(resources) == 1 else f"{len(resources)} resources"
    if len(where) > 60:
        where = "..." + where[-57:]
    extra = sorted(k for c in (statement.get("Condition") or {}).values()
                   for k in c if k != "aws:CurrentTime")
    when = f", only with {', '.join(extra)}" if extra else ""
    return f"{statement.get('Sid', '')!s:<26} {what} on {where}{when}"


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _person(actor: str) -> str:
    return PEOPLE.get(actor, actor)


_DETAIL_KEYS = ("to", "decision", "tier", "duration_seconds", "approvals", "grant_id",
                "policy_names", "expires_at", "reason")


def _brief(details: Mapping[str, Any]) -> str:
    shown = {k: details[k] for k in _DETAIL_KEYS if k in details}
    text = ", ".join(f"{k}={v}" for k, v in shown.items())
    return text if len(text) <= 110 else text[:107] + "..."


# --- running -----------------------------------------------------------------------------------

StepHook = Callable[[int, Sandbox], None]


def run_demo(
    *,
    grant_seconds: int = 60,
    keep: bool = False,
    port: int = 0,
    out: TextIO | None = None,
    before_step: StepHook | None = None,
    identity_center: bool = False,
) -> DemoResult:
    """Run the whole demo, printing to `out` (stdout by default). Never raises for a failed
    step: the result names it and has a non-zero exit code. `before_step(number, sandbox)`
    runs before each step (tests use it to break something). Ctrl-C stops everything and
    re-raises KeyboardInterrupt."""
    if not MIN_GRANT_SECONDS <= grant_seconds <= MAX_GRANT_SECONDS:
        raise ValueError(f"grant_seconds must be between {MIN_GRANT_SECONDS} and "
                         f"{MAX_GRANT_SECONDS}")
    stream = out or sys.stdout
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="connect-access-demo-"))
    sandbox = Sandbox(folder, grant_seconds, port, identity_center=identity_center)
    facts = DemoFacts()
    conversation = Conversation(sandbox, facts)
    plan = conversation.steps()
    result = DemoResult(steps=[], facts=facts, total_steps=len(plan))

    def say(text: str = "", end: str = "\n") -> None:
        stream.write(text + end)
        stream.flush()

    say("connect-access demo: the real bot, end to end, on this machine. Slack and AWS are "
        "stood in for\nby a fake Slack Web API and moto over HTTP; nothing real is touched.")
    try:
        for number, (title, step) in enumerate(plan, start=1):
            say(f"[{number}/{len(plan)}] {title} ...", end="")
            step_started = time.monotonic()
            try:
                if before_step is not None:
                    before_step(number, sandbox)
                shown = step()
            except KeyboardInterrupt:
                say(" interrupted")
                raise
            except Exception as exc:
                elapsed = time.monotonic() - step_started
                error = str(exc) or type(exc).__name__
                if not isinstance(exc, (DemoError, AssertionError)):
                    log.debug("demo step %d failed", number, exc_info=True)
                    error = f"{type(exc).__name__}: {error}"
                result.steps.append(StepRecord(number, title, False, elapsed, error=error))
                say(f" FAILED ({elapsed:.1f} s)")
                say(_indent(error))
                break
            elapsed = time.monotonic() - step_started
            result.steps.append(StepRecord(number, title, True, elapsed, shown=shown))
            say(f" ok ({elapsed:.1f} s)")
            if shown:
                say(_indent(shown))
    finally:
        sandbox.close()
        if keep:
            result.kept_folder = folder
        else:
            shutil.rmtree(folder, ignore_errors=True)
        result.seconds = time.monotonic() - started
    failed = result.failed_step
    if failed is not None:
        say(f"demo FAILED at step {failed.number}/{len(plan)} ({failed.title}): "
            f"{failed.error.splitlines()[0] if failed.error else 'no detail'}")
        say("everything the demo started has been stopped.")
    else:
        say(f"demo finished in {result.seconds:.1f} s: all {len(plan)} steps ok.")
    if result.kept_folder is not None:
        say(f"the database is kept in {result.kept_folder}; look at the audit trail with:")
        say(f"  DATABASE_URL={sandbox.database_url} connect-access audit export --format csv")
    return result
