"""Tests of ``pith-mirror import``: files, HTTP mirrors, the printed counts and the exit status.

A few tests run the installed console script as a process. The others
call ``node.cli.main`` in this process, because that runs the same code
without the start-up time of a new interpreter.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import SUBJECT, signed_event, valid_payload
from http_servers import BUNDLE_BYTES, OTHER_SUFFIX, SUFFIX, MirrorServer
from node.cli import main
from node.demo import fixture_path
from node.store import Store
from protocol import canonical_sha256, read_document
from test_daemon import DaemonProcess

SCRIPT = Path(sysconfig.get_path("scripts")) / "pith-mirror"
RECORDS = str(fixture_path("records.jsonl"))
STATE = str(fixture_path(f"state-{SUFFIX}.json"))
PUBLISHED_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"
# Let the importer fetch from the test servers on 127.0.0.1 over http.
LOOPBACK_HTTP = {"PITH_MIRROR_ALLOW_LOOPBACK_ADDRESSES": "1", "PITH_MIRROR_ALLOW_HTTP_MIRRORS": "1"}


def run_import(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pith-mirror import`` with only the given PITH_MIRROR_* variables set."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("PITH_MIRROR_")}
    return subprocess.run(
        [str(SCRIPT), "import", "--data-dir", str(data_dir), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


ImportRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> ImportRun:
    """Return a function like ``run_import`` that calls ``node.cli.main`` in this process."""

    def run(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as patch:
            for key in os.environ:
                if key.startswith("PITH_MIRROR_"):
                    patch.delenv(key)
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            # main() sets the root logger's level from the configuration.
            patch.setattr(logging.getLogger(), "level", logging.getLogger().level)
            capsys.readouterr()
            code = main(["import", "--data-dir", str(data_dir), *args])
            output = capsys.readouterr()
        return subprocess.CompletedProcess(["pith-mirror", "import"], code, output.out, output.err)

    return run


def summary_line(data_dir: Path, accepted: int, duplicate: int, rejected: int, skipped: int) -> str:
    return f"imported into {data_dir}: {accepted} accepted, {duplicate} duplicate, {rejected} rejected, {skipped} skipped\n"


def stored_state(data_dir: Path) -> bytes | None:
    with Store(data_dir, read_only=True) as store:
        return store.get_state_bytes(SUBJECT)


def forged_bundle_file(tmp_path: Path) -> Path:
    """Write the published bundle plus a mirror hint whose payload changed after signing."""
    bundle = json.loads(BUNDLE_BYTES)
    forged = signed_event("import-forger", "mirror_hint", valid_payload("mirror_hint"))
    forged["payload"]["url"] = "https://attacker.example.org/pith/"
    bundle["events"].append(forged)
    path = tmp_path / "forged-bundle.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return path


# Files


def test_records_and_state_counts(tmp_path: Path) -> None:
    # records.jsonl has 50 lines, 20 of them with a canonical record; the
    # state adds its record and its 2 events.
    result = run_import(tmp_path, RECORDS, STATE)

    assert result.stdout == summary_line(tmp_path, 23, 0, 0, 30)
    assert result.returncode == 0


def test_second_import_is_duplicates(tmp_path: Path, cli: ImportRun) -> None:
    cli(tmp_path, RECORDS, STATE)

    result = cli(tmp_path, RECORDS, STATE)

    assert result.stdout == summary_line(tmp_path, 0, 23, 0, 30)
    assert result.returncode == 0


def test_imported_state_is_published(tmp_path: Path, cli: ImportRun) -> None:
    cli(tmp_path, RECORDS, STATE)

    stored = stored_state(tmp_path)

    assert stored == fixture_path(f"state-{SUFFIX}.json").read_bytes()


def test_imported_records_verify(tmp_path: Path, cli: ImportRun) -> None:
    cli(tmp_path, RECORDS, STATE)

    with Store(tmp_path, read_only=True) as store:
        stats = store.stats()
        mismatched = store.verify_all()

    assert stats.records == 21
    assert stats.events == 2
    assert mismatched == []


def test_record_lines_alone(tmp_path: Path, cli: ImportRun) -> None:
    result = cli(tmp_path, RECORDS)

    assert result.stdout == summary_line(tmp_path, 20, 0, 0, 30)
    assert result.returncode == 0


def test_forged_event_is_rejected(tmp_path: Path) -> None:
    result = run_import(tmp_path / "store", str(forged_bundle_file(tmp_path)))
    lines = result.stdout.splitlines()

    assert lines[0] + "\n" == summary_line(tmp_path / "store", 3, 0, 1, 0)
    assert lines[1].startswith("  rejected 1 x event_id_mismatch: ")
    assert len(lines) == 2
    assert result.returncode == 1


def test_forged_event_is_not_stored(tmp_path: Path, cli: ImportRun) -> None:
    cli(tmp_path / "store", str(forged_bundle_file(tmp_path)))

    stored = read_document(stored_state(tmp_path / "store") or b"null")

    assert stored["state_sha256"] == PUBLISHED_STATE_SHA256
    assert stored["current"]["mirror_hints"] == []


def test_invalid_json_file_is_rejected(tmp_path: Path, cli: ImportRun) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'{"bundle_type": ')

    result = cli(tmp_path / "store", str(path))

    assert result.stdout.splitlines()[0] + "\n" == summary_line(tmp_path / "store", 0, 0, 1, 0)
    assert result.stdout.splitlines()[1].startswith("  rejected 1 x invalid_document: ")
    assert result.returncode == 1


def test_missing_file_exits_2(tmp_path: Path, cli: ImportRun) -> None:
    missing = tmp_path / "missing.json"

    result = cli(tmp_path / "store", str(missing), STATE)

    assert result.stdout.splitlines()[0] + "\n" == summary_line(tmp_path / "store", 3, 0, 0, 0)
    assert result.stdout.splitlines()[1].startswith(f"  failed source {missing}: ")
    assert result.returncode == 2


# HTTP mirrors


def test_mirror_url_import_stores_state(tmp_path: Path) -> None:
    with MirrorServer() as server:
        result = run_import(tmp_path, "--suffix", SUFFIX, server.base_url, env=LOOPBACK_HTTP)
        bundle_requests = server.count(f"/pith/{SUFFIX}/bundle.json")

    stored = read_document(stored_state(tmp_path) or b"null")

    assert result.stdout == summary_line(tmp_path, 3, 0, 0, 0)
    assert result.returncode == 0
    assert bundle_requests == 1
    assert stored["state_sha256"] == PUBLISHED_STATE_SHA256
    assert canonical_sha256(stored["current"]["canonical_record"]) == stored["current"]["record_created"]["payload"]["canonical_sha256"]


def test_mirror_url_twice_is_duplicates(tmp_path: Path, cli: ImportRun) -> None:
    with MirrorServer() as server:
        cli(tmp_path, "--suffix", SUFFIX, server.base_url, env=LOOPBACK_HTTP)
        result = cli(tmp_path, "--suffix", SUFFIX, server.base_url + "/pith-mirrors.json", env=LOOPBACK_HTTP)

    assert result.stdout == summary_line(tmp_path, 0, 3, 0, 0)
    assert result.returncode == 0


def test_document_url_import(tmp_path: Path, cli: ImportRun) -> None:
    with MirrorServer() as server:
        result = cli(tmp_path, f"{server.base_url}/pith/{SUFFIX}/state.json", env=LOOPBACK_HTTP)

    assert result.stdout == summary_line(tmp_path, 3, 0, 0, 0)
    assert stored_state(tmp_path) == fixture_path(f"state-{SUFFIX}.json").read_bytes()


def test_suffixes_from_file(tmp_path: Path, cli: ImportRun) -> None:
    # Lines may hold a suffix, a Pith number or a whole record line.
    listing = tmp_path / "suffixes.txt"
    listing.write_text(f"{SUBJECT}\n{SUFFIX}\n", encoding="utf-8")

    with MirrorServer() as server:
        result = cli(tmp_path / "store", "--suffixes-from", str(listing), server.base_url, env=LOOPBACK_HTTP)

    assert result.stdout == summary_line(tmp_path / "store", 3, 0, 0, 0)


def test_unknown_record_is_fetch_failure(tmp_path: Path, cli: ImportRun) -> None:
    with MirrorServer() as server:
        result = cli(tmp_path, "--suffix", OTHER_SUFFIX, "--suffix", SUFFIX, server.base_url, env=LOOPBACK_HTTP)

    lines = result.stdout.splitlines()
    assert lines[0] + "\n" == summary_line(tmp_path, 3, 0, 1, 0)
    assert lines[1].startswith("  rejected 1 x fetch_failed: ")
    assert f"/pith/{OTHER_SUFFIX}/state.json" in lines[1]
    assert result.returncode == 1


def test_loopback_refused_by_default(tmp_path: Path, cli: ImportRun) -> None:
    with MirrorServer() as server:
        result = cli(tmp_path, "--suffix", SUFFIX, server.base_url, env={"PITH_MIRROR_ALLOW_HTTP_MIRRORS": "1"})
        requests = server.requests

    assert result.stdout.splitlines()[0] + "\n" == summary_line(tmp_path, 0, 0, 0, 0)
    assert "rejected by the dial policy" in result.stdout
    assert requests == []
    assert result.returncode == 2


def test_mirror_url_needs_suffixes(tmp_path: Path, cli: ImportRun) -> None:
    with MirrorServer() as server:
        result = cli(tmp_path, server.base_url, env=LOOPBACK_HTTP)
        requests = server.requests

    assert "pass --suffix or --suffixes-from" in result.stdout
    assert requests == []
    assert result.returncode == 2


def test_import_from_running_daemon(tmp_path: Path, cli: ImportRun) -> None:
    # One mirror imports from another through its manifest and bundle paths.
    source_dir = tmp_path / "source"
    cli(source_dir, RECORDS, STATE)

    with DaemonProcess(source_dir) as daemon:
        result = cli(tmp_path / "copy", "--suffix", SUFFIX, "--suffix", "KFJCOGO7YT64GKAVQGHGNND6W4", daemon.url, env=LOOPBACK_HTTP)

    assert result.stdout == summary_line(tmp_path / "copy", 4, 0, 0, 0)
    assert stored_state(tmp_path / "copy") == fixture_path(f"state-{SUFFIX}.json").read_bytes()
