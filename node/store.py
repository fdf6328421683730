"""The durable store of the mirror daemon: records, aliases, events and merged states in SQLite.

Files
-----
``store.sqlite3`` in the data directory (``default_data_dir()`` unless the
operator names another), with SQLite's ``-wal`` and ``-shm`` files beside
it, and ``store.lock``, which a read-write ``Store`` locks with ``flock`` so
that two daemons never write one store. The connection runs in WAL mode
with ``synchronous=FULL``, foreign keys on and a busy timeout.

Schema (``node/migrations.py`` creates it; version ``SCHEMA_VERSION``)
-----------------------------------------------------------------------
* ``meta``: ``schema_version``, and the merge profile the stored states were
  computed under: ``trust_sha256`` (``TrustConfig.digest``) and
  ``merge_version``.
* ``records``: one canonical record per Pith number, as canonical JSON,
  with its suffix, ``canonical_sha256`` and source (kind, id, version).
* ``aliases``: ``(pith_number, kind) -> value`` with ``created_at``. For each
  record this is the union of the aliases every document brought, and the
  earliest ``created_at`` wins, as in the merge. So the result does not
  depend on the order documents arrive in.
* ``events``: one row per stored input, keyed by ``input_sha256`` (SHA-256
  of the canonical JSON of the event as received) and unique by subject and
  ``event_id``, with type, ``created_at`` and the canonical JSON.
* ``states``: one row per record: ``state_sha256`` and the served bytes,
  ``json.dumps(state, separators=(",", ":"), ensure_ascii=False)`` in UTF-8,
  which is byte for byte what the registry serves.
* ``rejections``: the newest ``StoreLimits.rejections_kept`` rejected
  inputs, for the status page. ``counters`` contains row counts, which
  the store updates in the transaction of each write.

What is stored
--------------
* Only events that ``protocol.validate_event`` accepts, that fit in
  ``MAX_EVENT_BYTES`` and that are dated at most ``MAX_FUTURE_SKEW_SECONDS``
  after the caller's clock. Everything else is returned as a rejected
  outcome, written to the rejections log and logged; it never raises.
* One input per subject and event id. When a second input with a stored
  event id arrives, the store keeps the copy the merge prefers (a signed
  copy over an unsigned one, then the smaller ``signature_b64``, as
  ``protocol.merge`` chooses) and, between unsigned copies, the smaller
  ``input_sha256``. The kept copy therefore depends only on the set of
  inputs seen, not on their order, and replicas that saw the same inputs
  converge. The merge itself would mark two differing unsigned copies both
  invalid. Keeping one gives a forger nothing new: where the trust
  configuration accepts unsigned registry events, anyone can already forge
  one with a later ``created_at`` that wins its slot.
* Events about a subject whose record has not arrived are stored as
  pending and merged when the record arrives. Pending events are capped per
  subject and in total, and expire after ``pending_max_age_seconds``.
* Two records may share an alias value: every alias is checked against its
  record, so both are genuine. Different versions of one arXiv paper share
  the ``arxiv`` and ``doi`` aliases, and among a million records two 40-bit
  ``pith_short_8`` prefixes collide with a probability of about 0.36 (the
  birthday bound). Both are stored, so that no replica's states depend on
  arrival order, and ``resolve`` picks one or declines (see there).
* When the trust configuration or merge version differs from the one the
  stored states were computed under, opening the store recomputes every
  state. Events the new configuration finds invalid are marked excluded
  (kept, so that returning to the old configuration restores them) and
  left out of states and bundles.

Durability contract
-------------------
Each ingest call (``add_bundle``, ``add_state``, ``add_events``) is one
transaction, and ``add_many_bundles`` is one transaction per batch. Outcomes
are returned only after ``COMMIT`` has returned, and with WAL and
``synchronous=FULL`` SQLite has then written and fsynced the WAL, so
whatever a caller acknowledges survives a killed process and, on a disk
that honours fsync, a power cut. The states of the subjects that a call
touched are re-merged and written in the same transaction as its events, so
states and events on disk always agree; ``verify_all()`` checks that.
Pending events are the one exception to "kept for ever": they are deleted
when they expire.

Concurrency
-----------
Every method may be called from any thread. Writes take a lock and run on
the one writer connection, so they are serialised. Reads run on pooled
query-only connections, each in its own read transaction, so they read one
committed snapshot and do not wait for a write in progress.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import re
import signal
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protocol import (
    MAX_BUNDLE_EVENTS,
    MAX_EVENT_BYTES,
    MAX_FUTURE_SKEW_SECONDS,
    MERGE_VERSION,
    CanonicalJSONError,
    DocumentError,
    EventError,
    IdentifierError,
    InvalidInput,
    MergeInput,
    TrustConfig,
    UsageError,
    bundle_input,
    canonical_bytes,
    check_aliases,
    check_not_future,
    default_trust,
    emit_bundle,
    format_timestamp,
    merge,
    parse_pith_number,
    state_hash,
    state_input,
    validate_event,
)
from protocol.payloads import EVENT_ID_PATTERN

from .migrations import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from .ratelimit import RateLimitedLog

try:
    import fcntl
except ImportError:  # Windows has no flock.
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RESOLVE_ALIAS_QUERY",
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "Activity",
    "DocumentOutcome",
    "EventOutcome",
    "Rejection",
    "Status",
    "Store",
    "StoreError",
    "StoreLimits",
    "StoreStats",
    "default_data_dir",
    "served_bytes",
]

logger = logging.getLogger("pith_mirror.store")

STORE_FILENAME = "store.sqlite3"
LOCK_FILENAME = "store.lock"
BUSY_TIMEOUT_MS = 5_000
# The WAL file is truncated to this size after a checkpoint, so that one
# large import does not leave a large file behind.
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# The writer checkpoints the WAL into the database once the WAL has grown
# to this many bytes, instead of SQLite's default of 1,000 pages. An import writes
# every index page it touched to the WAL at each commit, and its keys
# (Pith numbers, hashes) are random, so most commits touch thousands of
# pages; fewer, larger checkpoints copy a page touched by several commits
# once. In bench/import_bench.py with 100,000 bundles this cut the bytes
# written by 29 % (16.3 to 11.6 GB). Recovery after a crash replays about
# this much WAL at most.
WAL_AUTOCHECKPOINT_BYTES = 256 * 1024 * 1024
# Page size of a new store. The states of the published records without
# events are 1.1 to 1.7 KB, so an 8 KiB page stores four or five of them
# where the default 4 KiB page stores two.
PAGE_SIZE = 8192
# Page cache of the writer and of each reader, in KiB. Imports insert random
# keys (Pith numbers, hashes) into several indexes, so the writer slows down
# once those indexes outgrow its cache.
WRITER_CACHE_KIB = 64 * 1024
READER_CACHE_KIB = 16 * 1024
# Subjects re-merged per transaction when a changed trust configuration or
# merge version makes the store recompute every state.
RECOMPUTE_BATCH = 500
# Maximum length in characters of a stored source label and rejection
# message, so that hostile input cannot fill the rejections log with huge rows.
MAX_LABEL_LENGTH = 200
MAX_REASON_LENGTH = 500
# resolve_all() returns at most this many Pith numbers.
MAX_RESOLVE_CANDIDATES = 20


_ARXIV_VERSION_SUFFIX = re.compile(r"\A(?P<id>.+?)v(?P<version>[1-9][0-9]{0,5})\Z", re.ASCII)


def _arxiv_lookup(lowered: str) -> tuple[str | None, int | None]:
    """Return the lowercased arXiv id and version that a lookup text names, if it looks like one."""
    text = lowered.removeprefix("10.48550/arxiv.")
    if text.count("/") > 1:
        return None, None
    match = _ARXIV_VERSION_SUFFIX.match(text)
    if match is not None:
        return match.group("id"), int(match.group("version"))
    return text, None


class StoreError(Exception):
    """A local problem with the store: the disk, the file, the schema or a lock.

    Bad input to the ingest methods does not raise this. It comes back as a
    rejected outcome instead.
    """


class Status(enum.StrEnum):
    """Outcome of one ingested item."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """The result for one event of an ingest call.

    Attributes:
        index: position of the event in the list the caller passed (or in
            the document's events).
        input_sha256: SHA-256 hex of the canonical JSON of the input, or
            None when the input is not canonical JSON.
        event_id: the event id the input claims, when it is well formed.
        subject: the subject Pith number the input claims, when well formed.
        pending: the event is stored, but its record has not arrived yet.
        field: for a rejection, the dotted path of the field that failed.
        code: for a rejection, a stable reason code (the ``EventError`` code
            or one of the store's: ``not_canonical``, ``event_too_large``, ``too_many_containers``,
            ``future_timestamp``, ``malformed_subject``, ``pending_limit``,
            ``pending_subject_limit``).
        reason: a message for people. For a duplicate or a replacement it
            names the stored input that is kept.
    """

    index: int
    status: Status
    input_sha256: str | None
    event_id: str | None = None
    subject: str | None = None
    pending: bool = False
    field: str | None = None
    code: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DocumentOutcome:
    """The result for one bundle or state document.

    Attributes:
        status: ``accepted`` when the record was new, ``duplicate`` when it
            was already stored, ``rejected`` when the document failed its
            checks (then nothing of it was stored and ``events`` is empty).
        subject: the document's Pith number, when its header is valid.
        events: one outcome per event of the document.
        state_sha256: the subject's state hash after the commit.
        state_changed: whether this call changed the subject's state.
        field, code, reason: for a rejected document, as in EventOutcome;
            ``code`` is ``invalid_document``, ``state_hash_mismatch`` or
            ``record_conflict``.
    """

    status: Status
    subject: str | None
    events: tuple[EventOutcome, ...] = ()
    state_sha256: str | None = None
    state_changed: bool = False
    field: str | None = None
    code: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Bounds on what the store keeps.

    Attributes:
        rejections_kept: rejected inputs kept in the log for the status page.
        max_pending_per_subject: pending events kept for one subject whose
            record has not arrived.
        max_pending_total: pending events kept for all such subjects.
        pending_max_age_seconds: pending events older than this are deleted
            by ``expire_pending`` and when the total cap is reached; None
            keeps them until their record arrives.
    """

    rejections_kept: int = 1_000
    max_pending_per_subject: int = 1_000
    max_pending_total: int = 100_000
    pending_max_age_seconds: int | None = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for the status page and metrics.

    ``events`` counts every stored input, including the pending and the
    excluded ones. ``rejections_logged`` counts the entries in the bounded log
    and ``rejections_total`` every rejection since the store was created.
    """

    records: int
    events: int
    states: int
    pending_events: int
    excluded_events: int
    rejections_logged: int
    rejections_total: int
    schema_version: int
    trust_sha256: str
    merge_version: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """One entry of the rejections log; ``received_at`` is Unix seconds."""

    received_at: int
    source: str
    input_sha256: str | None
    subject: str | None
    event_id: str | None
    field: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Activity:
    """One line of recent activity: a stored record, a stored event or a rejection.

    ``kind`` is ``record``, ``event`` or ``rejection``; ``received_at`` is
    Unix seconds and ``time`` the same instant as a UTC timestamp.
    """

    kind: str
    received_at: int
    time: str
    source: str
    subject: str | None
    event_id: str | None = None
    event_type: str | None = None
    input_sha256: str | None = None
    code: str | None = None
    reason: str | None = None


def default_data_dir() -> Path:
    """Return the per-user data directory of pith-mirror.

    ``$XDG_DATA_HOME/pith-mirror`` when that variable is an absolute path
    (the XDG base directory specification requires ignoring a relative one),
    else ``~/Library/Application Support/pith-mirror`` on macOS,
    ``%LOCALAPPDATA%\\pith-mirror`` on Windows and
    ``~/.local/share/pith-mirror`` elsewhere.
    """
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "pith-mirror"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "pith-mirror"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "pith-mirror"
    return Path.home() / ".local" / "share" / "pith-mirror"


# Records with an alias of a given value. The NOT LIKE term is the WHERE
# clause of the partial index aliases_by_lookup_key, spelled alike so that
# SQLite uses the index.
RESOLVE_ALIAS_QUERY = (
    "SELECT a.kind, r.proven, r.source_version, r.pith_number FROM aliases AS a "
    "JOIN records AS r ON r.pith_number = a.pith_number "
    "WHERE a.lookup_key = ? AND a.kind NOT LIKE 'pith\\_short\\_%' ESCAPE '\\' LIMIT ?"
)


def served_bytes(state: dict[str, Any]) -> bytes:
    """Return a state document as the registry serves it: compact JSON in document order."""
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _copy_rank(signed: bool, signature_b64: str | None, input_sha256: str) -> tuple[int, str, str]:
    """Order the inputs that share one event id; the smallest is kept.

    A signed copy beats an unsigned one and the smaller signature text wins,
    which is how ``protocol.merge`` picks among copies. Unsigned copies that
    differ cannot both be valid in the merge, so the store keeps the one
    with the smaller input hash, which every replica picks alike.
    """
    return (0 if signed else 1, signature_b64 or "", input_sha256)


def _alias_entry(kind: str, value: str, created_at: str | None) -> dict[str, Any]:
    # Keys in the order the registry serves them, because the served bytes
    # of a state keep document order.
    entry: dict[str, Any] = {"alias_kind": kind, "alias_value": value}
    if created_at is not None:
        entry["created_at"] = created_at
    return entry


# Arrays and objects one stored record or event may hold. A gossip frame
# may carry at most protocol.frames.MAX_FRAME_CONTAINERS (65,536) of them,
# so an item over this could never be sent to a peer, and a peer would score
# the sender for trying. Real records hold about a dozen.
MAX_ITEM_CONTAINERS = 16_384


def container_bound(encoded: bytes) -> int:
    """Return an upper bound on the arrays and objects in canonical JSON: its ``[`` and ``{`` bytes.

    Brackets inside strings count too, so the bound is cheap and never low.
    """
    return encoded.count(b"[") + encoded.count(b"{")


def _too_many_containers(encoded: bytes) -> int | None:
    """Return the number of arrays and objects in canonical JSON ``encoded`` when it is over MAX_ITEM_CONTAINERS, else None."""
    if container_bound(encoded) <= MAX_ITEM_CONTAINERS:
        return None
    count = 0
    stack = [json.loads(encoded)]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            count += 1
            stack.extend(value.values())
        elif isinstance(value, list):
            count += 1
            stack.extend(value)
    return count if count > MAX_ITEM_CONTAINERS else None


def _record_json(record: dict[str, Any]) -> bytes:
    """Return the canonical JSON of a record that bundle_input or state_input accepted.

    Both hashed the record with canonical_bytes, so it is in the canonical
    value model and needs no second check.
    """
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _first_aliases(aliases: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    """Return ``kind -> (value, created_at)`` as ``_store_aliases`` would store them for a new record.

    The first alias of each kind gives the value, and the earliest
    ``created_at`` of that kind wins.
    """
    chosen: dict[str, tuple[str, str | None]] = {}
    for alias in aliases:
        kind, value, created_at = alias["alias_kind"], alias["alias_value"], alias.get("created_at")
        stored = chosen.get(kind)
        if stored is None:
            chosen[kind] = (value, created_at)
        elif created_at is not None and (stored[1] is None or created_at < stored[1]):
            chosen[kind] = (stored[0], created_at)
    return chosen


def _claimed_text(raw: Any, key: str, pattern: re.Pattern[str] | None = None) -> str | None:
    """Return ``raw[key]`` for an outcome when it is short text of the expected form."""
    if not isinstance(raw, dict):
        return None
    value = raw.get(key)
    if not isinstance(value, str) or len(value) > MAX_LABEL_LENGTH:
        return None
    if pattern is not None and pattern.match(value) is None:
        return None
    return value


_PITH_NUMBER_TEXT = re.compile(r"\Apith:\d{4}:[A-Z2-7]{26}\Z", re.ASCII)
_RESOLVE_PITH_NUMBER = re.compile(r"\Apith:(\d{4}):([a-z2-7]{26})\Z", re.ASCII)
_RESOLVE_SHORT = re.compile(r"\A(?:pith:)?([a-z2-7]{8,26})\Z", re.ASCII)
_RESOLVE_PREFIXES = ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:", "https://arxiv.org/abs/", "arxiv:")
# Alias kinds whose value is shared by every version of one arXiv paper, so
# that among several records the highest source version is preferred.
_VERSION_SHARED_KINDS = ("arxiv", "doi")


@dataclass
class _Batch:
    """Progress of one write transaction: the subjects it touched and the rejections it logged."""

    conn: sqlite3.Connection
    source: str
    now: int
    touched: set[str] = field(default_factory=set)
    known_records: set[str] = field(default_factory=set)
    rejected: int = 0
    # False when no stored event waits for its record, so that a new record
    # needs no query for pending events.
    pending_events_exist: bool = True
    # States that _buffer_new_subject and _ingest_merged already merged, by
    # subject, and the state hash each subject had before the batch first
    # wrote it.
    merged: dict[str, str] = field(default_factory=dict)
    previous: dict[str, str | None] = field(default_factory=dict)
    # Documents of new subjects whose rows are not written yet (see
    # Store._flush), and the outcomes of buffered documents that a conflict
    # sent through the checked path, by position in the batch.
    buffered: list[_Buffered] = field(default_factory=list)
    replaced: dict[int, DocumentOutcome] = field(default_factory=dict)


# Every document of a batch uses the same clock reading.
@functools.lru_cache(maxsize=16)
def _future_limit(now: int) -> str:
    """Return the latest created_at that ``check_not_future`` accepts at ``now``, as a timestamp."""
    limit = now + MAX_FUTURE_SKEW_SECONDS
    try:
        return format_timestamp(limit)
    except UsageError:
        # The form covers 1970 to 9999 only: past 9999 every valid
        # timestamp is earlier, before 1970 every one is later.
        return "9999-12-31T23:59:59Z" if limit > 0 else ""


class _NeedsFullChecks(Exception):
    """A document needs the per-event checks of ``Store._ingest_checked``.

    Raised before anything is logged or counted, so that the caller can roll
    back what the document wrote and ingest it again event by event.
    """


class _StateHashMismatch(Exception):
    """A state document's ``state_sha256`` does not match its contents."""

    def __init__(self, subject: str | None, message: str) -> None:
        super().__init__(message)
        self.subject = subject


@dataclass(frozen=True, slots=True)
class _Staged:
    """A document of a subject presumed new, checked up to the merge: the merge's input and the rows that store it.

    ``record_columns`` are the records row without ``proven``, ``received_at``
    and ``source``, and ``merge_events`` the canonical JSON of the events
    to merge: each distinct input once.
    """

    subject: str
    record_json: bytes
    record_columns: tuple[Any, ...]
    alias_entries: list[dict[str, Any]]
    alias_rows: list[tuple[Any, ...]]
    event_rows: list[tuple[Any, ...]]
    outcomes: tuple[EventOutcome, ...]
    merge_events: list[bytes]


# The result of merging a staged document: its state_sha256, the served bytes
# of the state and the records row's proven flag.
_Merged = tuple[str, bytes, int]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A document of a subject the store had nothing of, checked and merged, with the rows that store it."""

    subject: str
    record_row: tuple[Any, ...]
    alias_rows: list[tuple[Any, ...]]
    event_rows: list[tuple[Any, ...]]
    outcomes: tuple[EventOutcome, ...]
    state_sha256: str
    state_json: bytes


@dataclass(frozen=True, slots=True)
class _Buffered:
    """A prepared document waiting in its batch to be written."""

    position: int
    document: Any
    kind: str
    prepared: _Prepared


def _document_input(document: Any, kind: str) -> MergeInput:
    """Check a bundle or state document and return its merge input.

    Raises:
        InvalidInput: the document is malformed.
        _StateHashMismatch: a state document's hash does not match it.
    """
    if not isinstance(document, dict):
        raise DocumentError("", f"document must be a JSON object, got {type(document).__name__}")
    if kind == "bundle":
        return bundle_input(document)
    if "state_sha256" not in document:
        raise DocumentError("state_sha256", "missing")
    computed = state_hash({key: value for key, value in document.items() if key != "state_sha256"})
    if document["state_sha256"] != computed:
        raise _StateHashMismatch(
            _claimed_text(document, "pith_number", _PITH_NUMBER_TEXT),
            f"state_sha256 {_clip(repr(document['state_sha256']), 80)} does not match the document ({computed})",
        )
    merge_input = state_input(document)
    check_aliases(merge_input.aliases, merge_input.pith_number, merge_input.record, field="current.source_aliases")
    return merge_input


def _encode_events(events: list[Any]) -> list[tuple[bytes, str]]:
    """Return the canonical JSON and input hash of each event.

    Raises:
        _NeedsFullChecks: an event is not canonical, too large or contains too many containers.
    """
    encoded_events = []
    for raw in events:
        try:
            encoded = canonical_bytes(raw)
        except CanonicalJSONError:
            raise _NeedsFullChecks from None
        if len(encoded) > MAX_EVENT_BYTES or _too_many_containers(encoded) is not None:
            raise _NeedsFullChecks
        encoded_events.append((encoded, hashlib.sha256(encoded).hexdigest()))
    return encoded_events


def _unchecked_event_row(
    raw: Any, claimed_id: str | None, subject: str, input_sha256: str, encoded: bytes, now: int, source: str, future_limit: str
) -> tuple[Any, ...]:
    """Return the events row of an event that the merge has yet to validate.

    The columns are read from the input as ``validate_event`` would return
    them for a valid event. Raises _NeedsFullChecks when a field does not
    have the type a valid event has, or the event is dated in the future.
    """
    if claimed_id is None:
        raise _NeedsFullChecks
    event_type, created_at, signer = raw.get("event_type"), raw.get("created_at"), raw.get("signer")
    if not isinstance(event_type, str) or not isinstance(created_at, str) or not isinstance(signer, dict):
        raise _NeedsFullChecks
    # A valid created_at has the one fixed-width form, whose string order
    # is time order, so comparing strings gives the same result as
    # check_not_future. An invalid one makes the merge list the event as invalid.
    if created_at > future_limit:
        raise _NeedsFullChecks
    signed = "public_key_hex" in signer
    signature_b64 = raw.get("signature_b64") if signed else None
    if signed and not isinstance(signature_b64, str):
        raise _NeedsFullChecks
    return (
        input_sha256, claimed_id, subject, event_type, created_at, int(signed), signature_b64,
        0, now, source, encoded,
    )


def _stage_encoded(
    events: list[Any],
    encoded_events: list[tuple[bytes, str]],
    subject: str,
    now: int,
    source: str,
    stored_inputs: set[str],
    id_is_stored: Callable[[str], bool] | None,
) -> tuple[tuple[EventOutcome, ...], list[tuple[Any, ...]]]:
    """Return the outcomes and the events rows to insert of a document's events.

    ``stored_inputs`` contains the input hashes among them that are stored
    already. ``id_is_stored`` returns whether the subject has a stored
    event with an id, and is None when the store has no event of the subject.

    Raises:
        _NeedsFullChecks: an event needs the per-event checks.
    """
    limit = _future_limit(now)
    outcomes: list[EventOutcome] = []
    rows: list[tuple[Any, ...]] = []
    seen_ids: set[str] = set()
    for index, (raw, (encoded, input_sha256)) in enumerate(zip(events, encoded_events)):
        claimed_id = _claimed_text(raw, "event_id", EVENT_ID_PATTERN)
        if input_sha256 in stored_inputs:
            outcomes.append(EventOutcome(index, Status.DUPLICATE, input_sha256, claimed_id, subject, reason="input already stored"))
            continue
        row = _unchecked_event_row(raw, claimed_id, subject, input_sha256, encoded, now, source, limit)
        if claimed_id in seen_ids or (id_is_stored is not None and id_is_stored(row[1])):
            raise _NeedsFullChecks
        # A second copy of this input later in the document is a duplicate.
        stored_inputs.add(input_sha256)
        seen_ids.add(row[1])
        rows.append(row)
        outcomes.append(EventOutcome(index, Status.ACCEPTED, input_sha256, claimed_id, subject))
    return tuple(outcomes), rows


def _stage_new_subject(merge_input: MergeInput, record_json: bytes, now: int, source: str) -> _Staged:
    """Check the document of a subject the store has nothing of, up to the merge.

    Reads and writes nothing. Of a subject without a record and without
    pending events the store contains no event, and an event's input hash
    covers its subject, so none of the events can be stored already.

    Raises:
        _NeedsFullChecks: the document needs the per-event checks.
    """
    subject = merge_input.pith_number
    aliases = sorted(_first_aliases(merge_input.aliases).items())
    outcomes, event_rows = _stage_encoded(merge_input.events, _encode_events(merge_input.events), subject, now, source, set(), None)
    source_fields = merge_input.record["source"]
    record_columns = (
        subject, parse_pith_number(subject).suffix, hashlib.sha256(record_json).hexdigest(), source_fields["kind"],
        source_fields["id"], source_fields["version"], record_json,
    )
    return _Staged(
        subject,
        record_json,
        record_columns,
        # The values Store._merge_input would read back after the writes:
        # the aliases in kind order, and (in _merge_staged) the record and
        # events decoded from their canonical JSON, so the served bytes are
        # the same.
        [_alias_entry(kind, value, created_at) for kind, (value, created_at) in aliases],
        [(subject, kind, value, value.lower(), created_at) for kind, (value, created_at) in aliases],
        event_rows,
        outcomes,
        [row[10] for row in event_rows],
    )


def _merge_staged(record_json: bytes, alias_entries: list[dict[str, Any]], merge_events: list[bytes], trust: TrustConfig) -> _Merged | None:
    """Merge a staged document; None when the merge rejects it or lists an invalid event.

    Reads and writes nothing, so that a worker process can run it.
    """
    try:
        state = merge(json.loads(record_json), alias_entries, [json.loads(encoded) for encoded in merge_events], trust)
    except InvalidInput:
        return None
    if state["invalid_events"]:
        return None
    return str(state["state_sha256"]), served_bytes(state), 1 if state["current"]["record_created"] is not None else 0


def _prepared(staged: _Staged, merged: _Merged, now: int, source: str) -> _Prepared:
    state_sha256, state_json, proven = merged
    return _Prepared(
        staged.subject,
        (*staged.record_columns, proven, now, source),
        staged.alias_rows,
        staged.event_rows,
        staged.outcomes,
        state_sha256,
        state_json,
    )


def _stage_document(document: Any, kind: str, now: int, source: str) -> _Staged | None:
    """Stage a document as if its subject were new; None when it needs the checked path."""
    try:
        merge_input = _document_input(document, kind)
        record_json = _record_json(merge_input.record)
        if _too_many_containers(record_json) is not None:
            return None
        return _stage_new_subject(merge_input, record_json, now, source)
    except (InvalidInput, _StateHashMismatch, _NeedsFullChecks):
        return None


# Documents per task sent to an import worker process.
MERGE_CHUNK = 500
# Set in each worker process by _start_merge_worker.
_worker_trust: TrustConfig | None = None


def _start_merge_worker(trust: TrustConfig) -> None:
    global _worker_trust
    _worker_trust = trust
    # Ctrl-C reaches the whole process group; the importing process stops
    # the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker waits for tasks on a pipe that stays open when the importing
    # process is killed, so it watches that process and exits with it.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), name="parent-watch", daemon=True).start()


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _merge_chunk(items: list[tuple[bytes, list[dict[str, Any]], list[bytes]] | None]) -> list[_Merged | None]:
    """Merge each staged document of a chunk in a worker process; None marks a skipped or rejected one."""
    trust = _worker_trust if _worker_trust is not None else default_trust()
    merged: list[_Merged | None] = []
    for item in items:
        try:
            merged.append(None if item is None else _merge_staged(*item, trust))
        except Exception:  # noqa: BLE001 - the writer's checked path reports whatever this was
            merged.append(None)
    return merged


_Chunk = tuple[list[_Staged | None], "Future[list[_Merged | None]] | None"]


class _MergePool:
    """Worker processes that merge staged bundles while the store writes earlier ones.

    The writer stages each batch (checks every document up to the merge),
    and the workers merge it: the merge, with its signature checks, is most
    of the work of an import. A batch goes to the workers in chunks of
    MERGE_CHUNK documents, so that the writer starts on a batch once its
    first chunk is merged. A chunk the workers cannot merge (a worker died,
    or the processes could not start) comes back as None for each
    document, and the writer merges those itself.

    Worker processes start with the "spawn" method, which imports the
    program's main module again: a script that imports with workers must
    guard its main code with ``if __name__ == "__main__":``.
    """

    def __init__(self, workers: int, trust: TrustConfig) -> None:
        self._executor: ProcessPoolExecutor | None = None
        try:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_merge_worker,
                initargs=(trust,),
            )
        except (OSError, ValueError) as error:
            logger.warning("cannot start %d import worker processes (%s); merging bundles in this process", workers, error)
        else:
            logger.info("merging bundles in %d worker process%s", workers, "" if workers == 1 else "es")

    def submit(self, staged: list[_Staged | None]) -> _Chunk:
        """Send a chunk of staged documents to the workers; return it with the future of its merge results."""
        if self._executor is None:
            return staged, None
        items = [None if entry is None else (entry.record_json, entry.alias_entries, entry.merge_events) for entry in staged]
        try:
            return staged, self._executor.submit(_merge_chunk, items)
        except (RuntimeError, OSError) as error:
            # BrokenProcessPool, or a worker process that could not start:
            # the executor starts them in submit, and fork fails with EAGAIN
            # at the process limit.
            self._give_up(error)
            return staged, None

    def results(self, chunks: list[_Chunk]) -> Iterator[tuple[_Staged | None, _Merged | None]]:
        """Yield each document's staged form and merge result, in order, as each chunk arrives."""
        for staged, future in chunks:
            merged: list[_Merged | None] | None = None
            if future is not None:
                try:
                    merged = future.result()
                except Exception as error:  # noqa: BLE001 - a dead worker; the writer merges this chunk itself
                    self._give_up(error)
            if merged is None or len(merged) != len(staged):
                merged = [None] * len(staged)
            yield from zip(staged, merged)

    def _give_up(self, error: BaseException) -> None:
        if self._executor is not None:
            logger.warning("import worker processes failed (%s); merging the remaining bundles in this process", error)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


_INSERT_ALIAS = "INSERT INTO aliases (pith_number, kind, value, lookup_key, created_at) VALUES (?, ?, ?, ?, ?)"
# Values per IN (...) list, far below SQLite's limit of 32,766 parameters.
_IN_LIST_VALUES = 500


def _values_present(conn: sqlite3.Connection, query: str, values: list[str]) -> set[str]:
    """Return the values among ``values`` that ``query`` followed by an IN list of them selects."""
    present: set[str] = set()
    for start in range(0, len(values), _IN_LIST_VALUES):
        chunk = values[start : start + _IN_LIST_VALUES]
        present.update(row[0] for row in conn.execute(f"{query} ({','.join('?' * len(chunk))})", chunk))
    return present


def _batches(documents: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(documents)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


class Store:
    """The mirror's durable store; see the module docstring for the schema and the contract.

    Open it with ``Store(data_dir)`` and close it with ``close()`` or a
    ``with`` block. Opening migrates an older schema, and recomputes every
    state when the trust configuration or merge version has changed.

    Raises (from every method):
        StoreError: the store cannot be opened, read or written.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        trust: TrustConfig | None = None,
        *,
        limits: StoreLimits | None = None,
        read_only: bool = False,
    ) -> None:
        """Open (and if needed create or migrate) the store in ``data_dir``.

        Args:
            data_dir: directory of the store; ``default_data_dir()`` when None.
                It is created with mode 0700 if missing.
            trust: the trust configuration states are merged under;
                ``protocol.default_trust()`` when None.
            limits: bounds on pending events and the rejections log.
            read_only: open without the lock for inspection while a daemon
                runs; ingest methods then raise StoreError. A read-only
                store is never migrated or recomputed, so opening one that
                needs either raises StoreError.
        """
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.path = self.data_dir / STORE_FILENAME
        self.trust = trust if trust is not None else default_trust()
        self.limits = limits or StoreLimits()
        self.read_only = read_only
        self._write_lock = threading.Lock()
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._lock_fd: int | None = None
        self._writer: sqlite3.Connection | None = None
        self._rejection_log = RateLimitedLog(logger)
        try:
            self._open()
        except BaseException:
            self._release()
            raise

    # Opening and closing

    def _open(self) -> None:
        if self.read_only:
            if not self.path.exists():
                raise StoreError(f"no store at {self.path}; start the daemon once to create it")
            with self.snapshot() as conn:
                version = self._schema_version(conn)
                self._check_schema_version(version)
                if version < SCHEMA_VERSION:
                    raise StoreError(
                        f"store {self.path} has schema version {version} and needs migrating to "
                        f"{SCHEMA_VERSION}; open it read-write once (start the daemon)"
                    )
                meta = self._read_meta(conn)
            if meta.get("trust_sha256") != self.trust.digest or meta.get("merge_version") != MERGE_VERSION:
                raise StoreError(
                    f"the states in {self.path} were computed under trust configuration "
                    f"{meta.get('trust_sha256') or '(unknown)'} and {meta.get('merge_version') or '(unknown)'}, "
                    f"not {self.trust.digest} and {MERGE_VERSION}; open it read-write once to recompute them"
                )
            logger.info("opened store %s read-only (schema version %d)", self.path, version)
            return

        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create data directory {self.data_dir}: {error.strerror}") from error
        self._lock_fd = self._acquire_lock()
        self._writer = self._connect()
        self._migrate()
        # A statement that fires the row-count triggers keeps a statement
        # journal, a copy of each page it changes, so that SQLite can undo
        # that statement alone. In temporary files that was 2.5 GB of writes
        # per 10,000 imported bundles, and in memory it is one statement's
        # pages. This is set after the migrations, because their index
        # builds may sort more data than should stay in memory.
        self._writer.execute("PRAGMA temp_store = MEMORY")
        page_size = self._writer.execute("PRAGMA page_size").fetchone()[0]
        self._writer.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_BYTES // page_size}")
        self._check_merge_profile()
        logger.info("opened store %s (schema version %d, trust %s)", self.path, SCHEMA_VERSION, self.trust.digest)

    def _acquire_lock(self) -> int | None:
        if fcntl is None:
            # NOTE: without flock (Windows) nothing stops a second daemon
            # from opening the same store for writing.
            return None
        lock_path = self.data_dir / LOCK_FILENAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise StoreError(f"cannot open lock file {lock_path}: {error.strerror}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"store {self.path} is in use by another process (pid {holder}); stop that process, "
                "use another data directory, or post the documents to the running daemon's HTTP API (POST /events)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return fd

    def _connect(self, *, query_only: bool = False) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise StoreError(f"cannot open store {self.path}: {error}") from error
        try:
            # page_size only takes effect before the first table is written,
            # and is ignored for an existing store.
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(
                    f"store {self.path} cannot use WAL mode (journal mode is {mode}); "
                    "put the data directory on a local file system"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
            conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB if query_only else WRITER_CACHE_KIB}")
            if query_only:
                conn.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as error:
            conn.close()
            raise StoreError(f"cannot open store {self.path}: {error} (is it an SQLite file?)") from error
        except StoreError:
            conn.close()
            raise
        return conn

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if application_id not in (0, APPLICATION_ID) or (tables and "meta" not in tables):
            raise StoreError(f"{self.path} is an SQLite file but not a pith-mirror store; use another data directory")
        if "meta" not in tables:
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise StoreError(f"store {self.path} has no schema_version row; it is damaged or not a pith-mirror store")
        return int(row[0])

    def _check_schema_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} was written by schema version {version}; this pith-mirror supports "
                f"up to {SCHEMA_VERSION}; upgrade pith-mirror"
            )

    def _migrate(self) -> None:
        with self._write_transaction() as conn:
            version = self._schema_version(conn)
            self._check_schema_version(version)
            if version == SCHEMA_VERSION:
                return
            for step in MIGRATIONS[version:]:
                step(conn)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if version == 0:
            logger.info("created store %s with schema version %d", self.path, SCHEMA_VERSION)
        else:
            logger.warning("migrated store %s from schema version %d to %d", self.path, version, SCHEMA_VERSION)

    def close(self) -> None:
        """Close the store: checkpoint the WAL, close every connection and release the lock."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            if self._writer is not None:
                try:
                    self._writer.execute("PRAGMA optimize")
                    self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as error:
                    logger.warning("checkpoint of %s at close failed: %s", self.path, error)
            self._release()
        logger.info("closed store %s", self.path)

    def _release(self) -> None:
        self._closed = True
        with self._readers_lock:
            for conn in self._all_readers:
                conn.close()
            self._all_readers.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Transactions

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the body in one IMMEDIATE transaction and commit it; roll back on any exception."""
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only")
        conn = self._writer
        if self._closed or conn is None:
            raise StoreError(f"store {self.path} is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(f"cannot start a transaction on {self.path}: {error}") from error
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as error:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_error:
                    logger.error("rollback on %s failed: %s", self.path, rollback_error)
            if isinstance(error, sqlite3.Error):
                raise StoreError(f"writing to store {self.path} failed: {error}") from error
            raise

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Lend a query-only connection inside one read transaction, so that all its queries read one snapshot."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = self._connect(query_only=True)
            with self._readers_lock:
                self._all_readers.append(conn)
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise StoreError(f"reading store {self.path} failed: {error}") from error
        finally:
            if self._closed:
                with self._readers_lock:
                    if conn in self._all_readers:
                        self._all_readers.remove(conn)
                conn.close()
            else:
                self._readers.put(conn)

    @staticmethod
    def _read_meta(conn: sqlite3.Connection) -> dict[str, str]:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # Merge profile

    def _check_merge_profile(self) -> None:
        """Recompute every state if they were computed under another trust configuration or merge version."""
        with self._write_lock, self._write_transaction() as conn:
            meta = self._read_meta(conn)
            stored = (meta.get("trust_sha256"), meta.get("merge_version"))
            if stored == (self.trust.digest, MERGE_VERSION):
                return
            count = self._counter(conn, "records") + self._counter(conn, "pending")
            if count == 0:
                self._set_meta(conn, "trust_sha256", self.trust.digest)
                self._set_meta(conn, "merge_version", MERGE_VERSION)
                return
            # Empty values mark the recomputation as unfinished: if the
            # process dies part way, the next open starts it again.
            self._set_meta(conn, "trust_sha256", "")
            self._set_meta(conn, "merge_version", "")

        logger.warning(
            "recomputing every state of %s: they were computed under trust configuration %s and %s, "
            "this node uses %s and %s",
            self.path, stored[0] or "(unfinished recomputation)", stored[1] or "(unknown)", self.trust.digest, MERGE_VERSION,
        )
        started = time.monotonic()
        recomputed = changed = 0
        last = ""
        while True:
            with self._write_lock, self._write_transaction() as conn:
                subjects = [
                    row[0]
                    for row in conn.execute(
                        "SELECT pith_number FROM records WHERE pith_number > ? ORDER BY pith_number LIMIT ?",
                        (last, RECOMPUTE_BATCH),
                    )
                ]
                for subject in subjects:
                    previous = self._stored_state_sha256(conn, subject)
                    if self._remerge(conn, subject, int(time.time()), revalidate=True) != previous:
                        changed += 1
                recomputed += len(subjects)
            if not subjects:
                break
            last = subjects[-1]
            logger.info("recomputed %d states of %s so far", recomputed, self.path)

        with self._write_lock, self._write_transaction() as conn:
            excluded = self._revalidate_pending(conn)
            self._set_meta(conn, "trust_sha256", self.trust.digest)
            self._set_meta(conn, "merge_version", MERGE_VERSION)
        logger.warning(
            "recomputed %d states of %s in %.1f s: %d changed, %d pending events invalid under the new configuration",
            recomputed, self.path, time.monotonic() - started, changed, excluded,
        )

    def _revalidate_pending(self, conn: sqlite3.Connection) -> int:
        """Mark each pending event excluded or not under the current trust configuration."""
        excluded = 0
        rows = conn.execute("SELECT seq, subject, raw_json FROM events WHERE pending = 1").fetchall()
        for seq, subject, raw_json in rows:
            try:
                validate_event(json.loads(raw_json), subject, self.trust)
                flag = 0
            except EventError:
                flag = 1
            excluded += flag
            conn.execute("UPDATE events SET excluded = ? WHERE seq = ?", (flag, seq))
        return excluded

    # Merging

    def _merge_input(self, conn: sqlite3.Connection, subject: str, *, with_excluded: bool) -> tuple[dict[str, Any], list[dict[str, Any]], list[tuple[str, Any]]] | None:
        """Load a subject's record, aliases and (input_sha256, event) pairs; None without a record."""
        row = conn.execute("SELECT record_json FROM records WHERE pith_number = ?", (subject,)).fetchone()
        if row is None:
            return None
        record = json.loads(row[0])
        aliases = [
            _alias_entry(kind, value, created_at)
            for kind, value, created_at in conn.execute(
                "SELECT kind, value, created_at FROM aliases WHERE pith_number = ? ORDER BY kind", (subject,)
            )
        ]
        query = "SELECT input_sha256, raw_json FROM events WHERE subject = ?"
        if not with_excluded:
            query += " AND excluded = 0"
        # No ORDER BY: the merge does not depend on input order, and sorting
        # here would make SQLite scan the input_sha256 index of all events.
        events = [(input_sha256, json.loads(raw_json)) for input_sha256, raw_json in conn.execute(query, (subject,))]
        return record, aliases, events

    def _compute_state(self, conn: sqlite3.Connection, subject: str) -> dict[str, Any] | None:
        loaded = self._merge_input(conn, subject, with_excluded=False)
        if loaded is None:
            return None
        record, aliases, events = loaded
        return merge(record, aliases, [event for _, event in events], self.trust)

    def _remerge(self, conn: sqlite3.Connection, subject: str, now: int, *, revalidate: bool = False) -> str | None:
        """Merge one subject from its stored events, store the state and return its hash.

        With ``revalidate`` the excluded events are merged too, so that each
        event's excluded flag is set afresh under the current trust
        configuration. Events the merge finds invalid are marked excluded
        and the subject is merged again without them, so a stored state
        never lists an invalid event. Returns None when the subject has no
        record yet.
        """
        loaded = self._merge_input(conn, subject, with_excluded=revalidate)
        if loaded is None:
            return None
        record, aliases, events = loaded
        try:
            state = merge(record, aliases, [event for _, event in events], self.trust)
            if state["invalid_events"]:
                invalid = {entry["input_sha256"] for entry in state["invalid_events"]}
                listed = ", ".join(f"{entry['input_sha256']} ({entry['reason']})" for entry in state["invalid_events"][:10])
                logger.warning(
                    "excluding %d stored events of %s that the trust configuration finds invalid: %s%s",
                    len(invalid), subject, listed, ", ..." if len(invalid) > 10 else "",
                )
                events = [(input_sha256, event) for input_sha256, event in events if input_sha256 not in invalid]
                state = merge(record, aliases, [event for _, event in events], self.trust)
            else:
                invalid = set()
        except InvalidInput as error:
            # Every stored input passed the same checks on the way in, so
            # this is a bug or a damaged file, not bad input.
            raise StoreError(f"merging the stored events of {subject} failed: {error}") from error
        if state["invalid_events"]:
            raise StoreError(f"merging the stored events of {subject} still lists invalid events after excluding them")

        if revalidate:
            conn.execute("UPDATE events SET excluded = 0 WHERE subject = ? AND excluded = 1", (subject,))
        conn.executemany("UPDATE events SET excluded = 1 WHERE input_sha256 = ?", [(key,) for key in sorted(invalid)])
        self._write_state(conn, subject, state, now)
        return str(state["state_sha256"])

    @staticmethod
    def _write_state(conn: sqlite3.Connection, subject: str, state: dict[str, Any], now: int, *, new_record: bool = False) -> None:
        """Store a subject's state and set its record's ``proven`` flag.

        A record inserted in this transaction still has ``proven = 0``, so
        with ``new_record`` the flag is written only when it becomes 1, and
        the record has no state row yet.
        """
        values = (state["state_sha256"], served_bytes(state), now, subject)
        if new_record or not conn.execute(
            "UPDATE states SET state_sha256 = ?, state_json = ?, updated_at = ? WHERE pith_number = ?", values
        ).rowcount:
            conn.execute("INSERT INTO states (state_sha256, state_json, updated_at, pith_number) VALUES (?, ?, ?, ?)", values)
            Store._count_rows(conn, states=1)
        proven = 1 if state["current"]["record_created"] is not None else 0
        if proven or not new_record:
            conn.execute("UPDATE records SET proven = ? WHERE pith_number = ? AND proven <> ?", (proven, subject, proven))

    @staticmethod
    def _stored_state_sha256(conn: sqlite3.Connection, subject: str) -> str | None:
        row = conn.execute("SELECT state_sha256 FROM states WHERE pith_number = ?", (subject,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _counter(conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _count_rows(conn: sqlite3.Connection, **deltas: int) -> None:
        """Add row count changes to ``counters``, in the caller's transaction.

        Every statement that inserts or deletes records, events or states,
        or changes an event's ``pending`` flag, calls this with its row
        counts. ``integrity_check`` compares the counters with the tables.
        """
        for name, delta in deltas.items():
            if delta:
                conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (delta, name))

    # Ingest

    def add_bundle(self, document: Any, source: str, now: float) -> DocumentOutcome:
        """Store a bundle document's record, aliases and valid events, and merge its subject.

        Args:
            document: the decoded bundle (``protocol.read_document``).
            source: a label for logs and the rejections log, such as a peer
                address or a file name.
            now: the node's clock in Unix seconds; events dated more than
                ``MAX_FUTURE_SKEW_SECONDS`` later are rejected.

        Returns:
            The outcome, after the transaction has committed.
        """
        return self._add_documents([document], "bundle", source, now)[0]

    def add_state(self, document: Any, source: str, now: float) -> DocumentOutcome:
        """Store the record, aliases and events of a state document, and merge its subject.

        The document's ``state_sha256`` must match its contents. The stored
        state can still differ from the document, when this store contains
        events the document lacks. Arguments and result as in ``add_bundle``.
        """
        return self._add_documents([document], "state", source, now)[0]

    def add_many_bundles(
        self,
        documents: Iterable[Any],
        source: str,
        now: float,
        *,
        batch_size: int = 500,
        workers: int = 0,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[DocumentOutcome]:
        """Import many bundles, one transaction per ``batch_size`` documents.

        A generator: nothing is read or stored until the caller iterates.
        The outcomes of a batch are yielded only after that batch has
        committed, so a caller may acknowledge each outcome as it arrives.
        If the caller stops iterating, the documents not yet yielded are
        not stored, except those of a batch that already committed.

        With ``workers`` > 0 and more than one batch, that many worker
        processes merge the bundles of the next batch while this process
        writes the current one (see _MergePool). Only the merge moves: this
        process still checks every document, reads the store, decides every
        outcome and writes every row, so outcomes and rows are the same as
        without workers.

        ``stop`` is called before each batch is written; once it returns
        true, no further batch is read or written and the generator ends.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if workers < 0:
            raise ValueError(f"workers must be at least 0, got {workers}")
        batches = _batches(documents, batch_size)

        def stopped() -> bool:
            return stop is not None and stop()

        if workers == 0:
            for batch in batches:
                if stopped():
                    return
                yield from self._add_documents(batch, "bundle", source, now)
            return

        # With workers the next batch is read before the current one is
        # stored. A source that fails while the next batch is read must
        # still get the batches it delivered stored, as without workers, so
        # the error is raised after them.
        read_error: Exception | None = None

        def next_batch() -> list[Any] | None:
            nonlocal read_error
            if read_error is not None:
                return None
            try:
                return next(batches, None)
            except Exception as error:  # noqa: BLE001 - raised again once the batches read are stored
                read_error = error
                return None

        first = next_batch()
        second = next_batch() if first is not None else None
        if second is None:
            if first is not None and not stopped():
                yield from self._add_documents(first, "bundle", source, now)
            if read_error is not None:
                raise read_error
            return

        label, stamp = _clip(str(source), MAX_LABEL_LENGTH), int(now)
        pool = _MergePool(workers, self.trust)
        queued: deque[tuple[list[Any], list[_Chunk]]] = deque()
        try:
            batch: list[Any] | None = first
            while batch is not None:
                unstored = self._skip_stored_subjects(batch)
                chunks = []
                for start in range(0, len(unstored), MERGE_CHUNK):
                    part = unstored[start : start + MERGE_CHUNK]
                    chunks.append(pool.submit([None if item is None else _stage_document(item, "bundle", stamp, label) for item in part]))
                queued.append((batch, chunks))
                # Keep the workers one batch ahead of the writer.
                if len(queued) > 1:
                    if stopped():
                        return
                    waiting, chunks = queued.popleft()
                    yield from self._add_documents(waiting, "bundle", source, now, pool.results(chunks))
                batch = second if batch is first else next_batch()
            while queued:
                if stopped():
                    return
                waiting, chunks = queued.popleft()
                yield from self._add_documents(waiting, "bundle", source, now, pool.results(chunks))
        finally:
            pool.close()
        if read_error is not None:
            raise read_error

    def _skip_stored_subjects(self, documents: list[Any]) -> list[Any]:
        """Return ``documents`` with None for each whose claimed Pith number has a committed record.

        Workers prepare documents as if their subjects were new; a stored
        subject takes the writer's own path, so preparing it would be wasted.
        """
        claimed = [_claimed_text(document, "pith_number", _PITH_NUMBER_TEXT) for document in documents]
        names = sorted({name for name in claimed if name is not None})
        with self.snapshot() as conn:
            stored = _values_present(conn, "SELECT pith_number FROM records WHERE pith_number IN", names)
        return [None if name in stored else document for name, document in zip(claimed, documents)]

    def add_events(self, events: Iterable[Any], source: str, now: float) -> list[EventOutcome]:
        """Store the valid events among ``events`` (in bundle form) and merge their subjects.

        Each event names its subject in ``subject_pith_number``; events of
        subjects without a stored record are kept as pending. Arguments as
        in ``add_bundle``.

        Returns:
            One outcome per event, in input order, after the commit.
        """
        with self._write_lock, self._write_transaction() as conn:
            batch = _Batch(conn, _clip(str(source), MAX_LABEL_LENGTH), int(now))
            outcomes = [self._ingest_event(batch, raw, index, None) for index, raw in enumerate(events)]
            self._finish_batch(batch)
        return outcomes

    def expire_pending(self, now: float) -> int:
        """Delete pending events older than ``pending_max_age_seconds``; return how many."""
        with self._write_lock, self._write_transaction() as conn:
            return self._expire_pending(conn, int(now))

    def _expire_pending(self, conn: sqlite3.Connection, now: int) -> int:
        max_age = self.limits.pending_max_age_seconds
        if max_age is None:
            return 0
        deleted = conn.execute("DELETE FROM events WHERE pending = 1 AND received_at < ?", (now - max_age,)).rowcount
        self._count_rows(conn, events=-deleted, pending=-deleted)
        if deleted:
            logger.info("deleted %d pending events older than %d s whose records never arrived", deleted, max_age)
        return deleted

    def _add_documents(
        self,
        documents: list[Any],
        kind: str,
        source: str,
        now: float,
        merged: Iterator[tuple[_Staged | None, _Merged | None]] | None = None,
    ) -> list[DocumentOutcome]:
        with self._write_lock, self._write_transaction() as conn:
            batch = _Batch(conn, _clip(str(source), MAX_LABEL_LENGTH), int(now))
            # Documents bring their record, so their events are never
            # pending and this count cannot grow during the batch.
            batch.pending_events_exist = self._counter(conn, "pending") > 0
            outcomes = [
                self._ingest_document(batch, document, kind, position, *(next(merged) if merged is not None else (None, None)))
                for position, document in enumerate(documents)
            ]
            self._flush(batch)
            for position, outcome in batch.replaced.items():
                outcomes[position] = outcome
            previous = {
                subject: self._stored_state_sha256(conn, subject) for subject in batch.touched if subject not in batch.previous
            }
            previous.update(batch.previous)
            self._finish_batch(batch)
            finished = []
            for outcome in outcomes:
                if outcome.subject is None or outcome.status == Status.REJECTED:
                    finished.append(outcome)
                    continue
                if outcome.subject in batch.merged and outcome.subject not in batch.touched:
                    state_sha256: str | None = batch.merged[outcome.subject]
                else:
                    state_sha256 = self._stored_state_sha256(conn, outcome.subject)
                changed = outcome.subject in previous and previous[outcome.subject] != state_sha256
                finished.append(replace(outcome, state_sha256=state_sha256, state_changed=changed))
        return finished

    def _finish_batch(self, batch: _Batch) -> None:
        """Merge every subject the batch touched and trim the rejections log, inside its transaction."""
        self._flush(batch)
        for subject in sorted(batch.touched):
            self._remerge(batch.conn, subject, batch.now)
        if batch.rejected:
            batch.conn.execute(
                "DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ?", (self.limits.rejections_kept,)
            )

    def _ingest_document(
        self,
        batch: _Batch,
        document: Any,
        kind: str,
        position: int,
        staged: _Staged | None = None,
        merged: _Merged | None = None,
        *,
        buffer: bool = True,
    ) -> DocumentOutcome:
        """Store one document of a batch; ``staged`` and ``merged`` are its staged form and a worker's merge of it, if any.

        With ``buffer`` the document of a new subject is staged and merged
        (unless that was done already) and buffered; without, it takes the
        checked path.
        """
        if staged is not None and merged is not None and buffer and self._is_new_subject(batch, staged.subject):
            return self._buffer_new_subject(batch, document, kind, position, _prepared(staged, merged, batch.now, batch.source))
        try:
            merge_input = _document_input(document, kind)
        except InvalidInput as error:
            subject = _claimed_text(document, "pith_number", _PITH_NUMBER_TEXT)
            self._log_rejection(batch, document, subject, None, error.field, "invalid_document", error.reason, kind)
            return DocumentOutcome(Status.REJECTED, subject, field=error.field, code="invalid_document", reason=error.reason)
        except _StateHashMismatch as error:
            self._log_rejection(batch, document, error.subject, None, "state_sha256", "state_hash_mismatch", str(error), kind)
            return DocumentOutcome(
                Status.REJECTED, error.subject, field="state_sha256", code="state_hash_mismatch", reason=str(error)
            )

        subject = merge_input.pith_number
        record_json = _record_json(merge_input.record)
        containers = _too_many_containers(record_json)
        if containers is not None:
            reason = f"the record holds {containers} arrays and objects, over the limit of {MAX_ITEM_CONTAINERS}"
            self._log_rejection(batch, document, subject, None, "canonical_record", "too_many_containers", reason, kind)
            return DocumentOutcome(Status.REJECTED, subject, field="canonical_record", code="too_many_containers", reason=reason)
        new_subject = self._is_new_subject(batch, subject)
        if new_subject and buffer:
            try:
                staged = _stage_new_subject(merge_input, record_json, batch.now, batch.source)
            except _NeedsFullChecks:
                staged = None
            merged = None if staged is None else _merge_staged(staged.record_json, staged.alias_entries, staged.merge_events, self.trust)
            if staged is not None and merged is not None:
                return self._buffer_new_subject(batch, document, kind, position, _prepared(staged, merged, batch.now, batch.source))

        # The paths below read the stored rows of the subject.
        self._flush(batch)
        conn = batch.conn
        conn.execute("SAVEPOINT document")
        try:
            if new_subject:
                outcome, waiting = self._ingest_checked(batch, merge_input, record_json)
            else:
                try:
                    outcome, waiting = self._ingest_merged(batch, merge_input, record_json)
                except _NeedsFullChecks:
                    conn.execute("ROLLBACK TO document")
                    outcome, waiting = self._ingest_checked(batch, merge_input, record_json)
        except sqlite3.IntegrityError as error:
            conn.execute("ROLLBACK TO document")
            conn.execute("RELEASE document")
            return self._reject_record_conflict(batch, document, subject, kind, error)
        conn.execute("RELEASE document")
        if waiting:
            logger.info("record %s arrived from %s; merging its %d pending events", subject, batch.source, waiting)
        return outcome

    def _reject_record_conflict(
        self, batch: _Batch, document: Any, subject: str, kind: str, error: sqlite3.IntegrityError
    ) -> DocumentOutcome:
        # Only a record whose suffix equals another record's suffix but
        # whose hash differs gets here: a 130-bit collision.
        reason = f"the record conflicts with a stored record: {error}"
        logger.error("rejected %s %s from %s: %s", kind, subject, batch.source, reason)
        self._log_rejection(batch, document, subject, None, "canonical_record", "record_conflict", reason, kind)
        return DocumentOutcome(Status.REJECTED, subject, field="canonical_record", code="record_conflict", reason=reason)

    def _ingest_checked(self, batch: _Batch, merge_input: MergeInput, record_json: bytes) -> tuple[DocumentOutcome, int]:
        """Store a document's record, aliases and events, checking each event on its own.

        The subject is merged when the batch finishes. Returns the outcome
        and the number of pending events the new record released.
        """
        subject = merge_input.pith_number
        record_status, waiting = self._store_record(batch, merge_input, record_json)
        aliases_changed = self._store_aliases(batch, subject, merge_input.aliases)
        events = tuple(self._ingest_event(batch, raw, index, subject) for index, raw in enumerate(merge_input.events))
        if record_status == Status.ACCEPTED or aliases_changed:
            batch.touched.add(subject)
        return DocumentOutcome(record_status, subject, events), waiting

    # A document is ingested in one of three ways. _ingest_checked validates
    # every event before storing it and merges the subject when the batch
    # finishes, and the merge validates every event again, so each signature
    # is verified twice. _stage_new_subject with _merge_staged (for a subject
    # the store has nothing of, whose rows _flush writes) and _ingest_merged verify each
    # signature once: they keep the events after the checks that need no
    # signature, merge the subject at once and let the merge's validation
    # stand for the per-event one. When the merge lists no invalid event,
    # every event passed validate_event with the same subject and trust
    # configuration, so _ingest_checked would have stored the same rows and
    # returned the same outcomes. Any other case (an invalid, oversized,
    # non-canonical or future-dated event, an event id that is stored already
    # or repeated) raises _NeedsFullChecks before anything is logged, and the
    # document is ingested again by _ingest_checked.

    def _is_new_subject(self, batch: _Batch, subject: str) -> bool:
        """Return whether the store has neither a record nor a pending event of ``subject``."""
        if self._record_exists(batch, subject):
            return False
        if not batch.pending_events_exist:
            return True
        return batch.conn.execute(
            "SELECT 1 FROM events INDEXED BY events_pending_by_subject WHERE subject = ? AND pending = 1 LIMIT 1",
            (subject,),
        ).fetchone() is None

    def _buffer_new_subject(self, batch: _Batch, document: Any, kind: str, position: int, prepared: _Prepared) -> DocumentOutcome:
        """Keep a prepared document of a new subject for ``_flush`` to write with the others of its batch.

        The batch then counts its record as stored, so a later document of
        the same subject flushes the buffer and takes the path for stored
        subjects.
        """
        batch.buffered.append(_Buffered(position, document, kind, prepared))
        batch.known_records.add(prepared.subject)
        batch.previous.setdefault(prepared.subject, None)
        batch.merged[prepared.subject] = prepared.state_sha256
        outcome = DocumentOutcome(Status.ACCEPTED, prepared.subject, prepared.outcomes)
        # Writing as the batch goes, and not all at its end, keeps the rows
        # of a whole batch from waiting for its last worker chunk.
        if len(batch.buffered) >= MERGE_CHUNK:
            self._flush(batch)
        return outcome

    def _flush(self, batch: _Batch) -> None:
        """Write the rows of every buffered document, with one statement per table.

        Only a unique key can fail here: a record whose suffix or hash is
        another stored record's (a 130-bit collision), or a row that some
        other path wrote despite the checks. Then the documents are written
        one at a time, and each one that fails takes the checked path, which
        finds the conflict and reports it in the document's outcome.
        """
        if not batch.buffered:
            return
        entries, batch.buffered = batch.buffered, []
        conn = batch.conn
        conn.execute("SAVEPOINT buffered")
        try:
            self._insert_prepared(conn, batch.now, [entry.prepared for entry in entries])
        except sqlite3.IntegrityError as error:
            conn.execute("ROLLBACK TO buffered")
            conn.execute("RELEASE buffered")
            logger.warning("writing %d new subjects at once failed (%s); writing them one at a time", len(entries), error)
        else:
            conn.execute("RELEASE buffered")
            return
        for entry in entries:
            conn.execute("SAVEPOINT buffered")
            try:
                self._insert_prepared(conn, batch.now, [entry.prepared])
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO buffered")
                conn.execute("RELEASE buffered")
                subject = entry.prepared.subject
                batch.known_records.discard(subject)
                batch.merged.pop(subject, None)
                batch.previous.pop(subject, None)
                batch.replaced[entry.position] = self._ingest_document(batch, entry.document, entry.kind, entry.position, buffer=False)
            else:
                conn.execute("RELEASE buffered")

    def _insert_prepared(self, conn: sqlite3.Connection, now: int, prepared: list[_Prepared]) -> None:
        conn.executemany(
            "INSERT INTO records (pith_number, suffix, canonical_sha256, source_kind, source_id, source_version, "
            "record_json, proven, received_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [entry.record_row for entry in prepared],
        )
        conn.executemany(
            _INSERT_ALIAS,
            [row for entry in prepared for row in entry.alias_rows],
        )
        self._insert_event_rows(conn, [row for entry in prepared for row in entry.event_rows])
        conn.executemany(
            "INSERT INTO states (pith_number, state_sha256, state_json, updated_at) VALUES (?, ?, ?, ?)",
            [(entry.subject, entry.state_sha256, entry.state_json, now) for entry in prepared],
        )
        self._count_rows(conn, records=len(prepared), states=len(prepared))

    def _ingest_merged(self, batch: _Batch, merge_input: MergeInput, record_json: bytes) -> tuple[DocumentOutcome, int]:
        """Store a document of a subject that has a record or pending events, and merge the subject at once.

        Runs inside the document's savepoint, because the merge runs after
        the writes: it reads the subject's stored events back. Returns the
        outcome and the number of pending events the new record released.
        """
        conn = batch.conn
        subject = merge_input.pith_number
        outcomes, rows = self._stage_events(batch, merge_input.events, subject)
        record_status, waiting = self._store_record(batch, merge_input, record_json)
        aliases_changed = self._store_aliases(batch, subject, merge_input.aliases)
        self._insert_event_rows(conn, rows)
        outcome = DocumentOutcome(record_status, subject, outcomes)
        if not (record_status == Status.ACCEPTED or aliases_changed or rows):
            return outcome, waiting

        loaded = self._merge_input(conn, subject, with_excluded=False)
        if loaded is None:
            raise StoreError(f"record {subject} is missing from {self.path} right after it was stored")
        record, alias_entries, pairs = loaded
        try:
            state = merge(record, alias_entries, [event for _, event in pairs], self.trust)
        except InvalidInput:
            raise _NeedsFullChecks from None
        if state["invalid_events"]:
            raise _NeedsFullChecks

        previous = None if record_status == Status.ACCEPTED else self._stored_state_sha256(conn, subject)
        batch.previous.setdefault(subject, previous)
        self._write_state(conn, subject, state, batch.now, new_record=record_status == Status.ACCEPTED)
        batch.merged[subject] = str(state["state_sha256"])
        return outcome, waiting

    def _stage_events(
        self, batch: _Batch, events: list[Any], subject: str
    ) -> tuple[tuple[EventOutcome, ...], list[tuple[Any, ...]]]:
        """Return the outcomes and the events rows to insert of the events of a document of a stored subject.

        Only reads: nothing is written.

        Raises:
            _NeedsFullChecks: an event needs the per-event checks.
        """
        conn = batch.conn
        encoded_events = _encode_events(events)
        stored_inputs = self._stored_inputs(conn, [input_sha256 for _, input_sha256 in encoded_events])

        def id_is_stored(event_id: str) -> bool:
            return conn.execute("SELECT 1 FROM events WHERE subject = ? AND event_id = ?", (subject, event_id)).fetchone() is not None

        return _stage_encoded(events, encoded_events, subject, batch.now, batch.source, stored_inputs, id_is_stored)

    @staticmethod
    def _insert_event_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows of ``_unchecked_event_row``, none of which is pending."""
        conn.executemany(
            "INSERT INTO events (input_sha256, event_id, subject, event_type, created_at, signed, signature_b64, "
            "pending, received_at, source, raw_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        Store._count_rows(conn, events=len(rows))

    @staticmethod
    def _stored_inputs(conn: sqlite3.Connection, input_hashes: list[str]) -> set[str]:
        """Return the hashes among ``input_hashes`` that the events table already contains."""
        return _values_present(conn, "SELECT input_sha256 FROM events WHERE input_sha256 IN", input_hashes)

    def _store_record(self, batch: _Batch, merge_input: MergeInput, record_json: bytes) -> tuple[Status, int]:
        """Insert the document's record (``record_json`` is its canonical JSON) unless stored; return its status and the pending events it released."""
        if not self._insert_record(batch, merge_input, record_json):
            return Status.DUPLICATE, 0
        waiting = 0
        if batch.pending_events_exist:
            waiting = batch.conn.execute(
                "UPDATE events SET pending = 0 WHERE subject = ? AND pending = 1", (merge_input.pith_number,)
            ).rowcount
            self._count_rows(batch.conn, pending=-waiting)
        return Status.ACCEPTED, waiting

    @staticmethod
    def _insert_record(batch: _Batch, merge_input: MergeInput, encoded: bytes) -> bool:
        """Insert the record unless a record with its Pith number is stored; return whether it was inserted."""
        subject = merge_input.pith_number
        source = merge_input.record["source"]
        inserted = batch.conn.execute(
            "INSERT INTO records (pith_number, suffix, canonical_sha256, source_kind, source_id, source_version, "
            "record_json, received_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pith_number) DO NOTHING",
            (
                subject, parse_pith_number(subject).suffix, hashlib.sha256(encoded).hexdigest(), source["kind"],
                source["id"], source["version"], encoded, batch.now, batch.source,
            ),
        ).rowcount
        Store._count_rows(batch.conn, records=inserted)
        batch.known_records.add(subject)
        return bool(inserted)

    def _store_aliases(self, batch: _Batch, subject: str, aliases: list[dict[str, Any]]) -> bool:
        """Add the document's aliases to the subject's, keeping the earliest created_at; return whether any changed."""
        changed = False
        for alias in aliases:
            kind, value, created_at = alias["alias_kind"], alias["alias_value"], alias.get("created_at")
            row = batch.conn.execute(
                "SELECT value, created_at FROM aliases WHERE pith_number = ? AND kind = ?", (subject, kind)
            ).fetchone()
            if row is None:
                batch.conn.execute(
                    _INSERT_ALIAS,
                    (subject, kind, value, value.lower(), created_at),
                )
                changed = True
            elif created_at is not None and (row[1] is None or created_at < row[1]):
                # check_aliases derived both values from the same record, so
                # only created_at can differ.
                batch.conn.execute(
                    "UPDATE aliases SET created_at = ? WHERE pith_number = ? AND kind = ?", (created_at, subject, kind)
                )
                changed = True
        return changed

    def _ingest_event(self, batch: _Batch, raw: Any, index: int, document_subject: str | None) -> EventOutcome:
        """Check one event and store it unless it is invalid or a duplicate."""
        claimed_id = _claimed_text(raw, "event_id", EVENT_ID_PATTERN)
        claimed_subject = document_subject or _claimed_text(raw, "subject_pith_number", _PITH_NUMBER_TEXT)

        def reject(input_sha256: str | None, field_name: str, code: str, reason: str) -> EventOutcome:
            self._log_rejection(batch, None, claimed_subject, claimed_id, field_name, code, reason, "event", input_sha256)
            return EventOutcome(
                index, Status.REJECTED, input_sha256, claimed_id, claimed_subject, field=field_name, code=code, reason=reason
            )

        try:
            encoded = canonical_bytes(raw)
        except CanonicalJSONError as error:
            return reject(None, error.field, "not_canonical", error.reason)
        input_sha256 = hashlib.sha256(encoded).hexdigest()
        if len(encoded) > MAX_EVENT_BYTES:
            return reject(
                input_sha256, "", "event_too_large", f"event of {len(encoded)} bytes exceeds the limit of {MAX_EVENT_BYTES} bytes"
            )
        containers = _too_many_containers(encoded)
        if containers is not None:
            return reject(
                input_sha256, "", "too_many_containers",
                f"event holds {containers} arrays and objects, over the limit of {MAX_ITEM_CONTAINERS}",
            )
        conn = batch.conn
        if conn.execute("SELECT 1 FROM events WHERE input_sha256 = ?", (input_sha256,)).fetchone():
            return EventOutcome(index, Status.DUPLICATE, input_sha256, claimed_id, claimed_subject, reason="input already stored")

        try:
            subject = document_subject or self._event_subject(raw)
            event = validate_event(raw, subject, self.trust)
        except EventError as error:
            return reject(input_sha256, error.field, error.code, error.reason)
        try:
            check_not_future(event.created_at, batch.now)
        except InvalidInput as error:
            return reject(input_sha256, "created_at", "future_timestamp", error.reason)

        stored = conn.execute(
            "SELECT seq, input_sha256, signed, signature_b64, excluded, pending FROM events WHERE subject = ? AND event_id = ?",
            (subject, event.event_id),
        ).fetchone()
        if stored is not None:
            stored_seq, stored_sha256, stored_signed, stored_signature, stored_excluded, stored_pending = stored
            kept_rank = _copy_rank(bool(stored_signed), stored_signature, stored_sha256)
            if not stored_excluded and kept_rank <= _copy_rank(event.signed, event.signature_b64, input_sha256):
                return EventOutcome(
                    index, Status.DUPLICATE, input_sha256, event.event_id, subject,
                    reason=f"event {event.event_id} is already stored from input {stored_sha256}, which the merge prefers",
                )

        pending = not self._record_exists(batch, subject)
        # A replacement takes the place of a stored copy of the same subject,
        # so it adds no pending event.
        if pending and stored is None:
            cap_error = self._check_pending_caps(batch, subject)
            if cap_error is not None:
                return reject(input_sha256, "subject_pith_number", *cap_error)

        note = None
        if stored is not None:
            batch.conn.execute("DELETE FROM events WHERE seq = ?", (stored_seq,))
            self._count_rows(conn, events=-1, pending=-stored_pending)
            note = f"replaces input {stored_sha256} of event {event.event_id}, which the merge prefers less"
            logger.info("event %s from %s %s", event.event_id, batch.source, note)
        conn.execute(
            "INSERT INTO events (input_sha256, event_id, subject, event_type, created_at, signed, signature_b64, "
            "pending, received_at, source, raw_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                input_sha256, event.event_id, subject, event.event_type, event.created_at, int(event.signed),
                event.signature_b64, int(pending), batch.now, batch.source, encoded,
            ),
        )
        self._count_rows(conn, events=1, pending=int(pending))
        if not pending:
            batch.touched.add(subject)
        return EventOutcome(index, Status.ACCEPTED, input_sha256, event.event_id, subject, pending=pending, reason=note)

    @staticmethod
    def _event_subject(raw: Any) -> str:
        """Return the subject an event claims, so that validate_event can check it.

        Raises:
            EventError: the claimed subject is not a Pith number.
        """
        if not isinstance(raw, dict) or "subject_pith_number" not in raw:
            # validate_event reports what is missing.
            return ""
        try:
            return str(parse_pith_number(raw["subject_pith_number"], "subject_pith_number"))
        except IdentifierError as error:
            raise EventError(error.field, error.reason, code="malformed_subject") from None

    def _record_exists(self, batch: _Batch, subject: str) -> bool:
        if subject in batch.known_records:
            return True
        if batch.conn.execute("SELECT 1 FROM records WHERE pith_number = ?", (subject,)).fetchone():
            batch.known_records.add(subject)
            return True
        return False

    def _check_pending_caps(self, batch: _Batch, subject: str) -> tuple[str, str] | None:
        """Return (code, reason) when one more pending event for ``subject`` would exceed a cap."""
        conn = batch.conn
        per_subject = conn.execute("SELECT COUNT(*) FROM events WHERE subject = ? AND pending = 1", (subject,)).fetchone()[0]
        if per_subject >= self.limits.max_pending_per_subject:
            return (
                "pending_subject_limit",
                f"{per_subject} events already wait for the record of {subject}, the limit; "
                "send the record (a bundle or state) first",
            )
        total = self._counter(conn, "pending")
        if total >= self.limits.max_pending_total:
            total -= self._expire_pending(conn, batch.now)
        if total >= self.limits.max_pending_total:
            return (
                "pending_limit",
                f"{total} events already wait for records that have not arrived, the limit; "
                "send the records (bundles or states) first",
            )
        return None

    def _log_rejection(
        self,
        batch: _Batch,
        document: Any,
        subject: str | None,
        event_id: str | None,
        field_name: str,
        code: str,
        reason: str,
        kind: str,
        input_sha256: str | None = None,
    ) -> None:
        if input_sha256 is None and document is not None:
            try:
                input_sha256 = hashlib.sha256(canonical_bytes(document)).hexdigest()
            except InvalidInput:
                input_sha256 = None
        reason = _clip(reason, MAX_REASON_LENGTH)
        batch.conn.execute(
            "INSERT INTO rejections (received_at, source, input_sha256, subject, event_id, field, code, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (batch.now, batch.source, input_sha256, subject, event_id, _clip(field_name, MAX_LABEL_LENGTH), code, reason),
        )
        batch.conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'rejections_total'")
        batch.rejected += 1
        self._rejection_log.log(
            logging.INFO, "rejected %s %s from %s: %s: %s (%s)",
            kind, event_id or input_sha256 or subject or "?", batch.source, field_name or "(whole input)", reason, code,
        )

    # Reads

    def get_state_bytes(self, pith_number: str) -> bytes | None:
        """Return the served bytes of a subject's state, or None when the subject is unknown."""
        with self.snapshot() as conn:
            row = conn.execute("SELECT state_json FROM states WHERE pith_number = ?", (pith_number,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_state(self, pith_number: str) -> dict[str, Any] | None:
        """Return a subject's state document, or None when the subject is unknown."""
        data = self.get_state_bytes(pith_number)
        return None if data is None else json.loads(data)

    def state_hashes(self) -> dict[str, str]:
        """Return every stored subject's ``state_sha256``, keyed by Pith number, from one snapshot."""
        with self.snapshot() as conn:
            return dict(conn.execute("SELECT pith_number, state_sha256 FROM states").fetchall())

    def get_state_sha256(self, pith_number: str) -> str | None:
        """Return a subject's ``state_sha256`` (for an ETag), or None when the subject is unknown."""
        with self.snapshot() as conn:
            return self._stored_state_sha256(conn, pith_number)

    def get_bundle(self, pith_number: str) -> dict[str, Any] | None:
        """Return a bundle of a subject's record, aliases and events, or None when the subject is unknown.

        Merging the bundle reproduces the stored state. Excluded events are
        left out, as they are from the state.
        NOTE: a subject with more than MAX_BUNDLE_EVENTS events gives a
        bundle that ``protocol.bundle_input`` rejects; use get_bundle_parts
        to send it.
        """
        with self.snapshot() as conn:
            loaded = self._merge_input(conn, pith_number, with_excluded=False)
        if loaded is None:
            return None
        record, aliases, events = loaded
        return emit_bundle(record, aliases, [event for _, event in events], self.trust)

    def get_bundle_parts(self, pith_number: str, max_events: int = MAX_BUNDLE_EVENTS) -> list[dict[str, Any]]:
        """Return a subject's bundle split into bundles of at most ``max_events`` events each.

        Each part carries the record and aliases; merging the events of all
        parts together reproduces the stored state. Returns an empty list
        when the subject is unknown.
        """
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        bundle = self.get_bundle(pith_number)
        if bundle is None:
            return []
        events = bundle["events"]
        if len(events) <= max_events:
            return [bundle]
        return [{**bundle, "events": events[start : start + max_events]} for start in range(0, len(events), max_events)]

    def get_event(self, input_sha256: str) -> dict[str, Any] | None:
        """Return a stored event as received, by its input hash, or None."""
        with self.snapshot() as conn:
            row = conn.execute("SELECT raw_json FROM events WHERE input_sha256 = ?", (input_sha256,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_event_by_id(self, pith_number: str, event_id: str) -> dict[str, Any] | None:
        """Return the stored input of an event id within a subject, or None."""
        with self.snapshot() as conn:
            row = conn.execute(
                "SELECT raw_json FROM events WHERE subject = ? AND event_id = ?", (pith_number, event_id)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def resolve(self, text: str) -> str | None:
        """Return the Pith number that ``text`` names, or None when it names none or several.

        Accepted forms:

        * a full Pith number or a short number (``pith:XXXXXXXX``);
        * a suffix, or a prefix of 8 or more of its characters, with or
          without ``pith:``, which covers the ``pith_short_*`` values;
        * an arXiv identifier, old or new style, with or without version
          (``hep-lat/0305021``, ``1711.00489v2``), also after ``arXiv:``;
        * a DOI (``10.48550/arXiv.1711.00489``), also after ``doi:`` or
          ``https://doi.org/``.

        Letters are matched without regard to case.

        When several records match, the ones whose registry receipt the
        merge verified (a record_created event in their state) come first,
        then, for an unversioned arXiv identifier or DOI, the highest source
        version. If the first two are still equal, the text is ambiguous
        and None is returned; ``resolve_all`` lists the candidates.
        """
        candidates = self._resolve_candidates(text)
        if not candidates:
            return None
        if len(candidates) > 1 and candidates[0][0] == candidates[1][0]:
            return None
        return candidates[0][1]

    def resolve_all(self, text: str) -> list[str]:
        """Return every Pith number ``text`` may name, best first, at most MAX_RESOLVE_CANDIDATES."""
        return [number for _, number in self._resolve_candidates(text)]

    def _resolve_candidates(self, text: str) -> list[tuple[tuple[int, int], str]]:
        """Return ((proven, version), pith_number) pairs, best first."""
        if not isinstance(text, str):
            return []
        cleaned = text.strip()
        if not cleaned or len(cleaned) > MAX_LABEL_LENGTH:
            return []
        lowered = cleaned.lower()
        with self.snapshot() as conn:
            match = _RESOLVE_PITH_NUMBER.match(lowered)
            if match is not None:
                number = f"pith:{match.group(1)}:{match.group(2).upper()}"
                row = conn.execute("SELECT proven FROM records WHERE pith_number = ?", (number,)).fetchone()
                return [] if row is None else [((-row[0], 0), number)]

            match = _RESOLVE_SHORT.match(lowered)
            if match is not None:
                prefix = match.group(1).upper()
                rows = conn.execute(
                    "SELECT proven, pith_number FROM records WHERE suffix >= ? AND suffix < ? ORDER BY suffix LIMIT ?",
                    (prefix, prefix + "~", MAX_RESOLVE_CANDIDATES),
                ).fetchall()
                return sorted(((-proven, 0), number) for proven, number in rows)

            for prefix in _RESOLVE_PREFIXES:
                if lowered.startswith(prefix):
                    lowered = lowered[len(prefix) :]
                    break
            rows = conn.execute(RESOLVE_ALIAS_QUERY, (lowered, MAX_RESOLVE_CANDIDATES * 4)).fetchall()
            # A record published without aliases is still found by its own
            # source identifier, with the same ranking as the arxiv alias.
            source_id, requested_version = _arxiv_lookup(lowered)
            if source_id is not None:
                query = (
                    "SELECT 'arxiv', proven, source_version, pith_number FROM records "
                    "WHERE source_kind = 'arxiv' AND lower(source_id) = ?"
                )
                arguments: tuple[Any, ...] = (source_id,)
                if requested_version is not None:
                    query += " AND source_version = ?"
                    arguments += (requested_version,)
                rows += conn.execute(query + " LIMIT ?", (*arguments, MAX_RESOLVE_CANDIDATES)).fetchall()
        best: dict[str, tuple[int, int]] = {}
        for kind, proven, version, number in rows:
            if requested_version is not None and kind == "arxiv":
                kind = "arxiv_version"
            rank = (-proven, -version if kind in _VERSION_SHARED_KINDS else 0)
            best[number] = min(rank, best.get(number, rank))
        return sorted((rank, number) for number, rank in best.items())[:MAX_RESOLVE_CANDIDATES]

    def stats(self) -> StoreStats:
        """Return the counts for the status page; cheap enough to call per request."""
        with self.snapshot() as conn:
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            excluded = conn.execute("SELECT COUNT(*) FROM events WHERE excluded = 1").fetchone()[0]
            logged = conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
            meta = self._read_meta(conn)
        return StoreStats(
            records=counters["records"],
            events=counters["events"],
            states=counters["states"],
            pending_events=counters["pending"],
            excluded_events=excluded,
            rejections_logged=logged,
            rejections_total=counters["rejections_total"],
            schema_version=int(meta["schema_version"]),
            trust_sha256=meta.get("trust_sha256", ""),
            merge_version=meta.get("merge_version", ""),
        )

    def recent_rejections(self, limit: int = 50) -> list[Rejection]:
        """Return the newest entries of the rejections log, newest first."""
        with self.snapshot() as conn:
            rows = conn.execute(
                "SELECT received_at, source, input_sha256, subject, event_id, field, code, reason "
                "FROM rejections ORDER BY id DESC LIMIT ?",
                (max(0, limit),),
            ).fetchall()
        return [Rejection(*row) for row in rows]

    def recent_activity(self, limit: int = 50) -> list[Activity]:
        """Return the newest stored records, stored events and rejections, newest first."""
        limit = max(0, limit)
        with self.snapshot() as conn:
            records = conn.execute(
                "SELECT rowid, received_at, source, pith_number FROM records ORDER BY rowid DESC LIMIT ?", (limit,)
            ).fetchall()
            events = conn.execute(
                "SELECT seq, received_at, source, subject, event_id, event_type, input_sha256, pending "
                "FROM events ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            rejections = conn.execute(
                "SELECT id, received_at, source, subject, event_id, input_sha256, code, reason "
                "FROM rejections ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        # Within one second, the order inside each table is the arrival order.
        items: list[tuple[tuple[int, int, int], Activity]] = []
        for rowid, received_at, source, subject in records:
            items.append(((received_at, 0, rowid), Activity("record", received_at, format_timestamp(received_at), source, subject)))
        for seq, received_at, source, subject, event_id, event_type, input_sha256, pending in events:
            activity = Activity(
                "event", received_at, format_timestamp(received_at), source, subject, event_id, event_type, input_sha256,
                reason="pending: the record has not arrived" if pending else None,
            )
            items.append(((received_at, 1, seq), activity))
        for row_id, received_at, source, subject, event_id, input_sha256, code, reason in rejections:
            activity = Activity(
                "rejection", received_at, format_timestamp(received_at), source, subject, event_id, None, input_sha256, code, reason
            )
            items.append(((received_at, 2, row_id), activity))
        items.sort(key=lambda item: item[0], reverse=True)
        return [activity for _, activity in items[:limit]]

    def iter_subjects(self, page_size: int = 1_000) -> Iterator[str]:
        """Yield the Pith number of every stored record, in order.

        Each page is read in its own transaction, so that a long iteration
        does not keep a snapshot open. A record added meanwhile may or may
        not be yielded.
        """
        last = ""
        while True:
            with self.snapshot() as conn:
                rows = conn.execute(
                    "SELECT pith_number FROM records WHERE pith_number > ? ORDER BY pith_number LIMIT ?", (last, page_size)
                ).fetchall()
            if not rows:
                return
            for (number,) in rows:
                yield number
            last = rows[-1][0]

    def verify_all(self, page_size: int = 500) -> list[str]:
        """Recompute every state from the stored events; return the subjects whose stored state differs.

        A subject is listed when its stored bytes or hash differ from a
        fresh merge, when it has no stored state, or when events of it are
        still marked pending although its record is stored. After any crash
        the list must be empty, because states and events are written in
        one transaction.
        """
        mismatched: list[str] = []
        last = ""
        while True:
            with self.snapshot() as conn:
                subjects = [
                    row[0]
                    for row in conn.execute(
                        "SELECT pith_number FROM records WHERE pith_number > ? ORDER BY pith_number LIMIT ?", (last, page_size)
                    )
                ]
                for subject in subjects:
                    state = self._compute_state(conn, subject)
                    row = conn.execute("SELECT state_sha256, state_json FROM states WHERE pith_number = ?", (subject,)).fetchone()
                    if state is None or row is None or row[0] != state["state_sha256"] or bytes(row[1]) != served_bytes(state):
                        mismatched.append(subject)
            if not subjects:
                break
            last = subjects[-1]
        with self.snapshot() as conn:
            stuck = conn.execute(
                "SELECT DISTINCT subject FROM events INDEXED BY events_pending_by_subject WHERE pending = 1 "
                "AND EXISTS (SELECT 1 FROM records WHERE records.pith_number = events.subject)"
            ).fetchall()
        mismatched.extend(subject for (subject,) in stuck if subject not in mismatched)
        if mismatched:
            logger.error("%d stored states of %s differ from their events: %s", len(mismatched), self.path, ", ".join(mismatched[:20]))
        return sorted(mismatched)

    def integrity_check(self) -> list[str]:
        """Run SQLite's integrity check and compare the row counters with the tables; return the findings (empty when sound)."""
        with self.snapshot() as conn:
            findings = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
            if findings == ["ok"]:
                findings = []
            counted = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            actual = {
                "records": conn.execute("SELECT COUNT(*) FROM records").fetchone()[0],
                "events": conn.execute("SELECT COUNT(*) FROM events").fetchone()[0],
                "states": conn.execute("SELECT COUNT(*) FROM states").fetchone()[0],
                "pending": conn.execute("SELECT COUNT(*) FROM events WHERE pending = 1").fetchone()[0],
            }
        for name, value in actual.items():
            if counted.get(name) != value:
                findings.append(f"counter {name} is {counted.get(name)}, but the table holds {value} rows")
        return findings
