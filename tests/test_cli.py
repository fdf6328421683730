"""The offline command line on the published Pith files: verify, merge, keygen and sign."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.cli import main
from node.demo import fixture_path
from node.offline import InputError, read_items
from protocol import default_trust, emit_bundle, state_input
from protocol.canonical import Limits, field_path
from protocol.merge import state_hash

PUBLISHED_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"
STATE_NAME = "state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json"
SUBJECT = "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY"
HINT_PAYLOAD = '{"slot": "primary", "url": "https://mirror.example.org/pith/"}'


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``main`` in this process; return the exit status, standard output and standard error."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def state_path() -> Path:
    return fixture_path(STATE_NAME)


# --- verify and merge on the published files -------------------------------


def test_verify_published_files_pass(capsys: pytest.CaptureFixture[str], records_path: Path, state_path: Path) -> None:
    status, out, err = _run(capsys, "verify", str(records_path), str(state_path))
    lines = out.splitlines()
    assert status == 0
    assert lines[-1] == "verified 51 items: 51 passed, 0 failed"
    assert sum(line.startswith("OK   ") for line in lines) == 51
    assert err == ""


def test_verify_state_line_lists_checks(capsys: pytest.CaptureFixture[str], state_path: Path) -> None:
    status, out, _ = _run(capsys, "verify", str(state_path))
    checks = out.splitlines()[0].removeprefix(f"OK   {state_path} state {SUBJECT}: ").split("; ")
    assert status == 0
    assert checks[:4] == [
        "state_sha256",
        "canonical_sha256 and pith_number",
        "source_aliases",
        "2 events (ids, signatures, receipts)",
    ]
    assert checks[-1] == "re-merge reproduces state_sha256"


def test_merge_hash_only_published(capsys: pytest.CaptureFixture[str], state_path: Path) -> None:
    status, out, _ = _run(capsys, "merge", "--hash-only", str(state_path))
    assert status == 0
    assert out == PUBLISHED_STATE_SHA256 + "\n"


def test_merge_output_is_published_bytes(
    capsys: pytest.CaptureFixture[str], state_path: Path, published_state_bytes: bytes
) -> None:
    status, out, _ = _run(capsys, "merge", str(state_path))
    assert status == 0
    assert out.encode("utf-8") == published_state_bytes + b"\n"


def test_installed_script_verifies(records_path: Path, state_path: Path) -> None:
    script = Path(sysconfig.get_path("scripts")) / "pith-mirror"
    assert script.exists(), f"{script} is missing; run pip install -e '.[test]'"
    result = subprocess.run(
        [str(script), "verify", str(records_path), str(state_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == "verified 51 items: 51 passed, 0 failed"


def test_module_entry_point(capsys: pytest.CaptureFixture[str], state_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "node", "merge", "--hash-only", str(state_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout == PUBLISHED_STATE_SHA256 + "\n"


# --- mutation: every leaf and every key of the published files -------------


def _walk(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str, tuple[str | int, ...]]]:
    """Yield ("key", path) for every object key and ("leaf", path) for every scalar, in document order."""
    if isinstance(value, dict):
        for key, member in value.items():
            yield "key", (*path, key)
            yield from _walk(member, (*path, key))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            yield from _walk(member, (*path, index))
    else:
        yield "leaf", path


def _text_path(path: tuple[str | int, ...]) -> str:
    text = ""
    for key in path:
        text = field_path(text, key)
    return text


def _change_one_character(text: str) -> str:
    """Return ``text`` with its last character replaced by the next one of the same class."""
    if not text:
        return "x"
    last = text[-1]
    for first, final in (("0", "9"), ("a", "z"), ("A", "Z")):
        if first <= last <= final:
            span = ord(final) - ord(first) + 1
            return text[:-1] + chr(ord(first) + (ord(last) - ord(first) + 1) % span)
    return text[:-1] + chr(ord(last) + 1)


def _change_leaf(value: Any) -> Any:
    if value is None:
        return 0
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return _change_one_character(value)


def _mutate(document: dict[str, Any], kind: str, path: tuple[str | int, ...]) -> tuple[dict[str, Any], str | None]:
    """Return a copy with one change at ``path``, and the new text path when a key was renamed."""
    changed = copy.deepcopy(document)
    parent: Any = changed
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if kind == "leaf":
        parent[last] = _change_leaf(parent[last])
        return changed, None

    renamed = _change_one_character(str(last))
    assert renamed not in parent, f"renaming {last!r} would collide"
    members = list(parent.items())
    parent.clear()
    for key, member in members:
        parent[renamed if key == last else key] = member
    return changed, _text_path((*path[:-1], renamed))


def _names_one_of(line: str, fields: set[str]) -> bool:
    # A FAIL line ends with "<field>: <reason>"; match the field with its separators.
    return any(f": {field}: " in line for field in fields)


def test_mutation_helpers_change_values() -> None:
    assert _change_one_character("pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY") == "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILZ"
    assert _change_one_character("Cw==") == "Cw=>"
    assert _change_one_character("09") == "00"
    assert _change_one_character("") == "x"
    assert _change_leaf(None) == 0
    assert _change_leaf(True) is False
    assert _change_leaf(2) == 3
    assert list(_walk({"a": [1, {"b": None}], "c": []})) == [
        ("key", ("a",)),
        ("leaf", ("a", 0)),
        ("key", ("a", 1, "b")),
        ("leaf", ("a", 1, "b")),
        ("key", ("c",)),
    ]


def test_state_mutations_all_fail(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, published_state_bytes: bytes
) -> None:
    state = json.loads(published_state_bytes)
    target = tmp_path / "state.json"
    tried = {"key": 0, "leaf": 0}
    wrong: list[str] = []

    for kind, path in _walk(state):
        changed, renamed = _mutate(state, kind, path)
        target.write_text(json.dumps(changed, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
        status, out, _ = _run(capsys, "verify", str(target))
        tried[kind] += 1

        line = out.splitlines()[0]
        # Every change breaks state_sha256, which verify checks first. Only
        # a changed state_type stops the file from being read as a state.
        text_path = _text_path(path)
        fields = {"state_sha256", text_path} | ({renamed} if renamed else set())
        named = _names_one_of(line, fields) or (text_path == "state_type" and "state_type" in line)
        if status != 1 or not line.startswith("FAIL ") or not named:
            wrong.append(f"{kind} {text_path}: exit {status}: {line}")

    assert tried == {"key": 146, "leaf": 118}
    assert wrong == []


def _record_lines_with_record() -> list[tuple[int, dict[str, Any]]]:
    text = fixture_path("records.jsonl").read_text(encoding="utf-8")
    lines = [(number, json.loads(line)) for number, line in enumerate(text.splitlines(), start=1)]
    return [(number, line) for number, line in lines if "canonical_record" in line]


def test_record_mutations_all_fail(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "record.jsonl"
    tried = {"key": 0, "leaf": 0}
    wrong: list[str] = []
    record_lines = _record_lines_with_record()

    for number, record_line in record_lines:
        for kind, path in _walk(record_line):
            changed, renamed = _mutate(record_line, kind, path)
            target.write_text(json.dumps(changed, ensure_ascii=False) + "\n", encoding="utf-8")
            status, out, _ = _run(capsys, "verify", str(target))
            tried[kind] += 1

            line = out.splitlines()[0]
            # A change inside canonical_record changes its hash, so either a
            # check of that field or the Pith number check fails.
            text_path = _text_path(path)
            fields = {text_path} | ({renamed} if renamed else set())
            if path[0] == "canonical_record":
                fields.add("pith_number")
            if status != 1 or not line.startswith("FAIL ") or not _names_one_of(line, fields):
                wrong.append(f"line {number} {kind} {text_path}: exit {status}: {line}")

    assert len(record_lines) == 20
    assert tried == {"key": 637, "leaf": 554}
    assert wrong == []


def _resealed_state(published_state_bytes: bytes, change: Any) -> bytes:
    """Return the published state after ``change(state)``, with state_sha256 recomputed."""
    state = json.loads(published_state_bytes)
    change(state)
    body = {key: value for key, value in state.items() if key != "state_sha256"}
    state["state_sha256"] = state_hash(body)
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _add_one(state: dict[str, Any], key: str) -> None:
    state[key] += 1


def _rename_record_created(state: dict[str, Any]) -> None:
    state["current"]["record_creation"] = state["current"].pop("record_created")


def _drop_graph_snapshot(state: dict[str, Any]) -> None:
    state["current"]["graph_snapshots"] = []


def _change_alias(state: dict[str, Any]) -> None:
    state["current"]["source_aliases"][0]["alias_value"] = "1711.00488"


def _change_record(state: dict[str, Any]) -> None:
    state["current"]["canonical_record"]["source"]["version"] = 3


# With state_sha256 recomputed, verify must still see these inconsistencies.
# The event counts of a state satisfy event_count = valid_event_count +
# invalid_event_count, record_created is part of every state, and every
# event in effect is listed.
RESEALED_CHANGES = [
    pytest.param(lambda state: _add_one(state, "event_count"), id="event-count"),
    pytest.param(lambda state: _add_one(state, "invalid_event_count"), id="invalid-event-count"),
    pytest.param(lambda state: _add_one(state, "valid_event_count"), id="valid-event-count"),
    pytest.param(_rename_record_created, id="record-created-renamed"),
    pytest.param(_drop_graph_snapshot, id="graph-snapshot-dropped"),
    pytest.param(_change_alias, id="alias-changed"),
    pytest.param(_change_record, id="record-changed"),
]


@pytest.mark.parametrize("change", RESEALED_CHANGES)
def test_resealed_state_change_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, published_state_bytes: bytes, change: Any
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(_resealed_state(published_state_bytes, change))
    status, out, _ = _run(capsys, "verify", str(target))
    assert status == 1, out


# --- unreadable and undecodable inputs ---------------------------------------


def test_verify_missing_file_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = _run(capsys, "verify", str(tmp_path / "missing.json"))
    assert status == 2
    assert err == f"ERROR {tmp_path / 'missing.json'}: cannot read: No such file or directory\n"
    assert out == "verified 0 items: 0 passed, 0 failed\n"


def test_verify_directory_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = _run(capsys, "verify", str(tmp_path))
    assert status == 2
    assert err == f"ERROR {tmp_path}: cannot read: Is a directory\n"


def test_verify_unreadable_among_good(capsys: pytest.CaptureFixture[str], tmp_path: Path, state_path: Path) -> None:
    # The readable input is still checked and counted; the exit status
    # reports the input that could not be read.
    status, out, _ = _run(capsys, "verify", str(tmp_path / "missing.json"), str(state_path))
    assert status == 2
    assert out.splitlines()[-1] == "verified 1 items: 1 passed, 0 failed"


UNDECODABLE = [
    pytest.param("bad.json", b"\xff\xfe{}", "document is not valid UTF-8 at byte 0", id="non-utf8"),
    pytest.param("two.json", b"{}{}", "not valid JSON: Extra data: line 1 column 3", id="two-documents"),
    pytest.param("empty.json", b"", "not valid JSON: Expecting value: line 1 column 1", id="empty"),
    pytest.param("list.json", b"[]", "document must be a JSON object, got list", id="not-object"),
    pytest.param("float.json", b'{"n": 1.5}', "n: non-integer number '1.5' is not allowed", id="float"),
]


@pytest.mark.parametrize(("name", "data", "message"), UNDECODABLE)
def test_verify_undecodable_file_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    target = tmp_path / name
    target.write_bytes(data)
    status, out, _ = _run(capsys, "verify", str(target))
    assert status == 1
    assert out.splitlines() == [f"FAIL {target}: {message}", "verified 1 items: 0 passed, 1 failed"]


def test_verify_jsonl_bad_line_counted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, records_path: Path
) -> None:
    lines = records_path.read_bytes().splitlines()
    target = tmp_path / "records.jsonl"
    target.write_bytes(b"\n".join([lines[0], b"\xff", lines[1]]) + b"\n")
    status, out, _ = _run(capsys, "verify", str(target))
    assert status == 1
    assert out.splitlines()[1] == f"FAIL {target}:2: document is not valid UTF-8 at byte 0"
    assert out.splitlines()[-1] == "verified 3 items: 2 passed, 1 failed"


def test_jsonl_of_documents_verifies_and_merges(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, published_state_bytes: bytes
) -> None:
    # A state line, a bundle line of the same subject, and a line whose
    # bundle_type is wrong, which the bundle checks name.
    state = json.loads(published_state_bytes)
    merge_input = state_input(state)
    bundle = emit_bundle(merge_input.record, merge_input.aliases, merge_input.events, default_trust())
    target = tmp_path / "documents.jsonl"
    lines = [json.dumps(state), json.dumps(bundle), json.dumps({**bundle, "bundle_type": "other"})]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")

    status, out, _ = _run(capsys, "verify", str(target))
    assert status == 1
    assert out.splitlines()[0].startswith(f"OK   {target}:1 state ")
    assert out.splitlines()[1].startswith(f"OK   {target}:2 bundle ")
    assert out.splitlines()[2].startswith(f"FAIL {target}:3 bundle ")
    assert "bundle_type" in out.splitlines()[2]
    assert out.splitlines()[-1] == "verified 3 items: 2 passed, 1 failed"

    target.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    status, out, _ = _run(capsys, "merge", str(target))
    assert status == 0
    assert json.loads(out)["state_sha256"] == PUBLISHED_STATE_SHA256


def test_verify_incomplete_event_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    target.write_text('{"event_type": "mirror_hint"}\n', encoding="utf-8")
    status, out, _ = _run(capsys, "verify", str(target))
    assert status == 1
    assert out.splitlines()[0].startswith(f"FAIL {target}:1 event ?: ")


PUBLISHED_SUBJECT = "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY"


def test_signed_event_file_verifies_and_merges(capsys: pytest.CaptureFixture[str], tmp_path: Path, published_state_bytes: bytes) -> None:
    # sign writes one event as a .json document; verify and merge read it as it is.
    key_path = tmp_path / "node.key"
    state_path = tmp_path / "state.json"
    state_path.write_bytes(published_state_bytes)
    assert _run(capsys, "keygen", "--out", str(key_path))[0] == 0
    payload = '{"slot": "primary", "url": "https://mirror.example.org/pith/"}'
    status, signed, _ = _run(capsys, "sign", "--key", str(key_path), "--type", "mirror_hint", "--subject", PUBLISHED_SUBJECT, "--payload", payload)
    event_path = tmp_path / "hint.json"
    event_path.write_text(signed, encoding="utf-8")

    verified = _run(capsys, "verify", str(event_path))
    merged = _run(capsys, "merge", "--hash-only", str(state_path), str(event_path))

    assert status == 0
    assert verified[0] == 0
    assert verified[1].splitlines()[0].startswith(f"OK   {event_path} event {PUBLISHED_SUBJECT}: mirror_hint event sha256:")
    assert merged[0] == 0
    assert len(merged[1].strip()) == 64
    assert merged[1].strip() != "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"


def _run_bounded(code: str) -> subprocess.CompletedProcess[str]:
    # Inputs that could block or never end run in a child process with a
    # timeout, so a regression fails the test instead of hanging the suite.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def test_verify_endless_device_exit_2() -> None:
    result = _run_bounded(
        "import sys, node.offline\n"
        "from protocol.canonical import Limits\n"
        "node.offline.DOCUMENT_LIMITS = Limits(max_bytes=1024)\n"
        "from node.cli import main\n"
        "sys.exit(main(['verify', '/dev/zero']))\n"
    )
    assert result.returncode == 2
    assert result.stderr == "ERROR /dev/zero: input exceeds the limit of 1024 bytes\n"


def test_merge_missing_file_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = _run(capsys, "merge", str(tmp_path / "missing.json"))
    assert status == 2
    assert out == ""
    assert err == f"error: {tmp_path / 'missing.json'}: cannot read: No such file or directory\n"


def test_merge_undecodable_names_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "bad.json"
    target.write_bytes(b"\xff")
    status, out, err = _run(capsys, "merge", str(target))
    assert status == 1
    assert out == ""
    assert err == f"error: cannot merge: {target}: document is not valid UTF-8 at byte 0\n"


def test_merge_event_without_record(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    target.write_text(json.dumps({"event_type": "mirror_hint", "subject_pith_number": SUBJECT}) + "\n", encoding="utf-8")
    status, _, err = _run(capsys, "merge", str(target))
    assert status == 1
    assert SUBJECT in err
    assert "no bundle or state in the input" in err


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["verify", "--help"])
    assert caught.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 all passed, 1 a check failed, 2 an input could not be read." in help_text


# --- keygen and sign ---------------------------------------------------------


def _keygen(capsys: pytest.CaptureFixture[str], key_path: Path, *extra: str) -> tuple[int, str, str]:
    return _run(capsys, "keygen", "--out", str(key_path), *extra)


def _sign_hint(capsys: pytest.CaptureFixture[str], key_path: Path) -> tuple[int, str, str]:
    return _run(
        capsys,
        "sign",
        "--key", str(key_path),
        "--type", "mirror_hint",
        "--subject", SUBJECT,
        "--payload", HINT_PAYLOAD,
        "--created-at", "2026-06-01T00:00:00Z",
    )


def test_keygen_mode_0600(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    old_umask = os.umask(0)
    try:
        status, out, _ = _keygen(capsys, key_path)
    finally:
        os.umask(old_umask)
    assert status == 0
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert out.splitlines()[0] == f"wrote {key_path} (mode 0600)"


def test_keygen_keeps_existing_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    _keygen(capsys, key_path)
    before = key_path.read_bytes()
    status, _, err = _keygen(capsys, key_path)
    assert status == 1
    assert err == f"error: {key_path} already exists; pass --force to replace the key in it\n"
    assert key_path.read_bytes() == before


def test_keygen_force_replaces_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    key_path.write_text("old", encoding="utf-8")
    key_path.chmod(0o644)
    status, _, _ = _keygen(capsys, key_path, "--force")
    assert status == 0
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert json.loads(key_path.read_bytes())["key_type"] == "pith_mirror_signing_key"


def test_signed_hint_merges_with_state(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_path: Path
) -> None:
    key_path = tmp_path / "node.key"
    _keygen(capsys, key_path)
    status, event_text, _ = _sign_hint(capsys, key_path)
    assert status == 0
    events_path = tmp_path / "hint.jsonl"
    events_path.write_text(event_text, encoding="utf-8")

    status, out, err = _run(capsys, "merge", str(state_path), str(events_path))
    assert status == 0, err
    merged = json.loads(out)
    event = json.loads(event_text)
    assert merged["current"]["mirror_hints"] == [
        {key: event[key] for key in ("event_id", "target", "created_at", "signer", "payload", "signature_b64")}
    ]
    assert merged["valid_event_count"] == 3
    assert merged["invalid_event_count"] == 0
    assert merged["state_sha256"] != PUBLISHED_STATE_SHA256


def test_signed_hint_changes_hash(capsys: pytest.CaptureFixture[str], tmp_path: Path, state_path: Path) -> None:
    key_path = tmp_path / "node.key"
    _keygen(capsys, key_path)
    _, event_text, _ = _sign_hint(capsys, key_path)
    events_path = tmp_path / "hint.jsonl"
    events_path.write_text(event_text, encoding="utf-8")

    status, out, _ = _run(capsys, "merge", "--hash-only", str(state_path), str(events_path))
    assert status == 0
    assert len(out.strip()) == 64
    assert out.strip() != PUBLISHED_STATE_SHA256


def test_sign_rejects_readable_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    _keygen(capsys, key_path)
    key_path.chmod(0o644)
    status, out, err = _sign_hint(capsys, key_path)
    assert status == 2
    assert out == ""
    assert err == f"error: key file {key_path} has mode 0644; run 'chmod 600 {key_path}' so only its owner can read it\n"


def test_sign_rejects_bad_payload(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    _keygen(capsys, key_path)
    status, out, err = _run(
        capsys, "sign", "--key", str(key_path), "--type", "mirror_hint", "--subject", SUBJECT,
        "--payload", '{"slot": "primary", "url": "ftp://mirror.example.org/"}',
    )
    assert status == 1
    assert out == ""
    assert err.startswith("error: cannot sign: payload.url: URL scheme 'ftp'")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o700 | 0o060])
def test_sign_rejects_group_or_other_bits(capsys: pytest.CaptureFixture[str], tmp_path: Path, mode: int) -> None:
    key_path = tmp_path / "node.key"
    _keygen(capsys, key_path)
    key_path.chmod(mode)
    status, _, err = _sign_hint(capsys, key_path)
    assert status == 2
    assert f"has mode {mode:04o}" in err


def test_sign_rejects_fifo_key(tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    os.mkfifo(key_path, 0o600)
    result = _run_bounded(
        "import sys\n"
        "from node.cli import main\n"
        f"sys.exit(main(['sign', '--key', {str(key_path)!r}, '--type', 'mirror_hint', "
        f"'--subject', {SUBJECT!r}, '--payload', {HINT_PAYLOAD!r}]))\n"
    )
    assert result.returncode == 2
    assert result.stderr == f"error: key file {key_path} is not a regular file\n"


def test_sign_missing_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_path = tmp_path / "missing.key"
    status, _, err = _sign_hint(capsys, key_path)
    assert status == 2
    assert err == f"error: cannot read key file {key_path}: No such file or directory\n"


def test_sign_rejects_tampered_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    _keygen(capsys, key_path)
    document = json.loads(key_path.read_bytes())
    document["public_key_hex"] = "31083004ca9192c2e1fc7f75831ec88f3a41189b3313d2d8bd2e05313e23c547"
    key_path.write_text(json.dumps(document), encoding="utf-8")
    status, _, err = _sign_hint(capsys, key_path)
    assert status == 2
    assert err == f"error: key file {key_path}: public_key_hex does not belong to seed_hex\n"


def test_jsonl_read_line_by_line(tmp_path: Path, records_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file is four times the document limit and each line is within it.
    # One line over the limit is reported, and the lines after it are read.
    lines = [line for line in records_path.read_bytes().splitlines() if line.strip()][:40]
    limit = max(len(line) for line in lines) + 1
    monkeypatch.setattr("node.offline.DOCUMENT_LIMITS", Limits(max_bytes=limit, max_depth=32, max_values=100_000))
    target = tmp_path / "records.jsonl"
    too_long = b'{"pith_number": "' + b"x" * (3 * limit) + b'"}'
    target.write_bytes(b"\n".join([*lines[:20], too_long, *lines[20:]]) + b"\n")
    assert target.stat().st_size > 4 * limit

    items = list(read_items(str(target)))

    assert len(items) == 41
    assert [item.label for item in items if item.error is not None] == [f"{target}:21"]
    assert str(items[20].error) == f"line exceeds the limit of {limit} bytes"
    assert [item.value for item in items if item.error is None] == [json.loads(line) for line in lines]


def test_jsonl_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.jsonl: cannot read: No such file or directory"):
        list(read_items(str(tmp_path / "missing.jsonl")))


def test_import_takes_no_listen_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # import starts no daemon, so --http would be silently ignored.
    with pytest.raises(SystemExit) as exit_info:
        main(["import", "--data-dir", str(tmp_path), "--http", "127.0.0.1:8080", str(tmp_path / "f.jsonl")])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --http" in capsys.readouterr().err


def test_import_reports_pending_events(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    assert _run(capsys, "keygen", "--out", str(key_path))[0] == 0
    events_path = tmp_path / "hint.json"
    status, signed, _ = _run(
        capsys, "sign", "--key", str(key_path), "--type", "mirror_hint", "--subject", "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY",
        "--payload", '{"slot": "primary", "url": "https://mirror.example.org/pith/"}',
    )
    assert status == 0
    events_path.write_text(signed, encoding="utf-8")
    status, out, _ = _run(capsys, "import", "--data-dir", str(tmp_path / "data"), str(events_path))
    assert status == 0
    assert "1 accepted, 0 duplicate, 0 rejected, 0 skipped" in out
    assert "1 of the accepted events wait as pending events: their records are not in the store" in out


@pytest.mark.parametrize("value", ["x", "-1", "65"])
def test_import_workers_value_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["import", "--data-dir", str(tmp_path), "--workers", value, str(tmp_path / "f.jsonl")])
    assert exit_info.value.code == 2
    assert f"argument --workers: expected a whole number from 0 to 64, got '{value}'" in capsys.readouterr().err
