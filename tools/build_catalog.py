"""Generate catalog/connect-console.yaml from the AWS console-permissions reference once.

The generated file is then owned as data in this repository: people edit the YAML, and
`connect-access catalog validate` checks it. This script stays only to show how the first
version was derived (and to regenerate it deliberately, reviewing the diff).

Usage: python tools/build_catalog.py REFERENCE_JSON > catalog/connect-console.yaml
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bot.iamref import IamReference
from bot.tiers import derive_tier

PAGE_SLUGS = {
    "Amazon Connect console home page": "home",
    "Overview page": "overview",
    "Telephony page": "telephony",
    "Data storage page": "data-storage",
    "Data streaming page": "data-streaming",
    "Flows page": "flows",
    "Contact Lens connectors page": "contact-lens-connectors",
    "Voice transfer integrations page": "voice-transfer",
    "Application integration page": "application-integration",
    "Customer Profiles page": "customer-profiles",
    "Tasks page": "tasks",
    "Email page": "email",
    "Cases page": "cases",
    "Customer authentication page": "customer-authentication",
    "Outbound campaigns page": "outbound-campaigns",
    "Amazon Q in Connect page": "q-in-connect",
    "Voice ID page": "voice-id",
    "Forecasting, capacity planning, and scheduling page": "forecasting",
    "Federations": "federations",
}

# What the page writes that is not an IAM action, and the action that grants its intent.
NOT_IAM_ACTIONS = {
    "s3:ListObjectsV2": ("s3:ListBucket", "ListObjectsV2 is an API name; s3:ListBucket grants it"),
    "s3:HeadBucket": ("s3:ListBucket", "HeadBucket is an API name; s3:ListBucket grants it"),
    "s3:SelectObjectContent": (
        "s3:GetObject",
        "SelectObjectContent is an API name; it is authorised by s3:GetObject",
    ),
    "connect:DescribeInstanceAttributes": (
        "connect:DescribeInstanceAttribute",
        "no such action; the IAM action is singular",
    ),
    "chime:TagResources": ("chime:TagResource", "no such action; the IAM action is singular"),
    "chime:UntagResources": ("chime:UntagResource", "no such action; the IAM action is singular"),
    "appflow:ListConnectorProfiles": (
        "appflow:DescribeConnectorProfiles",
        "no such action; appflow:DescribeConnectorProfiles lists connector profiles",
    ),
}

# Words people type for a use case that the page does not use.
EXTRA_ALIASES = {
    "home/list-instance": ["list instances", "see instances"],
    "home/describe-instance": ["view instance settings", "instance details"],
    "home/create-a-replica-instance": [
        "Create a replica instance",
        "replicate instance",
        "global resiliency replica",
    ],
    "home/delete-instance": ["remove instance"],
    "overview/create-service-linked-role": ["service-linked role", "SLR"],
    "federations/admin-emergency-federation": [
        "emergency access",
        "emergency federation",
        "admin federation",
        "break glass",
    ],
    "federations/saml-federation": ["SAML login", "federation token"],
    "data-streaming/view-data-streaming-contact-records": ["view contact records"],
    "data-streaming/edit-contact-record": ["edit contact records streaming"],
    "data-streaming/view-data-streaming-agent-events": ["view agent events"],
    "q-in-connect/view-domains-and-integrations": ["view amazon q", "view wisdom"],
}

VIEW_VERBS = ("view", "list", "describe")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def short_name(use_case: str) -> str:
    """The use case without its explanation: 'Describe instance: View ...' -> 'Describe ...'."""
    return re.split(r"[:(]", use_case, maxsplit=1)[0].strip()


def verb_aliases(name: str) -> list[str]:
    """'Add/remove Lex bots' -> ['add Lex bots', 'remove Lex bots'] (and 'A or B' likewise)."""
    match = re.match(r"^(\w+(?:/\w+)+|\w+ or \w+)\s+(.*)$", name)
    if not match:
        return []
    verbs = re.split(r"/| or ", match.group(1))
    return [f"{verb.lower()} {match.group(2)}" for verb in verbs]


def object_words(name: str) -> set[str]:
    words = set(slug(short_name(name)).split("-"))
    return words - {"view", "edit", "enable", "disable", "add", "remove", "update", "or", "and"}


def is_view(name: str) -> bool:
    return name.lower().startswith(VIEW_VERBS)


def build(reference: dict[str, Any], iam: IamReference) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for page in reference["pages"]:
        page_slug = PAGE_SLUGS[page["page"]]
        for row in page["rows"]:
            entry_id = f"{page_slug}/{slug(short_name(row['use_case']))}"
            corrections: list[dict[str, str]] = []
            actions: list[str] = []
            counts = Counter(row["permissions_as_written"])
            seen: set[str] = set()
            for written in row["permissions_as_written"]:
                action = written.replace(" ", "")
                if action != written:
                    corrections.append(
                        {
                            "written": written,
                            "action": action,
                            "note": "the page writes a space after the colon",
                        }
                    )
                if action in NOT_IAM_ACTIONS:
                    replacement, why = NOT_IAM_ACTIONS[action]
                    corrections.append({"written": written, "action": replacement, "note": why})
                    action = replacement
                if written in seen and counts[written] > 1:
                    continue
                seen.add(written)
                actions.append(action)
            for written, count in counts.items():
                if count > 1:
                    corrections.append(
                        {
                            "written": written,
                            "action": written,
                            "note": f"the page lists it {count} times in this row; kept once",
                        }
                    )
            name = row["use_case"]
            aliases: list[str] = []
            if short_name(name) != name:
                aliases.append(short_name(name))
            if row.get("newer_doc_name"):
                aliases.append(row["newer_doc_name"])
                aliases.extend(verb_aliases(row["newer_doc_name"]))
            aliases.extend(verb_aliases(short_name(name)))
            aliases.extend(EXTRA_ALIASES.get(entry_id, []))
            entry: dict[str, Any] = {
                "id": entry_id,
                "page": page["page"],
            }
            if page.get("newer_doc_name"):
                entry["page_newer_name"] = page["newer_doc_name"]
            entry["section"] = row.get("section")
            entry["name"] = name
            entry["aliases"] = list(dict.fromkeys(a for a in aliases if a != name))
            entry["in_first_edition"] = bool(row.get("in_seed", True))
            unique_actions = sorted(set(actions))
            entry["tier"] = derive_tier(entry_id, unique_actions, iam)
            entry["actions"] = unique_actions
            entry["requires"] = []
            if corrections:
                entry["corrections"] = corrections
            entries.append(entry)

    add_requirements(entries)
    return entries


def add_requirements(entries: list[dict[str, Any]]) -> None:
    """Encode the page's notes as `requires`.

    'To access the detailed instance pages, you need permissions to the console home page
    (describe/list)' and 'To perform Edit actions, users also need List and Describe
    permissions': so every detail-page entry needs the home page's list and describe
    entries, and every non-view entry needs the view entry of its own page/section.
    """
    by_id = {e["id"]: e for e in entries}
    for entry in entries:
        requires: list[str] = []
        if entry["id"].startswith("home/"):
            if entry["id"] != "home/list-instance":
                requires.append("home/list-instance")
            if entry["id"] == "home/delete-instance":
                requires.append("home/describe-instance")
            if entry["id"] == "home/create-a-replica-instance":
                # The page: "also needs every permission of Create instance".
                requires.append("home/create-instance")
        else:
            requires += ["home/list-instance", "home/describe-instance"]
            if not is_view(entry["name"]):
                views = [
                    other
                    for other in entries
                    if other["page"] == entry["page"]
                    and other["section"] == entry["section"]
                    and is_view(other["name"])
                ]
                if len(views) > 1:
                    # Telephony lists two view rows without sections: pair by the object.
                    words = object_words(entry["name"])
                    views = [max(views, key=lambda v: len(words & object_words(v["name"])))]
                requires += [v["id"] for v in views]
        entry["requires"] = [r for r in requires if r in by_id]


def main() -> int:
    reference = json.loads(Path(sys.argv[1]).read_text())
    entries = build(reference, IamReference())
    header = (
        "# The catalog of what connect-access can grant: one entry per use case on the AWS page\n"
        '# "Required permissions for using custom IAM policies to manage access to the Amazon\n'
        '# Connect console". Generated once by tools/build_catalog.py, now edited by hand.\n'
        "# Check every change with `connect-access catalog validate`.\n"
    )
    body = yaml.safe_dump(
        {"version": 1, "entries": entries}, sort_keys=False, width=100, allow_unicode=True
    )
    sys.stdout.write(header + body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
