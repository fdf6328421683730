"""Fuzzing of every decoder of outside bytes, with a structure-aware mutation engine.

Run from the repository root::

    python -m bench.fuzz --decoder wire --count 1000000 --seed 1
    python -m bench.fuzz --all --count 1000000 --seed 1
    python -m bench.fuzz --smoke
    python -m bench.fuzz --decoder frames --engine atheris --count 100000

Decoders (``--decoder``):

* ``canonical``: ``protocol.canonical.parse_json``, then a canonical
  re-encoding that must parse back to the same bytes.
* ``frames``: ``FrameReader`` over a chunked byte stream and
  ``decode_payload`` on every frame it returns.
* ``wire``: ``Connection.receive_data`` for both roles in every state of
  the handshake (nothing exchanged, our hello sent, hellos exchanged, our
  auth sent, both ready, our side closed), fed in chunks, optionally
  followed by the end of the stream.
* ``documents``: ``read_document``, then ``bundle_input`` and ``merge`` for
  a bundle, ``check_state`` for a state and ``check_record_line`` for a
  record line.
* ``events``: ``parse_json`` then ``validate_event``, on events that are
  mostly still valid JSON after mutation.
* ``http``: ``POST /events`` through the node's ASGI application in this
  process, on a real SQLite store in a temporary directory.
* ``config``: ``node.config.load_config`` on a TOML file.

Seeds are the vectors of ``tests/data/cases/*.json``, the published files
of ``node/data/pith/``, and signed events, bundles, states, frames and
handshakes built here. Each input is a seed after tree mutations of its
decoded JSON or msgpack value, or byte mutations, or both. Tree mutations
replace, delete or insert a node, change its type, splice in a subtree of
another seed, repeat a key or nest deeper. Byte mutations flip bits,
insert, delete or copy ranges, and insert tokens such as ``\\ud800`` or a
msgpack header that claims 4 GiB.
An input whose outcome, error class and field were not seen before joins
the corpus, which is the only feedback the engine has.

Every input must end in acceptance or in the decoder's own error type. Any
other exception is a bug: the run writes the input to
``<crash-dir>/<decoder>-<sha1>.bin`` with the traceback next to it, and
exits 1. The report gives inputs per second, accepted inputs, rejected
inputs by error class, uncaught exceptions and the peak RSS of the process.
``--all`` runs each decoder in its own child process, one after another, so
that each peak RSS belongs to one decoder.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import os
import platform
import random
import re
import resource
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from node.demo import fixture_path
from protocol import (
    CanonicalJSONError,
    DocumentError,
    EventError,
    InvalidInput,
    SigningKey,
    WireError,
    build_event,
    bundle_input,
    canonical_bytes,
    compute_event_id,
    check_record_line,
    check_state,
    default_trust,
    document_kind,
    emit_bundle,
    merge,
    parse_json,
    read_document,
    state_hash,
    state_input,
    validate_event,
)
from protocol.keys import encode_signature_b64
from protocol.frames import FrameReader, decode_payload, encode_frame, encode_payload
from protocol.wire import (
    Connection,
    HandshakeFailed,
    MergeProfile,
    PeerClosed,
    PeerError,
    ProtocolViolation,
    Role,
)

__all__ = ["DECODERS", "FuzzReport", "main", "run_decoder", "run_smoke"]

REPO = Path(__file__).resolve().parent.parent
CASES_DIR = REPO / "tests" / "data" / "cases"
DEFAULT_CRASH_DIR = REPO / "bench-results" / "fuzz"
SMOKE_COUNT = 300

# The subject of the published state in node/data/pith, and a second
# published record that events may cite.
SUBJECT = "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY"
CITED_SUBJECT = "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3"
CREATED_AT = "2026-05-18T00:22:39Z"

# Most inputs a corpus holds; the seeds are never evicted.
MAX_CORPUS = 4000
# Largest input the mutation engine produces. Larger lengths are still
# tested, by tokens such as a msgpack bin32 header that claims 4 GiB.
MAX_INPUT_BYTES = 256 * 1024


# --- seeds -------------------------------------------------------------------


def _case_vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = []
    for path in sorted(CASES_DIR.glob("*.json")):
        case = json.loads(path.read_text("utf-8"))
        vectors.extend(case.get("vectors", []))
    return vectors


def _case_documents() -> list[Any]:
    return [json.loads(path.read_text("utf-8")) for path in sorted(CASES_DIR.glob("*.json"))]


def json_seeds_from_cases() -> list[bytes]:
    """Return every JSON text of the case vectors, and each case file's illustrative events."""
    seeds = [vector["input_json_text"].encode("utf-8") for vector in _case_vectors() if "input_json_text" in vector]
    for case in _case_documents():
        if "canonical_body_utf8" in case:
            seeds.append(case["canonical_body_utf8"].encode("utf-8"))
        events = case.get("events", {})
        for event in events.values() if isinstance(events, dict) else events:
            seeds.append(json.dumps(event).encode("utf-8"))
        for event in case.get("sample_flood_events", [])[:4]:
            seeds.append(json.dumps(event).encode("utf-8"))
    return seeds


def msgpack_seeds_from_cases() -> list[bytes]:
    """Return the msgpack payloads of the case vectors; chunked vectors are joined."""
    seeds = []
    for vector in _case_vectors():
        if "input_hex" in vector:
            seeds.append(bytes.fromhex(vector["input_hex"]))
        if "chunks_hex" in vector:
            seeds.append(bytes.fromhex("".join(vector["chunks_hex"])))
    return seeds


def fixture_seeds() -> list[bytes]:
    """Return the published state, the mirror manifest and every record line."""
    seeds = [
        fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes(),
        fixture_path("pith-mirrors.json").read_bytes(),
    ]
    seeds.extend(line for line in fixture_path("records.jsonl").read_bytes().splitlines() if line.strip())
    return seeds


def _valid_payloads(record_sha256: str) -> dict[str, dict[str, Any]]:
    return {
        "author_attestation": {"author_name": "Ada Lovelace", "orcid": "0000-0002-1825-0097", "statement": "authored"},
        "timestamp_anchor": {"anchor_type": "opentimestamps", "anchored_sha256": record_sha256, "proof_b64": "AAECAw=="},
        "storage_attestation": {
            "url": "https://files.example.org/paper.pdf",
            "content_sha256": "ab" * 32,
            "size_bytes": 123456,
            "media_type": "application/pdf",
        },
        "citation_signature": {"cites_pith_number": CITED_SUBJECT, "context": "cited in section 2"},
        "replication_record": {
            "replication_id": "rep-2026-001",
            "outcome": "reproduced",
            "report_url": "https://replications.example.org/rep-2026-001",
            "report_sha256": "cd" * 32,
        },
        "correction": {"corrects_event_id": "sha256:" + "ef" * 32, "reason": "the abstract hash was wrong"},
        "mirror_hint": {"slot": "primary", "url": "https://mirror.example.org/pith/", "gossip": "mirror.example.org:9090"},
        "graph_snapshot": {"graph_snapshot": {"cites": [CITED_SUBJECT], "cited_by": []}},
    }


@dataclass
class BuiltSeeds:
    """Events, a bundle and a state built from the published data, with signatures that verify."""

    events: list[dict[str, Any]]
    bundle: dict[str, Any]
    state: dict[str, Any]


_BUILT: BuiltSeeds | None = None


def built_seeds() -> BuiltSeeds:
    """Sign one event of each type about the published subject; build its bundle and state."""
    global _BUILT
    if _BUILT is not None:
        return _BUILT
    trust = default_trust()
    published = state_input(read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()))
    record_sha256 = hashlib.sha256(canonical_bytes(published.record)).hexdigest()
    signer = SIGNER
    events = []
    for event_type, payload in _valid_payloads(record_sha256).items():
        events.append(
            build_event(
                signer,
                event_type=event_type,
                subject=SUBJECT,
                payload=payload,
                created_at=CREATED_AT,
                key_id="fuzz-key-1",
                signer_id="fuzz.example.org",
                signer_type="mirror",
            )
        )
    all_events = [*published.events, *events]
    bundle = emit_bundle(published.record, published.aliases, all_events, trust)
    state = merge(published.record, published.aliases, all_events, trust)
    _BUILT = BuiltSeeds(events=[*published.events, *events], bundle=bundle, state=state)
    return _BUILT


# --- structure-aware mutation ------------------------------------------------


class Pairs(list):  # type: ignore[type-arg]
    """A JSON object or msgpack map written from a list of pairs, so it can repeat a key."""


class RawInt(int):
    """An integer the msgpack writer encodes in a wider form than needed."""


@dataclass(frozen=True)
class Float32:
    """A float the msgpack writer encodes as float32."""

    value: float


INTERESTING_INTS = [
    0, 1, -1, 2, 7, 31, 32, 33, 63, 64, 127, 128, 255, 256, 1023, 1024, 65535, 65536,
    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 - 1, 2**53, 2**53 + 1, -(2**53 - 1), -(2**53), 2**63 - 1,
    -(2**63), 2**64 - 1, 10**6, 10**20, -(10**20), 10**400,
]
INTERESTING_TEXT = [
    "", " ", "a", "\x00", "\n", "\u007f", "\u0085", "\ud800", "\udc00", "\ud83d\ude00", "\ufeff", "\uffff",
    "é", "x" * 300, "y" * 5000, "sha256:" + "0" * 64, "sha256:" + "A" * 64, "0" * 64, "f" * 63, "f" * 65,
    SUBJECT, CITED_SUBJECT, "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYIL", "pith:0000:AAAAAAAAAAAAAAAAAAAAAAAAAA",
    "2026-05-18T00:22:39Z", "2026-02-30T00:00:00Z", "2026-05-18T24:00:00Z", "1969-12-31T23:59:59Z",
    "9999-12-31T23:59:59Z", "2026-05-18T00:22:60Z", "2026-05-18 00:22:39Z", "0000-00-00T00:00:00Z",
    "https://mirror.example.org/pith/", "http://[::1", "http://[::1]:0/", "http://a:99999/", "http://@/",
    "http://user@127.0.0.1:8080/", "file:///etc/passwd", "https://", "http://169.254.169.254/",
    "mirror.example.org:9090", "[::1]:9090", "[fe80::1%eth0]:1", "0:0", "a:65536", "127.0.0.1:-1",
    "1711.00489", "hep-lat/0305021", "0704.0001", "1501.00001v0", "1501.00001v1000000",
    "AAECAw==", "AAECAw=", "AAECAx==", "A" * 86 + "==", "A" * 88, "pith-open-graph-merge-v1",
    "pith-mirror/1", "pith-mirror/2", "record_created", "graph_snapshot", "mirror_hint", "record",
    "pith_registry", "pith-v1-2026-05", "0000-0002-1825-0097", "0000-0002-1825-009X", "application/pdf",
    "pith_short_8", "pith_short_12", "arxiv", "arxiv_version", "doi", "10.48550/arXiv.1711.00489",
    "opentimestamps", "rfc3161", "authored", "reproduced", "\u2028", "a\u0000b", "%00", "\\",
    "9007199254740993", "-0", "1e999", "NaN",
]
INTERESTING_BYTES = [
    b"", b"\x00", b"\xff" * 8, b"\x00" * 32, b"\x01" * 32, b"\xff" * 32, b"\x00" * 64, b"\xff" * 64,
    bytes(range(32)), b"\xc1", b"x" * 1000,
]
FLOATS = [0.0, -0.0, 1.0, 1.5, 1e300, float("inf"), float("-inf"), float("nan"), 2.0**53, 1e-7]

# Byte strings inserted by the byte mutator.
JSON_TOKENS = [
    b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"\\ud800", b"\\udc00", b"\\ud83d\\ude00",
    b"\\u0000", b"\\x00", b"null", b"true", b"false", b"NaN", b"Infinity", b"-Infinity", b"-0", b"-0.0",
    b"1e400", b"1.0", b"1E5", b"0x10", b"01", b"9" * 20, b"9" * 5000, b"[" * 40, b"]" * 40, b"{\"a\":" * 40,
    b"[" * 3000, b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xff", b"\x00",
    b"\t", b"\r\n", b"\xe2\x80\xa8", b"/*", b"//", b"'", b'"":', b'"a":1,"a":2',
]
MSGPACK_TOKENS = [
    b"\xc0", b"\xc1", b"\xc2", b"\xc3", b"\xc4\x00", b"\xc5\xff\xff", b"\xc6\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdc\xff\xff",
    b"\xde\xff\xff", b"\xca\x7f\xc0\x00\x00", b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00", b"\xd6\xff\x00\x00\x00\x00", b"\xd7\xff" + b"\x00" * 8,
    b"\xc7\x0c\xff" + b"\x00" * 12, b"\xd4\x05\x00", b"\xc7\x00\x01", b"\xa3\xed\xa0\x80",
    b"\xa2\xc0\xaf", b"\xa1\xff", b"\x91" * 40, b"\x81\xa1a" * 40, b"\x91" * 2000, b"\x80", b"\x90",
    b"\x82\xa1a\x01\xa1a\x02", b"\x81\x01\x01", b"\x81\xc4\x01a\x01", b"\x81\x90\x01",
]
TOML_TOKENS = [
    b"=", b"\n", b"[", b"]", b"[[", b"]]", b"{", b"}", b'"', b"'", b"'''", b'"""', b"#", b".", b",",
    b" = inf", b" = nan", b" = -0.0", b" = 1e999", b" = 9223372036854775808", b" = 0x7fffffff",
    b" = 1979-05-27T07:32:00Z", b" = 07:32:00", b" = true", b" = []", b" = {}", b" = [[1], [2]]",
    b'"~nosuchuser/x"', b'"~"', b'"\\u0000"', b'"\\ud800"', b"\xff", b"\x00", b"\r", b"\\",
    b'"0.0.0.0:0"', b'"[::1]:0"', b'"127.1:80"', b'"0x7f.1:80"', b'"a..b:1"', b'"[::1]"', b'":80"',
    b'"http://[::1]:0/"', b'"http://user@host/"', b'"debug"', b"data_dir", b"peers", b"http_listen",
    b"gossip_listen", b"public_url", b"trust_file", b"log_level", b"max_request_body_bytes",
]


def _walk_nodes(value: Any, limit: int = 2000) -> list[tuple[tuple[Any, ...], Any]]:
    """Return (path, node) pairs of a value tree, breadth first, at most ``limit`` of them."""
    found: list[tuple[tuple[Any, ...], Any]] = []
    queue: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    index = 0
    while index < len(queue) and len(found) < limit:
        path, node = queue[index]
        index += 1
        found.append((path, node))
        if isinstance(node, Pairs):
            queue.extend((path + (position,), member) for position, (_, member) in enumerate(node))
        elif isinstance(node, dict):
            queue.extend((path + (key,), member) for key, member in node.items())
        elif isinstance(node, list):
            queue.extend((path + (position,), member) for position, member in enumerate(node))
    return found


def _replace_at(root: Any, path: tuple[Any, ...], new: Any, delete: bool = False) -> Any:
    """Return a copy of ``root`` with the node at ``path`` replaced (or deleted); only the spine is copied."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(root, Pairs):
        # Members of a Pairs are addressed by position, because keys may repeat.
        copied = Pairs(root)
        if not rest and delete:
            del copied[head]
        else:
            key, member = copied[head]
            copied[head] = (key, _replace_at(member, rest, new, delete))
        return copied
    copied = copy.copy(root)
    if not rest and delete:
        del copied[head]
    else:
        copied[head] = _replace_at(root[head], rest, new, delete)
    return copied


class TreeMutator:
    """Mutations of decoded JSON or msgpack values, with a pool of subtrees taken from the seeds."""

    def __init__(self, rng: random.Random, seed_values: list[Any], binary: bool) -> None:
        self.rng = rng
        self.binary = binary
        self.subtrees: list[Any] = []
        self.keys: list[str] = []
        for value in seed_values:
            for _, node in _walk_nodes(value, 400):
                self.subtrees.append(node)
                if isinstance(node, dict):
                    self.keys.extend(key for key in node if isinstance(key, str))
        self.keys = sorted(set(self.keys)) or ["type"]
        if len(self.subtrees) > 5000:
            self.subtrees = rng.sample(self.subtrees, 5000)

    def random_scalar(self) -> Any:
        rng = self.rng
        kind = rng.randrange(9 if self.binary else 7)
        if kind == 0:
            return rng.choice(INTERESTING_INTS)
        if kind == 1:
            return rng.choice(INTERESTING_TEXT)
        if kind == 2:
            return rng.choice([None, True, False])
        if kind == 3:
            return rng.choice(self.subtrees) if self.subtrees else None
        if kind == 4:
            return rng.choice(FLOATS)
        if kind == 5:
            return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000), rng.randrange(0xD800, 0xE000), rng.randrange(0x10000, 0x110000)])) for _ in range(rng.randrange(1, 12)))
        if kind == 6:
            return rng.choice([[], {}, [None], {"": None}])
        if kind == 7:
            return rng.choice(INTERESTING_BYTES)
        return rng.choice([msgpack.ExtType(rng.randrange(0, 128), b"\x00" * rng.randrange(0, 9)), Float32(1.5), RawInt(rng.randrange(0, 200))])

    def mutate_text(self, text: str) -> str:
        rng = self.rng
        if not text:
            return rng.choice(INTERESTING_TEXT)
        op = rng.randrange(6)
        position = rng.randrange(len(text) + 1)
        if op == 0:
            return text[:position] + rng.choice(INTERESTING_TEXT)[:8] + text[position:]
        if op == 1:
            return text[:position] + text[position + 1 :]
        if op == 2:
            return text[:position] + chr(rng.choice([rng.randrange(0, 0x80), rng.randrange(0xD800, 0xE000), rng.randrange(0x80, 0x110000)])) + text[position + 1 :]
        if op == 3:
            return text.upper() if rng.random() < 0.5 else text.lower()
        if op == 4:
            return text + text[: rng.randrange(1, len(text) + 1)]
        return text[:position]

    def mutate_node(self, node: Any) -> Any:
        rng = self.rng
        if isinstance(node, str) and rng.random() < 0.6:
            return self.mutate_text(node)
        if type(node) is int and rng.random() < 0.6:
            return node + rng.choice([-1, 1, 2**32, -(2**53), 2**53]) if rng.random() < 0.5 else rng.choice(INTERESTING_INTS)
        if isinstance(node, dict) and node and rng.random() < 0.5:
            op = rng.randrange(4)
            keys = list(node)
            if op == 0:
                # A repeated key, which both strict decoders must reject.
                key = rng.choice(keys)
                pairs = Pairs(node.items())
                pairs.insert(rng.randrange(len(pairs) + 1), (key, self.random_scalar()))
                return pairs
            if op == 1:
                updated = dict(node)
                updated[rng.choice(self.keys)] = self.random_scalar()
                return updated
            if op == 2 and self.binary:
                updated = dict(node)
                updated[rng.choice([1, b"type", None, 1.5, True])] = self.random_scalar()  # type: ignore[index]
                return updated
            return {key: node[key] for key in rng.sample(keys, len(keys))}
        if isinstance(node, list) and rng.random() < 0.5:
            op = rng.randrange(4)
            if op == 0 and node:
                return node + [rng.choice(node)] * rng.randrange(1, 4)
            if op == 1:
                return node * rng.randrange(2, 40) if node else [None] * rng.randrange(1, 300)
            if op == 2:
                return list(reversed(node))
            return node + [self.random_scalar()]
        if rng.random() < 0.15:
            depth = rng.choice([1, 2, 30, 31, 32, 33, 34, 35, 40])
            for _ in range(depth):
                node = [node] if rng.random() < 0.5 else {"a": node}
            return node
        return self.random_scalar()

    def mutate(self, value: Any, rounds: int) -> Any:
        rng = self.rng
        for _ in range(rounds):
            nodes = _walk_nodes(value, 600)
            path, node = rng.choice(nodes)
            if path and rng.random() < 0.15:
                with contextlib.suppress(KeyError, IndexError, TypeError):
                    value = _replace_at(value, path, None, delete=True)
                    continue
            with contextlib.suppress(KeyError, IndexError, TypeError):
                value = _replace_at(value, path, self.mutate_node(node))
        return value


def write_json(value: Any, rng: random.Random) -> bytes:
    """Encode a value tree as JSON text with a random spelling; lone surrogates become CESU-8 or escapes."""
    ensure_ascii = rng.random() < 0.3
    separator = rng.choice([(",", ":"), (", ", ": "), (",\n", " : ")])
    parts: list[str] = []

    def emit(node: Any, depth: int) -> None:
        if depth > 200:
            parts.append("null")
            return
        if isinstance(node, (dict, Pairs)):
            items = node if isinstance(node, Pairs) else list(node.items())
            parts.append("{")
            for position, (key, member) in enumerate(items):
                if position:
                    parts.append(separator[0])
                parts.append(json.dumps(key if isinstance(key, str) else str(key), ensure_ascii=ensure_ascii))
                parts.append(separator[1])
                emit(member, depth + 1)
            parts.append("}")
        elif isinstance(node, list):
            parts.append("[")
            for position, member in enumerate(node):
                if position:
                    parts.append(separator[0])
                emit(member, depth + 1)
            parts.append("]")
        elif node is None or isinstance(node, bool):
            parts.append(json.dumps(node))
        elif isinstance(node, int):
            parts.append(str(int(node)))
        elif isinstance(node, float):
            parts.append(json.dumps(node) if rng.random() < 0.8 else rng.choice(["1.0", "1e0", "-0.0", "1E+2", "0.1"]))
        elif isinstance(node, Float32):
            parts.append(repr(node.value))
        elif isinstance(node, str):
            parts.append(json.dumps(node, ensure_ascii=ensure_ascii))
        elif isinstance(node, bytes):
            parts.append(json.dumps(node.hex()))
        else:
            parts.append("null")

    emit(value, 0)
    return "".join(parts).encode("utf-8", "surrogatepass")


def write_msgpack(value: Any, rng: random.Random) -> bytes:
    """Encode a value tree as msgpack, with repeated keys, wide ints, float32 and ext types where the tree has them."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=True, strict_types=False)
    parts: list[bytes] = []

    def emit(node: Any, depth: int) -> None:
        if depth > 200:
            parts.append(b"\xc0")
            return
        if isinstance(node, (dict, Pairs)):
            items = node if isinstance(node, Pairs) else list(node.items())
            parts.append(packer.pack_map_header(len(items)))
            for key, member in items:
                emit(key, depth + 1)
                emit(member, depth + 1)
        elif isinstance(node, list):
            parts.append(packer.pack_array_header(len(node)))
            for member in node:
                emit(member, depth + 1)
        elif isinstance(node, RawInt):
            parts.append(b"\xcf" + int(node).to_bytes(8, "big"))
        elif isinstance(node, bool) or node is None:
            parts.append(packer.pack(node))
        elif isinstance(node, int):
            if -(2**63) <= node < 2**64:
                parts.append(packer.pack(node))
            else:
                parts.append(b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff")
        elif isinstance(node, Float32):
            parts.append(b"\xca" + struct.pack(">f", node.value))
        elif isinstance(node, float):
            if rng.random() < 0.3 and not abs(node) > 3e38:
                parts.append(b"\xca" + struct.pack(">f", node))
            else:
                parts.append(packer.pack(node))
        elif isinstance(node, str):
            encoded = node.encode("utf-8", "surrogatepass")
            parts.append(_str_header(len(encoded)) + encoded)
        elif isinstance(node, (bytes, msgpack.ExtType)):
            parts.append(packer.pack(node))
        else:
            parts.append(b"\xc0")

    emit(value, 0)
    return b"".join(parts)


def _str_header(size: int) -> bytes:
    if size < 32:
        return bytes([0xA0 | size])
    if size < 256:
        return b"\xd9" + bytes([size])
    if size < 65536:
        return b"\xda" + size.to_bytes(2, "big")
    return b"\xdb" + size.to_bytes(4, "big")


def mutate_bytes(data: bytes, rng: random.Random, tokens: list[bytes], corpus: list[bytes]) -> bytes:
    """Apply one to four byte-level mutations."""
    buffer = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        size = len(buffer)
        op = rng.randrange(9)
        position = rng.randrange(size + 1)
        if op == 0 and size:
            index = rng.randrange(size)
            buffer[index] ^= 1 << rng.randrange(8)
        elif op == 1 and size:
            buffer[rng.randrange(size)] = rng.randrange(256)
        elif op == 2:
            buffer[position:position] = rng.randbytes(rng.randrange(1, 9))
        elif op == 3 and size:
            end = min(size, position + rng.randrange(1, 17))
            del buffer[position:end]
        elif op == 4 and size:
            start = rng.randrange(size)
            chunk = buffer[start : start + rng.randrange(1, 65)]
            buffer[position:position] = chunk
        elif op in (5, 6):
            buffer[position:position] = rng.choice(tokens)
        elif op == 7 and corpus:
            other = rng.choice(corpus)
            start = rng.randrange(len(other) + 1)
            buffer[position:] = other[start:]
        else:
            del buffer[position:]
    return bytes(buffer[:MAX_INPUT_BYTES])


# --- targets -------------------------------------------------------------------


class Rejected(Exception):
    """Raised by a target's ``run`` for an input the decoder rejected in its own error type.

    ``label`` is the error class (and code, where the error has one); ``field``
    is the field the decoder named, with list indices removed.
    """

    def __init__(self, label: str, field: str = "") -> None:
        super().__init__(label)
        self.label = label
        self.field = re.sub(r"\[\d+\]", "[]", field)[:80]


def _rejected(error: InvalidInput) -> Rejected:
    label = type(error).__name__
    if isinstance(error, EventError):
        label += f"/{error.code}"
    return Rejected(label, error.field)


class Target:
    """A decoder under test: its seeds, how to mutate an input, and how to run one.

    ``run`` returns a label for an accepted input, raises ``Rejected`` for an
    input the decoder rejected with its own error type, and lets every other
    exception through: that is the bug the fuzzer looks for.
    """

    name = ""
    # Leading bytes of each input that select options (chunk size, state)
    # instead of being decoded.
    header_bytes = 0
    codec = "json"
    byte_mutation_rate = 0.35
    # Share of tree mutations turned back into the canonical value model
    # before encoding, for decoders whose interesting checks come after
    # parse_json.
    model_rate = 0.0

    def seeds(self) -> list[bytes]:
        raise NotImplementedError

    def run(self, data: bytes) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the target opened."""

    def loose_decode(self, body: bytes) -> Any:
        """Return the value tree of an input body for tree mutation, or raise ValueError."""
        if self.codec == "json":
            return json.loads(body, object_pairs_hook=Pairs)
        if self.codec == "msgpack":
            return msgpack.unpackb(body, raw=False, strict_map_key=False, object_pairs_hook=Pairs, use_list=True)
        raise ValueError("no tree form")

    def encode(self, value: Any, rng: random.Random) -> bytes:
        if self.codec == "msgpack":
            return write_msgpack(value, rng)
        return write_json(value, rng)

    def tokens(self) -> list[bytes]:
        return {"json": JSON_TOKENS, "msgpack": MSGPACK_TOKENS, "frames": MSGPACK_TOKENS, "toml": TOML_TOKENS}[self.codec]

    def structured_mutation(self, body: bytes, tree: Any, mutator: TreeMutator, rng: random.Random) -> bytes:
        """Return a mutated body: tree mutations of ``tree``, or byte mutations when the body has no tree."""
        if tree is None:
            return body
        mutated = mutator.mutate(tree, rng.randrange(1, 4))
        if rng.random() < self.model_rate:
            mutated = resign_events(in_json_model(mutated), rng)
        return self.encode(mutated, rng)


_SURROGATE = re.compile("[\ud800-\udfff]")


def in_json_model(value: Any, keep_bytes: bool = False) -> Any:
    """Return a copy of a value tree that parse_json accepts: no floats, no unsafe ints, no lone surrogates, no repeated keys.

    Targets whose decoder sits behind parse_json use it on most inputs, so
    that most inputs reach the checks after parsing.
    """

    def convert(node: Any, depth: int) -> Any:
        if depth > 30:
            return None
        if isinstance(node, (Pairs, dict)):
            items = node if isinstance(node, Pairs) else node.items()
            result = {}
            for key, member in items:
                if isinstance(key, str):
                    result[_SURROGATE.sub("?", key)] = convert(member, depth + 1)
            return result
        if isinstance(node, list):
            return [convert(member, depth + 1) for member in node]
        if node is None or isinstance(node, bool):
            return node
        if isinstance(node, int):
            return max(-(2**53 - 1), min(2**53 - 1, int(node)))
        if isinstance(node, str):
            return _SURROGATE.sub("?", node)
        if isinstance(node, bytes):
            return node if keep_bytes else node.hex()
        return 0

    return convert(value, 1)


SIGNER = SigningKey.from_label("fuzz-signer")
_BODY_FIELDS = ("event_type", "subject_pith_number", "target", "created_at", "signer", "payload")


def resign_events(value: Any, rng: random.Random) -> Any:
    """Give every event of ``SIGNER`` in a value tree a correct event id and signature again.

    Without this, a mutation of a signed event would almost always stop at
    the event id or signature check, and the checks after them would never
    run. A state document gets its ``state_sha256`` recomputed for the same
    reason. The caller passes a tree in the canonical value model.
    """
    if isinstance(value, dict):
        value = {key: resign_events(member, rng) for key, member in value.items()}
        signer = value.get("signer")
        if isinstance(signer, dict) and signer.get("public_key_hex") == SIGNER.public_key_hex and rng.random() < 0.8:
            body = {key: value[key] for key in _BODY_FIELDS if key in value}
            with contextlib.suppress(InvalidInput):
                event_id = compute_event_id(body)
                value["event_id"] = event_id
                value["signature_b64"] = encode_signature_b64(SIGNER.sign(bytes.fromhex(event_id[7:])))
        if value.get("state_type") is not None and "state_sha256" in value:
            body = {key: member for key, member in value.items() if key != "state_sha256"}
            with contextlib.suppress(InvalidInput):
                value["state_sha256"] = state_hash(body)
        return value
    if isinstance(value, list):
        return [resign_events(member, rng) for member in value]
    return value


def _pairs_to_dict(value: Any) -> Any:
    """Return a value tree with Pairs turned into dicts (the last repeat wins), for seed trees."""
    if isinstance(value, Pairs):
        if not all(isinstance(key, (str, int, bytes, bool, type(None), float)) for key, _ in value):
            return Pairs((key, _pairs_to_dict(member)) for key, member in value)
        return {key: _pairs_to_dict(member) for key, member in value}
    if isinstance(value, dict):
        return {key: _pairs_to_dict(member) for key, member in value.items()}
    if isinstance(value, list):
        return [_pairs_to_dict(member) for member in value]
    return value


class CanonicalTarget(Target):
    name = "canonical"

    def seeds(self) -> list[bytes]:
        built = built_seeds()
        return [
            *json_seeds_from_cases(),
            *fixture_seeds(),
            canonical_bytes(built.bundle),
            canonical_bytes(built.state),
            *(canonical_bytes(event) for event in built.events),
        ]

    def run(self, data: bytes) -> str:
        try:
            value = parse_json(data)
        except CanonicalJSONError as error:
            raise _rejected(error) from None
        encoded = canonical_bytes(value)
        if canonical_bytes(parse_json(encoded)) != encoded:
            raise AssertionError("canonical bytes do not parse back to the same bytes")
        return "accepted"


def _frame_all(payloads: list[bytes]) -> bytes:
    return b"".join(len(payload).to_bytes(4, "big") + payload for payload in payloads)


def split_frames(stream: bytes) -> list[bytes] | None:
    """Return the payloads of a stream of well-formed frames, or None."""
    payloads = []
    offset = 0
    while offset < len(stream):
        if offset + 4 > len(stream):
            return None
        length = int.from_bytes(stream[offset : offset + 4], "big")
        if length == 0 or offset + 4 + length > len(stream):
            return None
        payloads.append(stream[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return payloads


CHUNK_SIZES = (0, 1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 64, 100, 256, 1000, 4096)


def chunks_of(stream: bytes, selector: int) -> Iterator[bytes]:
    """Split ``stream`` into chunks of the size that the low 4 bits of ``selector`` pick (0: one chunk)."""
    size = CHUNK_SIZES[selector & 0x0F] or max(1, len(stream))
    for start in range(0, len(stream), size):
        yield stream[start : start + size]


class FrameStreamTarget(Target):
    """Shared tree mutation of a stream of frames: decode each payload, mutate one or the list, frame them again."""

    codec = "frames"

    def loose_decode(self, body: bytes) -> Any:
        payloads = split_frames(body)
        if not payloads:
            raise ValueError("not a stream of frames")
        messages = []
        for payload in payloads:
            try:
                messages.append(msgpack.unpackb(payload, raw=False, strict_map_key=False, object_pairs_hook=Pairs))
            except Exception:  # noqa: BLE001 - any payload msgpack cannot read stays as raw bytes
                messages.append(RawPayload(payload))
        return messages

    def structured_mutation(self, body: bytes, tree: Any, mutator: TreeMutator, rng: random.Random) -> bytes:
        if tree is None:
            return body
        messages = list(tree)
        op = rng.randrange(6)
        if op == 0 and len(messages) > 1:
            del messages[rng.randrange(len(messages))]
        elif op == 1:
            messages.insert(rng.randrange(len(messages) + 1), rng.choice(messages))
        elif op == 2 and mutator.subtrees:
            messages.insert(rng.randrange(len(messages) + 1), rng.choice(self.seed_messages or messages))
        elif op == 3:
            rng.shuffle(messages)
        else:
            index = rng.randrange(len(messages))
            if not isinstance(messages[index], RawPayload):
                messages[index] = mutator.mutate(messages[index], rng.randrange(1, 4))
                if rng.random() < self.model_rate:
                    messages[index] = resign_events(in_json_model(messages[index], keep_bytes=True), rng)
        payloads = [message.payload if isinstance(message, RawPayload) else write_msgpack(message, rng) for message in messages]
        stream = _frame_all([payload for payload in payloads if payload])
        if rng.random() < 0.05:
            # A length prefix that disagrees with the payload.
            stream = rng.choice([b"\x00\x00\x00\x00", b"\x00\x10\x00\x01", b"\xff\xff\xff\xff", b"\x00\x00\x00\x05"]) + stream
        return stream

    seed_messages: list[Any] = []


@dataclass(frozen=True)
class RawPayload:
    """A frame payload kept as bytes because msgpack cannot decode it."""

    payload: bytes


def sample_messages(peer: Connection | None = None) -> list[dict[str, Any]]:
    """Return one well-formed message of every session type, as a peer would send them."""
    built = built_seeds()
    record_item = {"item_type": "record", "canonical_record": built.bundle["canonical_record"], "source_aliases": built.bundle["source_aliases"]}
    return [
        {"type": "announce", "ids": [bytes(range(32)), b"\x01" * 32]},
        {"type": "want", "ids": [bytes(range(32))]},
        {"type": "items", "items": [built.events[-1], built.events[2], record_item], "more": False},
        {"type": "items", "items": [], "more": True},
        {"type": "reconcile", "session": 1, "round": 0, "payload": b"\x00\x01\x02"},
        {"type": "peers", "addresses": ["mirror.example.org:9090", "[2001:db8::1]:9090"]},
        {"type": "ping", "nonce": b"\x01" * 8},
        {"type": "pong", "nonce": b"\x02" * 8},
        {"type": "error", "code": "busy", "reason": "try later"},
        {"type": "bye"},
    ]


class FramesTarget(FrameStreamTarget):
    name = "frames"
    header_bytes = 1

    def seeds(self) -> list[bytes]:
        payloads = [encode_payload(message) for message in sample_messages()]
        self.seed_messages = sample_messages()
        seeds = [bytes([selector]) + encode_frame(payload) for selector, payload in enumerate(payloads)]
        seeds.append(b"\x00" + _frame_all(payloads))
        seeds.append(b"\x01" + _frame_all(payloads[:3]))
        for payload in msgpack_seeds_from_cases():
            seeds.append(b"\x00" + encode_frame(payload))
            seeds.append(b"\x03" + payload)
        return seeds

    def run(self, data: bytes) -> str:
        selector, stream = (data[0], data[1:]) if data else (0, b"")
        reader = FrameReader()
        decoded = 0
        for chunk in chunks_of(stream, selector):
            reader.feed(chunk)
            while True:
                try:
                    payload = reader.next_frame()
                except WireError as error:
                    raise _rejected(error) from None
                if payload is None:
                    break
                try:
                    value = decode_payload(payload)
                except WireError as error:
                    raise _rejected(error) from None
                if decode_payload(encode_payload(value)) != value:
                    raise AssertionError("a decoded frame value does not survive encode_payload")
                decoded += 1
        if not reader.at_frame_boundary:
            return "accepted/truncated"
        return "accepted" if decoded else "accepted/empty"


OUR_KEY = SigningKey.from_label("fuzz-our-node")
PEER_KEY = SigningKey.from_label("fuzz-peer-node")
OUR_NONCE = bytes(range(32))
PEER_NONCE = bytes(range(100, 132))


def _snapshot(connection: Connection) -> Connection:
    # A connection's state is its enums and immutable bytes plus the frame
    # reader, so a shallow copy with a fresh reader is an independent copy.
    clone = copy.copy(connection)
    clone._reader = FrameReader()  # noqa: SLF001
    return clone


@dataclass
class WireState:
    """One starting point of a connection and the frames a peer could send there."""

    name: str
    connection: Connection
    frames: list[bytes] = field(default_factory=list)


def wire_states() -> list[WireState]:
    """Return our connection in each handshake state, for both roles, with well-formed peer frames for each."""
    profile = MergeProfile.from_trust(default_trust())
    states = []
    for role in (Role.INITIATOR, Role.RESPONDER):
        other = Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR
        ours = Connection(role, OUR_KEY, profile)
        peer = Connection(other, PEER_KEY, profile)
        peer_hello = peer.send_hello(PEER_NONCE, "peer.example.org:9090")
        states.append(WireState(f"{role.value}/fresh", _snapshot(ours), [peer_hello]))

        early = Connection(role, OUR_KEY, profile)
        early.receive_data(peer_hello)
        states.append(WireState(f"{role.value}/peer_hello_first", _snapshot(early), []))

        our_hello = ours.send_hello(OUR_NONCE, "127.0.0.1:9090")
        peer.receive_data(our_hello)
        peer_auth = peer.send_auth()
        states.append(WireState(f"{role.value}/hello_sent", _snapshot(ours), [peer_hello, peer_auth]))

        ours.receive_data(peer_hello)
        states.append(WireState(f"{role.value}/hellos_exchanged", _snapshot(ours), [peer_auth]))
        states[-3].frames.append(peer_auth)

        our_auth = ours.send_auth()
        states.append(WireState(f"{role.value}/auth_sent", _snapshot(ours), [peer_auth]))
        ours.receive_data(peer_auth)
        peer.receive_data(our_auth)
        session = [
            peer.send_announce([bytes(range(32)), b"\x01" * 32]),
            peer.send_want([bytes(range(32))]),
            peer.send_items([built_seeds().events[-1], built_seeds().events[2]], more=False),
            peer.send_reconcile(1, 0, b"\x00\x01\x02"),
            peer.send_peers(["mirror.example.org:9090", "[2001:db8::1]:9090"]),
            peer.send_ping(b"\x01" * 8),
            peer.send_pong(b"\x02" * 8),
        ]
        states[-1].frames.extend(session[:2])
        states.append(WireState(f"{role.value}/ready", _snapshot(ours), session + [encode_frame(encode_payload(message)) for message in sample_messages()]))

        closed = _snapshot(ours)
        closed.send_bye()
        states.append(WireState(f"{role.value}/our_side_closed", closed, session[:1]))
    return states


class WireTarget(FrameStreamTarget):
    name = "wire"
    header_bytes = 2
    byte_mutation_rate = 0.15
    model_rate = 0.6

    def __init__(self) -> None:
        self.states = wire_states()
        self.seed_messages = sample_messages()

    def seeds(self) -> list[bytes]:
        seeds = []
        for index, state in enumerate(self.states):
            for frame in state.frames:
                seeds.append(bytes([index, 0]) + frame)
            if state.frames:
                seeds.append(bytes([index, 0x80]) + b"".join(state.frames))
                seeds.append(bytes([index, 0x03]) + b"".join(state.frames))
        ready = next(index for index, state in enumerate(self.states) if state.name.endswith("/ready"))
        for payload in msgpack_seeds_from_cases():
            seeds.append(bytes([ready, 0]) + encode_frame(payload))
        return seeds

    def run(self, data: bytes) -> str:
        index, selector = (data[0], data[1]) if len(data) >= 2 else (0, 0)
        stream = data[2:]
        connection = _snapshot(self.states[index % len(self.states)].connection)
        events = []
        for chunk in chunks_of(stream, selector):
            events.extend(connection.receive_data(chunk))
        if selector & 0x80:
            events.extend(connection.receive_data(b""))
        for event in events:
            if isinstance(event, (ProtocolViolation, HandshakeFailed)):
                raise Rejected(f"{type(event).__name__}/{event.code}", event.field)
        last = type(events[-1]).__name__ if events else "none"
        if any(isinstance(event, (PeerError, PeerClosed)) for event in events):
            return f"accepted/{last}"
        return "accepted" if events else "accepted/no_event"


class DocumentsTarget(Target):
    name = "documents"
    model_rate = 0.7

    def __init__(self) -> None:
        self.trust = default_trust()

    def seeds(self) -> list[bytes]:
        built = built_seeds()
        return [*fixture_seeds(), canonical_bytes(built.bundle), canonical_bytes(built.state)]

    def run(self, data: bytes) -> str:
        try:
            document = read_document(data)
            kind = document_kind(document)
        except (CanonicalJSONError, DocumentError) as error:
            raise _rejected(error) from None
        try:
            if kind == "bundle":
                merge_input = bundle_input(document)
            elif kind == "state":
                check_state(document, self.trust)
                return "accepted/state"
            else:
                check_record_line(document, self.trust)
                return "accepted/record"
        except DocumentError as error:
            raise _rejected(error) from None
        # bundle_input checked the record and the aliases, so merge may not
        # raise: every event fault becomes an entry of invalid_events.
        merge(merge_input.record, merge_input.aliases, merge_input.events, self.trust)
        return "accepted/bundle"


class EventsTarget(Target):
    name = "events"
    byte_mutation_rate = 0.1
    model_rate = 0.8

    def __init__(self) -> None:
        self.trust = default_trust()

    def seeds(self) -> list[bytes]:
        return [canonical_bytes(event) for event in built_seeds().events] + json_seeds_from_cases()[-8:]

    def run(self, data: bytes) -> str:
        try:
            raw = parse_json(data)
        except CanonicalJSONError as error:
            raise _rejected(error) from None
        subject = raw.get("subject_pith_number") if isinstance(raw, dict) else None
        try:
            validate_event(raw, subject if isinstance(subject, str) else SUBJECT, self.trust)
        except EventError as error:
            raise _rejected(error) from None
        return "accepted"


class HttpTarget(Target):
    """POST /events through the node's ASGI application, on a store in a temporary directory."""

    name = "http"
    model_rate = 0.7

    def __init__(self) -> None:
        from node.http_api import MirrorApp
        from node.service import MirrorService
        from node.store import Store

        # The store runs with synchronous=FULL, so on a disk every stored
        # event waits for an fsync; a tmpfs keeps the run bound by CPU.
        shm = Path("/dev/shm")
        self._directory = tempfile.TemporaryDirectory(prefix="pith-fuzz-http-", dir=shm if shm.is_dir() else None)
        self.store = Store(Path(self._directory.name), default_trust())
        self.service = MirrorService(self.store, default_trust(), "http://127.0.0.1:1")
        self.app = MirrorApp(self.service, 8 * 1024 * 1024)
        self.failures: list[BaseException] = []
        handler = _ExceptionCollector(self.failures)
        logging.getLogger("pith_mirror.http").addHandler(handler)
        logging.getLogger("pith_mirror").setLevel(logging.WARNING)

    def seeds(self) -> list[bytes]:
        built = built_seeds()
        events = [canonical_bytes(event) for event in built.events]
        return [
            *fixture_seeds()[:4],
            canonical_bytes(built.bundle),
            canonical_bytes(built.state),
            *events,
            canonical_bytes(built.events[3:6]),
            canonical_bytes({"events": built.events[2:5]}),
        ]

    async def arun(self, data: bytes) -> str:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/events",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
            "query_string": b"",
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        messages: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await self.app(scope, receive, send)
        status = messages[0]["status"]
        body = json.loads(messages[1]["body"])
        if status >= 500:
            if self.failures:
                raise self.failures.pop()
            raise AssertionError(f"HTTP {status} without a logged exception: {body}")
        if "error" in body:
            raise Rejected(f"HTTP {status} {body['error']['code']}")
        rejected = [outcome for outcome in body["outcomes"] if outcome.get("status") == "rejected"]
        if rejected:
            raise Rejected(f"HTTP {status} rejected/{rejected[0].get('code')}", rejected[0].get("field") or "")
        return f"HTTP {status} stored"

    def run(self, data: bytes) -> str:
        import trio

        return trio.run(self.arun, data)

    def close(self) -> None:
        self.store.close()
        self._directory.cleanup()


class _ExceptionCollector(logging.Handler):
    """Keeps the exception of every log record that carries one."""

    def __init__(self, failures: list[BaseException]) -> None:
        super().__init__(logging.ERROR)
        self.failures = failures

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.failures.append(record.exc_info[1])


class ConfigTarget(Target):
    """``load_config`` on a TOML file that an operator wrote."""

    name = "config"
    codec = "toml"
    byte_mutation_rate = 1.0

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="pith-fuzz-config-")
        self.path = Path(self._directory.name) / "config.toml"
        self.env = {"HOME": self._directory.name}

    def seeds(self) -> list[bytes]:
        from node.config import load_config, render_config_toml

        default = render_config_toml(load_config({}, self.env)).encode("utf-8")
        return [
            default,
            b'http_listen = "0.0.0.0:8080"\ngossip_listen = "[::]:0"\npeers = ["a.example.org:9090", "[2001:db8::1]:9090"]\n',
            b'data_dir = "~/pith"\ntrust_file = "trust.json"\nlog_level = "debug"\npublic_url = "https://m.example.org/"\n',
            b"max_request_body_bytes = 1048576\nallow_private_addresses = true\n",
        ]

    def run(self, data: bytes) -> str:
        from node.config import ConfigError, load_config

        self.path.write_bytes(data)
        try:
            load_config({}, self.env, self.path)
        except ConfigError as error:
            raise Rejected("ConfigError", error.key) from None
        return "accepted"

    def close(self) -> None:
        self._directory.cleanup()


DECODERS: dict[str, Callable[[], Target]] = {
    "canonical": CanonicalTarget,
    "frames": FramesTarget,
    "wire": WireTarget,
    "documents": DocumentsTarget,
    "events": EventsTarget,
    "http": HttpTarget,
    "config": ConfigTarget,
}


# --- the engine ----------------------------------------------------------------


@dataclass
class FuzzReport:
    """Outcome counts of one run of one decoder."""

    decoder: str
    count: int = 0
    seconds: float = 0.0
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    uncaught: Counter[str] = field(default_factory=Counter)
    reproducers: list[str] = field(default_factory=list)
    corpus_size: int = 0
    peak_rss_kib: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder,
            "count": self.count,
            "seconds": round(self.seconds, 1),
            "inputs_per_second": round(self.rate),
            "accepted": sum(self.accepted.values()),
            "accepted_by_kind": dict(self.accepted.most_common()),
            "rejected": sum(self.rejected.values()),
            "rejected_by_error": dict(self.rejected.most_common()),
            "uncaught": sum(self.uncaught.values()),
            "uncaught_by_exception": dict(self.uncaught.most_common()),
            "reproducers": self.reproducers,
            "corpus_size": self.corpus_size,
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
        }


class Engine:
    """Draws inputs from a corpus of seeds and mutations of them, runs them, and counts outcomes."""

    def __init__(self, target: Target, seed: int, crash_dir: Path) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.crash_dir = crash_dir
        self.corpus: list[bytes] = [data[:MAX_INPUT_BYTES] for data in target.seeds()]
        self.seed_count = len(self.corpus)
        self.trees: dict[int, Any] = {}
        seed_values = []
        for index, data in enumerate(self.corpus):
            tree = self._tree(index)
            if tree is not None:
                seed_values.append(_pairs_to_dict(tree))
        self.mutator = TreeMutator(self.rng, seed_values, binary=target.codec in ("msgpack", "frames"))
        self.seen: set[tuple[str, str]] = set()
        self.report = FuzzReport(target.name)

    def _tree(self, index: int) -> Any:
        if index not in self.trees:
            data = self.corpus[index]
            try:
                self.trees[index] = self.target.loose_decode(data[self.target.header_bytes :])
            except Exception:  # noqa: BLE001 - an input the loose decoders cannot read is mutated as bytes only
                self.trees[index] = None
        return self.trees[index]

    def next_input(self) -> bytes:
        rng = self.rng
        index = rng.randrange(len(self.corpus))
        data = self.corpus[index]
        header_size = self.target.header_bytes
        header, body = bytearray(data[:header_size]), data[header_size:]
        if header and rng.random() < 0.2:
            header[rng.randrange(len(header))] = rng.randrange(256)
        tree = self._tree(index)
        if tree is not None and rng.random() < 0.85:
            body = self.target.structured_mutation(body, tree, self.mutator, rng)
            if rng.random() < self.target.byte_mutation_rate:
                body = mutate_bytes(body, rng, self.target.tokens(), self.corpus)
        else:
            body = mutate_bytes(body, rng, self.target.tokens(), self.corpus)
        return bytes(header) + body[:MAX_INPUT_BYTES]

    def record(self, data: bytes, outcome: str | Rejected | BaseException) -> None:
        report = self.report
        report.count += 1
        if isinstance(outcome, str):
            report.accepted[outcome] += 1
            key = (outcome, "")
        elif isinstance(outcome, Rejected):
            report.rejected[outcome.label] += 1
            key = (outcome.label, outcome.field)
        else:
            name = f"{type(outcome).__name__}: {str(outcome)[:120]}"
            report.uncaught[name] += 1
            if report.uncaught[name] <= 3:
                report.reproducers.append(str(self._write_reproducer(data, outcome)))
            return
        if key not in self.seen:
            self.seen.add(key)
            if len(self.corpus) < MAX_CORPUS:
                self.corpus.append(data)

    def _write_reproducer(self, data: bytes, error: BaseException) -> Path:
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(data).hexdigest()[:16]
        path = self.crash_dir / f"{self.target.name}-{digest}.bin"
        path.write_bytes(data)
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        path.with_suffix(".txt").write_text(
            f"decoder: {self.target.name}\ninput: {path.name} ({len(data)} bytes)\n"
            f"reproduce: python -m bench.fuzz --decoder {self.target.name} --replay {path}\n\n{trace}",
            "utf-8",
        )
        return path


def _run_one(target: Target, data: bytes) -> str | Rejected | BaseException:
    try:
        return target.run(data)
    except Rejected as rejected:
        return rejected
    except Exception as error:  # noqa: BLE001 - every other exception is the bug being looked for
        return error


async def _run_one_async(target: HttpTarget, data: bytes) -> str | Rejected | BaseException:
    try:
        return await target.arun(data)
    except Rejected as rejected:
        return rejected
    except Exception as error:  # noqa: BLE001 - every other exception is the bug being looked for
        return error


def run_decoder(name: str, count: int, seed: int, crash_dir: Path = DEFAULT_CRASH_DIR, progress: bool = False) -> FuzzReport:
    """Run ``count`` inputs through one decoder: first every seed, then mutations."""
    target = DECODERS[name]()
    engine = Engine(target, seed, crash_dir)
    started = time.perf_counter()
    step = max(1, count // 20)

    def inputs() -> Iterator[bytes]:
        for index in range(count):
            yield engine.corpus[index] if index < engine.seed_count else engine.next_input()

    def show(index: int) -> None:
        if progress and index % step == 0 and index:
            elapsed = time.perf_counter() - started
            print(f"  {name}: {index} inputs, {index / elapsed:.0f}/s, uncaught {sum(engine.report.uncaught.values())}", file=sys.stderr, flush=True)

    try:
        if isinstance(target, HttpTarget):
            import trio

            async def loop() -> None:
                for index, data in enumerate(inputs()):
                    engine.record(data, await _run_one_async(target, data))
                    show(index)

            trio.run(loop)
        else:
            for index, data in enumerate(inputs()):
                engine.record(data, _run_one(target, data))
                show(index)
    finally:
        target.close()
    report = engine.report
    report.seconds = time.perf_counter() - started
    report.corpus_size = len(engine.corpus)
    report.peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return report


def replay(name: str, path: Path) -> int:
    """Run one saved input and print its outcome; exit status 1 if it raised an uncaught exception."""
    target = DECODERS[name]()
    try:
        outcome = _run_one(target, path.read_bytes())
    finally:
        target.close()
    if isinstance(outcome, BaseException) and not isinstance(outcome, Rejected):
        traceback.print_exception(type(outcome), outcome, outcome.__traceback__)
        return 1
    print(outcome.label if isinstance(outcome, Rejected) else outcome)
    return 0


# --- atheris ---------------------------------------------------------------------


def run_atheris(name: str, count: int, seed: int, crash_dir: Path) -> None:
    """Run one decoder under atheris (libFuzzer with coverage of every loaded Python module).

    Atheris stops the process at the first uncaught exception and writes
    the input as ``crash-<sha1>`` in ``crash_dir``. The outcome counts are
    written to ``crash_dir/atheris-<decoder>.json`` every 10,000 inputs and
    after the last one.
    """
    import atheris

    target = DECODERS[name]()
    # The protocol and node modules are imported already, so their loaded
    # bytecode is instrumented in place, together with the standard library.
    atheris.instrument_all()
    crash_dir.mkdir(parents=True, exist_ok=True)
    corpus_dir = Path(tempfile.mkdtemp(prefix=f"pith-fuzz-{name}-corpus-"))
    for index, data in enumerate(target.seeds()):
        (corpus_dir / f"seed-{index:04d}").write_bytes(data[:MAX_INPUT_BYTES])
    report = FuzzReport(name)
    stats_path = crash_dir / f"atheris-{name}.json"
    started = time.perf_counter()

    def write_stats() -> None:
        report.seconds = time.perf_counter() - started
        report.peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stats_path.write_text(json.dumps(report.as_json(), indent=2) + "\n", "utf-8")

    def test_one_input(data: bytes) -> None:
        outcome: str | Rejected
        try:
            outcome = target.run(data)
        except Rejected as rejected:
            outcome = rejected
        report.count += 1
        if isinstance(outcome, Rejected):
            report.rejected[outcome.label] += 1
        else:
            report.accepted[outcome] += 1
        if report.count % 10_000 == 0 or report.count == count:
            write_stats()

    argv = [
        sys.argv[0],
        str(corpus_dir),
        f"-runs={count}",
        f"-seed={seed}",
        f"-max_len={MAX_INPUT_BYTES}",
        f"-artifact_prefix={crash_dir}/{name}-crash-",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


# --- command line ----------------------------------------------------------------


def format_report(report: FuzzReport) -> str:
    lines = [
        f"decoder {report.decoder}: {report.count} inputs in {report.seconds:.1f} s ({report.rate:.0f}/s), "
        f"peak RSS {report.peak_rss_kib / 1024:.1f} MiB, corpus {report.corpus_size}",
        f"  accepted {sum(report.accepted.values())}: " + ", ".join(f"{label} {n}" for label, n in report.accepted.most_common()),
        f"  rejected {sum(report.rejected.values())}:",
    ]
    lines.extend(f"    {label}: {n}" for label, n in report.rejected.most_common(40))
    lines.append(f"  uncaught {sum(report.uncaught.values())}")
    lines.extend(f"    {label}: {n}" for label, n in report.uncaught.most_common())
    lines.extend(f"    reproducer: {path}" for path in report.reproducers)
    return "\n".join(lines)


def run_smoke(crash_dir: Path = DEFAULT_CRASH_DIR) -> list[FuzzReport]:
    """Run every decoder on ``SMOKE_COUNT`` inputs in this process; return the reports."""
    return [run_decoder(name, SMOKE_COUNT, seed=1, crash_dir=crash_dir) for name in DECODERS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--decoder", choices=sorted(DECODERS), help="decoder to fuzz")
    choice.add_argument("--all", action="store_true", help="fuzz every decoder, each in its own child process, one after another")
    choice.add_argument("--smoke", action="store_true", help=f"run {SMOKE_COUNT} inputs per decoder, for the test suite")
    parser.add_argument("--count", type=int, default=100_000, help="inputs per decoder, seeds included (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mutation engine's random generator")
    parser.add_argument("--engine", choices=["mutation", "atheris"], default="mutation", help="input generator")
    parser.add_argument("--crash-dir", type=Path, default=DEFAULT_CRASH_DIR, help="directory for reproducers and atheris output")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--replay", type=Path, help="run one saved input through --decoder and print its outcome")
    args = parser.parse_args(argv)

    if args.smoke:
        reports = run_smoke(args.crash_dir)
        for report in reports:
            print(format_report(report))
        return 1 if any(report.uncaught for report in reports) else 0
    if args.all:
        status = 0
        for name in DECODERS:
            command = [sys.executable, "-m", "bench.fuzz", "--decoder", name, "--count", str(args.count), "--seed", str(args.seed), "--engine", args.engine, "--crash-dir", str(args.crash_dir)]
            status |= subprocess.run(command, check=False).returncode
        return status
    if args.replay is not None:
        return replay(args.decoder, args.replay)
    if args.engine == "atheris":
        run_atheris(args.decoder, args.count, args.seed, args.crash_dir)
        return 0

    print(f"# {platform.python_implementation()} {platform.python_version()}, msgpack {msgpack.version}, {os.cpu_count()} CPUs, seed {args.seed}", flush=True)
    report = run_decoder(args.decoder, args.count, args.seed, args.crash_dir, progress=True)
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_json(), indent=2) + "\n", "utf-8")
    return 1 if report.uncaught else 0


if __name__ == "__main__":
    sys.exit(main())
