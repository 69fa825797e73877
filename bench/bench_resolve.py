"""Resolve latency over every catalog name, alias and id plus noisy variants.

Prints JSON: {"queries", "p50_ms", "p99_ms", "max_ms", "target_p99_ms"}.
Run: .venv/bin/python bench/bench_resolve.py
"""

from __future__ import annotations

import json
import random
import statistics
import time

from bot.catalog import load_catalog
from bot.resolve import Resolver


def noisy_variants(text: str, rng: random.Random) -> list[str]:
    words = text.split()
    variants = [text.lower(), " ".join(reversed(words)), text + "s"]
    if len(text) > 4:
        i = rng.randrange(1, len(text) - 2)
        variants.append(text[:i] + text[i + 1] + text[i] + text[i + 2 :])  # transposition
        variants.append(text[:i] + text[i + 1 :])  # deletion
    return variants


def main() -> None:
    rng = random.Random(7)
    resolver = Resolver(load_catalog())
    queries = []
    for entry in resolver.catalog:
        for text in (entry.name, entry.id, *entry.aliases):
            queries.append(text)
            queries.extend(noisy_variants(text, rng))
    queries += ["make me admin", "s3 full access", "polly", "screen recording"]
    for query in queries[:50]:  # warm caches the way a running bot would have them
        resolver.resolve(query)
    timings = []
    for _ in range(5):
        for query in queries:
            start = time.perf_counter()
            resolver.resolve(query)
            timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    print(
        json.dumps(
            {
                "queries": len(queries),
                "samples": len(timings),
                "p50_ms": round(statistics.median(timings), 3),
                "p99_ms": round(timings[int(len(timings) * 0.99) - 1], 3),
                "max_ms": round(timings[-1], 3),
                "target_p99_ms": 2.0,
            }
        )
    )


if __name__ == "__main__":
    main()
