"""The operator's YAML: merging over the shipped tier defaults, overrides, and errors that
name the key path."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.catalog import Catalog, load_catalog
from bot.config import ConfigError, load_config, parse_config, parse_duration_text

INSTANCE = "arn:aws:connect:us-east-1:111122223333:instance/11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_defaults_come_from_routing_yaml() -> None:
    config = parse_config({})
    critical = config.router.tiers["critical"]
    assert (critical.approvals, critical.max_duration, critical.auto_approve) == (
        2, timedelta(hours=1), False)
    assert config.router.tiers["write"].max_duration == timedelta(hours=4)
    assert config.timings.pending_ttl == timedelta(hours=24)
    assert config.timings.sweep_interval == timedelta(seconds=30)
    assert config.instances == () and config.principals == {}


def test_design_example_parses(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text(f"""
instances:
  - alias: prod
    arn: {INSTANCE}
    assume_role_arn: arn:aws:iam::111122223333:role/connect-access-bot
    external_id: abc
principals:
  U012ALICE: arn:aws:iam::111122223333:role/alice-admin
principal_tag_lookup: true
require_managed_tag: false
routing:
  tiers:
    read:     {{channel: C0APPROVALS, approvers: [S0LEADS], approvals: 1, max_duration: 8h, auto_approve: true}}
    write:    {{channel: C0APPROVALS, approvers: [S0LEADS], approvals: 1, max_duration: 4h}}
    critical: {{channel: C0SECURITY,  approvers: [S0SECURITY, U0CISO], approvals: 2, max_duration: 1h}}
  overrides:
    - match: {{page: Federations}}
      approvers: [S0SECURITY]
      approvals: 3
    - match: {{page: Federations}}
      approvals: 9
    - match: {{entry: home/list-instance}}
      max_duration: 30m
timings: {{pending_ttl: 12h, remind_before_expiry: 5m, sweep_interval: 30s, pending_reminder_after: 1h, irrevocable_retry: 15m}}
""")
    config = load_config(path)
    assert config.instance("prod").account == "111122223333"
    assert config.instance().external_id == "abc"
    assert config.principals == {"U012ALICE": "arn:aws:iam::111122223333:role/alice-admin"}
    assert config.principal_tag_lookup is True
    assert config.timings.pending_ttl == timedelta(hours=12)
    federation = config.router.route_for(catalog.get("federations/saml-federation"))
    # First matching override wins, unchanged keys come from the tier.
    assert (federation.approvers, federation.approvals, federation.channel) == (
        ("S0SECURITY",), 3, "C0SECURITY")
    listing = config.router.route_for(catalog.get("home/list-instance"))
    assert listing.max_duration == timedelta(minutes=30) and listing.auto_approve
    other = config.router.route_for(catalog.get("home/describe-instance"))
    assert other.max_duration == timedelta(hours=8)


@pytest.mark.parametrize(("raw", "message"), [
    ({"routing": {"tiers": {"write": {"approvals": "two"}}}},
     "routing.tiers.write.approvals: must be a whole number >= 1, got 'two'"),
    ({"routing": {"tiers": {"write": {"approvals": 0}}}},
     "routing.tiers.write.approvals: must be a whole number >= 1, got 0"),
    ({"routing": {"tiers": {"write": {"auto_approve": True}}}},
     "routing.tiers.write.auto_approve: only the read tier may be auto-approved"),
    ({"routing": {"tiers": {"urgent": {}}}}, "routing.tiers.urgent: unknown tier"),
    ({"routing": {"tiers": {"read": {"max_duration": "forever"}}}},
     "routing.tiers.read.max_duration: Duration 'forever' is not understood"),
    ({"routing": {"tiers": {"read": {"approvers": ["alice"]}}}},
     "routing.tiers.read.approvers[0]: must be a Slack user id (U... or W...) or user-group id"),
    ({"routing": {"tiers": {"read": {"channel": "#approvals"}}}},
     "routing.tiers.read.channel: must be a Slack channel id"),
    ({"routing": {"overrides": [{"match": {}}]}},
     "routing.overrides[0].match: must name an entry id"),
    ({"routing": {"overrides": [{"match": {"page": "X"}, "auto_approve": True}]}},
     "routing.overrides[0].auto_approve: overrides may not auto-approve"),
    ({"routing": {"overrides": [{"match": {"page": "X"}, "colour": "red"}]}},
     "routing.overrides[0].colour: unknown key"),
    ({"instances": [{"alias": "prod", "arn": "arn:aws:s3:::bucket"}]},
     "instances[0].arn: must be an Amazon Connect instance ARN"),
    ({"instances": [{"alias": "a", "arn": INSTANCE}, {"alias": "a", "arn": INSTANCE}]},
     "instances: alias 'a' is used more than once"),
    ({"instances": [{"alias": "a", "arn": INSTANCE}, {"alias": "b", "arn": INSTANCE}]},
     f"instances: instance {INSTANCE} is configured twice (aliases 'a' and 'b')"),
    ({"principals": {"U0A": "alice"}}, "principals.U0A: 'alice' is not an IAM principal ARN"),
    ({"principals": {"alice": "arn:aws:iam::111122223333:role/a"}},
     "principals.alice: must be keyed by a Slack user id"),
    ({"timings": {"pending_ttl": "0h"}}, "timings.pending_ttl: Duration '0h' is zero"),
    ({"timings": {"nap": "1h"}}, "timings.nap: unknown key"),
    ({"require_managed_tag": "yes"}, "require_managed_tag: must be true or false"),
    ({"routing": []}, "routing: must be a mapping"),
])
def test_errors_name_the_key_path(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "operator.yaml")
    assert str(caught.value).startswith(f"operator.yaml: {message}")


def test_file_faults(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routing: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    assert load_config(None).router.tiers["read"].approvals == 1


def test_unknown_instance_lists_known_ones() -> None:
    config = parse_config({"instances": [{"alias": "prod", "arn": INSTANCE}]})
    with pytest.raises(ConfigError, match=r"no instance 'dev' \(known: prod\)"):
        config.instance("dev")
    assert config.instance(INSTANCE).alias == "prod"


@pytest.mark.parametrize(("text", "expected"), [
    ("30s", timedelta(seconds=30)), ("4h", timedelta(hours=4)), ("1h30m", timedelta(minutes=90)),
    ("2d", timedelta(days=2)), (" 10M ", timedelta(minutes=10)),
])
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration_text(text) == expected


@pytest.mark.parametrize("text", ["", "4", "h", "-1h", "1.5h", "4 hours", "0m", "1h junk"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"(No duration|not understood|negative|zero)"):
        parse_duration_text(text)


def test_the_alerts_channel_is_read_and_checked() -> None:
    assert parse_config({}).alerts.channel is None
    assert parse_config({"alerts": {"channel": "C0ALERTS"}}).alerts.channel == "C0ALERTS"
    with pytest.raises(ConfigError) as bad:
        parse_config({"alerts": {"channel": "#alerts"}}, "op.yaml")
    assert str(bad.value) == ("op.yaml: alerts.channel: must be a Slack channel id like "
                              "C0ALERTS, got '#alerts'")
    with pytest.raises(ConfigError, match=r"alerts\.chanel: unknown key"):
        parse_config({"alerts": {"chanel": "C0ALERTS"}})


def test_reconcile_interval_defaults_to_15m_and_accepts_down_to_1m() -> None:
    assert parse_config({}).timings.reconcile_interval == timedelta(minutes=15)
    parsed = parse_config({"timings": {"reconcile_interval": "1m"}})
    assert parsed.timings.reconcile_interval == timedelta(minutes=1)
    with pytest.raises(ConfigError, match=r"timings\.reconcile_interval: must be at least 1m"):
        parse_config({"timings": {"reconcile_interval": "30s"}})


@pytest.mark.parametrize(("bucket", "problem"), [
    ("Bad_Bucket", "3 to 63 lower-case letters"),
    ("ab", "3 to 63 lower-case letters"),
    ("a" * 64, "3 to 63 lower-case letters"),
    ("-audit", "starting and ending with a letter or digit"),
    ("acme..audit", "no two dots in a row"),
    ("192.168.5.4", "not shaped like an IP address"),
    ("xn--audit", "reserved 'xn--'"),
    ("sthree-audit", "reserved 'sthree-'"),
    ("audit-s3alias", "reserved '-s3alias'"),
    ("audit--ol-s3", "reserved '--ol-s3'"),
    ("audit.mrap", "reserved '.mrap'"),
])
def test_anchor_bucket_follows_s3_naming_rules(bucket: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"audit": {"signing_key_file": "/k", "anchor_bucket": bucket}},
                     "operator.yaml")
    message = str(caught.value)
    assert message.startswith("operator.yaml: audit.anchor_bucket: must be an S3 bucket name (")
    assert problem in message and repr(bucket) in message


@pytest.mark.parametrize("bucket", ["acme-connect-access-audit", "a.b.c", "abc", "a" * 63])
def test_valid_anchor_bucket_names_load(bucket: str) -> None:
    config = parse_config({"audit": {"signing_key_file": "/k", "anchor_bucket": bucket}})
    assert config.audit.anchor_bucket == bucket
