"""The catalog: what can be requested, loaded from YAML into typed, validated entries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

try:  # libyaml's parser: the catalog parses in about a tenth of the pure-Python time
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # a PyYAML built without libyaml parses the same, only slower
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

from bot.iamref import IamReference, UnknownActionError
from bot.resources import CATALOG_DIR
from bot.tiers import TIERS, Tier, derive_tier, tier_rank

DEFAULT_CATALOG_DIR = CATALOG_DIR
DEFAULT_CATALOG_FILE = DEFAULT_CATALOG_DIR / "connect-console.yaml"

REQUIRED_FIELDS = ("id", "page", "name", "tier", "actions")

# Where an entry's `connect:` actions point. `chosen`: the instance the grant names.
# `new-instance`: instances the holder creates (new ids, in the chosen instance's Region
# and account). `new-replica`: a replica in another Region of the account (Amazon
# Connect Global Resiliency), so any Region of the account.
InstanceScope = Literal["chosen", "new-instance", "new-replica"]
INSTANCE_SCOPES: tuple[str, ...] = get_args(InstanceScope)

# Values of Amazon Connect's condition keys, as its API documents them.
STORAGE_RESOURCE_TYPES = frozenset({
    "CHAT_TRANSCRIPTS", "CALL_RECORDINGS", "SCHEDULED_REPORTS", "MEDIA_STREAMS",
    "CONTACT_TRACE_RECORDS", "AGENT_EVENTS", "REAL_TIME_CONTACT_ANALYSIS_SEGMENTS",
    "ATTACHMENTS", "CONTACT_EVALUATIONS", "SCREEN_RECORDINGS",
    "REAL_TIME_CONTACT_ANALYSIS_CHAT_SEGMENTS", "REAL_TIME_CONTACT_ANALYSIS_VOICE_SEGMENTS",
    "EMAIL_MESSAGES",
})
INSTANCE_ATTRIBUTE_TYPES = frozenset({
    "INBOUND_CALLS", "OUTBOUND_CALLS", "CONTACTFLOW_LOGS", "CONTACT_LENS",
    "AUTO_RESOLVE_BEST_VOICES", "USE_CUSTOM_TTS_VOICES", "EARLY_MEDIA",
    "MULTI_PARTY_CONFERENCE", "HIGH_VOLUME_OUTBOUND", "ENHANCED_CONTACT_MONITORING",
    "ENHANCED_CHAT_MONITORING", "MULTI_PARTY_CHAT_CONFERENCE",
})
# The actions those keys condition: an entry granting one must say which values it needs.
STORAGE_CONFIG_WRITES = frozenset({
    "connect:AssociateInstanceStorageConfig", "connect:UpdateInstanceStorageConfig",
    "connect:DisassociateInstanceStorageConfig",
})
INSTANCE_ATTRIBUTE_WRITES = frozenset({"connect:UpdateInstanceAttribute"})


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
class Reasoned:
    """An action the catalog makes an exception for, with the reviewed reason."""

    action: str
    reason: str


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
    # Effects that outlive the grant and that scoping cannot contain; shown to approvers.
    persistent_effects: tuple[Reasoned, ...] = ()
    # ARN-capable actions left on Resource "*" on purpose (narrower breaks the page).
    star_exceptions: tuple[Reasoned, ...] = ()
    storage_resource_types: tuple[str, ...] = ()
    instance_attributes: tuple[str, ...] = ()
    instance_scope: InstanceScope = "chosen"
    # Services the entry's page does not concern, each with why the entry needs it.
    other_services: Mapping[str, str] = field(default_factory=dict)

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(sorted({a.split(":", 1)[0] for a in self.actions}))

    def content_hash(self) -> str:
        """A hash of what the entry grants, recorded with each request so an audit can tell
        which version of the entry was approved."""
        content: dict[str, Any] = {
            "id": self.id, "tier": self.tier, "actions": self.actions, "requires": self.requires
        }
        # What narrows or widens the compiled policy is part of what was approved; keys are
        # added only when set, so entries without them keep their earlier hashes.
        extra: dict[str, Any] = {
            "star_exceptions": [e.action for e in self.star_exceptions],
            "storage_resource_types": list(self.storage_resource_types),
            "instance_attributes": list(self.instance_attributes),
            "persistent_effects": [e.action for e in self.persistent_effects],
        }
        content.update({k: v for k, v in extra.items() if v})
        if self.instance_scope != "chosen":
            content["instance_scope"] = self.instance_scope
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Catalog:
    entries: dict[str, CatalogEntry]
    path: str = ""
    # Page -> the services the AWS page lists for it (reviewed data, see validate_catalog).
    page_services: Mapping[str, frozenset[str]] = field(default_factory=dict)
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

    def declared_persistent_effects(self, entry_id: str) -> tuple[Reasoned, ...]:
        """The persistent effects declared by the entry and everything it requires."""
        found: dict[str, Reasoned] = {}
        for dep in self.required_closure(entry_id):
            for effect in self.get(dep).persistent_effects:
                found.setdefault(effect.action, effect)
        return tuple(found[a] for a in sorted(found))

    def star_exceptions(self, entry_id: str) -> tuple[Reasoned, ...]:
        found: dict[str, Reasoned] = {}
        for dep in self.required_closure(entry_id):
            for exception in self.get(dep).star_exceptions:
                found.setdefault(exception.action, exception)
        return tuple(found[a] for a in sorted(found))

    def condition_values(self, entry_id: str, key: str) -> tuple[str, ...]:
        """`storage_resource_types` or `instance_attributes` over the closure."""
        values: set[str] = set()
        for dep in self.required_closure(entry_id):
            values.update(getattr(self.get(dep), key))
        return tuple(sorted(values))

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


def _as_reasoned(
    path: Path, entry_id: str, raw: Mapping[str, Any], key: str
) -> tuple[Reasoned, ...]:
    items = raw.get(key) or []
    if not isinstance(items, list):
        raise CatalogError(path, f"field {key!r} must be a list of {{action, reason}}", entry_id)
    found: list[Reasoned] = []
    for item in items:
        if (not isinstance(item, dict) or not isinstance(item.get("action"), str)
                or not isinstance(item.get("reason"), str) or not item["reason"].strip()):
            raise CatalogError(
                path, f"each item of {key!r} needs an action and a written reason", entry_id
            )
        if any(f.action == item["action"] for f in found):
            raise CatalogError(path, f"{key!r} lists {item['action']} twice", entry_id)
        found.append(Reasoned(item["action"], item["reason"].strip()))
    return tuple(found)


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
    scope = raw.get("instance_scope", "chosen")
    if scope not in INSTANCE_SCOPES:
        raise CatalogError(
            path, f"instance_scope {scope!r} is not one of {', '.join(INSTANCE_SCOPES)}", label
        )
    other_services = raw.get("other_services") or {}
    if not isinstance(other_services, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in other_services.items()
    ):
        raise CatalogError(
            path, "field 'other_services' must map each service to a written reason", label
        )
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
        persistent_effects=_as_reasoned(path, label, raw, "persistent_effects"),
        star_exceptions=_as_reasoned(path, label, raw, "star_exceptions"),
        storage_resource_types=_as_str_list(path, label, raw, "storage_resource_types"),
        instance_attributes=_as_str_list(path, label, raw, "instance_attributes"),
        instance_scope=scope,
        other_services={k: v.strip() for k, v in other_services.items()},
    )


def _parse_pages(path: Path, raw: Any) -> dict[str, frozenset[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CatalogError(path, "'pages' must map each page to {services: [...]}")
    pages: dict[str, frozenset[str]] = {}
    for page, spec in raw.items():
        services = spec.get("services") if isinstance(spec, dict) else None
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
            raise CatalogError(path, f"page {page!r} needs a list of services")
        pages[str(page)] = frozenset(services)
    return pages


def load_catalog(path: Path | str = DEFAULT_CATALOG_FILE) -> Catalog:
    """Parse a catalog file; structural faults raise CatalogError. See validate_catalog for
    the checks against IAM's reference data."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(path, f"cannot read the file ({exc.strerror})") from None
    try:
        document = yaml.load(text, Loader=_SafeLoader)
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
    catalog = Catalog(entries=entries, path=str(path),
                      page_services=_parse_pages(path, document.get("pages")))
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
        faults.extend(_check_exceptions(catalog, entry))
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
    if not faults:
        # Compiling needs every action known; the compiler's rules (persistent effects
        # contained or declared, IAM writes confined) are then checked on real documents.
        # Imported here: the compiler imports this module.
        from bot.policy import check_catalog_compiles

        faults.extend(
            CatalogError(catalog.path, message, entry_id)
            for entry_id, message in check_catalog_compiles(catalog, iam)
        )
    return faults


def _check_exceptions(catalog: Catalog, entry: CatalogEntry) -> list[CatalogError]:
    """The reviewed data on an entry: each exception names one of its actions, condition
    values are Amazon Connect's, and each service is one its page concerns or is
    explained."""
    faults: list[str] = []
    own = set(entry.actions)
    granted = set(catalog.granted_actions(entry.id))
    for field_name, items, scope in (
        ("persistent_effects", entry.persistent_effects, granted),
        ("star_exceptions", entry.star_exceptions, own),
    ):
        for item in items:
            if item.action not in scope:
                faults.append(f"{field_name} names {item.action}, which the entry does not grant")
    for field_name, values, allowed, writes in (
        ("storage_resource_types", entry.storage_resource_types, STORAGE_RESOURCE_TYPES,
         STORAGE_CONFIG_WRITES),
        ("instance_attributes", entry.instance_attributes, INSTANCE_ATTRIBUTE_TYPES,
         INSTANCE_ATTRIBUTE_WRITES),
    ):
        for value in values:
            if value not in allowed:
                faults.append(f"{field_name}: {value!r} is not one of Amazon Connect's values")
        if own & writes and not values:
            faults.append(
                f"grants {', '.join(sorted(own & writes))} but lists no {field_name}: name the "
                "values this use case changes, so it cannot change the others"
            )
        if values and not own & writes:
            faults.append(f"lists {field_name} but grants none of {', '.join(sorted(writes))}")
    page_services = catalog.page_services.get(entry.page)
    if page_services is None:
        faults.append(f"page {entry.page!r} is not under 'pages' with the services it concerns")
    else:
        for service in sorted({a.split(":", 1)[0] for a in entry.actions}):
            if service not in page_services and service not in entry.other_services:
                faults.append(
                    f"grants {service}: actions, but the {entry.page!r} page does not concern "
                    f"{service}; explain why under other_services, or remove them"
                )
    return [CatalogError(catalog.path, f, entry.id) for f in faults]
