"""The catalog: what can be requested, loaded from YAML into typed, validated entries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.iamref import IamReference, UnknownActionError
from bot.resources import CATALOG_DIR
from bot.tiers import TIERS, Tier, derive_tier, tier_rank

DEFAULT_CATALOG_DIR = CATALOG_DIR
DEFAULT_CATALOG_FILE = DEFAULT_CATALOG_DIR / "connect-console.yaml"

REQUIRED_FIELDS = ("id", "page", "name", "tier", "actions")


class CatalogError(ValueError):
    """A fault in a catalog file, written for the person who edits that file."""

    def __init__(self, path: Path | str, fault: str, entry_id: str | None = None) -> None:
        where = f"{path}" + (f", entry {entry_id!r}" if entry_id else "")
        super().__init__(f"{where}: {fault}")
        self.path = str(path)
        self.entry_id = entry_id
        self.fault = fault


@dataclass(frozen=True)
class Correction:
    written: str
    action: str
    note: str


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    page: str
    section: str | None
    name: str
    aliases: tuple[str, ...]
    tier: Tier
    actions: tuple[str, ...]
    requires: tuple[str, ...]
    corrections: tuple[Correction, ...] = ()
    page_newer_name: str | None = None
    in_first_edition: bool = True

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(sorted({a.split(":", 1)[0] for a in self.actions}))

    def content_hash(self) -> str:
        """A hash of what the entry grants, recorded with each request so an audit can tell
        which version of the entry was approved."""
        canonical = json.dumps(
            {"id": self.id, "tier": self.tier, "actions": self.actions, "requires": self.requires},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Catalog:
    entries: dict[str, CatalogEntry]
    path: str = ""
    _closure_cache: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, entry_id: str) -> CatalogEntry:
        try:
            return self.entries[entry_id]
        except KeyError:
            raise KeyError(f"no catalog entry {entry_id!r}") from None

    def required_closure(self, entry_id: str) -> tuple[str, ...]:
        """The entry and everything it requires, transitively, in a stable order."""
        if entry_id not in self._closure_cache:
            seen: list[str] = []

            def visit(current: str) -> None:
                if current in seen:
                    return
                seen.append(current)
                for dependency in self.get(current).requires:
                    visit(dependency)

            visit(entry_id)
            self._closure_cache[entry_id] = tuple(seen)
        return self._closure_cache[entry_id]

    def granted_actions(self, entry_id: str) -> tuple[str, ...]:
        """Every action a grant of this entry carries: its own and its requirements'."""
        actions = {a for dep in self.required_closure(entry_id) for a in self.get(dep).actions}
        return tuple(sorted(actions))


def _as_str_list(
    path: Path, entry_id: str, raw: Mapping[str, Any], key: str
) -> tuple[str, ...]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(path, f"field {key!r} must be a list of strings", entry_id)
    return tuple(value)


def _parse_entry(path: Path, index: int, raw: Any) -> CatalogEntry:
    if not isinstance(raw, dict):
        raise CatalogError(path, f"entry #{index + 1} is not a mapping")
    entry_id = raw.get("id")
    label = entry_id if isinstance(entry_id, str) and entry_id else f"#{index + 1}"
    for key in REQUIRED_FIELDS:
        if raw.get(key) in (None, "", []):
            raise CatalogError(path, f"missing required field {key!r}", label)
    for key in ("id", "page", "name"):
        if not isinstance(raw[key], str):
            raise CatalogError(path, f"field {key!r} must be a string", label)
    if raw["tier"] not in TIERS:
        raise CatalogError(
            path, f"tier {raw['tier']!r} is not one of {', '.join(TIERS)}", label
        )
    section = raw.get("section")
    if section is not None and not isinstance(section, str):
        raise CatalogError(path, "field 'section' must be a string or null", label)
    corrections = []
    for item in raw.get("corrections") or []:
        if not isinstance(item, dict) or not {"written", "action", "note"} <= item.keys():
            raise CatalogError(path, "each correction needs written, action and note", label)
        corrections.append(
            Correction(str(item["written"]), str(item["action"]), str(item["note"]))
        )
    actions = _as_str_list(path, label, raw, "actions")
    duplicates = sorted({a for a in actions if actions.count(a) > 1})
    if duplicates:
        raise CatalogError(path, f"action(s) listed twice: {', '.join(duplicates)}", label)
    return CatalogEntry(
        id=raw["id"],
        page=raw["page"],
        section=section,
        name=raw["name"],
        aliases=_as_str_list(path, label, raw, "aliases"),
        tier=raw["tier"],
        actions=actions,
        requires=_as_str_list(path, label, raw, "requires"),
        corrections=tuple(corrections),
        page_newer_name=raw.get("page_newer_name"),
        in_first_edition=bool(raw.get("in_first_edition", True)),
    )


def load_catalog(path: Path | str = DEFAULT_CATALOG_FILE) -> Catalog:
    """Parse a catalog file; structural faults raise CatalogError. See validate_catalog for
    the checks against IAM's reference data."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(path, f"cannot read the file ({exc.strerror})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError(path, f"not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(document, dict) or not isinstance(document.get("entries"), list):
        raise CatalogError(path, "expected a mapping with a list under 'entries'")
    entries: dict[str, CatalogEntry] = {}
    for index, raw in enumerate(document["entries"]):
        entry = _parse_entry(path, index, raw)
        if entry.id in entries:
            raise CatalogError(path, "duplicate id", entry.id)
        entries[entry.id] = entry
    catalog = Catalog(entries=entries, path=str(path))
    _check_requires(path, catalog)
    return catalog


def _check_requires(path: Path, catalog: Catalog) -> None:
    for entry in catalog:
        for dependency in entry.requires:
            if dependency not in catalog.entries:
                raise CatalogError(path, f"requires unknown entry {dependency!r}", entry.id)
    # Depth-first search for a cycle; report it as a path so it can be fixed.
    state: dict[str, int] = {}

    def visit(entry_id: str, trail: list[str]) -> None:
        state[entry_id] = 1
        for dependency in catalog.entries[entry_id].requires:
            if state.get(dependency) == 1:
                cycle = [*trail[trail.index(dependency):], dependency]
                raise CatalogError(path, f"requires cycle: {' -> '.join(cycle)}", entry_id)
            if dependency not in state:
                visit(dependency, [*trail, dependency])
        state[entry_id] = 2

    for entry in catalog:
        if entry.id not in state:
            visit(entry.id, [entry.id])


def validate_catalog(catalog: Catalog, iam: IamReference) -> list[CatalogError]:
    """Checks against IAM's reference data; returns every fault found (empty when valid)."""
    faults: list[CatalogError] = []
    for entry in catalog:
        unknown = False
        for action in entry.actions:
            try:
                iam.info(action)
            except UnknownActionError as exc:
                unknown = True
                faults.append(CatalogError(catalog.path, str(exc), entry.id))
        for correction in entry.corrections:
            if correction.action not in entry.actions:
                faults.append(
                    CatalogError(
                        catalog.path,
                        f"correction of {correction.written!r} names {correction.action!r}, "
                        "which is not among the entry's actions",
                        entry.id,
                    )
                )
        if unknown:
            continue
        minimum = derive_tier(entry.id, entry.actions, iam)
        if tier_rank(entry.tier) < tier_rank(minimum):
            faults.append(
                CatalogError(
                    catalog.path,
                    f"tier {entry.tier!r} is too low: its actions make it at least {minimum!r}",
                    entry.id,
                )
            )
    return faults
