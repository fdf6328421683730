"""Offline verification and merging of files: the work behind ``verify`` and ``merge``.

Accepted inputs:

* a JSON file holding one state document or one bundle document;
* a JSON-lines file (``.jsonl``) whose lines are published record lines
  (``pith_number`` and what the registry published with it), bundle-form
  events (lines with ``event_type``), or whole bundle and state documents
  (lines with ``bundle_type`` or ``state_type``), in any mix.

A ``.json`` file is read whole and a ``.jsonl`` file line by line. Each
document or line is held to the document limits of the protocol core.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from protocol import (
    CanonicalJSONError,
    DocumentError,
    InvalidInput,
    TrustConfig,
    bundle_input,
    check_record_line,
    check_state,
    document_kind,
    merge,
    read_document,
    state_input,
    validate_event,
)
from protocol.documents import DOCUMENT_LIMITS

__all__ = ["InputError", "Item", "MergeInputError", "read_items", "verify_item", "merge_items"]

logger = logging.getLogger("pith_mirror.offline")


class InputError(Exception):
    """A file cannot be read at all (missing, unreadable or too large)."""


@dataclass
class Item:
    """One unit read from a file: a document, a record line or an event line.

    ``value`` is None and ``error`` set when the item did not decode.
    """

    label: str
    kind: str
    value: dict[str, Any] | None = None
    error: InvalidInput | None = None


def _read_bytes(path: str) -> bytes:
    # Reads stop one byte past the limit, because a device or pipe such as
    # /dev/zero reports size 0 and never ends.
    try:
        if path == "-":
            data = sys.stdin.buffer.read(DOCUMENT_LIMITS.max_bytes + 1)
        else:
            size = Path(path).stat().st_size
            if size > DOCUMENT_LIMITS.max_bytes:
                raise InputError(f"{path}: file of {size} bytes exceeds the limit of {DOCUMENT_LIMITS.max_bytes} bytes")
            with open(path, "rb") as handle:
                data = handle.read(DOCUMENT_LIMITS.max_bytes + 1)
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    if len(data) > DOCUMENT_LIMITS.max_bytes:
        raise InputError(f"{path}: input exceeds the limit of {DOCUMENT_LIMITS.max_bytes} bytes")
    return data


def _line_kind(value: dict[str, Any]) -> str:
    """Return the kind of one JSON-lines item: a signed event, a whole bundle or state, or else a record line.

    A line with ``bundle_type`` or ``state_type`` is a bundle or a state even
    when the type's value is wrong, so that the document's own checks name
    that field.
    """
    if "event_type" in value:
        return "event"
    if "bundle_type" in value:
        return "bundle"
    if "state_type" in value:
        return "state"
    return "record"


# An over-long line of a JSON-lines file is skipped up to this many bytes.
# A longer one ends the file: it is no line of records, and a stream such as
# /dev/zero would never end it. Reading 1 GiB takes about a second.
MAX_SKIPPED_BYTES = 1024 * 1024 * 1024
# Bytes read at a time while a line is skipped.
SKIP_PIECE_BYTES = 1024 * 1024


def _skip_line(handle: BinaryIO, path: str, number: int) -> None:
    """Read past the rest of an over-long line, a bounded piece at a time.

    Raises:
        InputError: the line goes on past MAX_SKIPPED_BYTES.
    """
    skipped = 0
    while skipped < MAX_SKIPPED_BYTES:
        rest = handle.readline(SKIP_PIECE_BYTES)
        if not rest or rest.endswith(b"\n"):
            return
        skipped += len(rest)
    raise InputError(f"{path}:{number}: line is longer than {MAX_SKIPPED_BYTES} bytes; stopped reading the file")


def read_items(path: str) -> Iterator[Item]:
    """Yield the items of one input file.

    A ``.jsonl`` file is read line by line, so it may be of any size. Each
    line, like a whole ``.json`` file, is held to the document limits.

    Raises:
        InputError: the file cannot be read.
    """
    if path.endswith(".jsonl"):
        yield from _read_lines(path)
        return

    data = _read_bytes(path)
    try:
        value = read_document(data)
        # A file holding one event, as ``pith-mirror sign`` writes it.
        kind = "event" if isinstance(value, dict) and "event_type" in value else document_kind(value)
    except InvalidInput as error:
        yield Item(path, "document", error=error)
        return
    yield Item(path, kind, value)


def _read_lines(path: str) -> Iterator[Item]:
    limit = DOCUMENT_LIMITS.max_bytes
    try:
        with open(path, "rb") as handle:
            number = 0
            while line := handle.readline(limit + 1):
                number += 1
                label = f"{path}:{number}"
                if len(line) > limit and not line.endswith(b"\n"):
                    yield Item(label, "line", error=CanonicalJSONError("", f"line exceeds the limit of {limit} bytes"))
                    _skip_line(handle, path, number)
                    continue
                if not line.strip():
                    continue
                try:
                    value = read_document(line.removesuffix(b"\n"))
                except InvalidInput as error:
                    yield Item(label, "line", error=error)
                    continue
                yield Item(label, _line_kind(value), value)
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None


def _describe(value: dict[str, Any]) -> str:
    number = value.get("pith_number") or value.get("subject_pith_number")
    return number if isinstance(number, str) else "?"


def verify_item(item: Item, trust: TrustConfig) -> tuple[bool, str]:
    """Verify one item; return whether it passed and a one-line report."""
    if item.error is not None or item.value is None:
        return False, f"FAIL {item.label}: {item.error}"
    value = item.value
    name = _describe(value)
    try:
        if item.kind == "record":
            passed = check_record_line(value, trust)
        elif item.kind == "state":
            passed = check_state(value, trust)
        elif item.kind == "bundle":
            passed = _check_bundle(value, trust)
        elif item.kind == "event":
            subject = value.get("subject_pith_number")
            event = validate_event(value, subject if isinstance(subject, str) else "", trust)
            passed = [f"{event.event_type} event {event.event_id}: envelope, payload and signature (merge checks it against its record)"]
        else:
            return False, f"FAIL {item.label}: unknown item kind {item.kind}"
    except InvalidInput as error:
        return False, f"FAIL {item.label} {item.kind} {name}: {error}"
    return True, f"OK   {item.label} {item.kind} {name}: {'; '.join(passed)}"


def _check_bundle(value: dict[str, Any], trust: TrustConfig) -> list[str]:
    merge_input = bundle_input(value)
    state = merge(merge_input.record, merge_input.aliases, merge_input.events, trust)
    if state["invalid_events"]:
        entry = state["invalid_events"][0]
        raise DocumentError(
            "events", f"{state['invalid_event_count']} invalid events; first {entry['event_id']}: {entry['reason']}"
        )
    return [
        "canonical_sha256 and pith_number",
        "source_aliases",
        f"{state['valid_event_count']} events (ids, signatures, receipts)",
        f"{state['equivocation_count']} equivocations",
        f"state_sha256 {state['state_sha256']}",
    ]


def _add_item(subjects: dict[str, _Subject], item: Item) -> None:
    if item.error is not None or item.value is None:
        raise item.error or DocumentError("", "did not decode")
    if item.kind == "event":
        subject = item.value.get("subject_pith_number")
        if not isinstance(subject, str):
            raise DocumentError("subject_pith_number", "missing or not text")
        subjects.setdefault(subject, _Subject()).events.append(item.value)
        return
    if item.kind == "bundle":
        merge_input = bundle_input(item.value)
    elif item.kind == "state":
        merge_input = state_input(item.value)
    else:
        raise DocumentError("", "a record line has no events to merge; use verify")
    entry = subjects.setdefault(merge_input.pith_number, _Subject())
    entry.record = merge_input.record
    entry.aliases.extend(merge_input.aliases)
    entry.events.extend(merge_input.events)


@dataclass
class _Subject:
    record: dict[str, Any] | None = None
    aliases: list[dict[str, Any]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)


class MergeInputError(Exception):
    """An input item cannot be merged; the message names the item and the field."""

    def __init__(self, label: str, error: InvalidInput) -> None:
        super().__init__(f"{label}: {error}")
        self.label = label
        self.error = error


def merge_items(items: list[Item], trust: TrustConfig) -> list[dict[str, Any]]:
    """Merge every bundle, state and event item by subject; return states in Pith number order.

    Raises:
        MergeInputError: an item did not decode or has an invalid header.
        InvalidInput: events name a subject whose record is in no input.
    """
    subjects: dict[str, _Subject] = {}
    for item in items:
        try:
            _add_item(subjects, item)
        except InvalidInput as error:
            raise MergeInputError(item.label, error) from None

    states = []
    for number in sorted(subjects):
        entry = subjects[number]
        if entry.record is None:
            raise DocumentError("subject_pith_number", f"events name {number}, but no bundle or state in the input holds its record")
        states.append(merge(entry.record, entry.aliases, entry.events, trust))
    return states
