"""Grant-time look-ups that narrow or stop a grant: the chosen instance's own resources
(Amazon Connect's DescribeInstance and ListInstanceStorageConfigs), and the AWS managed
policies already attached to the principal (whose explicit denies would make a grant do
nothing).

Both are best effort on the narrowing side: what cannot be read (no permission, an API
the endpoint does not offer) leaves the account-and-Region scope the compiler uses
anyway, and is logged. The bot's own policy (deploy/bot-iam-policy.json) needs
connect:DescribeInstance, connect:ListInstanceStorageConfigs and iam:ListAttached*Policies
/ iam:ListGroupsForUser for them.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.sessions import AwsSessions, InstanceAccess
from bot.scoping import InstanceResources

log = logging.getLogger(__name__)

# Every storage type of ListInstanceStorageConfigs: S3 buckets and their KMS keys, Kinesis
# Video encryption keys, Kinesis and Firehose streams the console's data-storage and
# streaming entries write to.
STORAGE_TYPES = (
    "CALL_RECORDINGS", "CHAT_TRANSCRIPTS", "SCHEDULED_REPORTS", "ATTACHMENTS",
    "SCREEN_RECORDINGS", "CONTACT_EVALUATIONS", "EMAIL_MESSAGES", "MEDIA_STREAMS",
    "CONTACT_TRACE_RECORDS", "AGENT_EVENTS", "REAL_TIME_CONTACT_ANALYSIS_SEGMENTS",
    "REAL_TIME_CONTACT_ANALYSIS_CHAT_SEGMENTS", "REAL_TIME_CONTACT_ANALYSIS_VOICE_SEGMENTS",
)
_KEY_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}")
_STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
_CONNECT_SERVICE_ROLE = re.compile(
    r"arn:[a-z-]+:iam::[0-9]{12}:role/aws-service-role/connect\.amazonaws\.com/"
    r"AWSServiceRoleForAmazonConnect[\w+=,.@-]*"
)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class ConnectInstanceLookup:
    """instance ARN -> InstanceResources, cached for `max_age` seconds per instance."""

    def __init__(self, aws: AwsSessions, instances: Sequence[InstanceAccess] = (),
                 *, directory_ids: Mapping[str, str] | None = None,
                 replica_regions: Mapping[str, Sequence[str]] | None = None,
                 max_age: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 client_for: Callable[[str], Any] | None = None) -> None:
        """`directory_ids`: instance ARN -> its directory id from the operator config
        (`instances[].directory_id`), since DescribeInstance does not return it;
        `replica_regions`: instance ARN -> where its replicas may go (`replica_regions`).
        `client_for`: instance ARN -> its Connect client (default: from `aws`)."""
        self._aws = aws
        self._client_for = client_for or self._client
        self._instances = {i.arn: i for i in instances}
        self._directory_ids = dict(directory_ids or {})
        self._replica_regions = {arn: tuple(regions)
                                 for arn, regions in (replica_regions or {}).items()}
        self._max_age = max_age
        self._clock = clock
        self._cache: dict[str, tuple[float, InstanceResources | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, instance_arn: str) -> InstanceResources | None:
        with self._lock:
            cached = self._cache.get(instance_arn)
            if cached is not None and self._clock() - cached[0] < self._max_age:
                return cached[1]
        found = self._look_up(instance_arn)
        with self._lock:
            self._cache[instance_arn] = (self._clock(), found)
        return found

    def _client(self, instance_arn: str) -> Any:
        region = instance_arn.split(":")[3]
        session = self._aws.session_for(self._instances.get(instance_arn))
        return session.client("connect", region_name=region,
                              endpoint_url=self._aws.endpoint_url, config=self._aws.config)

    def _look_up(self, instance_arn: str) -> InstanceResources | None:
        instance_id = instance_arn.rsplit("/", 1)[-1]
        try:
            client = self._client_for(instance_arn)
            described = client.describe_instance(InstanceId=instance_id)["Instance"]
        except (ClientError, BotoCoreError) as exc:
            log.warning("cannot describe instance %s (%s); its grants keep the account "
                        "and Region scope", instance_arn, exc)
            directory_id = self._directory_ids.get(instance_arn)
            replicas = self._replica_regions.get(instance_arn, ())
            # What the operator configured does not depend on the look-up.
            return (InstanceResources(instance_arn=instance_arn, directory_id=directory_id,
                                      replica_regions=replicas)
                    if directory_id or replicas else None)
        role = str(described.get("ServiceRole") or "")
        storage = self._storage(client, instance_arn, instance_id)
        return InstanceResources(
            instance_arn=instance_arn,
            # Only a role of Connect's own service-linked path: anything else would fail
            # the compiler's escalation check, and is not this instance's role anyway.
            service_role_arn=role if _CONNECT_SERVICE_ROLE.fullmatch(role) else None,
            directory_id=self._directory_ids.get(instance_arn),
            replica_regions=self._replica_regions.get(instance_arn, ()),
            bucket_names=storage.get("buckets", ()),
            kms_key_ids=storage.get("keys", ()),
            kinesis_stream_names=storage.get("kinesis", ()),
            firehose_stream_names=storage.get("firehose", ()),
        )

    def _storage(self, client: Any, instance_arn: str, instance_id: str
                 ) -> dict[str, tuple[str, ...]]:
        """Buckets, KMS key ids and stream names of every storage config. All or nothing
        per kind: a narrowed grant must reach every resource the instance uses, so a
        listing that fails, or a key or stream outside the instance's account and Region
        (or not readable as one), leaves that kind on the account-and-Region scope."""
        _, partition, _, region, account = instance_arn.split(":", 5)[:5]
        found: dict[str, set[str]] = {"buckets": set(), "keys": set(), "kinesis": set(),
                                      "firehose": set()}
        unusable: set[str] = set()

        def in_instance(arn: str, service: str, prefix: str, pattern: re.Pattern[str],
                        kind: str) -> None:
            head = f"arn:{partition}:{service}:{region}:{account}:{prefix}"
            name = arn[len(head):] if arn.startswith(head) else ""
            if service == "kms" and _KEY_ID.fullmatch(arn):
                name = arn  # a bare key id names a key of the instance's account
            if pattern.fullmatch(name):
                found[kind].add(name)
            else:
                log.info("%s of %s is %r, not in its account and Region; its %s are not "
                         "narrowed", kind, instance_arn, arn, kind)
                unusable.add(kind)

        for resource_type in STORAGE_TYPES:
            token: str | None = None
            while True:
                params: dict[str, Any] = {"InstanceId": instance_id,
                                          "ResourceType": resource_type}
                if token:
                    params["NextToken"] = token
                try:
                    page = client.list_instance_storage_configs(**params)
                except (ClientError, BotoCoreError) as exc:
                    log.info("cannot list %s storage of %s (%s); its storage resources are "
                             "not narrowed", resource_type, instance_arn, exc)
                    return {}
                for config in page.get("StorageConfigs") or []:
                    s3 = config.get("S3Config") or {}
                    bucket = str(s3.get("BucketName") or "")
                    if bucket:
                        if _BUCKET.fullmatch(bucket):
                            found["buckets"].add(bucket)
                        else:
                            unusable.add("buckets")
                    video = config.get("KinesisVideoStreamConfig") or {}
                    for encryption in (s3.get("EncryptionConfig"), video.get("EncryptionConfig")):
                        key = str((encryption or {}).get("KeyId") or "")
                        if key:
                            in_instance(key, "kms", "key/", _KEY_ID, "keys")
                    stream = str((config.get("KinesisStreamConfig") or {}).get("StreamArn") or "")
                    if stream:
                        in_instance(stream, "kinesis", "stream/", _STREAM_NAME, "kinesis")
                    firehose = str((config.get("KinesisFirehoseConfig") or {}
                                    ).get("FirehoseArn") or "")
                    if firehose:
                        in_instance(firehose, "firehose", "deliverystream/", _STREAM_NAME,
                                    "firehose")
                token = page.get("NextToken")
                if not token:
                    break
        return {kind: tuple(sorted(values)) for kind, values in found.items()
                if kind not in unusable}


class AttachedPolicyLookup:
    """principal ARN -> the managed policy ARNs attached to it (for a user, also those of
    its groups), read from IAM in the principal's account."""

    def __init__(self, iam_for_principal: Callable[[str], Any]) -> None:
        self._iam_for_principal = iam_for_principal

    def __call__(self, principal_arn: str) -> tuple[str, ...]:
        try:
            return self._attached(principal_arn)
        except (ClientError, BotoCoreError) as exc:
            # Best effort: not being able to read them must not stop a grant.
            log.warning("cannot list the managed policies of %s (%s)", principal_arn, exc)
            return ()

    def _attached(self, principal_arn: str) -> tuple[str, ...]:
        kind, _, rest = principal_arn.split(":", 5)[5].partition("/")
        name = rest.rsplit("/", 1)[-1]
        iam = self._iam_for_principal(principal_arn)
        found: set[str] = set()

        def attached(operation: str, **params: str) -> None:
            paginator = iam.get_paginator(operation)
            for page in paginator.paginate(**params):
                found.update(p["PolicyArn"] for p in page["AttachedPolicies"])

        if kind == "role":
            attached("list_attached_role_policies", RoleName=name)
        elif kind == "user":
            attached("list_attached_user_policies", UserName=name)
            for page in iam.get_paginator("list_groups_for_user").paginate(UserName=name):
                for group in page["Groups"]:
                    attached("list_attached_group_policies", GroupName=group["GroupName"])
        elif kind == "group":
            attached("list_attached_group_policies", GroupName=name)
        return tuple(sorted(found))
