"""Pith numbers, short forms, arXiv identifiers and aliases, checked on the published records."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from node.demo import fixture_path
from protocol.errors import IdentifierError, InvalidInput
from protocol.identifiers import (
    PithNumber,
    check_aliases,
    check_canonical_record,
    derive_aliases,
    parse_arxiv_id,
    parse_pith_number,
    pith_number_for,
    pith_suffix,
    record_pith_number,
    short_pith_number,
)


def _record_lines() -> list[tuple[int, dict[str, Any]]]:
    text = fixture_path("records.jsonl").read_text(encoding="utf-8")
    return [(number, json.loads(line)) for number, line in enumerate(text.splitlines(), start=1)]


RECORD_LINES = _record_lines()


def _lines_with(*keys: str) -> list[Any]:
    return [
        pytest.param(line, id=f"line{number}")
        for number, line in RECORD_LINES
        if all(key in line for key in keys)
    ]


WITH_RECORD = _lines_with("canonical_record")
WITH_RECORD_AND_DIGEST = _lines_with("canonical_record", "canonical_sha256")
WITH_RECORD_AND_ALIASES = _lines_with("canonical_record", "source_aliases")
WITH_DIGEST = _lines_with("canonical_sha256")
WITH_ALIASES = _lines_with("source_aliases")


def test_published_line_counts() -> None:
    assert len(RECORD_LINES) == 50
    assert len(WITH_RECORD) == 20
    assert len(WITH_RECORD_AND_DIGEST) == 15
    assert len(WITH_RECORD_AND_ALIASES) == 18
    assert len(WITH_DIGEST) == 45
    assert len(WITH_ALIASES) == 47


# --- Pith numbers from the published records --------------------------------


@pytest.mark.parametrize("line", WITH_RECORD)
def test_record_gives_published_pith_number(line: dict[str, Any]) -> None:
    number, _ = record_pith_number(line["canonical_record"])
    assert number == line["pith_number"]


@pytest.mark.parametrize("line", WITH_RECORD_AND_DIGEST)
def test_record_gives_published_digest(line: dict[str, Any]) -> None:
    _, digest = record_pith_number(line["canonical_record"])
    assert digest == line["canonical_sha256"]


@pytest.mark.parametrize("line", WITH_DIGEST)
def test_digest_gives_published_suffix(line: dict[str, Any]) -> None:
    assert pith_suffix(line["canonical_sha256"]) == parse_pith_number(line["pith_number"]).suffix


@pytest.mark.parametrize("line", WITH_RECORD_AND_ALIASES)
def test_derived_aliases_match_published(line: dict[str, Any]) -> None:
    # Every record line with aliases lists all six kinds.
    published = {alias["alias_kind"]: alias["alias_value"] for alias in line["source_aliases"]}
    _, digest = record_pith_number(line["canonical_record"])
    assert derive_aliases(line["canonical_record"], digest) == published


@pytest.mark.parametrize("line", WITH_ALIASES)
def test_published_aliases_pass_check(line: dict[str, Any]) -> None:
    record = line.get("canonical_record")
    assert check_aliases(line["source_aliases"], line["pith_number"], record) == line["source_aliases"]


@pytest.mark.parametrize("line", WITH_ALIASES)
def test_published_short_aliases_are_prefixes(line: dict[str, Any]) -> None:
    suffix = parse_pith_number(line["pith_number"]).suffix
    for alias in line["source_aliases"]:
        if alias["alias_kind"].startswith("pith_short_"):
            length = int(alias["alias_kind"].removeprefix("pith_short_"))
            assert alias["alias_value"] == suffix[:length]


def test_alias_derivation_exact_values() -> None:
    line = dict(RECORD_LINES)[44]
    _, digest = record_pith_number(line["canonical_record"])
    assert derive_aliases(line["canonical_record"], digest) == {
        "arxiv": "1904.01935",
        "arxiv_version": "1904.01935v1",
        "doi": "10.48550/arxiv.1904.01935",
        "pith_short_8": "J3TSGWAI",
        "pith_short_12": "J3TSGWAIWV5T",
        "pith_short_16": "J3TSGWAIWV5TLRGZ",
    }


def test_year_follows_submitted_at() -> None:
    # Submitted in March 2019 but numbered 1904 by arXiv: the Pith number
    # comes from submitted_at and the months are never compared.
    record = dict(RECORD_LINES)[44]["canonical_record"]
    assert record["metadata"]["submitted_at"] == "2019-03-07T16:53:24Z"
    assert record_pith_number(record)[0] == "pith:2019:J3TSGWAIWV5TLRGZZDLKP5ZUG7"


def test_changed_submitted_year_changes_number() -> None:
    record = copy.deepcopy(dict(RECORD_LINES)[44]["canonical_record"])
    record["metadata"]["submitted_at"] = "2020-03-07T16:53:24Z"
    number, digest = record_pith_number(record)
    assert number == f"pith:2020:{pith_suffix(digest)}"
    assert digest != dict(RECORD_LINES)[44]["canonical_sha256"]


# --- old-style and new-style arXiv identifiers ------------------------------


def test_old_style_ids_in_published_aliases() -> None:
    old_style = sorted(
        alias["alias_value"]
        for _, line in RECORD_LINES
        for alias in line.get("source_aliases", [])
        if alias["alias_kind"] == "arxiv" and "/" in alias["alias_value"]
    )
    assert old_style == ["gr-qc/0505119", "hep-lat/0305021"]


@pytest.mark.parametrize("line", WITH_ALIASES)
def test_published_arxiv_alias_parses(line: dict[str, Any]) -> None:
    for alias in line["source_aliases"]:
        if alias["alias_kind"] == "arxiv":
            assert parse_arxiv_id(alias["alias_value"]) == alias["alias_value"]


@pytest.mark.parametrize(
    "text",
    ["hep-lat/0305021", "gr-qc/0505119", "math.GT/0309136", "cond-mat/9912001", "0704.0001", "1412.9999", "1501.00001", "1711.00489"],
)
def test_arxiv_id_accepted(text: str) -> None:
    assert parse_arxiv_id(text) == text


BAD_ARXIV_IDS = [
    pytest.param("hep-lat/0305021v1", id="old-style-versioned"),
    pytest.param("1711.00489v2", id="new-style-versioned"),
    pytest.param("HEP-LAT/0305021", id="uppercase-archive"),
    pytest.param("hep-lat/0313021", id="month-13"),
    pytest.param("hep-lat/030502", id="old-style-6-digits"),
    pytest.param("1713.00001", id="new-style-month-13"),
    pytest.param("1700.00001", id="new-style-month-0"),
    pytest.param("1711.0048", id="4-digits-after-2014"),
    pytest.param("1404.00001", id="5-digits-before-2015"),
    pytest.param("0703.0001", id="before-new-style"),
    pytest.param("1711.004890", id="6-digits"),
    pytest.param("arXiv:1711.00489", id="prefix"),
    pytest.param(" 1711.00489", id="leading-space"),
    pytest.param("1711.00489\n", id="trailing-newline"),
    pytest.param("١٧١١.00489", id="arabic-digits"),
    pytest.param(1711.00489, id="number"),
]


@pytest.mark.parametrize("value", BAD_ARXIV_IDS)
def test_bad_arxiv_id_rejected(value: Any) -> None:
    with pytest.raises(IdentifierError) as caught:
        parse_arxiv_id(value, "source.id")
    assert caught.value.field == "source.id"


# --- Pith number forms --------------------------------------------------------

DIGEST = "731256ec590e55c5451cb88682c56d81e4bfab2ad1e6cb4d3705371935cbae85"
NUMBER = "pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQH"


def test_suffix_of_published_digest() -> None:
    assert pith_suffix(DIGEST) == "OMJFN3CZBZK4KRI4XCDIFRLNQH"


def test_number_for_digest_and_time() -> None:
    assert pith_number_for(DIGEST, "2003-05-22T11:00:00Z") == NUMBER


def test_parse_number_fields() -> None:
    parsed = parse_pith_number(NUMBER)
    assert parsed == PithNumber(2003, "OMJFN3CZBZK4KRI4XCDIFRLNQH")
    assert str(parsed) == NUMBER


def test_short_pith_number() -> None:
    assert short_pith_number(NUMBER) == "pith:OMJFN3CZ"
    assert parse_pith_number(NUMBER).short == "pith:OMJFN3CZ"


def test_short_forms_are_suffix_prefixes() -> None:
    aliases = derive_aliases({"source": {"kind": "doi", "id": "x", "version": 1}}, DIGEST)
    assert aliases == {
        "pith_short_8": "OMJFN3CZ",
        "pith_short_12": "OMJFN3CZBZK4",
        "pith_short_16": "OMJFN3CZBZK4KRI4",
    }


BAD_PITH_NUMBERS = [
    pytest.param("pith:2003:omjfn3czbzk4kri4xcdifrlnqh", id="lowercase"),
    pytest.param("pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQ", id="25-chars"),
    pytest.param("pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQHA", id="27-chars"),
    pytest.param("pith:17:OMJFN3CZBZK4KRI4XCDIFRLNQH", id="two-digit-year"),
    pytest.param("pith:17:", id="no-suffix-short-year"),
    pytest.param("pith:2003:", id="no-suffix"),
    pytest.param("pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQ0", id="base32-0"),
    pytest.param("pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQ1", id="base32-1"),
    pytest.param("pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQ8", id="base32-8"),
    pytest.param("pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQ9", id="base32-9"),
    pytest.param("PITH:2003:OMJFN3CZBZK4KRI4XCDIFRLNQH", id="uppercase-scheme"),
    pytest.param("pith:OMJFN3CZ", id="short-number"),
    pytest.param(NUMBER + "\n", id="trailing-newline"),
    pytest.param(" " + NUMBER, id="leading-space"),
    pytest.param("pith:٢٠٠٣:OMJFN3CZBZK4KRI4XCDIFRLNQH", id="arabic-digits"),
    pytest.param("pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQ=", id="base32-padding"),
    pytest.param(None, id="none"),
    pytest.param(2003, id="int"),
]


@pytest.mark.parametrize("value", BAD_PITH_NUMBERS)
def test_bad_pith_number_rejected(value: Any) -> None:
    with pytest.raises(IdentifierError) as caught:
        parse_pith_number(value, "subject_pith_number")
    assert caught.value.field == "subject_pith_number"


@pytest.mark.parametrize(
    "digest",
    [DIGEST.upper(), DIGEST[:63], DIGEST + "0", "sha256:" + DIGEST[7:], None],
    ids=["uppercase", "63-chars", "65-chars", "prefixed", "none"],
)
def test_bad_digest_rejected(digest: Any) -> None:
    with pytest.raises(IdentifierError) as caught:
        pith_suffix(digest)
    assert caught.value.field == "canonical_sha256"


# --- canonical record structure ----------------------------------------------


def _sample_record() -> dict[str, Any]:
    return copy.deepcopy(dict(RECORD_LINES)[44]["canonical_record"])


def _without(record: dict[str, Any], *path: str) -> dict[str, Any]:
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return record


def _with(record: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return record


BAD_RECORDS = [
    pytest.param(_without(_sample_record(), "metadata"), "canonical_record.metadata", id="no-metadata"),
    pytest.param(_without(_sample_record(), "source"), "canonical_record.source", id="no-source"),
    pytest.param(_without(_sample_record(), "schema_version"), "canonical_record.schema_version", id="no-schema"),
    pytest.param(_with(_sample_record(), 1, "schema_version"), "canonical_record.schema_version", id="schema-int"),
    pytest.param(_with(_sample_record(), [], "metadata"), "canonical_record.metadata", id="metadata-list"),
    pytest.param(
        _without(_sample_record(), "metadata", "submitted_at"), "canonical_record.metadata.submitted_at", id="no-time"
    ),
    pytest.param(
        _with(_sample_record(), "2019-03-07", "metadata", "submitted_at"),
        "canonical_record.metadata.submitted_at",
        id="date-only",
    ),
    pytest.param(_without(_sample_record(), "source", "id"), "canonical_record.source.id", id="no-id"),
    pytest.param(_with(_sample_record(), 1904.01935, "source", "id"), "canonical_record.source.id", id="id-number"),
    pytest.param(_with(_sample_record(), "1904.1935", "source", "id"), "canonical_record.source.id", id="id-malformed"),
    pytest.param(_with(_sample_record(), 0, "source", "version"), "canonical_record.source.version", id="version-0"),
    pytest.param(_with(_sample_record(), True, "source", "version"), "canonical_record.source.version", id="version-bool"),
    pytest.param(_with(_sample_record(), "1", "source", "version"), "canonical_record.source.version", id="version-text"),
    pytest.param(_with(_sample_record(), None, "source", "kind"), "canonical_record.source.kind", id="kind-null"),
    pytest.param("record", "canonical_record", id="text"),
]


@pytest.mark.parametrize(("record", "field"), BAD_RECORDS)
def test_bad_record_names_field(record: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_canonical_record(record)
    assert caught.value.field == field


def test_non_arxiv_source_id_not_parsed() -> None:
    record = _with(_sample_record(), "doi", "source", "kind")
    _with(record, "10.1000/xyz", "source", "id")
    assert check_canonical_record(record) is record


def test_extra_record_fields_allowed() -> None:
    # Fields the registry may add later are covered by the hash anyway.
    record = _with(_sample_record(), "x", "metadata", "new_field")
    number, digest = record_pith_number(record)
    assert number == f"pith:2019:{pith_suffix(digest)}"


# --- aliases -----------------------------------------------------------------


def _published_aliases() -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    line = dict(RECORD_LINES)[44]
    return copy.deepcopy(line["source_aliases"]), line["pith_number"], line["canonical_record"]


def test_alias_value_change_names_index() -> None:
    aliases, number, record = _published_aliases()
    aliases[2]["alias_value"] = "10.48550/arxiv.1904.01936"
    with pytest.raises(IdentifierError) as caught:
        check_aliases(aliases, number, record)
    assert caught.value.field == "source_aliases[2].alias_value"


def test_short_alias_change_without_record() -> None:
    aliases, number, _ = _published_aliases()
    aliases[5]["alias_value"] = "J3TSGWAJ"
    with pytest.raises(IdentifierError) as caught:
        check_aliases(aliases, number)
    assert caught.value.field == "source_aliases[5].alias_value"


def test_doi_disagreeing_without_record() -> None:
    aliases, number, _ = _published_aliases()
    aliases[2]["alias_value"] = "10.48550/arxiv.1904.01936"
    with pytest.raises(IdentifierError) as caught:
        check_aliases(aliases, number)
    assert caught.value.field == "source_aliases[2].alias_value"


def test_version_alias_disagreeing_without_record() -> None:
    aliases, number, _ = _published_aliases()
    aliases[1]["alias_value"] = "1904.01936v1"
    with pytest.raises(IdentifierError) as caught:
        check_aliases(aliases, number)
    assert caught.value.field == "source_aliases[1].alias_value"


def test_conflicting_alias_kinds_rejected() -> None:
    aliases, number, record = _published_aliases()
    aliases.append({"alias_kind": "arxiv", "alias_value": "1904.01936"})
    with pytest.raises(IdentifierError) as caught:
        check_aliases(aliases, number, record)
    assert caught.value.field == "source_aliases[6]"


def test_repeated_equal_alias_accepted() -> None:
    aliases, number, record = _published_aliases()
    aliases.append(dict(aliases[0], created_at="2026-05-18T00:22:39Z"))
    assert len(check_aliases(aliases, number, record)) == 7


def test_unknown_alias_kind_rejected() -> None:
    aliases, number, record = _published_aliases()
    aliases[0]["alias_kind"] = "isbn"
    with pytest.raises(IdentifierError) as caught:
        check_aliases(aliases, number, record)
    assert caught.value.field == "source_aliases[0].alias_kind"


def test_unknown_alias_field_rejected() -> None:
    aliases, number, record = _published_aliases()
    aliases[0]["note"] = "x"
    with pytest.raises(IdentifierError) as caught:
        check_aliases(aliases, number, record)
    assert caught.value.field == "source_aliases[0].note"


def test_bad_alias_time_rejected() -> None:
    aliases, number, record = _published_aliases()
    aliases[0]["created_at"] = "2026-05-18T00:22:39.281193Z"
    with pytest.raises(InvalidInput) as caught:
        check_aliases(aliases, number, record)
    assert caught.value.field == "source_aliases[0].created_at"


def test_aliases_not_a_list() -> None:
    _, number, record = _published_aliases()
    with pytest.raises(IdentifierError) as caught:
        check_aliases({"arxiv": "1904.01935"}, number, record)
    assert caught.value.field == "source_aliases"


def test_long_alias_quoted_short() -> None:
    # Messages quote at most 80 characters of a value, so a hostile alias
    # cannot flood a log line.
    aliases, number, _ = _published_aliases()
    aliases[2]["alias_value"] = "10.48550/arxiv." + "x" * 1_000_000
    aliases[0]["alias_value"] = "y" * 1_000_000
    aliases[0], aliases[2] = aliases[2], aliases[0]
    with pytest.raises(IdentifierError) as caught:
        check_aliases(aliases, number)
    assert caught.value.field == "source_aliases[0].alias_value"
    assert len(str(caught.value)) < 250
