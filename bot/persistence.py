"""Which actions can leave access behind after a grant ends, and what contains them.

The `aws:CurrentTime` window bounds what the holder can do *with the grant*; it does not
bound what they *wrote* with it. A bucket policy naming their own role, a Lambda
permission, a KMS grant, SIP termination credentials or a Connect web session all keep
working after the policy is gone. This module is the one home of that classification:

- every action whose IAM access level is "Permissions management", plus the reviewed
  PERSISTENT_WRITERS below (credential, grant, session and resource-policy writers that
  IAM files under "Write"), is persistent-class;
- except REMOVES_ACCESS_ONLY: permissions-management actions whose only lasting effect is
  taking access away (retiring a grant, deleting a resource policy), which cannot make
  access outlive the time box.

A persistent-class action in a compiled policy must be *contained*: its resources all lie
within Amazon Connect's own (the service-linked role paths, `amazon-connect-*` names,
the chosen instance, the instance's looked-up resources), or its statement carries a
condition that pins it to an AWS service (CONTAINING_CONDITIONS). Otherwise the catalog
entry must declare it under `persistent_effects` with a reason, and approvers are shown
that reason. Session writers are never contained by scoping: the session they open
outlasts the window whatever it is scoped to.

Pure data and functions: no boto3, no Slack.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.iamref import ActionInfo

PersistenceKind = Literal["permissions", "resource-policy", "credential", "grant", "session",
                          "delegation"]

PERMISSIONS_MANAGEMENT = "Permissions management"


@dataclass(frozen=True)
class ReviewedAction:
    kind: PersistenceKind
    reason: str


# Reviewed: actions IAM files under "Write" whose effect outlives the grant.
PERSISTENT_WRITERS: Mapping[str, ReviewedAction] = {
    "lex:CreateResourcePolicy": ReviewedAction(
        "resource-policy", "writes a Lex bot resource policy, which can name any principal"),
    "lex:UpdateResourcePolicy": ReviewedAction(
        "resource-policy", "rewrites a Lex bot resource policy, which can name any principal"),
    "chime:PutVoiceConnectorTerminationCredentials": ReviewedAction(
        "credential", "stores SIP credentials that can place calls through the voice "
        "connector until someone removes them (a toll-fraud path)"),
    "chime:PutVoiceConnectorTermination": ReviewedAction(
        "credential", "sets the CIDR ranges allowed to place calls through the voice "
        "connector; they stay allowed after the grant"),
    "chime:PutVoiceConnectorOrigination": ReviewedAction(
        "delegation", "routes the voice connector's inbound calls to hosts of the holder's "
        "choice; the routing stays"),
    "iam:CreateRole": ReviewedAction(
        "credential", "creates a role whose trust policy is the creator's choice (an outside "
        "account may be allowed to assume it); the role outlives the grant"),
    "events:PutTargets": ReviewedAction(
        "delegation", "sends matching events to a target of the holder's choice for as long "
        "as the rule exists"),
    "secretsmanager:CreateSecret": ReviewedAction(
        "credential", "stores a credential the holder chose; it stays after the grant"),
    # STS: none of the AWS page's entries needs these; listed so that a catalog edit adding
    # one (an assumed session outlives the policy that allowed it) fails validation.
    "sts:AssumeRole": ReviewedAction(
        "session", "opens a role session that lives on its own lifetime, not the grant's"),
    "sts:AssumeRoleWithSAML": ReviewedAction(
        "session", "opens a role session that lives on its own lifetime, not the grant's"),
    "sts:AssumeRoleWithWebIdentity": ReviewedAction(
        "session", "opens a role session that lives on its own lifetime, not the grant's"),
    "sts:GetFederationToken": ReviewedAction(
        "session", "issues federated credentials that live on their own lifetime"),
    "sts:GetSessionToken": ReviewedAction(
        "session", "issues temporary credentials that live on their own lifetime"),
    "connect:AdminGetEmergencyAccessToken": ReviewedAction(
        "session", "opens an Amazon Connect web session that lives on its own lifetime, "
        "not the grant's: it can outlast the window"),
    "connect:GetFederationToken": ReviewedAction(
        "session", "issues Amazon Connect federation credentials that live on their own "
        "lifetime, not the grant's: they can outlast the window"),
}

# Reviewed: permissions-management actions that can only take access away.
REMOVES_ACCESS_ONLY: Mapping[str, str] = {
    "kms:RetireGrant": "retires an existing KMS grant; it cannot create one",
    "iam:DeleteRolePolicy": "deletes an inline policy from a (service-linked) role",
    "lambda:RemovePermission": "removes a statement from a Lambda function's policy",
    "ses:DeleteEmailIdentityPolicy": "deletes a sending-authorization policy",
}

# Condition keys (and the values that make them containing) that pin a persistent action
# to an AWS service or to this account, so what it writes serves Amazon Connect, not the
# holder: a Lambda permission only for connect.amazonaws.com, a KMS grant only for an AWS
# resource, a role only passed to one service, an event target only in this account.
CONTAINING_CONDITIONS: Mapping[str, str] = {
    "lambda:Principal": "the function policy may only name the Amazon Connect service",
    "kms:GrantIsForAWSResource": "the grant must be made by an AWS service for its resource",
    "kms:ViaService": "the key may only be used through the named AWS services",
    "iam:AWSServiceName": "only the named service's service-linked role",
    "iam:PassedToService": "the role may only be passed to the named service",
    "events:TargetArn": "targets only in this account",
}


def persistence_of(info: ActionInfo) -> ReviewedAction | None:
    """Why an action's effect can outlive a grant, or None when it cannot."""
    reviewed = PERSISTENT_WRITERS.get(info.action)
    if reviewed is not None:
        return reviewed
    if PERMISSIONS_MANAGEMENT in info.access_levels and info.action not in REMOVES_ACCESS_ONLY:
        return ReviewedAction(
            "permissions", "IAM files it under Permissions management: it writes who may "
            "access a resource, and what it writes is not bound by the grant's window")
    return None


# Resources that are Amazon Connect's own. `connect:` ARNs, the service-linked roles of
# Connect and its features (by prefix, or the instance's exact role: only their AWS
# service can assume them), and the `amazon-connect-` names Connect gives the buckets,
# domains and other resources it creates (AmazonConnect_FullAccess scopes by the same
# prefix). Not the /service-role/ path: any service's roles live there.
_CONNECT_OWN = (
    re.compile(r"arn:[a-z-]+:connect:[^:]*:[0-9]{12}:.+"),
    re.compile(r"arn:[a-z-]+:iam::[0-9]{12}:role/aws-service-role/[a-z0-9.-]+\.amazonaws\.com/"
               r"AWSServiceRoleFor[A-Za-z0-9_+=,.@-]*\*?"),
    re.compile(r"arn:[a-z-]+:[a-z0-9-]+:[^:]*:[0-9]*:[^*]*\bamazon-connect-.*"),
)


def is_connect_own(resource: str, extra: Iterable[str] = ()) -> bool:
    """Whether a resource lies within Amazon Connect's own: the patterns above, or one of
    `extra` (the chosen instance's looked-up resources, as exact ARNs)."""
    if resource in set(extra):
        return True
    return any(p.fullmatch(resource) for p in _CONNECT_OWN)


def containing_keys(condition: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    return tuple(sorted(k for keys in condition.values() for k in keys
                        if k in CONTAINING_CONDITIONS))


def containment(
    info: ActionInfo,
    resources: Iterable[str],
    condition: Mapping[str, Mapping[str, Any]],
    extra_own: Iterable[str] = (),
) -> str | None:
    """How a persistent action in one statement is kept from outliving the grant, or None
    when nothing contains it (it must then be declared in the catalog)."""
    reviewed = persistence_of(info)
    if reviewed is None:
        return "not persistent"
    if reviewed.kind == "session":
        return None
    keys = containing_keys(condition)
    if keys:
        return "conditioned: " + "; ".join(CONTAINING_CONDITIONS[k] for k in keys)
    extra = tuple(extra_own)
    resources = tuple(resources)
    if resources and all(is_connect_own(r, extra) for r in resources):
        return "scoped to Amazon Connect's own resources"
    return None
