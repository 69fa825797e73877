"""Least privilege beyond IAM, measured over every compiled policy.

For each catalog entry, compiled for a role/user/group with and without an instance:
- `star_writes`: ARN-capable write, permissions-management or tagging actions left on
  Resource "*" (IAM accepts an ARN for them, so "*" is wider than needed);
- `persistent`: persistent-class actions (bot/persistence.py) with how each is contained,
  and `undeclared`: those neither contained nor declared in the entry's
  `persistent_effects`;
- `star_exceptions`: the entry's recorded "*" exceptions;
- parliament's findings, by kind, over every distinct compiled document;
- `ds_writes_on_any_directory`: Directory Service writes left on the account and Region's
  `directory/*` because this report, like a grant without `instances[].directory_id` in the
  operator config, does not know the instance's directory.

Prints JSON (summary first, then per entry). With --markdown prints the per-entry table
for docs/policies.md instead.
Run: .venv/bin/python tools/least_privilege_report.py [--markdown] [--no-parliament]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.catalog import Catalog, load_catalog
from bot.iamref import WRITE_LEVELS, IamReference
from bot.persistence import containment, persistence_of
from bot.policy import INLINE_QUOTAS, compile_policy

ACCOUNT = "111122223333"
INSTANCE = f"arn:aws:connect:us-east-1:{ACCOUNT}:instance/0a1b2c3d-1111-2222-3333-444455556666"
PRINCIPALS = {kind: f"arn:aws:iam::{ACCOUNT}:{kind}/connect-admin" for kind in INLINE_QUOTAS}
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def _statements(compiled: Any) -> list[dict[str, Any]]:
    return [s for p in compiled.policies for s in p.document["Statement"]]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _declared(catalog: Catalog, entry_id: str) -> dict[str, str]:
    # The catalog gathers them over the entry and what it requires, as the compiler sees them.
    return {e.action: e.reason for e in catalog.declared_persistent_effects(entry_id)}


def _star_exceptions(catalog: Catalog, entry_id: str) -> dict[str, str]:
    return {e.action: e.reason for e in catalog.star_exceptions(entry_id)}


def analyse(catalog: Catalog, iam: IamReference, entry_id: str, compiled: Any) -> dict[str, Any]:
    star_writes: set[str] = set()
    star_any: set[str] = set()
    persistent: dict[str, str | None] = {}
    extra_own = getattr(compiled, "connect_own_resources", ())
    for statement in _statements(compiled):
        resources = _as_list(statement["Resource"])
        condition = statement.get("Condition", {})
        for action in _as_list(statement["Action"]):
            info = iam.info(action)
            arn_capable = any(ref.arn_formats for ref in info.resources)
            if "*" in resources and arn_capable:
                star_any.add(action)
                if info.access_levels & WRITE_LEVELS:
                    star_writes.add(action)
            if persistence_of(info) is not None:
                how = containment(info, resources, condition, extra_own)
                # Contained in one statement and not in another is not contained.
                persistent[action] = how if persistent.get(action, how) is not None else None
    declared = _declared(catalog, entry_id)
    undeclared = sorted(a for a, how in persistent.items() if how is None and a not in declared)
    return {
        "star_writes": sorted(star_writes),
        "star_arn_capable": sorted(star_any),
        "persistent": {a: (h or ("declared: " + declared[a] if a in declared else None))
                       for a, h in sorted(persistent.items())},
        "undeclared": undeclared,
    }


# parliament 1.6.4 raises on condition keys whose IAM type it does not know (events:
# TargetArn is "ArrayOfARN"); such a statement is analysed again without that operator,
# and the crash itself is reported as a finding of kind PARLIAMENT_CANNOT_ANALYZE.
CANNOT_ANALYZE = "PARLIAMENT_CANNOT_ANALYZE"


@dataclass(frozen=True)
class Finding:
    issue: str
    actions: tuple[str, ...]  # the actions it is about, when parliament says
    detail: str
    sid: str


def parliament_findings_of(document: dict[str, Any]) -> list[Finding]:
    """Each parliament finding on one document, statement by statement."""
    from parliament import analyze_policy_string

    found: list[Finding] = []
    for statement in document["Statement"]:
        sid = statement["Sid"]
        single = {"Version": document["Version"], "Statement": [statement]}
        try:
            findings = analyze_policy_string(json.dumps(single)).findings
        except Exception as exc:  # parliament's own fault, see CANNOT_ANALYZE
            condition = dict(statement.get("Condition", {}))
            for op in [op for op in condition if op not in ("DateGreaterThan", "DateLessThan")]:
                found.append(Finding(CANNOT_ANALYZE, tuple(_as_list(statement["Action"])),
                                     f"{op} {','.join(condition[op])}: {exc}", sid))
                condition.pop(op)
            retry = {**statement, "Condition": condition}
            findings = analyze_policy_string(json.dumps(
                {"Version": document["Version"], "Statement": [retry]})).findings
        for finding in findings:
            found.append(Finding(finding.issue, _finding_actions(finding),
                                 json.dumps(finding.detail, sort_keys=True, default=str), sid))
    return found


def _finding_actions(finding: Any) -> tuple[str, ...]:
    detail = finding.detail
    if isinstance(detail, list):
        return tuple(sorted({d["action"] if isinstance(d, dict) else str(d) for d in detail}))
    if isinstance(detail, str) and detail.startswith("Unknown action "):
        return (detail.removeprefix("Unknown action ").strip(),)
    return ()


def parliament_findings(documents: list[dict[str, Any]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for document in documents:
        for finding in parliament_findings_of(document):
            counts[finding.issue] += 1
    return counts


def measure(with_parliament: bool = True) -> dict[str, Any]:
    catalog = load_catalog()
    iam = IamReference()
    rows = []
    documents: dict[str, dict[str, Any]] = {}
    for entry in catalog:
        per_variant = {}
        for kind, principal in PRINCIPALS.items():
            for label, instance in (("instance", INSTANCE), ("no-instance", None)):
                compiled = compile_policy(
                    catalog, entry.id, principal, grant_id="measure01", start=START,
                    duration=timedelta(hours=1), max_duration=None, iam=iam,
                    instance_arn=instance,
                )
                for policy in compiled.policies:
                    documents[json.dumps(policy.document, sort_keys=True)] = policy.document
                per_variant[f"{kind}/{label}"] = (compiled, analyse(catalog, iam, entry.id,
                                                                    compiled))
        compiled, result = per_variant["role/instance"]
        undeclared_any = sorted({a for _, r in per_variant.values() for a in r["undeclared"]})
        statements = _statements(compiled)
        on_any_directory = sorted({
            a for s in statements for a in _as_list(s["Action"])
            if a.startswith("ds:") and iam.info(a).access_levels & WRITE_LEVELS
            and any(r.endswith(":directory/*") for r in _as_list(s["Resource"]))})
        actions = catalog.granted_actions(entry.id)
        on_star = {a for s in statements if "*" in _as_list(s["Resource"])
                   for a in _as_list(s["Action"])}
        rows.append({
            "entry": entry.id,
            "name": entry.name,
            "tier": entry.tier,
            "actions": len(actions),
            "scoped": len(actions) - len(on_star),
            "on_star": len(on_star),
            "star_writes": result["star_writes"],
            "star_arn_capable": result["star_arn_capable"],
            "star_exceptions": _star_exceptions(catalog, entry.id),
            "persistent": result["persistent"],
            "undeclared": undeclared_any,
            "declared": _declared(catalog, entry.id),
            "ds_writes_on_any_directory": on_any_directory,
        })
    summary: dict[str, Any] = {
        "entries": len(rows),
        "no_star_writes": sum(1 for r in rows if not r["star_writes"]),
        "with_star_writes": [r["entry"] for r in rows if r["star_writes"]],
        "distinct_star_write_actions": len({a for r in rows for a in r["star_writes"]}),
        "entries_with_undeclared_persistent": sum(1 for r in rows if r["undeclared"]),
        "undeclared": {r["entry"]: r["undeclared"] for r in rows if r["undeclared"]},
        "entries_with_declared_persistent": sum(1 for r in rows if r["declared"]),
        "distinct_documents": len(documents),
        # Directory Service writes stay on the account and Region's `directory/*` unless
        # the operator config names the instance's `directory_id` (DescribeInstance does
        # not return it); with it they are pinned to that one directory.
        "ds_writes_on_any_directory_without_directory_id": {
            r["entry"]: r["ds_writes_on_any_directory"] for r in rows
            if r["ds_writes_on_any_directory"]},
    }
    if with_parliament:
        summary["parliament_findings"] = dict(sorted(
            parliament_findings(list(documents.values())).items()))
    return {"summary": summary, "entries": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| Entry | Actions | Scoped | ARN-capable on `*` | `*` exceptions (reason) "
        "| Persistent effects |",
        "|---|---:|---:|---|---|---|",
    ]
    for row in report["entries"]:
        exceptions = "; ".join(f"`{a}`: {r}" for a, r in sorted(row["star_exceptions"].items()))
        star = ", ".join(f"`{a}`" for a in row["star_arn_capable"]
                         if a not in row["star_exceptions"])
        persistent = "; ".join(
            f"`{a}` ({how})" for a, how in row["persistent"].items()) or "none"
        lines.append(
            f"| `{row['entry']}` | {row['actions']} | {row['scoped']} | {star or '-'} "
            f"| {exceptions or '-'} | {persistent} |"
        )
    return "\n".join(lines)


def main() -> None:
    report = measure(with_parliament="--no-parliament" not in sys.argv[1:])
    if "--markdown" in sys.argv[1:]:
        print(markdown(report))
    else:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
