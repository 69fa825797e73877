"""Policy compile time per catalog entry, and each entry's policy size against IAM's quotas.

Prints JSON: {"compiles", "p50_ms", "p99_ms", "max_ms", "target_p99_ms", "cold_first_ms",
"slowest_entry", "sizes": [{entry, tier, actions, size_no_instance, size_instance,
fits_user_inline, fits_group_inline, fits_role_inline, user_plan}]}.
With --markdown, prints the size table for docs/policies.md instead.
Run: .venv/bin/python bench/bench_policy.py [--markdown]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.catalog import load_catalog
from bot.iamref import IamReference
from bot.policy import INLINE_QUOTAS, compile_policy

ACCOUNT = "111122223333"
INSTANCE = f"arn:aws:connect:us-east-1:{ACCOUNT}:instance/0a1b2c3d-1111-2222-3333-444455556666"
PRINCIPALS = {kind: f"arn:aws:iam::{ACCOUNT}:{kind}/connect-admin" for kind in INLINE_QUOTAS}
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
ROUNDS = 40
TARGET_P99_MS = 5.0


def main() -> None:
    catalog = load_catalog()
    iam = IamReference()

    def compile_once(entry_id: str, kind: str, instance: str | None) -> Any:
        return compile_policy(
            catalog, entry_id, PRINCIPALS[kind], grant_id="bench0000001", start=START,
            duration=timedelta(hours=1), max_duration=None, iam=iam, instance_arn=instance,
        )

    # The first compile of each entry pays for the IAM reference look-ups (cached after).
    cold_start = time.perf_counter()
    for entry in catalog:
        compile_once(entry.id, "role", INSTANCE)
    cold_first_ms = (time.perf_counter() - cold_start) * 1000

    timings: list[float] = []
    per_entry: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for entry in catalog:
            for kind in INLINE_QUOTAS:
                began = time.perf_counter()
                compile_once(entry.id, kind, INSTANCE)
                elapsed = (time.perf_counter() - began) * 1000
                timings.append(elapsed)
                per_entry.setdefault(entry.id, []).append(elapsed)
    timings.sort()

    sizes = []
    for entry in catalog:
        with_instance = {k: compile_once(entry.id, k, INSTANCE) for k in INLINE_QUOTAS}
        without = compile_once(entry.id, "role", None)
        user = with_instance["user"]
        sizes.append({
            "entry": entry.id,
            "name": entry.name,
            "tier": entry.tier,
            "actions": len(catalog.granted_actions(entry.id)),
            "size_instance": with_instance["role"].size,
            "size_no_instance": without.size,
            **{f"fits_{k}_inline": with_instance[k].kind == "inline" for k in INLINE_QUOTAS},
            "user_plan": user.kind if user.kind == "inline"
            else f"{len(user.policies)} managed ({', '.join(map(str, user.sizes))})",
        })

    if "--markdown" in sys.argv[1:]:
        print("| Entry | Tier | Actions | Size (instance) | Size (no instance) | User 2,048 | "
              "Group 5,120 | Role 10,240 |")
        print("|---|---|---:|---:|---:|---|---|---|")
        for row in sizes:
            def mark(fits: bool) -> str:
                return "inline" if fits else "managed"
            print(f"| {row['name']} (`{row['entry']}`) | {row['tier']} | {row['actions']} | "
                  f"{row['size_instance']} | {row['size_no_instance']} | "
                  f"{mark(row['fits_user_inline'])} | {mark(row['fits_group_inline'])} | "
                  f"{mark(row['fits_role_inline'])} |")
        return
    slowest = max(per_entry.items(), key=lambda item: statistics.quantiles(item[1], n=100)[98])
    print(json.dumps({
        "compiles": len(timings),
        "p50_ms": round(statistics.median(timings), 3),
        "p99_ms": round(timings[int(len(timings) * 0.99) - 1], 3),
        "max_ms": round(timings[-1], 3),
        "target_p99_ms": TARGET_P99_MS,
        "cold_first_ms": round(cold_first_ms, 1),
        "slowest_entry": {"entry": slowest[0],
                          "p99_ms": round(statistics.quantiles(slowest[1], n=100)[98], 3)},
        "fit_user_inline": sum(r["fits_user_inline"] for r in sizes),
        "fit_group_inline": sum(r["fits_group_inline"] for r in sizes),
        "fit_role_inline": sum(r["fits_role_inline"] for r in sizes),
        "entries": len(sizes),
        "sizes": sizes,
    }, indent=2))


if __name__ == "__main__":
    main()
