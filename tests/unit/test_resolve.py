"""What people type -> one entry, an honest choice, or nothing."""

from __future__ import annotations

import pytest

from bot.catalog import load_catalog
from bot.resolve import QueryError, Resolver


@pytest.fixture(scope="module")
def resolver() -> Resolver:
    return Resolver(load_catalog())


def test_every_name_alias_and_id_resolves_to_its_entry(resolver: Resolver) -> None:
    for entry in resolver.catalog:
        for text in (entry.name, entry.id, *entry.aliases):
            result = resolver.resolve(text)
            assert entry.id in [c.entry.id for c in result.matches], (text, result)
            if entry.name != "View outbound campaigns":
                assert result.status == "match", (text, result.status)


@pytest.mark.parametrize(
    ("query", "entry_id"),
    [
        ("Edit chat transcripts", "data-storage/edit-chat-transcripts"),
        ("chat transcripts edit", "data-storage/edit-chat-transcripts"),
        ("edit chat transcript", "data-storage/edit-chat-transcripts"),
        ("EDIT   Chat-Transcripts!", "data-storage/edit-chat-transcripts"),
        ("veiw call recording", "data-storage/view-call-recording"),
        ("view call recordings", "data-storage/view-call-recording"),
        ("call recording edit", "data-storage/edit-call-recording"),
        ("enable forecasting & agent scheduling", "forecasting/enable-forecasting-capacity-planning-and-scheduling"),
        ("Enable forecasting, capacity planning, and scheduling", "forecasting/enable-forecasting-capacity-planning-and-scheduling"),
        ("View conversational analytics connectors", "contact-lens-connectors/view-contact-lens-connectors"),
        ("add lex bots", "flows/add-remove-lex-bots"),
        ("data storage page edit attachments", "data-storage/edit-attachments"),
        ("Describe instance", "home/describe-instance"),
        ("create replica instance", "home/create-a-replica-instance"),
        ("emergency access", "federations/admin-emergency-federation"),
    ],
)
def test_resolves_typed_variants(resolver: Resolver, query: str, entry_id: str) -> None:
    result = resolver.resolve(query)
    assert result.status == "match", result
    assert result.entry is not None and result.entry.id == entry_id


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("screen recording", {"data-storage/view-screen-recording", "data-storage/edit-screen-recording"}),
        ("polly", {"flows/view-amazon-polly-option", "flows/update-amazon-polly-option"}),
        ("View outbound campaigns", {"telephony/view-outbound-campaigns", "outbound-campaigns/view-outbound-campaigns"}),
    ],
)
def test_close_candidates_are_ambiguous(resolver: Resolver, query: str, expected: set[str]) -> None:
    result = resolver.resolve(query)
    assert result.status == "ambiguous"
    assert {c.entry.id for c in result.matches} == expected


@pytest.mark.parametrize("query", ["make me admin", "s3 full access", "qwerty", "give me everything", "root"])
def test_nonsense_never_resolves(resolver: Resolver, query: str) -> None:
    result = resolver.resolve(query)
    assert result.status == "none", result
    assert len(result.suggestions) <= 3


def test_none_offers_suggestions_when_something_is_near(resolver: Resolver) -> None:
    result = resolver.resolve("make me admin")
    assert [c.entry.id for c in result.suggestions] == ["federations/admin-emergency-federation"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "Tell me what you need"),
        ("   ", "Tell me what you need"),
        ("x" * 501, "501 characters"),
        ("edit\x00chat", "control characters"),
        ("edit\nchat transcripts", "control characters"),
    ],
)
def test_bad_input_is_a_clear_error(resolver: Resolver, query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        resolver.resolve(query)


def test_json_shape_matches_the_contract(resolver: Resolver) -> None:
    payload = resolver.resolve("polly").to_json()
    assert set(payload) == {"query", "status", "matches", "suggestions"}
    assert set(payload["matches"][0]) == {"id", "name", "page", "section"}  # type: ignore[index]
