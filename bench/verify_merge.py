"""Verify-and-merge throughput against the Ed25519 floor.

Run from the repository root::

    python -m bench.verify_merge --events 100000 --subjects 1000 --repeat 3
    python -m bench.verify_merge --smoke

Setup, which is not timed, builds one synthetic canonical record per subject
in the shape of the published records (arXiv source, ``metadata`` with
``submitted_at`` and the canonical hashes). It signs events of six types
about them with deterministic test keys and serializes each event as one
JSON line: the bytes a node receives. About one event in ten revises an
earlier event of the same signer and slot, which it supersedes. Signed
events are cached under ``bench-results/``, keyed by the parameters and
checked against a stored SHA-256 before use.

Each repetition times three passes over the same events, one after the
other, and the report gives the median wall and CPU time of each:

* crypto floor: for every event, the canonical JSON of its body (every field
  except ``event_id`` and ``signature_b64``), SHA-256 over
  ``ENVELOPE_DOMAIN`` + those bytes, and Ed25519 verification of the
  signature with ``cryptography``. Bodies, raw signatures and public key
  objects are prepared in setup, so this is only the work that checking an
  event id and a signature needs;
* pipeline: ``protocol.parse_json`` on every line, then ``protocol.merge``
  per subject, which validates every event and returns the state document;
* merge only: ``protocol.merge`` on values decoded in setup, to show how
  much of the pipeline's time is parsing.

Every signer key is loaded into the key cache of ``protocol.keys`` in setup
and keys are pre-loaded for the floor too, so neither side pays the one-time
cost of a new key. That cost is reported on its own line.

The target is pipeline time / floor time <= 1.5, judged on CPU time because
every pass runs on one thread and wall time on a shared machine also counts
the time other processes held the core.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import datetime
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import (
    ENVELOPE_DOMAIN,
    SigningKey,
    TrustConfig,
    build_event,
    decode_public_key_hex,
    default_trust,
    derive_aliases,
    format_timestamp,
    merge,
    parse_json,
    parse_timestamp,
    record_pith_number,
)

__all__ = [
    "BenchmarkError",
    "Measurement",
    "Workload",
    "load_or_build_workload",
    "main",
    "measure",
    "run_smoke",
]

# Bump when the generated events change, so that cached files are rebuilt.
GENERATOR_VERSION = 1

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / "bench-results"
TARGET_RATIO = 1.5
SMOKE_EVENTS = 2_000
SMOKE_SUBJECTS = 20
SMOKE_REPEAT = 2

# Signer populations by role: (label prefix, signer_type, number of keys).
# Together they stay far below the 4,096 entries of the key cache in
# protocol.keys, so no key is loaded twice during a run.
SIGNER_ROLES = (
    ("mirror", "mirror", 16),
    ("author", "author", 256),
    ("indexer", "citation_indexer", 64),
    ("archive", "storage_provider", 16),
    ("replicator", "replicator", 64),
    ("anchor", "timestamp_service", 4),
)

# Event types with the role that signs them and their share of new events in
# percent. The shares are an estimate of a busy registry, not a measurement.
EVENT_MIX = (
    ("citation_signature", "indexer", 35),
    ("storage_attestation", "archive", 15),
    ("author_attestation", "author", 15),
    ("replication_record", "replicator", 15),
    ("mirror_hint", "mirror", 10),
    ("timestamp_anchor", "anchor", 10),
)
SUPERSEDE_PERCENT = 10

_REGISTRY_EPOCH = parse_timestamp("2026-05-18T00:00:00Z")
_CATEGORIES = (
    "astro-ph.CO", "cond-mat.str-el", "cs.CL", "cs.CV", "cs.DC", "cs.DL", "cs.LG",
    "gr-qc", "hep-lat", "hep-th", "math.AG", "math.PR", "physics.comp-ph", "q-bio.NC", "stat.ML",
)
_OLD_STYLE_ARCHIVES = ("hep-th", "hep-lat", "gr-qc", "quant-ph", "astro-ph", "cond-mat")
_LICENSES = (
    "http://arxiv.org/licenses/nonexclusive-distrib/1.0/",
    "http://creativecommons.org/licenses/by/4.0/",
    "http://creativecommons.org/licenses/by-sa/4.0/",
)
_GIVEN_NAMES = ("Ada", "Chris", "Lena", "Quoc", "Samuel", "Pieter-Jan", "Mei", "Olu", "Ines", "Ravi")
_FAMILY_NAMES = ("Ying", "Kindermans", "Le", "Smith", "Novak", "Okafor", "Tanaka", "Moreau", "Iyer", "Berg")
_CITATION_CONTEXTS = (
    "cited in the introduction",
    "cited for the training schedule",
    "baseline in the experiments",
    "related work",
)


class BenchmarkError(Exception):
    """A benchmark run produced results that are not the expected ones."""


@dataclass(frozen=True)
class Signer:
    key: SigningKey
    key_id: str
    signer_id: str
    signer_type: str


@dataclass(frozen=True)
class Subject:
    """One record and the JSON lines of its events, as a node receives them."""

    pith_number: str
    record: dict[str, Any]
    aliases: list[dict[str, Any]]
    lines: bytes


@dataclass(frozen=True)
class Workload:
    parameters: dict[str, int]
    subjects: list[Subject]
    public_keys_hex: list[str]

    @property
    def event_count(self) -> int:
        return self.parameters["events"]


class SubjectResult(NamedTuple):
    """The merge outcome of one subject, from its state document."""

    pith_number: str
    state_sha256: str
    event_count: int
    valid_event_count: int
    invalid_event_count: int
    applied_event_count: int


@dataclass(frozen=True)
class PassTimes:
    """Wall-clock and CPU seconds of one pass, one entry per repetition.

    CPU time (``time.process_time``) counts only this process, so it is less
    disturbed than wall time when other processes share the cores.
    """

    wall: list[float]
    cpu: list[float]

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


@dataclass(frozen=True)
class Measurement:
    """Timings of the three passes, and the merge results they produced."""

    events: int
    subjects: int
    floor: PassTimes
    pipeline: PassTimes
    merge_only: PassTimes
    key_load_seconds_per_key: float
    results: list[SubjectResult]

    @property
    def pipeline_ratio(self) -> float:
        """Median wall time of the pipeline over median wall time of the floor."""
        return self.pipeline.median_wall / self.floor.median_wall

    @property
    def merge_only_ratio(self) -> float:
        """Median wall time of merge only over median wall time of the floor."""
        return self.merge_only.median_wall / self.floor.median_wall

    @property
    def pipeline_cpu_ratio(self) -> float:
        return self.pipeline.median_cpu / self.floor.median_cpu

    @property
    def merge_only_cpu_ratio(self) -> float:
        return self.merge_only.median_cpu / self.floor.median_cpu

    def totals(self) -> dict[str, int]:
        """Return the merge counts summed over every subject."""
        return {
            "event_count": sum(row.event_count for row in self.results),
            "valid_event_count": sum(row.valid_event_count for row in self.results),
            "invalid_event_count": sum(row.invalid_event_count for row in self.results),
            "applied_event_count": sum(row.applied_event_count for row in self.results),
        }

    def states_sha256(self) -> str:
        """Return SHA-256 over every subject's Pith number and state_sha256, in subject order."""
        text = "".join(f"{row.pith_number} {row.state_sha256}\n" for row in self.results)
        return hashlib.sha256(text.encode("ascii")).hexdigest()


# ---------------------------------------------------------------------------
# Workload generation (setup, not timed)
# ---------------------------------------------------------------------------


def _make_signers(seed: int) -> dict[str, list[Signer]]:
    signers: dict[str, list[Signer]] = {}
    for role, signer_type, count in SIGNER_ROLES:
        signers[role] = [
            Signer(
                key=SigningKey.from_label(f"bench-verify-merge-{seed}-{role}-{number}"),
                key_id=f"{role}-{number}-2026",
                signer_id=f"{role}{number}.example.org",
                signer_type=signer_type,
            )
            for number in range(count)
        ]
    return signers


def _arxiv_source(rng: random.Random, index: int) -> tuple[str, str]:
    """Return an arXiv identifier and a ``submitted_at`` in the month it names."""
    if rng.randrange(20) == 0:
        year = rng.randrange(1992, 2007)
        month = rng.randrange(1, 13)
        archive = rng.choice(_OLD_STYLE_ARCHIVES)
        identifier = f"{archive}/{year % 100:02d}{month:02d}{index % 1000:03d}"
    else:
        year = rng.randrange(2015, 2026)
        month = rng.randrange(1, 13)
        identifier = f"{year % 100:02d}{month:02d}.{10000 + index % 90000:05d}"
    day = rng.randrange(1, 29)
    submitted_at = (
        f"{year:04d}-{month:02d}-{day:02d}T"
        f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"
    )
    return identifier, submitted_at


def _make_record(rng: random.Random, seed: int, index: int) -> dict[str, Any]:
    identifier, submitted_at = _arxiv_source(rng, index)
    categories = sorted(rng.sample(_CATEGORIES, rng.randrange(1, 4)))
    return {
        "metadata": {
            "abstract_canon_sha256": hashlib.sha256(f"abstract {seed} {index}".encode()).hexdigest(),
            "cross_cats_sorted": categories[1:],
            "license": rng.choice(_LICENSES),
            "primary_cat": categories[0],
            "submitted_at": submitted_at,
            "title_canon_sha256": hashlib.sha256(f"title {seed} {index}".encode()).hexdigest(),
        },
        "schema_version": "1.0",
        "source": {"id": identifier, "kind": "arxiv", "version": rng.randrange(1, 5)},
    }


def _make_aliases(record: dict[str, Any], digest: str, created_at: str) -> list[dict[str, Any]]:
    derived = derive_aliases(record, digest)
    return [
        {"alias_kind": kind, "alias_value": derived[kind], "created_at": created_at}
        for kind in sorted(derived)
    ]


def _orcid(rng: random.Random) -> str:
    digits = "".join(str(rng.randrange(10)) for _ in range(15))
    # ISO 7064 MOD 11-2, the ORCID check digit.
    total = 0
    for digit in digits:
        total = (total + int(digit)) * 2
    check = (12 - total % 11) % 11
    full = digits + ("X" if check == 10 else str(check))
    return "-".join(full[start : start + 4] for start in range(0, 16, 4))


def _new_payload(
    rng: random.Random, event_type: str, signer_number: int, subject: dict[str, Any], others: Sequence[str]
) -> dict[str, Any]:
    suffix = subject["pith_number"].rsplit(":", 1)[1]
    if event_type == "citation_signature":
        payload: dict[str, Any] = {"cites_pith_number": rng.choice(others)}
        if rng.randrange(10) < 7:
            payload["context"] = rng.choice(_CITATION_CONTEXTS)
        return payload
    if event_type == "storage_attestation":
        name = rng.choice(("paper.pdf", "source.tar.gz", "data.zip"))
        media_type = {"paper.pdf": "application/pdf", "source.tar.gz": "application/gzip"}.get(name, "application/zip")
        return {
            "url": f"https://archive{signer_number}.example.org/pith/{suffix}/{name}",
            "content_sha256": rng.randbytes(32).hex(),
            "size_bytes": rng.randrange(50_000, 20_000_000),
            "media_type": media_type,
        }
    if event_type == "author_attestation":
        payload = {
            "author_name": f"{rng.choice(_GIVEN_NAMES)} {rng.choice(_FAMILY_NAMES)}",
            "statement": "authored" if rng.randrange(20) else "not_authored",
        }
        if rng.randrange(10) < 8:
            payload["orcid"] = _orcid(rng)
        return payload
    if event_type == "replication_record":
        replication_id = f"rep-{suffix[:8].lower()}-{rng.randrange(10**6):06d}"
        payload = {
            "replication_id": replication_id,
            "outcome": rng.choice(("reproduced", "partially_reproduced", "not_reproduced")),
            "report_url": f"https://replicator{signer_number}.example.org/reports/{replication_id}",
        }
        if rng.randrange(10) < 7:
            payload["report_sha256"] = rng.randbytes(32).hex()
        return payload
    if event_type == "mirror_hint":
        payload = {
            "slot": rng.choice(("primary", "secondary", "archive")),
            "url": f"https://mirror{signer_number}.example.org/pith/",
        }
        if rng.randrange(2):
            payload["gossip"] = f"mirror{signer_number}.example.org:7400"
        return payload
    if event_type == "timestamp_anchor":
        # 200 to 700 bytes: an estimate of the size of an OpenTimestamps proof.
        return {
            "anchor_type": rng.choice(("opentimestamps", "rfc3161")),
            "anchored_sha256": subject["canonical_sha256"],
            "proof_b64": base64.b64encode(rng.randbytes(rng.randrange(200, 700))).decode("ascii"),
        }
    raise AssertionError(f"no payload generator for {event_type}")


def _revised_payload(rng: random.Random, event_type: str, old: dict[str, Any]) -> dict[str, Any]:
    """Return a payload for the same slot as ``old`` with other content, which supersedes it."""
    payload = dict(old)
    if event_type == "citation_signature":
        payload["context"] = rng.choice(_CITATION_CONTEXTS) + " (revised)"
    elif event_type == "storage_attestation":
        payload["content_sha256"] = rng.randbytes(32).hex()
        payload["size_bytes"] = rng.randrange(50_000, 20_000_000)
    elif event_type == "author_attestation":
        payload["statement"] = "not_authored" if old["statement"] == "authored" else "authored"
    elif event_type == "replication_record":
        payload["outcome"] = "reproduced" if old["outcome"] != "reproduced" else "partially_reproduced"
        payload["report_sha256"] = rng.randbytes(32).hex()
    elif event_type == "mirror_hint":
        payload["url"] = old["url"] + "v2/"
    elif event_type == "timestamp_anchor":
        payload["proof_b64"] = base64.b64encode(rng.randbytes(rng.randrange(200, 700))).decode("ascii")
    else:
        raise AssertionError(f"no revision for {event_type}")
    return payload


def _subject_events(
    rng: random.Random,
    subject: dict[str, Any],
    count: int,
    start: int,
    signers: dict[str, list[Signer]],
    others: Sequence[str],
) -> list[bytes]:
    types = [event_type for event_type, _, _ in EVENT_MIX]
    weights = [weight for _, _, weight in EVENT_MIX]
    roles = {event_type: role for event_type, role, _ in EVENT_MIX}
    history: list[tuple[str, Signer, dict[str, Any]]] = []
    lines = []
    for number in range(count):
        # Strictly increasing times, so no two events of one signer and slot
        # share a created_at and the workload has no equivocations.
        created_at = format_timestamp(start + number * 60 + rng.randrange(60))
        if history and rng.randrange(100) < SUPERSEDE_PERCENT:
            event_type, signer, old = rng.choice(history)
            payload = _revised_payload(rng, event_type, old)
        else:
            event_type = rng.choices(types, weights)[0]
            pool = signers[roles[event_type]]
            signer_number = rng.randrange(len(pool))
            signer = pool[signer_number]
            payload = _new_payload(rng, event_type, signer_number, subject, others)
        event = build_event(
            signer.key,
            event_type=event_type,
            subject=subject["pith_number"],
            payload=payload,
            created_at=created_at,
            key_id=signer.key_id,
            signer_id=signer.signer_id,
            signer_type=signer.signer_type,
        )
        history.append((event_type, signer, payload))
        lines.append(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return lines


def _make_subjects(seed: int, subject_count: int) -> list[dict[str, Any]]:
    rng = random.Random(f"records {seed}")
    subjects = []
    for index in range(subject_count):
        record = _make_record(rng, seed, index)
        pith_number, digest = record_pith_number(record)
        created_at = format_timestamp(_REGISTRY_EPOCH + index * 60)
        subjects.append(
            {
                "pith_number": pith_number,
                "canonical_sha256": digest,
                "record": record,
                "aliases": _make_aliases(record, digest, created_at),
            }
        )
    return subjects


def _events_per_subject(events: int, subjects: int) -> list[int]:
    base, extra = divmod(events, subjects)
    return [base + 1 if index < extra else base for index in range(subjects)]


def _validate_parameters(events: int, subjects: int) -> None:
    if subjects < 2:
        raise BenchmarkError(f"--subjects must be at least 2 (got {subjects}), because events cite other subjects")
    if events < subjects:
        raise BenchmarkError(f"--events ({events}) must be at least --subjects ({subjects})")


def _assemble(parameters: dict[str, int], subjects: list[dict[str, Any]], lines: list[bytes]) -> Workload:
    counts = _events_per_subject(parameters["events"], parameters["subjects"])
    assembled = []
    position = 0
    for subject, count in zip(subjects, counts, strict=True):
        chunk = lines[position : position + count]
        position += count
        assembled.append(
            Subject(
                pith_number=subject["pith_number"],
                record=subject["record"],
                aliases=subject["aliases"],
                lines=b"\n".join(chunk) + b"\n",
            )
        )
    signers = _make_signers(parameters["seed"])
    keys = [signer.key.public_key_hex for pool in signers.values() for signer in pool]
    return Workload(parameters=parameters, subjects=assembled, public_keys_hex=keys)


def _sign_all(parameters: dict[str, int], subjects: list[dict[str, Any]]) -> list[bytes]:
    """Generate and sign every event and return their JSON lines in subject order.

    The lines depend only on the parameters: keys, records, payloads and
    times come from seeded generators, and Ed25519 signatures are
    deterministic.
    """
    seed = parameters["seed"]
    signers = _make_signers(seed)
    counts = _events_per_subject(parameters["events"], parameters["subjects"])
    numbers = [subject["pith_number"] for subject in subjects]
    lines: list[bytes] = []
    for index, (subject, count) in enumerate(zip(subjects, counts, strict=True)):
        rng = random.Random(f"events {seed} {index}")
        others = numbers[:index] + numbers[index + 1 :]
        start = _REGISTRY_EPOCH + 86_400 + index * 7
        lines.extend(_subject_events(rng, subject, count, start, signers, others))
    return lines


# ---------------------------------------------------------------------------
# Cache of signed events
# ---------------------------------------------------------------------------


def _cache_header(parameters: dict[str, int]) -> dict[str, Any]:
    return {
        "benchmark": "verify_merge",
        "generator_version": GENERATOR_VERSION,
        "envelope_domain": ENVELOPE_DOMAIN.decode("ascii"),
        "parameters": parameters,
    }


def _cache_path(cache_dir: Path, parameters: dict[str, int]) -> Path:
    key = hashlib.sha256(json.dumps(_cache_header(parameters), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"verify-merge-{parameters['events']}e-{parameters['subjects']}s-{key}.jsonl"


def _read_cache(path: Path, parameters: dict[str, int]) -> list[bytes] | None:
    """Return the cached event lines, or None when the file is missing, stale or damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    header_line, _, body = data.partition(b"\n")
    try:
        header = json.loads(header_line)
    except ValueError:
        return None
    expected = {**_cache_header(parameters), "events_sha256": hashlib.sha256(body).hexdigest()}
    if header != expected:
        return None
    lines = body.split(b"\n")[:-1]
    if len(lines) != parameters["events"]:
        return None
    return lines


def _write_cache(path: Path, parameters: dict[str, int], lines: list[bytes]) -> None:
    body = b"".join(line + b"\n" for line in lines)
    header = {**_cache_header(parameters), "events_sha256": hashlib.sha256(body).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(json.dumps(header, sort_keys=True).encode() + b"\n" + body)
    os.replace(temporary, path)


def load_or_build_workload(
    events: int, subjects: int, seed: int = 1, cache_dir: Path | None = DEFAULT_CACHE_DIR
) -> tuple[Workload, str]:
    """Return the workload and a note on where its events came from.

    The note is "cache PATH", "signed" or "signed, cached in PATH". With
    ``cache_dir`` None nothing is read or written.
    """
    _validate_parameters(events, subjects)
    parameters = {"events": events, "subjects": subjects, "seed": seed}
    subjects_data = _make_subjects(seed, subjects)
    if cache_dir is not None:
        path = _cache_path(cache_dir, parameters)
        lines = _read_cache(path, parameters)
        if lines is not None:
            return _assemble(parameters, subjects_data, lines), f"cache {path}"
    lines = _sign_all(parameters, subjects_data)
    if cache_dir is None:
        return _assemble(parameters, subjects_data, lines), "signed"
    _write_cache(path, parameters, lines)
    return _assemble(parameters, subjects_data, lines), f"signed, cached in {path}"


# ---------------------------------------------------------------------------
# The three timed passes
# ---------------------------------------------------------------------------

_BODY_FIELDS = ("event_type", "subject_pith_number", "target", "created_at", "signer", "payload")

FloorItem = tuple[dict[str, Any], bytes, Ed25519PublicKey]


def _floor_items(decoded: list[list[dict[str, Any]]]) -> list[FloorItem]:
    keys: dict[str, Ed25519PublicKey] = {}
    items = []
    for events in decoded:
        for event in events:
            key_hex = event["signer"]["public_key_hex"]
            key = keys.get(key_hex)
            if key is None:
                key = keys[key_hex] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex))
            body = {field: event[field] for field in _BODY_FIELDS}
            items.append((body, base64.b64decode(event["signature_b64"]), key))
    return items


def run_floor(items: list[FloorItem]) -> int:
    """Hash every event body canonically, verify its signature and return the event count.

    Raises:
        cryptography.exceptions.InvalidSignature: a signature does not verify.
    """
    dumps = json.dumps
    sha256 = hashlib.sha256
    for body, signature, key in items:
        encoded = dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        key.verify(signature, sha256(ENVELOPE_DOMAIN + encoded).digest())
    return len(items)


def _result_row(state: dict[str, Any]) -> SubjectResult:
    return SubjectResult(
        pith_number=state["pith_number"],
        state_sha256=state["state_sha256"],
        event_count=state["event_count"],
        valid_event_count=state["valid_event_count"],
        invalid_event_count=state["invalid_event_count"],
        applied_event_count=len(state["applied_event_ids"]),
    )


def run_pipeline(subjects: list[Subject], trust: TrustConfig) -> list[SubjectResult]:
    """Strictly decode every JSON line, merge each subject and return one row per subject."""
    results = []
    for subject in subjects:
        events = [parse_json(line) for line in subject.lines.splitlines()]
        results.append(_result_row(merge(subject.record, subject.aliases, events, trust)))
    return results


def run_merge_only(
    subjects: list[Subject], decoded: list[list[dict[str, Any]]], trust: TrustConfig
) -> list[SubjectResult]:
    """Merge each subject from events decoded in setup and return one row per subject."""
    results = []
    for subject, events in zip(subjects, decoded, strict=True):
        results.append(_result_row(merge(subject.record, subject.aliases, events, trust)))
    return results


def _timed(function: Callable[[], Any], times: PassTimes) -> Any:
    """Call ``function``, append its wall and CPU seconds to ``times`` and return its value."""
    # Collect the previous pass's garbage outside the timed region.
    gc.collect()
    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    value = function()
    times.cpu.append(time.process_time() - cpu_start)
    times.wall.append(time.perf_counter() - wall_start)
    return value


def _load_signer_keys(workload: Workload) -> float:
    """Fill the key cache of protocol.keys with every signer key and return the seconds per key."""
    start = time.perf_counter()
    for key_hex in workload.public_keys_hex:
        decode_public_key_hex(key_hex)
    return (time.perf_counter() - start) / len(workload.public_keys_hex)


def _check_results(workload: Workload, results: list[SubjectResult], reference: list[SubjectResult] | None) -> None:
    valid = sum(row.valid_event_count for row in results)
    invalid = sum(row.invalid_event_count for row in results)
    if invalid or valid != workload.event_count:
        raise BenchmarkError(
            f"expected {workload.event_count} valid events and none invalid, got {valid} valid and "
            f"{invalid} invalid; if the event format changed, rerun with --no-cache or delete bench-results/"
        )
    if reference is not None and results != reference:
        raise BenchmarkError("two passes over the same events produced different states")


def measure(workload: Workload, repeat: int, trust: TrustConfig | None = None) -> Measurement:
    """Time the floor, the pipeline and merge only, ``repeat`` times each, interleaved.

    Raises:
        BenchmarkError: a pass found an invalid event, or two passes
            produced different states.
    """
    if repeat < 1:
        raise BenchmarkError(f"--repeat must be at least 1 (got {repeat})")
    trust = trust or default_trust()
    key_load = _load_signer_keys(workload)
    decoded = [[parse_json(line) for line in subject.lines.splitlines()] for subject in workload.subjects]
    floor_items = _floor_items(decoded)

    floor = PassTimes([], [])
    pipeline = PassTimes([], [])
    merge_only = PassTimes([], [])
    reference: list[SubjectResult] | None = None
    for _ in range(repeat):
        verified = _timed(lambda: run_floor(floor_items), floor)
        if verified != workload.event_count:
            raise BenchmarkError(f"the floor verified {verified} events, expected {workload.event_count}")

        results = _timed(lambda: run_pipeline(workload.subjects, trust), pipeline)
        _check_results(workload, results, reference)
        reference = results

        results = _timed(lambda: run_merge_only(workload.subjects, decoded, trust), merge_only)
        _check_results(workload, results, reference)

    assert reference is not None
    return Measurement(
        events=workload.event_count,
        subjects=len(workload.subjects),
        floor=floor,
        pipeline=pipeline,
        merge_only=merge_only,
        key_load_seconds_per_key=key_load,
        results=reference,
    )


def run_smoke() -> Measurement:
    """Run the smoke configuration (2,000 events, 20 subjects, 2 repetitions) without the cache."""
    workload, _ = load_or_build_workload(SMOKE_EVENTS, SMOKE_SUBJECTS, cache_dir=None)
    return measure(workload, SMOKE_REPEAT)


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def describe_machine() -> dict[str, str]:
    """Return the facts a benchmark record needs about this machine and its software."""
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return {
        "cpus": str(cpus),
        "cpu_model": cpu_model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cryptography": f"{cryptography.__version__} ({openssl_backend.openssl_version_text()})",
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
    }


_PASS_NAMES = (
    "crypto floor (canonical hash + Ed25519 verify)",
    "pipeline (parse_json + merge)",
    "merge only (decoded in setup)",
)


def _passes(measurement: Measurement) -> list[tuple[str, PassTimes, float, float]]:
    """Return (name, times, wall ratio, CPU ratio) for each pass."""
    return [
        (_PASS_NAMES[0], measurement.floor, 1.0, 1.0),
        (_PASS_NAMES[1], measurement.pipeline, measurement.pipeline_ratio, measurement.pipeline_cpu_ratio),
        (_PASS_NAMES[2], measurement.merge_only, measurement.merge_only_ratio, measurement.merge_only_cpu_ratio),
    ]


def _verdict(measurement: Measurement) -> str:
    # The verdict uses CPU time: every pass runs on one thread, and on a
    # shared machine the wall time of a pass also counts the time other
    # processes held the core.
    return "met" if measurement.pipeline_cpu_ratio <= TARGET_RATIO else "not met"


def _contention_note(measurement: Measurement) -> str | None:
    """Return a warning when some repetition of a pass took more than 1.1 times its CPU time in wall time."""
    worst = max(
        wall / cpu
        for _, times, _, _ in _passes(measurement)
        for wall, cpu in zip(times.wall, times.cpu, strict=True)
    )
    if worst <= 1.1:
        return None
    return (
        f"note: a repetition took {worst:.2f} times its CPU time in wall time, so other processes "
        "competed for the CPU; compare CPU times"
    )


def _each_repetition(times: PassTimes) -> str:
    return ", ".join(f"{wall:.2f} / {cpu:.2f}" for wall, cpu in zip(times.wall, times.cpu, strict=True))


def format_table(measurement: Measurement) -> str:
    """Return the plain-text report of a measurement."""
    lines = [
        f"{'pass':48} {'wall s':>7} {'events/s':>9} {'ratio':>6} {'CPU s':>7} {'CPU ratio':>9}"
        "   each repetition, wall s / CPU s"
    ]
    for name, times, ratio, cpu_ratio in _passes(measurement):
        lines.append(
            f"{name:48} {times.median_wall:7.2f} {measurement.events / times.median_wall:9,.0f} {ratio:6.2f} "
            f"{times.median_cpu:7.2f} {cpu_ratio:9.2f}   {_each_repetition(times)}"
        )
    totals = measurement.totals()
    lines.append("")
    lines.append(
        f"{measurement.events:,} events over {measurement.subjects:,} subjects: "
        f"{totals['valid_event_count']:,} valid, {totals['invalid_event_count']:,} invalid, "
        f"{totals['applied_event_count']:,} in effect after supersedes"
    )
    lines.append(f"loading a new signer key (setup): {measurement.key_load_seconds_per_key * 1000:.2f} ms per key")
    lines.append(f"SHA-256 over all state hashes: {measurement.states_sha256()}")
    lines.append(
        f"target pipeline / floor <= {TARGET_RATIO} (CPU time): {_verdict(measurement)} "
        f"({measurement.pipeline_cpu_ratio:.2f} by CPU time, {measurement.pipeline_ratio:.2f} by wall time)"
    )
    note = _contention_note(measurement)
    if note:
        lines.append(note)
    return "\n".join(lines)


def format_markdown(measurement: Measurement, command: str, machine: dict[str, str]) -> str:
    """Return a markdown record of a measurement for docs/benchmarks.md."""
    lines = [
        f"- Command: `{command}`",
        f"- Date: {machine['date']}",
        f"- Machine: {machine['cpus']} CPUs (`nproc`), {machine['cpu_model']}, "
        f"{machine['python']}, cryptography {machine['cryptography']}",
        "",
        "| pass | median wall s | events/second | time / floor | median CPU s | CPU time / floor "
        "| each repetition, wall s / CPU s |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, times, ratio, cpu_ratio in _passes(measurement):
        lines.append(
            f"| {name} | {times.median_wall:.2f} | {measurement.events / times.median_wall:,.0f} | {ratio:.2f} "
            f"| {times.median_cpu:.2f} | {cpu_ratio:.2f} | {_each_repetition(times)} |"
        )
    lines.append("")
    lines.append(
        f"Target pipeline / floor <= {TARGET_RATIO} by CPU time: {_verdict(measurement)} "
        f"(pipeline {measurement.pipeline_cpu_ratio:.2f}, merge only {measurement.merge_only_cpu_ratio:.2f}; "
        f"by wall time {measurement.pipeline_ratio:.2f} and {measurement.merge_only_ratio:.2f})."
    )
    note = _contention_note(measurement)
    if note:
        lines.append("")
        lines.append(note[0].upper() + note[1:] + ".")
    return "\n".join(lines)


def _profile_pipeline(workload: Workload, limit: int) -> str:
    trust = default_trust()
    profiler = cProfile.Profile()
    profiler.enable()
    run_pipeline(workload.subjects, trust)
    profiler.disable()
    output = io.StringIO()
    stats = pstats.Stats(profiler, stream=output)
    stats.sort_stats("tottime").print_stats(limit)
    return output.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.verify_merge",
        description="Measure verify-and-merge throughput against the Ed25519 floor.",
    )
    parser.add_argument("--events", type=int, default=100_000, help="number of signed events (default 100000)")
    parser.add_argument("--subjects", type=int, default=1_000, help="number of subjects (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions of each pass (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated workload (default 1)")
    parser.add_argument(
        "--smoke", action="store_true",
        help=f"run {SMOKE_EVENTS} events over {SMOKE_SUBJECTS} subjects, {SMOKE_REPEAT} repetitions, without the cache",
    )
    parser.add_argument("--no-cache", action="store_true", help="sign the events anew and write no cache file")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="directory of the signed-event cache (default bench-results/)"
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="after measuring, profile one pipeline pass with cProfile and print the top N functions by own time",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 when every event was valid and every pass agreed, else 1."""
    args = build_parser().parse_args(argv)
    if args.smoke:
        events, subjects, repeat, cache_dir = SMOKE_EVENTS, SMOKE_SUBJECTS, SMOKE_REPEAT, None
        command = "python -m bench.verify_merge --smoke"
    else:
        events, subjects, repeat = args.events, args.subjects, args.repeat
        cache_dir = None if args.no_cache else args.cache_dir
        command = f"python -m bench.verify_merge --events {events} --subjects {subjects} --repeat {repeat}"

    try:
        start = time.perf_counter()
        workload, origin = load_or_build_workload(events, subjects, args.seed, cache_dir)
        print(f"setup: {events:,} events from {origin} in {time.perf_counter() - start:.1f} s", flush=True)
        measurement = measure(workload, repeat)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    print()
    print(format_table(measurement))
    print()
    print(format_markdown(measurement, command, describe_machine()))
    if args.profile:
        print()
        print(_profile_pipeline(workload, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
