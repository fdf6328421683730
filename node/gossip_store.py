"""Gossip items over the store: item ids, id snapshots for reconciliation, lookups and mirror hints.

Replicas exchange two kinds of item (``protocol.wire``):

* an event in bundle form, exactly as the store keeps it (``raw_json``). Its
  item id is the SHA-256 of that canonical JSON, which is the store's
  ``input_sha256``;
* a record entry ``{"item_type": "record", "canonical_record": ...,
  "source_aliases": [...]}`` built from a stored record and its aliases in
  kind order. Its id is the SHA-256 of its canonical JSON, so the id of a
  record's entry changes whenever its aliases change.

The reconciliation set of a node is every stored event that is not
excluded (pending ones included) plus one record entry per record. A
``Snapshot`` keeps that set as ``PackedIds``, 32 bytes per id, and an index
from record entry ids to record rows.

``GossipStore`` methods read the store through its pooled read connections
and do blocking I/O: call them from a worker thread
(``trio.to_thread.run_sync``). Writes go through ``MirrorService`` so that
its caches stay correct.
"""

from __future__ import annotations

import array
import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
import re
from dataclasses import dataclass, field
from typing import Any

from protocol import InvalidInput, TrustConfig, canonical_bytes, emit_bundle

from .store import Store, container_bound

__all__ = [
    "ITEM_ID_BYTES",
    "GossipStore",
    "HintAddress",
    "IngestPlan",
    "PackedIds",
    "RecordIndex",
    "Snapshot",
    "record_entry",
    "record_entry_bytes",
]

logger = logging.getLogger("pith_mirror.gossip.store")

ITEM_ID_BYTES = 32
# Parameters per IN (...) query; SQLite 3.32 and later allow 32,766.
_QUERY_CHUNK = 500
_RECORD_ENTRY_PREFIX = b'{"canonical_record":'
_RECORD_ENTRY_MIDDLE = b',"item_type":"record","source_aliases":'
# The form of a Pith number; the store and the merge check the rest.
_PITH_NUMBER = re.compile(r"\Apith:\d{4}:[A-Z2-7]{26}\Z", re.ASCII)


class PackedIds:
    """Sorted, distinct 32-byte ids packed into one bytes object (a ``protocol.reconcile.Storage``).

    The ids cost 32 bytes each and no per-object overhead. Instances are
    immutable, so reconciliation sessions can share one.
    """

    __slots__ = ("_data", "_count")

    def __init__(self, data: bytes = b"") -> None:
        if len(data) % ITEM_ID_BYTES:
            raise ValueError(f"packed ids must be a multiple of {ITEM_ID_BYTES} bytes, got {len(data)}")
        self._data = bytes(data)
        self._count = len(data) // ITEM_ID_BYTES

    @classmethod
    def from_ids(cls, ids: Iterable[bytes]) -> PackedIds:
        """Return the packed form of ``ids`` in any order; duplicates are dropped."""
        items = set(ids)
        for item in items:
            if type(item) is not bytes or len(item) != ITEM_ID_BYTES:
                raise ValueError(f"an id must be {ITEM_ID_BYTES} bytes, got {item!r}")
        return cls(b"".join(sorted(items)))

    @classmethod
    def from_sorted(cls, ids: Iterable[bytes]) -> PackedIds:
        """Return the packed form of ids that are already ascending and distinct (not re-checked)."""
        return cls(b"".join(ids))

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item: object) -> bool:
        if type(item) is not bytes or len(item) != ITEM_ID_BYTES:
            return False
        index = self.bisect_left(item)
        return index < self._count and self.id_at(index) == item

    def __iter__(self) -> Iterator[bytes]:
        data = self._data
        for offset in range(0, len(data), ITEM_ID_BYTES):
            yield data[offset : offset + ITEM_ID_BYTES]

    def bisect_left(self, bound: bytes) -> int:
        """Return the number of ids less than ``bound``."""
        data = self._data
        low, high = 0, self._count
        while low < high:
            middle = (low + high) // 2
            offset = middle * ITEM_ID_BYTES
            if data[offset : offset + ITEM_ID_BYTES] < bound:
                low = middle + 1
            else:
                high = middle
        return low

    def with_added(self, ids: Iterable[bytes]) -> PackedIds:
        """Return a copy with ``ids`` added; ids already present are skipped.

        Cost: one copy of the packed bytes plus a binary search per new id.
        """
        data = self._data
        parts: list[bytes] = []
        start = 0
        for item in sorted(set(ids)):
            if type(item) is not bytes or len(item) != ITEM_ID_BYTES:
                raise ValueError(f"an id must be {ITEM_ID_BYTES} bytes, got {item!r}")
            index = self.bisect_left(item)
            if index < self._count and self.id_at(index) == item:
                continue
            offset = index * ITEM_ID_BYTES
            parts.append(data[start:offset])
            parts.append(item)
            start = offset
        if not parts:
            return self
        parts.append(data[start:])
        return PackedIds(b"".join(parts))

    def id_at(self, index: int) -> bytes:
        """Return the id at ``index`` in ascending order."""
        if not 0 <= index < self._count:
            raise IndexError(f"id index {index} is outside 0 to {self._count - 1}")
        offset = index * ITEM_ID_BYTES
        return self._data[offset : offset + ITEM_ID_BYTES]

    def ids_between(self, start: int, stop: int) -> Sequence[bytes]:
        """Return the ids at positions ``start`` to ``stop - 1``."""
        data = self._data
        return [data[offset : offset + ITEM_ID_BYTES] for offset in range(start * ITEM_ID_BYTES, stop * ITEM_ID_BYTES, ITEM_ID_BYTES)]


@dataclass(frozen=True)
class RecordIndex:
    """Record entry ids in ascending order, with the ``records`` rowid of each."""

    ids: PackedIds
    rowids: array.array  # type: ignore[type-arg]

    def rowid_of(self, item_id: bytes) -> int | None:
        """Return the rowid of the record whose entry had ``item_id`` when the index was built."""
        index = self.ids.bisect_left(item_id)
        if index < len(self.ids) and self.ids.id_at(index) == item_id:
            return int(self.rowids[index])
        return None


@dataclass(frozen=True)
class Snapshot:
    """The reconciliation set at one moment: every item id, and the record entry index."""

    ids: PackedIds
    records: RecordIndex
    event_count: int
    generation: int


@dataclass(frozen=True)
class HintAddress:
    """A gossip address taken from a valid, signed mirror hint in a merged state."""

    address: str
    signer: str
    subject: str
    event_id: str


def _alias_entry(kind: str, value: str, created_at: str | None) -> dict[str, Any]:
    # The same entry form as the store's bundles and states.
    entry: dict[str, Any] = {"alias_kind": kind, "alias_value": value}
    if created_at is not None:
        entry["created_at"] = created_at
    return entry


def record_entry(record: dict[str, Any], aliases: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the record entry item of a record and its aliases (in kind order)."""
    return {"item_type": "record", "canonical_record": record, "source_aliases": aliases}


def record_entry_bytes(record_json: bytes, aliases: list[dict[str, Any]]) -> bytes:
    """Return the canonical JSON of a record entry from the record's stored canonical JSON.

    Canonical JSON sorts keys, and ``canonical_record`` < ``item_type`` <
    ``source_aliases``, so the entry is the stored record bytes between
    fixed pieces, without decoding the record.
    """
    return _RECORD_ENTRY_PREFIX + record_json + _RECORD_ENTRY_MIDDLE + canonical_bytes(aliases) + b"}"


def _chunks(items: Sequence[Any], size: int = _QUERY_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _group_aliases(rows: Iterable[tuple[str, str, str, str | None]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yield (pith_number, aliases) from alias rows ordered by pith_number and kind."""
    current: str | None = None
    aliases: list[dict[str, Any]] = []
    for number, kind, value, created_at in rows:
        if number != current:
            if current is not None:
                yield current, aliases
            current, aliases = number, []
        aliases.append(_alias_entry(kind, value, created_at))
    if current is not None:
        yield current, aliases


class GossipStore:
    """Read access to the store in terms of gossip items; see the module docstring.

    Args:
        store: the open store.
        trust: the trust configuration, to build record bundles.

    Thread safety: every method may run in a worker thread. The record
    entries learned since the last snapshot are kept under a lock.
    """

    def __init__(self, store: Store, trust: TrustConfig) -> None:
        self.store = store
        self.trust = trust
        self._lock = threading.Lock()
        self._records = RecordIndex(PackedIds(), array.array("q"))
        # Record entry ids learned since the last snapshot: id -> pith_number.
        self._recent_records: dict[bytes, str] = {}
        self._generation = 0
        self._indexed = False

    # --- changes -----------------------------------------------------------

    @property
    def generation(self) -> int:
        """A counter of store changes seen by gossip; a snapshot records the value it was built at."""
        return self._generation

    def note_changed(self) -> None:
        """Record that the store changed, so that the next snapshot is rebuilt."""
        with self._lock:
            self._generation += 1

    # --- snapshots -----------------------------------------------------------

    def build_snapshot(self) -> Snapshot:
        """Read every item id in one read transaction and return the reconciliation set.

        Cost: one ordered scan of the ``input_sha256`` index, one scan of the
        records and aliases, and one SHA-256 per record.
        NOTE: while it builds, it also keeps every id as a Python bytes
        object, about 70 bytes per id (70 MB for 10**6 ids), before packing.
        """
        with self._lock:
            generation = self._generation
        with self.store.snapshot() as conn:
            excluded = {row[0] for row in conn.execute("SELECT input_sha256 FROM events WHERE excluded = 1")}
            event_ids = [
                bytes.fromhex(row[0])
                for row in conn.execute("SELECT input_sha256 FROM events ORDER BY input_sha256")
                if row[0] not in excluded
            ]
            entries = []
            # Both queries are ordered by pith_number, so one pass pairs
            # each record with its aliases without holding all aliases.
            groups = _group_aliases(conn.execute("SELECT pith_number, kind, value, created_at FROM aliases ORDER BY pith_number, kind"))
            group = next(groups, None)
            for rowid, number, record_json in conn.execute("SELECT rowid, pith_number, record_json FROM records ORDER BY pith_number"):
                while group is not None and group[0] < number:
                    group = next(groups, None)
                aliases = group[1] if group is not None and group[0] == number else []
                entries.append((hashlib.sha256(record_entry_bytes(bytes(record_json), aliases)).digest(), rowid))

        entries.sort()
        record_index = RecordIndex(
            PackedIds.from_sorted(entry_id for entry_id, _ in entries),
            array.array("q", (rowid for _, rowid in entries)),
        )
        # Event ids come from the index in ascending hex order, which is
        # ascending byte order. Python's sort finds the two sorted runs and
        # merges them in linear time.
        record_ids = [entry_id for entry_id, _ in entries]
        merged = sorted(event_ids + record_ids) if record_ids else event_ids
        snapshot = Snapshot(PackedIds.from_sorted(merged), record_index, len(event_ids), generation)
        with self._lock:
            self._indexed = True
            self._records = record_index
            self._recent_records = {
                entry_id: number for entry_id, number in self._recent_records.items() if record_index.rowid_of(entry_id) is None
            }
        return snapshot

    def _ensure_indexed(self) -> None:
        """Build a first snapshot when none exists, so that record entry ids are known."""
        if not self._indexed:
            self.build_snapshot()

    # --- lookups -------------------------------------------------------------

    def missing(self, ids: Sequence[bytes]) -> list[bytes]:
        """Return the ids among ``ids`` that name no stored event and no known record entry.

        Stored events count whatever their state (pending, excluded), so a
        node never requests an item it already holds. Record entries are
        known from the last snapshot and from ``record_entry_ids`` calls
        since. The cost is one index lookup per id.
        """
        if not ids:
            return []
        self._ensure_indexed()
        stored: set[str] = set()
        hexes = [item.hex() for item in ids]
        with self.store.snapshot() as conn:
            for chunk in _chunks(hexes):
                placeholders = ",".join("?" * len(chunk))
                stored.update(row[0] for row in conn.execute(f"SELECT input_sha256 FROM events WHERE input_sha256 IN ({placeholders})", chunk))
        with self._lock:
            records, recent = self._records, self._recent_records
            return [item for item, text in zip(ids, hexes) if text not in stored and item not in recent and records.rowid_of(item) is None]

    def load_items(self, ids: Sequence[bytes]) -> list[tuple[bytes, dict[str, Any], int, int]]:
        """Return (id, item, canonical JSON size, containers) for each id this node can serve, in request order.

        ``containers`` is an upper bound on the item's arrays and objects:
        its ``[`` and ``{`` bytes, which a frame must not carry too many of.

        Unknown ids, excluded events and record entries whose aliases have
        changed since their id was computed are left out.
        """
        self._ensure_indexed()
        found: dict[bytes, tuple[dict[str, Any], int, int]] = {}
        hexes = [item.hex() for item in ids]
        with self.store.snapshot() as conn:
            for chunk in _chunks(hexes):
                placeholders = ",".join("?" * len(chunk))
                query = f"SELECT input_sha256, raw_json FROM events WHERE input_sha256 IN ({placeholders}) AND excluded = 0"
                for text, raw_json in conn.execute(query, chunk):
                    found[bytes.fromhex(text)] = (json.loads(raw_json), len(raw_json), container_bound(raw_json))
            for item_id in ids:
                if item_id in found:
                    continue
                entry = self._load_record_entry(conn, item_id)
                if entry is not None:
                    found[item_id] = entry
        return [(item_id, *found[item_id]) for item_id in dict.fromkeys(ids) if item_id in found]

    def _load_record_entry(self, conn: Any, item_id: bytes) -> tuple[dict[str, Any], int, int] | None:
        with self._lock:
            rowid = self._records.rowid_of(item_id)
            number = self._recent_records.get(item_id)
        if rowid is not None:
            row = conn.execute("SELECT pith_number, record_json FROM records WHERE rowid = ?", (rowid,)).fetchone()
        elif number is not None:
            row = conn.execute("SELECT pith_number, record_json FROM records WHERE pith_number = ?", (number,)).fetchone()
        else:
            return None
        if row is None:
            return None
        number, record_json = row[0], bytes(row[1])
        aliases = [
            _alias_entry(kind, value, created_at)
            for kind, value, created_at in conn.execute(
                "SELECT kind, value, created_at FROM aliases WHERE pith_number = ? ORDER BY kind", (number,)
            )
        ]
        encoded = record_entry_bytes(record_json, aliases)
        if hashlib.sha256(encoded).digest() != item_id:
            # The aliases changed since the id was computed; the current
            # entry has another id, which the next snapshot carries.
            return None
        return record_entry(json.loads(record_json), aliases), len(encoded), container_bound(encoded)

    def record_entry_ids(self, subjects: Iterable[str]) -> dict[str, bytes]:
        """Return the current record entry id of each stored subject and remember them as known."""
        result: dict[str, bytes] = {}
        with self.store.snapshot() as conn:
            for number in sorted(set(subjects)):
                row = conn.execute("SELECT record_json FROM records WHERE pith_number = ?", (number,)).fetchone()
                if row is None:
                    continue
                aliases = [
                    _alias_entry(kind, value, created_at)
                    for kind, value, created_at in conn.execute(
                        "SELECT kind, value, created_at FROM aliases WHERE pith_number = ? ORDER BY kind", (number,)
                    )
                ]
                result[number] = hashlib.sha256(record_entry_bytes(bytes(row[0]), aliases)).digest()
        with self._lock:
            for number, entry_id in result.items():
                self._recent_records[entry_id] = number
        return result

    def record_bundle(self, item: dict[str, Any]) -> dict[str, Any]:
        """Return a bundle with no events for a received record entry, for ``Store.add_bundle``.

        Raises:
            InvalidInput: the record is not a valid canonical record.
        """
        return emit_bundle(item["canonical_record"], item["source_aliases"], [], self.trust)

    # --- mirror hints --------------------------------------------------------

    def subjects_with_hints(self) -> list[str]:
        """Return every subject with a stored, merged mirror hint event.

        NOTE: this scans the events table (no index on event_type); the node
        calls it once at start.
        """
        with self.store.snapshot() as conn:
            rows = conn.execute(
                "SELECT DISTINCT subject FROM events WHERE event_type = 'mirror_hint' AND excluded = 0 AND pending = 0"
            ).fetchall()
        return sorted(row[0] for row in rows)

    def hint_addresses(self, subjects: Iterable[str]) -> list[HintAddress]:
        """Return the gossip addresses of the signed mirror hints in the merged states of ``subjects``.

        Only hints that the merge kept in ``current.mirror_hints`` count, so
        every one passed signature and trust checks. Unsigned hints are
        skipped, because no signing key can be charged for them.
        """
        found: list[HintAddress] = []
        with self.store.snapshot() as conn:
            for number in sorted(set(subjects)):
                row = conn.execute("SELECT state_json FROM states WHERE pith_number = ?", (number,)).fetchone()
                if row is None:
                    continue
                try:
                    hints = json.loads(row[0])["current"]["mirror_hints"]
                except (ValueError, KeyError, TypeError):
                    logger.warning("state of %s has no readable mirror_hints list; skipping its hints", number)
                    continue
                for hint in hints:
                    address = hint.get("payload", {}).get("gossip")
                    signer = hint.get("signer", {}).get("public_key_hex")
                    if isinstance(address, str) and isinstance(signer, str):
                        found.append(HintAddress(address, signer, number, str(hint.get("event_id"))))
        return found

    # --- ingest plans ---------------------------------------------------------

    def plan_ingest(self, items: Sequence[dict[str, Any]]) -> IngestPlan:
        """Group received items into the store writes that merge each subject once.

        The store validates an event once when the merge of a bundle checks
        it, but ``add_events`` validates each event and then merges its
        subject again. So every event whose record is known (in ``items``
        or in the store) goes into one bundle per subject, with the record
        entry's aliases or the stored ones. The rest (events of unknown
        subjects, which become pending, and malformed events) go to
        ``add_events``. The store ends up with the same inputs either way.
        """
        plan = IngestPlan()
        records: dict[str, int] = {}
        by_subject: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            if item.get("item_type") == "record":
                try:
                    bundle = self.record_bundle(item)
                except InvalidInput as error:
                    plan.invalid_records.append((index, str(error)))
                    continue
                subject = bundle["pith_number"]
                if subject not in records:
                    records[subject] = len(plan.bundles)
                plan.bundles.append(bundle)
                plan.bundle_events.append([])
                plan.bundle_record.append(index)
                continue
            subject = item.get("subject_pith_number")
            if isinstance(subject, str) and _PITH_NUMBER.match(subject):
                by_subject.setdefault(subject, []).append(index)
            else:
                plan.loose.append(index)

        stored = self._stored_records([subject for subject in by_subject if subject not in records])
        for subject, positions in by_subject.items():
            if subject in records:
                bundle_index = records[subject]
            elif subject in stored:
                record, aliases = stored[subject]
                bundle_index = len(plan.bundles)
                plan.bundles.append(emit_bundle(record, aliases, [], self.trust))
                plan.bundle_events.append([])
                plan.bundle_record.append(None)
            else:
                plan.loose.extend(positions)
                continue
            plan.bundles[bundle_index]["events"] = [items[index] for index in positions]
            plan.bundle_events[bundle_index] = positions
        plan.loose.sort()
        return plan

    def _stored_records(self, subjects: Sequence[str]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Return the stored record and aliases of each of ``subjects`` that has a record."""
        found: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        if not subjects:
            return found
        with self.store.snapshot() as conn:
            for number in subjects:
                row = conn.execute("SELECT record_json FROM records WHERE pith_number = ?", (number,)).fetchone()
                if row is None:
                    continue
                aliases = [
                    _alias_entry(kind, value, created_at)
                    for kind, value, created_at in conn.execute(
                        "SELECT kind, value, created_at FROM aliases WHERE pith_number = ? ORDER BY kind", (number,)
                    )
                ]
                found[number] = (json.loads(row[0]), aliases)
        return found


@dataclass
class IngestPlan:
    """The store writes for one batch of received items; positions index the batch.

    Attributes:
        loose: events for ``Store.add_events``.
        bundles: documents for ``Store.add_many_bundles``, one per subject
            (and one more per extra record entry of a subject).
        bundle_events: for each bundle, the positions of its events.
        bundle_record: for each bundle, the position of its record entry,
            or None when the record came from the store.
        invalid_records: record entries whose record is invalid, with the
            reason.
    """

    loose: list[int] = field(default_factory=list)
    bundles: list[dict[str, Any]] = field(default_factory=list)
    bundle_events: list[list[int]] = field(default_factory=list)
    bundle_record: list[int | None] = field(default_factory=list)
    invalid_records: list[tuple[int, str]] = field(default_factory=list)
