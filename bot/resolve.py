"""Free text -> one catalog entry, an honest "which of these?", or "nothing like that".

Scoring is word based, because people type the words of a use case in any order, with
typos, plurals, and the page or section's words mixed in:

- precision: how many of the query's words appear (fuzzily) anywhere in the entry's
  name, aliases, section or page. Words that fit nothing ("make me admin") pull it down,
  so nonsense never resolves confidently.
- recall: how much of the entry's own name the query covers, so "polly" fits both
  Amazon Polly entries equally and comes back ambiguous instead of picking one.

Typo tolerance works per word with rapidfuzz against the catalog's vocabulary, computed
once per query word, which keeps a resolve well under a millisecond.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from rapidfuzz.distance import OSA, Indel

from bot.catalog import Catalog, CatalogEntry

MAX_QUERY_LENGTH = 500
MATCH_SCORE = 80.0
AMBIGUOUS_SCORE = 55.0
# Candidates this close to the best are real alternatives, not noise.
TIE_MARGIN = 10.0
MAX_CANDIDATES = 6
MAX_SUGGESTIONS = 3
WORD_SIMILARITY = 0.74

STOPWORDS = frozenset(
    {"a", "an", "the", "to", "of", "for", "in", "on", "my", "me", "i", "please", "and", "or",
     "with", "need", "want", "access", "page", "section"}
)
# Words that mean the same thing for matching purposes.
SYNONYMS = {"transcript": "transcript", "modify": "edit", "change": "edit", "see": "view",
            "show": "view", "read": "view", "q": "q", "amazonq": "q", "wisdom": "q"}

Status = Literal["match", "ambiguous", "none"]


class QueryError(ValueError):
    """The query cannot be resolved as typed; the message says what to change."""


@dataclass(frozen=True)
class Candidate:
    entry: CatalogEntry
    score: float


@dataclass(frozen=True)
class Resolution:
    query: str
    status: Status
    matches: tuple[Candidate, ...] = ()
    suggestions: tuple[Candidate, ...] = ()

    @property
    def entry(self) -> CatalogEntry | None:
        return self.matches[0].entry if self.status == "match" else None

    def to_json(self) -> dict[str, object]:
        def brief(candidate: Candidate) -> dict[str, object]:
            e = candidate.entry
            return {"id": e.id, "name": e.name, "page": e.page, "section": e.section}

        return {
            "query": self.query,
            "status": self.status,
            "matches": [brief(c) for c in self.matches],
            "suggestions": [brief(c) for c in self.suggestions],
        }


def _stem(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("&", " and ")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def words(text: str) -> list[str]:
    out = []
    for word in normalise(text).split():
        word = SYNONYMS.get(word, word)
        if word not in STOPWORDS:
            out.append(_stem(word))
    return out


def check_query(query: str) -> str:
    """Reject input no one could mean; return the query trimmed."""
    if any(unicodedata.category(ch) == "Cc" and ch not in " " for ch in query):
        raise QueryError(
            "The request contains control characters (such as tabs or line breaks); "
            "type the use case on one line, e.g. `Edit chat transcripts`."
        )
    trimmed = query.strip()
    if not trimmed:
        raise QueryError(
            "Tell me what you need access to, e.g. `/connect-access Edit chat transcripts`, "
            "or `/connect-access list` to browse."
        )
    if len(trimmed) > MAX_QUERY_LENGTH:
        raise QueryError(
            f"The request is {len(trimmed)} characters long; keep it under "
            f"{MAX_QUERY_LENGTH} (the name of one use case, e.g. `Edit chat transcripts`)."
        )
    return trimmed


@dataclass
class _Indexed:
    entry: CatalogEntry
    exact_keys: frozenset[str]
    bag: frozenset[str]
    names: tuple[frozenset[str], ...]


@dataclass
class Resolver:
    catalog: Catalog
    _index: list[_Indexed] = field(init=False)
    _vocabulary: tuple[str, ...] = field(init=False)
    _exact: dict[str, list[CatalogEntry]] = field(init=False)

    def __post_init__(self) -> None:
        self._index = []
        self._exact = {}
        vocabulary: set[str] = set()
        for entry in self.catalog:
            name_forms = (entry.name, *entry.aliases)
            context = [entry.page, entry.section or "", entry.page_newer_name or ""]
            bag = frozenset(w for text in (*name_forms, *context) for w in words(text))
            names = tuple(frozenset(words(n)) for n in name_forms if words(n))
            keys = {" ".join(words(n)) for n in name_forms} | {normalise(entry.id)}
            self._index.append(_Indexed(entry, frozenset(keys), bag, names))
            for key in keys:
                self._exact.setdefault(key, []).append(entry)
            vocabulary |= bag
        self._vocabulary = tuple(sorted(vocabulary))

    def _similar_words(self, word: str) -> dict[str, float]:
        """Catalog words that this query word may stand for, with their similarity."""
        found = {}
        for known in self._vocabulary:
            if known == word:
                found[known] = 1.0
            elif len(word) >= 4 and len(known) >= 4:
                similarity = max(
                    OSA.normalized_similarity(word, known),
                    Indel.normalized_similarity(word, known),
                )
                if similarity >= WORD_SIMILARITY:
                    found[known] = similarity
        return found

    def resolve(self, query: str) -> Resolution:
        query = check_query(query)
        query_words = words(query)
        exact_key = " ".join(query_words)
        by_id = self._exact.get(normalise(query))
        exact = by_id or self._exact.get(exact_key)
        if exact:
            candidates = tuple(Candidate(e, 100.0) for e in exact)
            status: Status = "match" if len(candidates) == 1 else "ambiguous"
            return Resolution(query, status, candidates)
        if not query_words:
            return Resolution(query, "none")

        similar = [self._similar_words(w) for w in query_words]
        scored = sorted(
            (Candidate(item.entry, self._score(item, similar)) for item in self._index),
            key=lambda c: (-c.score, c.entry.id),
        )
        best = scored[0].score
        close = [c for c in scored if c.score >= best - TIE_MARGIN and c.score > 0]
        if best >= MATCH_SCORE and len(close) == 1:
            return Resolution(query, "match", (scored[0],))
        if best >= AMBIGUOUS_SCORE:
            return Resolution(query, "ambiguous", tuple(close[:MAX_CANDIDATES]))
        suggestions = tuple(c for c in scored[:MAX_SUGGESTIONS] if c.score > 0)
        return Resolution(query, "none", (), suggestions)

    @staticmethod
    def _score(item: _Indexed, similar: list[dict[str, float]]) -> float:
        precision = sum(
            max((s for w, s in options.items() if w in item.bag), default=0.0)
            for options in similar
        ) / len(similar)
        if precision == 0:
            return 0.0
        recall = 0.0
        for name in item.names:
            covered = sum(1 for w in name if any(w in options for options in similar))
            recall = max(recall, covered / len(name))
        return round(100.0 * precision * (0.5 + 0.5 * recall), 2)
