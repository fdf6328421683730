"""``pith-mirror import``: load bundles, states, record files and HTTP mirrors into the store.

Sources:

* a ``.json`` file holding a bundle or a state document;
* a ``.jsonl`` file of published record lines (each line with a
  ``canonical_record`` becomes a bundle without events; lines without one
  are skipped, because there is no record to store), of bundle-form events,
  or of bundle and state documents, one per line;
* a URL of one document (``.../pith/{suffix}/bundle.json`` or
  ``state.json``);
* a mirror's base URL, or its ``/pith-mirrors.json``, with the suffixes to
  fetch given by ``--suffix`` or ``--suffixes-from``. The importer reads the
  manifest and fetches each record's bundle, falling back to its state.

Every item is stored only if it passes the protocol core's checks, and an
outcome is counted only after its transaction committed.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from protocol import InvalidInput, default_trust, emit_bundle

from .config import Config
from .fetch import FetchError, FetchTimeouts, MirrorClient
from .offline import InputError, read_items
from .store import DocumentOutcome, EventOutcome, Status, Store

__all__ = ["ImportSummary", "default_workers", "import_sources", "read_suffixes"]

logger = logging.getLogger("pith_mirror.import")

_SUFFIX_IN_TEXT = re.compile(r"([A-Z2-7]{26})")
_DOCUMENT_URL = re.compile(r"\A(?P<base>https?://.+?)/(?:\.well-known/)?pith/(?P<suffix>[A-Z2-7]{26})/(?P<kind>bundle|state)\.json\Z")
# Bundles stored per transaction during a file import. Larger batches share
# each commit's index pages among more bundles: 5,000 imported 100,000
# bundles in 1.80 times the verify-and-merge time, 500 in 2.15 times
# (docs/benchmarks.md). The import holds the store's lock anyway, so the
# longer write transactions delay no other writer.
BATCH_SIZE = 5000
# Worker processes that merge bundles while the importing process checks and
# writes them: the default takes every CPU but one, up to this many.
MAX_DEFAULT_WORKERS = 4
# Event lines of a file stored per transaction. They are kept until the end
# of the file up to this many, so that events listed before their records'
# bundles in the same file do not wait as pending events.
EVENTS_PER_TRANSACTION = 50_000
# Records fetched from a mirror at the same time.
FETCH_CONCURRENCY = 8
# emit_bundle validates events against a trust configuration; record lines
# carry none, so any configuration gives the same bundle.
_NO_EVENTS_TRUST = default_trust()


@dataclass
class ImportSummary:
    """Counts of one import run, with rejection reasons by code."""

    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    skipped: int = 0
    # Accepted events whose record is not stored: they wait as pending
    # events and are merged when the record arrives.
    pending: int = 0
    failed_sources: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    # The signal that stopped the import early, or None.
    interrupted_by: signal.Signals | None = None

    def count(self, status: Status | str, code: str | None = None, reason: str | None = None) -> None:
        """Add one outcome."""
        if status == Status.ACCEPTED:
            self.accepted += 1
        elif status == Status.DUPLICATE:
            self.duplicate += 1
        else:
            self.rejected += 1
            key = code or "unknown"
            self.reasons[key] += 1
            if reason and key not in self.examples:
                self.examples[key] = reason

    def add_document(self, outcome: DocumentOutcome) -> None:
        """Add a document outcome and the outcomes of its events."""
        self.count(outcome.status, outcome.code, outcome.reason)
        for event in outcome.events:
            self.add_event(event)

    def add_event(self, outcome: EventOutcome) -> None:
        """Add one event outcome; a rejection's example names the event and its subject."""
        reason = outcome.reason
        if outcome.status == Status.REJECTED:
            reason = f"event {outcome.event_id or '(no valid event_id)'} of {outcome.subject or '(unknown subject)'}: {reason}"
        elif outcome.status == Status.ACCEPTED and outcome.pending:
            self.pending += 1
        self.count(outcome.status, outcome.code, reason)

    @property
    def ok(self) -> bool:
        """Whether nothing was rejected and every source could be read."""
        return self.rejected == 0 and not self.failed_sources


def read_suffixes(lines: Iterable[str]) -> list[str]:
    """Return the Pith suffixes named in lines of text: suffixes, Pith numbers or record lines."""
    suffixes = []
    for line in lines:
        match = _SUFFIX_IN_TEXT.search(line)
        if match:
            suffixes.append(match.group(1))
    return list(dict.fromkeys(suffixes))


def _documents_from_file(path: str, summary: ImportSummary) -> Iterator[tuple[str, Any]]:
    """Yield ("bundle" | "state" | "events", value) items of one local file."""
    events: list[Any] = []
    for item in read_items(path):
        if item.error is not None or item.value is None:
            summary.count(Status.REJECTED, "invalid_document", f"{item.label}: {item.error}")
            logger.warning("rejected %s: %s", item.label, item.error)
            continue
        if item.kind == "event":
            events.append(item.value)
            if len(events) >= EVENTS_PER_TRANSACTION:
                yield "events", events
                events = []
        elif item.kind == "record":
            record = item.value.get("canonical_record")
            if not isinstance(record, dict):
                summary.skipped += 1
                continue
            try:
                yield "bundle", emit_bundle(record, item.value.get("source_aliases", []), [], _NO_EVENTS_TRUST)
            except InvalidInput as error:
                summary.count(Status.REJECTED, "invalid_document", f"{item.label}: {error}")
                logger.warning("rejected %s: %s", item.label, error)
        else:
            yield item.kind, item.value
    if events:
        yield "events", events




def _store_file(
    store: Store, path: str, summary: ImportSummary, progress: Progress | None, workers: int, stop: threading.Event
) -> None:
    """Store the items of one file; once ``stop`` is set, return after the transaction being written."""
    now = time.time()
    source = f"import:{path}"
    task = progress.add_task(f"import {Path(path).name}", total=None) if progress else None
    for kind, group in itertools.groupby(_documents_from_file(path, summary), key=lambda item: item[0]):
        if stop.is_set():
            return
        if kind == "bundle":
            # The whole run of bundles is one generator, so that the workers
            # merge the next batch while the store writes this one.
            bundles = (value for _, value in group)
            outcomes = store.add_many_bundles(bundles, source, now, batch_size=BATCH_SIZE, workers=workers, stop=stop.is_set)
            for outcome in outcomes:
                summary.add_document(outcome)
                if progress and task is not None:
                    progress.advance(task)
            continue
        for _, value in group:
            if stop.is_set():
                return
            if kind == "state":
                summary.add_document(store.add_state(value, source, now))
            else:
                for outcome in store.add_events(value, source, now):
                    summary.add_event(outcome)
            if progress and task is not None:
                progress.advance(task)


def default_workers() -> int:
    """Return the worker processes an import uses by default: one per CPU beyond the first, at most MAX_DEFAULT_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))


async def _fetch_one(client: MirrorClient, mirror: dict[str, Any], suffix: str) -> tuple[str, dict[str, Any]]:
    try:
        return "bundle", await client.fetch_bundle(mirror["bundle_pattern"], suffix)
    except FetchError as error:
        if error.status != 404:
            raise
        logger.info("no bundle for %s at %s; trying its state", suffix, mirror["base_url"])
        return "state", await client.fetch_state(mirror["state_pattern"], suffix)


async def _import_url(
    client: MirrorClient, store: Store, url: str, suffixes: list[str], summary: ImportSummary, progress: Progress | None
) -> None:
    match = _DOCUMENT_URL.match(url)
    if match:
        pattern = url.replace(match.group("suffix"), "{suffix}")
        fetch = client.fetch_bundle if match.group("kind") == "bundle" else client.fetch_state
        document = await fetch(pattern, match.group("suffix"))
        await _store_documents(store, [(match.group("kind"), document)], f"import:{url}", summary)
        return

    base = url.removesuffix("/pith-mirrors.json")
    if not suffixes:
        raise InputError(f"{url} is a mirror URL, which needs the records to fetch: pass --suffix or --suffixes-from")
    manifest = await client.fetch_manifest(base)
    mirror = manifest["mirrors"][0]
    logger.info("importing %d records from %s (%s)", len(suffixes), mirror["base_url"], mirror.get("name"))
    task = progress.add_task(f"fetch {mirror['base_url']}", total=len(suffixes)) if progress else None
    limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)

    async def fetch_and_store(suffix: str) -> None:
        async with limiter:
            try:
                kind, document = await _fetch_one(client, mirror, suffix)
            except FetchError as error:
                summary.count(Status.REJECTED, "fetch_failed", str(error))
                logger.warning("%s", error)
            else:
                await _store_documents(store, [(kind, document)], f"import:{mirror['base_url']}", summary)
        if progress and task is not None:
            progress.advance(task)

    async with trio.open_nursery() as nursery:
        for suffix in suffixes:
            nursery.start_soon(fetch_and_store, suffix)


_store_lock = trio.Lock()


async def _store_documents(store: Store, documents: list[tuple[str, Any]], source: str, summary: ImportSummary) -> None:
    async with _store_lock:
        for kind, document in documents:
            call = store.add_bundle if kind == "bundle" else store.add_state
            outcome = await trio.to_thread.run_sync(call, document, source, time.time())
            summary.add_document(outcome)


async def import_sources(
    config: Config,
    sources: list[str],
    suffixes: list[str],
    *,
    console: Console | None = None,
    show_progress: bool = True,
    workers: int | None = None,
) -> ImportSummary:
    """Import every source into the store in ``config.data_dir``; return the summary.

    ``workers`` worker processes merge the bundles of large files
    (``default_workers()`` when None, 0 for none).

    Raises:
        StoreError: the store cannot be opened or written.
    """
    from .daemon import load_trust

    trust = load_trust(config.trust_file)
    workers = default_workers() if workers is None else workers
    summary = ImportSummary()
    stop = threading.Event()
    store = await trio.to_thread.run_sync(lambda: Store(config.data_dir, trust))
    console = console or Console(stderr=True)
    progress = (
        Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)
        if show_progress and console.is_terminal
        else None
    )
    timeouts = FetchTimeouts(config.fetch_connect_timeout, config.fetch_read_timeout, config.fetch_total_timeout)
    try:
        if progress:
            progress.start()
        async with (
            MirrorClient(
                config.dial_policy(), timeouts, config.fetch_max_response_bytes, config.fetch_retries, config.fetch_backoff
            ) as client,
            trio.open_nursery() as nursery,
        ):
            work = trio.CancelScope()
            await nursery.start(_stop_on_signals, stop, work, summary)
            with work:
                for source in sources:
                    if stop.is_set():
                        break
                    logger.info("importing %s", source)
                    try:
                        if source.startswith(("http://", "https://")):
                            await _import_url(client, store, source, suffixes, summary, progress)
                        else:
                            await trio.to_thread.run_sync(_store_file, store, source, summary, progress, workers, stop)
                    except (InputError, FetchError) as error:
                        # Most of these messages begin with the source already.
                        message = str(error)
                        summary.failed_sources.append(message if message.startswith(source) else f"{source}: {message}")
                        logger.error("import of %s failed: %s", source, error)
            nursery.cancel_scope.cancel()
    finally:
        if progress:
            progress.stop()
        await trio.to_thread.run_sync(store.close)
    logger.info(
        "import %s: %d accepted, %d duplicate, %d rejected, %d skipped",
        "finished" if summary.interrupted_by is None else f"stopped by {summary.interrupted_by.name}",
        summary.accepted, summary.duplicate, summary.rejected, summary.skipped,
    )
    return summary


async def _stop_on_signals(
    stop: threading.Event, work: trio.CancelScope, summary: ImportSummary, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Stop the import at SIGINT or SIGTERM, once the transaction being written has committed.

    A second signal ends the process at once; the store loses nothing that
    committed, as after a kill.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for number in signals:
            received = signal.Signals(number)
            if stop.is_set():
                logger.warning("received %s again; exiting now", received.name)
                os._exit(128 + received.value)
            logger.warning("received %s; stopping after the transaction being written (send it again to exit now)", received.name)
            summary.interrupted_by = received
            stop.set()
            work.cancel()

