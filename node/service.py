"""The mirror service: the store, caches and metrics behind the HTTP API and the daemon.

``Store`` is synchronous SQLite. The service runs its calls in worker
threads (``trio.to_thread``) so that store calls do not block the event loop,
and keeps the served bytes of recently read states and bundles in memory.
A write invalidates the cached entries of every subject it touched before
the caller gets its outcome, and a read that overlapped a write does not
fill the cache, so a client never reads a state older than an acknowledged
write.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from protocol import MAX_BUNDLE_EVENTS, TrustConfig, format_timestamp, key_fingerprint

from .store import DocumentOutcome, EventOutcome, Status, Store, served_bytes

if TYPE_CHECKING:
    from .gossip import GossipNode

__all__ = ["Metrics", "MirrorService", "SubmitOutcome"]

logger = logging.getLogger("pith_mirror.service")

# Served documents kept in memory, per kind. A state of the published shape
# is about 5 KiB, so a full cache uses about 50 MiB.
CACHE_ENTRIES = 10_000
_Value = TypeVar("_Value")

# Worker threads that may read the store at once; writes are serialised by
# the store itself.
READ_THREADS = 4


class Metrics:
    """Prometheus metrics of one node, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pith_mirror_http_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "pith_mirror_http_request_seconds", "Time to answer an HTTP request, by route", ["route"], registry=self.registry
        )
        self.events = Counter(
            "pith_mirror_ingested_events", "Events offered to this node, by outcome and source", ["outcome", "source"], registry=self.registry
        )
        self.invalid_events = Counter(
            "pith_mirror_invalid_events", "Rejected events and documents, by reason code", ["code"], registry=self.registry
        )
        self.stored = Gauge("pith_mirror_stored_events", "Events in the store, pending and excluded ones included", registry=self.registry)
        self.records = Gauge("pith_mirror_records", "Records in the store", registry=self.registry)
        self.subjects = Gauge("pith_mirror_subjects", "Subjects with a merged state", registry=self.registry)
        self.pending = Gauge("pith_mirror_pending_events", "Stored events whose record has not arrived", registry=self.registry)
        self.rejections = Gauge("pith_mirror_rejections", "Rejected inputs since the store was created", registry=self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one completed request."""
        self.requests.labels(route=route, status=str(status)).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """Return the metrics in the Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class SubmitOutcome:
    """The result for one submitted item, as the API reports it."""

    kind: str
    index: int
    status: str
    subject: str | None = None
    event_id: str | None = None
    input_sha256: str | None = None
    field: str | None = None
    code: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Return the outcome as a JSON object, without empty fields."""
        return {key: value for key, value in self.__dict__.items() if value is not None}


def _from_event(outcome: EventOutcome) -> SubmitOutcome:
    return SubmitOutcome(
        kind="event",
        index=outcome.index,
        status=str(outcome.status),
        subject=outcome.subject,
        event_id=outcome.event_id,
        input_sha256=outcome.input_sha256,
        field=outcome.field,
        code=outcome.code,
        reason=outcome.reason,
    )


def _from_document(outcome: DocumentOutcome, kind: str) -> list[SubmitOutcome]:
    results = [
        SubmitOutcome(
            kind=kind,
            index=0,
            status=str(outcome.status),
            subject=outcome.subject,
            field=outcome.field,
            code=outcome.code,
            reason=outcome.reason,
        )
    ]
    results.extend(_from_event(event) for event in outcome.events)
    return results


class _LRU(Generic[_Value]):
    """A bounded map from text keys (Pith numbers, suffixes) to values; the least recently used entry goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, _Value] = OrderedDict()

    def get(self, key: str) -> _Value | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, key: str, value: _Value) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self.entries.pop(key, None)


_STATE_HASH_MARKER = b'"state_sha256":"'


def _state_etag(body: bytes) -> str:
    # The served form ends with ``"state_sha256":"<64 hex>"}``, so the hash is
    # read from the bytes instead of a second query.
    start = len(body) - 66 - len(_STATE_HASH_MARKER)
    if body[start : start + len(_STATE_HASH_MARKER)] == _STATE_HASH_MARKER:
        return '"' + body[-66:-2].decode("ascii") + '"'
    return '"' + hashlib.sha256(body).hexdigest() + '"'


class MirrorService:
    """One node's store, seen from trio code."""

    def __init__(self, store: Store, trust: TrustConfig, public_url: str) -> None:
        self.store = store
        self.trust = trust
        self.public_url = public_url.rstrip("/")
        self.metrics = Metrics()
        self._states: _LRU[tuple[bytes, str]] = _LRU(CACHE_ENTRIES)
        self._bundles: _LRU[tuple[bytes, str]] = _LRU(CACHE_ENTRIES)
        # Suffix to Pith number. The store never deletes a record, so an
        # entry never goes stale. A suffix without a record is not cached,
        # because its record may arrive.
        self._numbers: _LRU[str] = _LRU(CACHE_ENTRIES)
        self._read_limiter = trio.CapacityLimiter(READ_THREADS)
        self._write_lock = trio.Lock()
        # Counts finished writes. A read that started before a write and
        # ended after it may hold the old document, so it must not be cached.
        self._writes = 0
        # Called with the outcomes of every submit(); the gossip node uses
        # this to announce what HTTP clients stored.
        self.stored_listeners: list[Callable[[list[SubmitOutcome]], None]] = []
        # The node's GossipNode once the daemon started it, for tests and routes.
        self.gossip: GossipNode | None = None

    async def _read(self, function: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(function, *args, limiter=self._read_limiter)

    async def state_bytes(self, pith_number: str) -> tuple[bytes, str] | None:
        """Return the served state of ``pith_number`` and its ETag, or None."""
        cached = self._states.get(pith_number)
        if cached is not None:
            return cached
        writes_before = self._writes
        body = await self._read(self.store.get_state_bytes, pith_number)
        if body is None:
            return None
        entry = (body, _state_etag(body))
        if self._writes == writes_before:
            self._states.put(pith_number, entry)
        return entry

    async def bundle_bytes(self, pith_number: str) -> tuple[bytes, str] | None:
        """Return the served bundle of ``pith_number`` and its ETag, or None."""
        cached = self._bundles.get(pith_number)
        if cached is not None:
            return cached
        writes_before = self._writes
        bundle = await self._read(self.store.get_bundle, pith_number)
        if bundle is None:
            return None
        body = served_bytes(bundle)
        entry = (body, '"' + hashlib.sha256(body).hexdigest() + '"')
        if self._writes == writes_before:
            self._bundles.put(pith_number, entry)
        return entry

    async def resolve(self, text: str) -> str | None:
        """Return the Pith number that ``text`` names (any alias form), or None."""
        return await self._read(self.store.resolve, text)

    async def number_for_suffix(self, suffix: str) -> str | None:
        """Return the Pith number with this 26-character suffix, or None."""
        number = self._numbers.get(suffix)
        if number is None:
            number = await self._read(self.store.resolve, suffix)
            if number is not None:
                self._numbers.put(suffix, number)
        return number

    async def submit(self, document: Any, source: str) -> list[SubmitOutcome]:
        """Store a bundle, a state, one event or a list of events; return outcomes after commit."""
        now = time.time()
        if isinstance(document, dict) and document.get("bundle_type") is not None:
            kind, call, args = "bundle", self.store.add_bundle, (document, source, now)
        elif isinstance(document, dict) and document.get("state_type") is not None:
            kind, call, args = "state", self.store.add_state, (document, source, now)
        elif isinstance(document, dict) and set(document) == {"events"} and isinstance(document["events"], list):
            kind, call, args = "events", self.store.add_events, (document["events"], source, now)
        elif isinstance(document, dict):
            kind, call, args = "events", self.store.add_events, ([document], source, now)
        elif isinstance(document, list):
            kind, call, args = "events", self.store.add_events, (document, source, now)
        else:
            return [SubmitOutcome("document", 0, "rejected", field="", code="invalid_document",
                                  reason="body must be a bundle, a state, an event, a list of events or {\"events\": [...]}")]
        if kind == "events" and len(args[0]) > MAX_BUNDLE_EVENTS:
            return [SubmitOutcome("document", 0, "rejected", field="events", code="too_many_events",
                                  reason=f"{len(args[0])} events exceed the limit of {MAX_BUNDLE_EVENTS} per request")]

        async with self._write_lock:
            try:
                result = await trio.to_thread.run_sync(call, *args)
            finally:
                self._writes += 1
        outcomes = [_from_event(item) for item in result] if kind == "events" else _from_document(result, kind)

        touched = {outcome.subject for outcome in outcomes if outcome.subject}
        for subject in touched:
            self._states.discard(subject)
            self._bundles.discard(subject)
        self._count(outcomes, source)
        for listener in self.stored_listeners:
            listener(outcomes)
        return outcomes

    async def ingest_items(
        self, events: list[Any], bundles: list[dict[str, Any]], source: str
    ) -> tuple[list[EventOutcome], list[DocumentOutcome]]:
        """Store events and record bundles received from a peer, and drop the cached documents they touched.

        The events are stored first, then the bundles, each in its own
        transaction, so that a record arriving with its subject's events
        merges them once. Metrics count the outcomes under source "gossip".
        """
        now = time.time()

        def write() -> tuple[list[EventOutcome], list[DocumentOutcome]]:
            event_outcomes = self.store.add_events(events, source, now) if events else []
            document_outcomes = list(self.store.add_many_bundles(bundles, source, now)) if bundles else []
            return event_outcomes, document_outcomes

        async with self._write_lock:
            try:
                event_outcomes, document_outcomes = await trio.to_thread.run_sync(write)
            finally:
                self._writes += 1
        outcomes = [_from_event(item) for item in event_outcomes]
        for document in document_outcomes:
            outcomes.extend(_from_document(document, "bundle"))
        for subject in {outcome.subject for outcome in outcomes if outcome.subject}:
            self._states.discard(subject)
            self._bundles.discard(subject)
        self._count(outcomes, "gossip")
        return event_outcomes, document_outcomes

    def _count(self, outcomes: list[SubmitOutcome], source: str) -> None:
        for outcome in outcomes:
            if outcome.kind == "event":
                self.metrics.events.labels(outcome=outcome.status, source=source).inc()
            if outcome.status == Status.REJECTED:
                self.metrics.invalid_events.labels(code=outcome.code or "unknown").inc()
                # The store logs each rejection at INFO, rate limited.
                logger.debug(
                    "rejected %s %d from %s: subject=%s event_id=%s field=%s code=%s: %s",
                    outcome.kind, outcome.index, source, outcome.subject, outcome.event_id,
                    outcome.field, outcome.code, outcome.reason,
                )

    async def healthy(self) -> bool:
        """Return whether a read from the store succeeds."""
        try:
            await self._read(self.store.stats)
        except Exception:
            logger.exception("health check failed to read the store")
            return False
        return True

    async def metrics_text(self) -> tuple[bytes, str]:
        """Refresh the store gauges and return the metrics text and its content type."""
        await self.stats()
        return self.metrics.render()

    async def stats(self) -> dict[str, Any]:
        """Return store counts for the status page, and refresh the gauges."""
        stats = await self._read(self.store.stats)
        self.metrics.stored.set(stats.events)
        self.metrics.records.set(stats.records)
        self.metrics.subjects.set(stats.states)
        self.metrics.pending.set(stats.pending_events)
        self.metrics.rejections.set(stats.rejections_total)
        return {
            "records": stats.records,
            "subjects with a state": stats.states,
            "events": stats.events,
            "pending events": stats.pending_events,
            "excluded events": stats.excluded_events,
            "rejections": stats.rejections_total,
            "schema version": stats.schema_version,
        }

    async def recent_activity(self, limit: int) -> list[dict[str, Any]]:
        """Return the newest stored records, events and rejections for the status page."""
        items = await self._read(self.store.recent_activity, limit)
        rows = []
        for item in items:
            what = item.kind if item.kind != "event" else f"event {item.event_type}"
            detail = " ".join(part for part in (item.subject, item.event_id, item.code, item.reason) if part)
            rows.append({"time": item.time, "what": f"{what} from {item.source}", "detail": detail})
        return rows

    def profile_text(self) -> str:
        """Return the merge profile as one line of text."""
        profile = self.trust.profile
        return f"{profile['merge_version']} trust {profile['trust_sha256']}"

    def manifest(self) -> dict[str, Any]:
        """Return this mirror's ``pith-mirrors.json``, in the registry's manifest shape."""
        keys = []
        for key_id, raw in self.trust.registry_keys.items():
            keys.append(
                {
                    "key_id": key_id,
                    "algorithm": "ed25519",
                    "format": "raw",
                    "public_key_b64": base64.b64encode(raw).decode("ascii"),
                    "public_key_hex": raw.hex(),
                    "fingerprint_sha256_hex": key_fingerprint(raw),
                }
            )
        base = self.public_url
        mirror = {
            "name": f"pith-mirror at {base}",
            "mirror_type": base.split(":", 1)[0],
            "base_url": base,
            "bundle_pattern": f"{base}/pith/{{suffix}}/bundle.json",
            "state_pattern": f"{base}/pith/{{suffix}}/state.json",
            "well_known_pattern": f"{base}/.well-known/pith/{{suffix}}/bundle.json",
            "public_key": keys[0] if keys else None,
            "trusted_keys": keys,
            "status": "mirror",
        }
        return {
            "manifest_type": "pith_mirror_manifest",
            "manifest_version": "1.0",
            "generated_at": format_timestamp(time.time()),
            "merge_version": self.trust.profile["merge_version"],
            "trust_sha256": self.trust.digest,
            "mirrors": [mirror],
        }
