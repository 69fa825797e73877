"""catalog list/show/validate and resolve."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from bot.catalog import DEFAULT_CATALOG_FILE, Catalog, CatalogError, load_catalog, validate_catalog
from bot.iamref import IamReference
from bot.resolve import QueryError, Resolver

CatalogOption = typer.Option(
    DEFAULT_CATALOG_FILE, "--catalog", help="Catalog file to use.", envvar="CONNECT_ACCESS_CATALOG"
)


def _load_or_exit(path: Path) -> Catalog:
    try:
        return load_catalog(path)
    except CatalogError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    catalog_app = typer.Typer(help="Browse and check the catalog of requestable use cases.")
    app.add_typer(catalog_app, name="catalog")

    @catalog_app.command("list")
    def catalog_list(
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        page: str = typer.Option("", "--page", help="Only entries whose page contains this."),
        catalog_file: Path = CatalogOption,
    ) -> None:
        """List every entry: id, tier and name."""
        catalog = _load_or_exit(catalog_file)
        entries = [e for e in catalog if page.lower() in e.page.lower()]
        if as_json:
            rows = [
                {"id": e.id, "name": e.name, "page": e.page, "section": e.section,
                 "tier": e.tier, "actions": len(e.actions), "requires": list(e.requires)}
                for e in entries
            ]
            typer.echo(json.dumps(rows, indent=2))
            return
        current_page = None
        for entry in entries:
            if entry.page != current_page:
                current_page = entry.page
                typer.echo(f"\n{current_page}")
            typer.echo(f"  {entry.id:<70} {entry.tier:<8} {entry.name}")
        typer.echo(f"\n{len(entries)} entries")

    @catalog_app.command("show")
    def catalog_show(
        entry_id: str = typer.Argument(..., help="Entry id (see `catalog list`)."),
        as_json: bool = typer.Option(False, "--json"),
        catalog_file: Path = CatalogOption,
    ) -> None:
        """What an entry grants, its tier, what it requires and the corrections made."""
        catalog = _load_or_exit(catalog_file)
        if entry_id not in catalog.entries:
            resolution = Resolver(catalog).resolve(entry_id) if entry_id.strip() else None
            hint = ""
            if resolution and resolution.matches:
                hint = " Did you mean: " + ", ".join(c.entry.id for c in resolution.matches)
            typer.echo(f"error: no catalog entry {entry_id!r}.{hint}", err=True)
            raise typer.Exit(2)
        entry = catalog.get(entry_id)
        granted = catalog.granted_actions(entry.id)
        if as_json:
            typer.echo(json.dumps({
                "id": entry.id, "name": entry.name, "page": entry.page,
                "section": entry.section, "aliases": list(entry.aliases), "tier": entry.tier,
                "actions": list(entry.actions), "requires": list(entry.requires),
                "granted_actions": list(granted),
                "corrections": [c.__dict__ for c in entry.corrections],
                "persistent_effects": [e.__dict__ for e in
                                       catalog.declared_persistent_effects(entry.id)],
                "star_exceptions": [e.__dict__ for e in entry.star_exceptions],
                "storage_resource_types": list(entry.storage_resource_types),
                "instance_attributes": list(entry.instance_attributes),
                "instance_scope": entry.instance_scope,
            }, indent=2))
            return
        typer.echo(f"{entry.name}\n  id:       {entry.id}\n  page:     {entry.page}")
        if entry.section:
            typer.echo(f"  section:  {entry.section}")
        typer.echo(f"  tier:     {entry.tier}")
        if entry.aliases:
            typer.echo(f"  aliases:  {'; '.join(entry.aliases)}")
        typer.echo(f"  requires: {', '.join(entry.requires) or '(nothing)'}")
        typer.echo(f"  own actions ({len(entry.actions)}):")
        for action in entry.actions:
            typer.echo(f"    {action}")
        extra = sorted(set(granted) - set(entry.actions))
        if extra:
            typer.echo(f"  also granted through requires ({len(extra)}):")
            for action in extra:
                typer.echo(f"    {action}")
        if entry.instance_scope != "chosen":
            typer.echo(f"  instance scope: {entry.instance_scope}")
        for label, values in (("storage types", entry.storage_resource_types),
                              ("instance attributes", entry.instance_attributes)):
            if values:
                typer.echo(f"  {label}: {', '.join(values)}")
        effects = catalog.declared_persistent_effects(entry.id)
        if effects:
            typer.echo("  persistent effects (outlive the grant):")
            for effect in effects:
                typer.echo(f"    {effect.action}: {effect.reason}")
        if entry.star_exceptions:
            typer.echo('  Resource "*" exceptions:')
            for exception in entry.star_exceptions:
                typer.echo(f"    {exception.action}: {exception.reason}")
        if entry.corrections:
            typer.echo("  corrections of the AWS page:")
            for c in entry.corrections:
                typer.echo(f"    page wrote {c.written!r} -> {c.action}: {c.note}")

    @catalog_app.command("validate")
    def catalog_validate(
        catalog_file: Path = CatalogOption,
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Check the catalog against IAM's reference data and the compiler's rules (every
        entry compiles; effects that outlive a grant are contained or declared; services
        are the page's or explained); exit 0 only when valid."""
        catalog = _load_or_exit(catalog_file)
        iam = IamReference()
        faults = validate_catalog(catalog, iam)
        if as_json:
            typer.echo(json.dumps({
                "file": str(catalog_file), "valid": not faults, "entries": len(catalog),
                "distinct_actions": len({a for e in catalog for a in e.actions}),
                "iam_data_version": iam.data_version, "faults": [str(f) for f in faults],
            }, indent=2))
            if faults:
                raise typer.Exit(1)
            return
        for fault in faults:
            typer.echo(f"error: {fault}", err=True)
        if faults:
            typer.echo(f"{len(faults)} fault(s) in {catalog_file}", err=True)
            raise typer.Exit(1)
        actions = {a for e in catalog for a in e.actions}
        typer.echo(
            f"ok: {catalog_file}: {len(catalog)} entries, {len(actions)} distinct actions, "
            f"all known to the IAM reference data {iam.data_version}"
        )

    @app.command("resolve")
    def resolve(
        query: list[str] = typer.Argument(..., help="What you need, e.g. Edit chat transcripts"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        catalog_file: Path = CatalogOption,
    ) -> None:
        """Find the catalog entry a piece of free text means."""
        catalog = _load_or_exit(catalog_file)
        try:
            resolution = Resolver(catalog).resolve(" ".join(query))
        except QueryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if as_json:
            typer.echo(json.dumps(resolution.to_json(), indent=2))
            return
        typer.echo(f"{resolution.status}")
        for candidate in resolution.matches:
            typer.echo(f"  {candidate.entry.id}  ({candidate.entry.name})")
        for candidate in resolution.suggestions:
            typer.echo(f"  maybe: {candidate.entry.id}  ({candidate.entry.name})")
