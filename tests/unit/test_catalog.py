"""The shipped catalog against the AWS reference page, and validation of broken files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.catalog import (
    DEFAULT_CATALOG_FILE,
    Catalog,
    CatalogError,
    load_catalog,
    validate_catalog,
)
from bot.iamref import IamReference

REFERENCE = json.loads((Path(__file__).parent.parent / "data" / "connect-console-permissions.json").read_text())
REFERENCE_ROWS = [(page["page"], row) for page in REFERENCE["pages"] for row in page["rows"]]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def iam() -> IamReference:
    return IamReference()


def _entry_for_row(catalog: Catalog, page: str, row: dict[str, Any]) -> Any:
    found = [e for e in catalog if e.page == page and e.name == row["use_case"]]
    assert len(found) == 1, f"{page} / {row['use_case']}: {len(found)} catalog entries"
    return found[0]


def test_one_entry_per_reference_row(catalog: Catalog) -> None:
    assert len(catalog) == 64 == len(REFERENCE_ROWS)
    for page, row in REFERENCE_ROWS:
        _entry_for_row(catalog, page, row)


@pytest.mark.parametrize(
    ("page", "row"), REFERENCE_ROWS, ids=[r["use_case"][:40] for _, r in REFERENCE_ROWS]
)
def test_entry_actions_equal_reference_after_documented_corrections(
    catalog: Catalog, page: str, row: dict[str, Any]
) -> None:
    entry = _entry_for_row(catalog, page, row)
    corrected: dict[str, str] = {}
    for correction in entry.corrections:
        corrected[correction.written] = correction.action
    expected = set()
    for written in row["permissions_as_written"]:
        action = corrected.get(written, written)
        # A space fix and a rename may both apply (written -> fixed -> renamed).
        action = corrected.get(action, action)
        expected.add(action)
    assert set(entry.actions) == expected
    # Every correction must stand for something the page really wrote.
    assert {c.written for c in entry.corrections} <= set(row["permissions_as_written"])


def test_known_faults_of_the_page_are_recorded(catalog: Catalog) -> None:
    notes = {(c.written, c.action) for e in catalog for c in e.corrections}
    for written, action in [
        ("connect: DisassociateInstanceStorageConfig", "connect:DisassociateInstanceStorageConfig"),
        ("kinesis: DescribeStream", "kinesis:DescribeStream"),
        ("connect: AssociateApprovedOrigin", "connect:AssociateApprovedOrigin"),
        ("s3:ListObjectsV2", "s3:ListBucket"),
        ("s3:HeadBucket", "s3:ListBucket"),
        ("wisdom:ListAssistantAssociations", "wisdom:ListAssistantAssociations"),
    ]:
        assert (written, action) in notes, written


def test_shipped_catalog_validates(catalog: Catalog, iam: IamReference) -> None:
    assert validate_catalog(catalog, iam) == []


def test_newer_edition_names_are_aliases(catalog: Catalog) -> None:
    for page, row in REFERENCE_ROWS:
        if row.get("newer_doc_name"):
            assert row["newer_doc_name"] in _entry_for_row(catalog, page, row).aliases


def test_requires_encode_the_page_notes(catalog: Catalog) -> None:
    edit = catalog.get("data-storage/edit-chat-transcripts")
    assert set(edit.requires) == {
        "home/list-instance",
        "home/describe-instance",
        "data-storage/view-chat-transcripts",
    }
    granted = set(catalog.granted_actions(edit.id))
    assert {"connect:ListInstances", "connect:DescribeInstance"} <= granted
    assert "home/create-instance" in catalog.get("home/create-a-replica-instance").requires
    # Telephony lists two views without sections: each edit pairs with its own view.
    assert "telephony/view-outbound-campaigns" in catalog.get(
        "telephony/enable-disable-outbound-campaigns"
    ).requires
    assert "telephony/view-telephony-options" not in catalog.get(
        "telephony/enable-disable-outbound-campaigns"
    ).requires


def test_tiers_follow_the_rules(catalog: Catalog) -> None:
    for entry_id in (
        "home/create-instance",
        "home/delete-instance",
        "home/create-a-replica-instance",
        "federations/saml-federation",
        "federations/admin-emergency-federation",
        "overview/create-service-linked-role",  # holds iam:CreateServiceLinkedRole
    ):
        assert catalog.get(entry_id).tier == "critical", entry_id
    assert catalog.get("data-storage/view-chat-transcripts").tier == "read"
    assert catalog.get("flows/update-amazon-polly-option").tier == "write"


# --- broken catalogs: each fault gives a message naming the file, the entry and the fault


def _write(tmp_path: Path, mutate: Any) -> Path:
    document = yaml.safe_load(DEFAULT_CATALOG_FILE.read_text())
    mutate(document["entries"])
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _entry(entries: list[dict[str, Any]], entry_id: str) -> dict[str, Any]:
    return next(e for e in entries if e["id"] == entry_id)


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("entries:\n  - id: x\n    name: [unclosed\n")
    with pytest.raises(CatalogError, match=r"bad\.yaml: not valid YAML at line \d+"):
        load_catalog(path)


def test_unknown_action_fails_validation(tmp_path: Path, iam: IamReference) -> None:
    path = _write(
        tmp_path,
        lambda es: _entry(es, "flows/view-lex-bots")["actions"].append("connect:MakeMeAdmin"),
    )
    faults = validate_catalog(load_catalog(path), iam)
    assert len(faults) == 1
    assert "broken.yaml" in str(faults[0])
    assert "'flows/view-lex-bots'" in str(faults[0])
    assert "has no action 'MakeMeAdmin'" in str(faults[0])


def test_space_after_colon_fails_validation(tmp_path: Path, iam: IamReference) -> None:
    def mutate(es: list[dict[str, Any]]) -> None:
        _entry(es, "data-storage/edit-exported-reports")["actions"].append(
            "connect: DisassociateBot"
        )

    faults = validate_catalog(load_catalog(_write(tmp_path, mutate)), iam)
    assert [f.entry_id for f in faults] == ["data-storage/edit-exported-reports"]
    assert "without spaces" in str(faults[0])


@pytest.mark.parametrize("api_name", ["s3:ListObjectsV2", "s3:HeadBucket"])
def test_api_names_are_not_actions(tmp_path: Path, iam: IamReference, api_name: str) -> None:
    path = _write(
        tmp_path, lambda es: _entry(es, "data-storage/view-call-recording")["actions"].append(api_name)
    )
    faults = validate_catalog(load_catalog(path), iam)
    assert len(faults) == 1 and api_name.split(":")[1] in str(faults[0])


def test_action_listed_twice_fails(tmp_path: Path) -> None:
    def mutate(es: list[dict[str, Any]]) -> None:
        actions = _entry(es, "q-in-connect/view-domains-and-integrations")["actions"]
        actions.append("wisdom:ListAssistantAssociations")

    with pytest.raises(CatalogError, match=r"view-domains-and-integrations'.*listed twice"):
        load_catalog(_write(tmp_path, mutate))


def test_duplicate_id_fails(tmp_path: Path) -> None:
    def mutate(es: list[dict[str, Any]]) -> None:
        es[1]["id"] = es[0]["id"]

    with pytest.raises(CatalogError, match=r"broken\.yaml, entry 'home/list-instance': duplicate id"):
        load_catalog(_write(tmp_path, mutate))


@pytest.mark.parametrize("field", ["id", "name", "page", "tier", "actions"])
def test_missing_field_fails(tmp_path: Path, field: str) -> None:
    path = _write(tmp_path, lambda es: _entry(es, "flows/view-lex-bots").pop(field))
    with pytest.raises(CatalogError, match=f"missing required field '{field}'"):
        load_catalog(path)


def test_requires_cycle_fails(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        lambda es: _entry(es, "home/list-instance")["requires"].append("home/describe-instance"),
    )
    with pytest.raises(CatalogError, match=r"requires cycle: .*home/list-instance"):
        load_catalog(path)


def test_dangling_requires_fails(tmp_path: Path) -> None:
    path = _write(
        tmp_path, lambda es: _entry(es, "flows/view-lex-bots")["requires"].append("flows/nope")
    )
    with pytest.raises(CatalogError, match="'flows/view-lex-bots': requires unknown entry 'flows/nope'"):
        load_catalog(path)


def test_tier_too_low_fails(tmp_path: Path, iam: IamReference) -> None:
    path = _write(tmp_path, lambda es: _entry(es, "home/delete-instance").update(tier="read"))
    faults = validate_catalog(load_catalog(path), iam)
    assert len(faults) == 1 and "at least 'critical'" in str(faults[0])


def test_bad_correction_fails(tmp_path: Path, iam: IamReference) -> None:
    def mutate(es: list[dict[str, Any]]) -> None:
        _entry(es, "home/describe-instance")["corrections"][0]["action"] = "connect:Nope"

    faults = validate_catalog(load_catalog(_write(tmp_path, mutate)), iam)
    assert len(faults) == 1 and "not among the entry's actions" in str(faults[0])
