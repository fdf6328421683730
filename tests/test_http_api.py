"""Tests of the HTTP API on a real daemon: run_daemon in this process on 127.0.0.1.

Each test gets its own copy of one seeded SQLite store (the published state
and the record lines of records.jsonl that carry a canonical record) and
its own daemon on a free port, and talks to it with httpx. The fuzz test
uses a ``pith-mirror run`` subprocess instead, because Hypothesis runs each
example outside the test's trio loop.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import SUBJECT, signed_event
from node.config import Config
from node.daemon import run_daemon
from node.demo import FIXTURE_SUBJECT_SUFFIX, fixture_path
from node.importer import import_sources
from node.service import MirrorService
from node.store import STORE_FILENAME
from protocol import bundle_input, canonical_sha256, default_trust, merge, read_document
from test_daemon import DaemonProcess

SUFFIX = FIXTURE_SUBJECT_SUFFIX
STATE_PATH = f"/pith/{SUFFIX}/state.json"
PUBLISHED_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"
PUBLISHED_CANONICAL_SHA256 = "4dd955cab9f8780f97695b3af463085e19ab1f7da6f922959e527872d10dff1e"
PUBLISHED_ETAG = f'"{PUBLISHED_STATE_SHA256}"'
# Small enough that the 413 tests send little, large enough for a bundle.
BODY_LIMIT = 64 * 1024
# Bound on starting and stopping one in-process daemon.
DAEMON_SECONDS = 15

# A record line of records.jsonl with a canonical record: arXiv 1503.08774v1.
FIVE_DIGIT_SUFFIX = "L7SZR75ROZTPFRA5ANVB4ICLBF"
# A record line with a four-digit new-style arXiv id: 0904.1299v1.
FOUR_DIGIT_SUFFIX = "KFJCOGO7YT64GKAVQGHGNND6W4"



@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the path of a closed store holding the published state and records."""
    data_dir = tmp_path_factory.mktemp("seed")
    config = Config(data_dir=data_dir)
    sources = [str(fixture_path("records.jsonl")), str(fixture_path(f"state-{SUFFIX}.json"))]
    summary = trio.run(partial(import_sources, config, sources, [], show_progress=False))
    assert summary.ok
    return data_dir / STORE_FILENAME


@dataclass
class Mirror:
    """A running in-process daemon and a client bound to it."""

    url: str
    service: MirrorService
    client: httpx.AsyncClient


@pytest.fixture
async def mirror(tmp_path: Path, seeded_store: Path) -> AsyncIterator[Mirror]:
    shutil.copyfile(seeded_store, tmp_path / STORE_FILENAME)
    config = Config(data_dir=tmp_path, http_listen="127.0.0.1:0", gossip_listen="127.0.0.1:0", max_request_body_bytes=BODY_LIMIT)
    ready = trio.Event()
    started: dict[str, Any] = {}

    def on_ready(service: MirrorService, bound: list[str]) -> None:
        started["service"] = service
        started["url"] = bound[0]
        ready.set()

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_daemon, config, shutdown=shutdown, on_ready=on_ready))
        with trio.fail_after(DAEMON_SECONDS):
            await ready.wait()
        async with httpx.AsyncClient(base_url=started["url"], timeout=DAEMON_SECONDS) as client:
            yield Mirror(started["url"], started["service"], client)
        shutdown.set()
        nursery.cancel_scope.deadline = trio.current_time() + DAEMON_SECONDS


def published_bytes() -> bytes:
    return fixture_path(f"state-{SUFFIX}.json").read_bytes()


def hint(label: str) -> dict[str, Any]:
    """Return a mirror hint on the published subject, signed by ``key(label)``."""
    payload = {"slot": "primary", "url": f"https://{label}.example.org/pith/"}
    return signed_event(label, "mirror_hint", payload, "2026-06-01T00:00:00Z")


async def post_json(mirror: Mirror, value: Any) -> httpx.Response:
    return await mirror.client.post("/events", content=json.dumps(value).encode(), headers={"content-type": "application/json"})


def error_of(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


# The published state


@pytest.mark.trio
async def test_state_bytes_match_published(mirror: Mirror) -> None:
    response = await mirror.client.get(STATE_PATH)

    assert response.status_code == 200
    assert response.content == published_bytes()


@pytest.mark.trio
async def test_state_hashes_match_published(mirror: Mirror) -> None:
    state = read_document((await mirror.client.get(STATE_PATH)).content)
    created = state["current"]["record_created"]["payload"]

    assert state["state_sha256"] == PUBLISHED_STATE_SHA256
    assert created["canonical_sha256"] == PUBLISHED_CANONICAL_SHA256
    assert canonical_sha256(state["current"]["canonical_record"]) == PUBLISHED_CANONICAL_SHA256


@pytest.mark.trio
async def test_state_served_to_curl(mirror: Mirror) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")

    result = await trio.run_process([curl, "--silent", "--show-error", "--fail", mirror.url + STATE_PATH], capture_stdout=True)

    assert result.stdout == published_bytes()
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(published_bytes()).hexdigest()


@pytest.mark.trio
async def test_bundle_paths_serve_same_bytes(mirror: Mirror) -> None:
    bundle = await mirror.client.get(f"/pith/{SUFFIX}/bundle.json")
    well_known = await mirror.client.get(f"/.well-known/pith/{SUFFIX}/bundle.json")

    assert bundle.status_code == 200
    assert well_known.status_code == 200
    assert well_known.content == bundle.content
    assert bundle.headers["content-type"] == "application/json"


@pytest.mark.trio
async def test_bundle_merges_to_served_state(mirror: Mirror) -> None:
    bundle = read_document((await mirror.client.get(f"/pith/{SUFFIX}/bundle.json")).content)
    merge_input = bundle_input(bundle)

    state = merge(merge_input.record, merge_input.aliases, merge_input.events, default_trust())

    assert state["state_sha256"] == PUBLISHED_STATE_SHA256
    assert len(bundle["events"]) == 2


@pytest.mark.trio
async def test_manifest_points_at_mirror(mirror: Mirror) -> None:
    published = json.loads(fixture_path("pith-mirrors.json").read_text(encoding="utf-8"))
    response = await mirror.client.get("/pith-mirrors.json")
    manifest = response.json()
    entry = manifest["mirrors"][0]

    assert response.status_code == 200
    assert manifest["manifest_type"] == published["manifest_type"]
    assert manifest["manifest_version"] == published["manifest_version"]
    assert manifest["merge_version"] == published["merge_version"]
    assert entry["base_url"] == mirror.url
    assert entry["state_pattern"] == mirror.url + "/pith/{suffix}/state.json"
    assert entry["bundle_pattern"] == mirror.url + "/pith/{suffix}/bundle.json"
    assert entry["well_known_pattern"] == mirror.url + "/.well-known/pith/{suffix}/bundle.json"


@pytest.mark.trio
async def test_manifest_lists_registry_key(mirror: Mirror) -> None:
    published_key = json.loads(fixture_path("pith-mirrors.json").read_text(encoding="utf-8"))["mirrors"][0]["public_key"]
    entry = (await mirror.client.get("/pith-mirrors.json")).json()["mirrors"][0]

    assert [key["key_id"] for key in entry["trusted_keys"]] == [published_key["key_id"]]
    assert entry["public_key"]["public_key_hex"] == published_key["public_key_hex"]
    assert entry["public_key"]["public_key_b64"] == published_key["public_key_b64"]
    assert entry["public_key"]["fingerprint_sha256_hex"] == published_key["fingerprint_sha256_hex"]


@pytest.mark.trio
async def test_manifest_patterns_serve_state(mirror: Mirror) -> None:
    entry = (await mirror.client.get("/pith-mirrors.json")).json()["mirrors"][0]

    response = await mirror.client.get(entry["state_pattern"].replace("{suffix}", SUFFIX))

    assert response.content == published_bytes()


# The resolver

RESOLVED = [
    ("arxiv=1711.00489", SUFFIX),
    ("arxiv=1711.00489v2", SUFFIX),
    ("arxiv=1503.08774", FIVE_DIGIT_SUFFIX),
    ("arxiv=1503.08774v1", FIVE_DIGIT_SUFFIX),
    ("arxiv=arXiv:1503.08774", FIVE_DIGIT_SUFFIX),
    ("arxiv=0904.1299", FOUR_DIGIT_SUFFIX),
    ("arxiv=0904.1299v1", FOUR_DIGIT_SUFFIX),
    ("doi=10.48550/arxiv.1711.00489", SUFFIX),
    ("doi=10.48550/arXiv.1711.00489", SUFFIX),
    ("doi=10.48550/ARXIV.1711.00489", SUFFIX),
    ("doi=10.48550%2FarXiv.0904.1299", FOUR_DIGIT_SUFFIX),
    ("doi=https://doi.org/10.48550/arXiv.1503.08774", FIVE_DIGIT_SUFFIX),
    ("doi=doi:10.48550/arXiv.1503.08774", FIVE_DIGIT_SUFFIX),
    (f"pith=pith:2017:{SUFFIX}", SUFFIX),
    (f"pith=pith:2009:{FOUR_DIGIT_SUFFIX}", FOUR_DIGIT_SUFFIX),
    ("pith=pith:KFJCOGO7", FOUR_DIGIT_SUFFIX),
    ("pith=KFJCOGO7YT64", FOUR_DIGIT_SUFFIX),
    ("q=KFJCOGO7YT64GKAV", FOUR_DIGIT_SUFFIX),
    ("q=kfjcogo7yt64", FOUR_DIGIT_SUFFIX),
    ("q=1503.08774", FIVE_DIGIT_SUFFIX),
]


@pytest.mark.parametrize(("query", "suffix"), RESOLVED, ids=[query for query, _ in RESOLVED])
@pytest.mark.trio
async def test_resolve_redirects_to_state(mirror: Mirror, query: str, suffix: str) -> None:
    response = await mirror.client.get(f"/resolve?{query}")

    assert response.status_code == 302
    assert response.headers["location"] == f"/pith/{suffix}/state.json"
    assert response.content == b""


NOT_RESOLVED = [
    # Old-style arXiv ids: records.jsonl has these lines, but without a
    # canonical record, so no record of them can be stored.
    ("arxiv", "hep-lat/0305021"),
    ("arxiv", "gr-qc/0505119"),
    ("arxiv", "9999.99999"),
    ("doi", "10.1000/182"),
    ("pith", "pith:2017:AAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ("pith", "pith:ZZZZZZZZ"),
]


@pytest.mark.parametrize(("key", "value"), NOT_RESOLVED, ids=[value for _, value in NOT_RESOLVED])
@pytest.mark.trio
async def test_resolve_unknown_is_404(mirror: Mirror, key: str, value: str) -> None:
    response = await mirror.client.get("/resolve", params={key: value})

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    assert repr(value) in error_of(response)["message"]


@pytest.mark.parametrize("query", ["", "arxiv=1&doi=2", "color=red", "arxiv", "arxiv=%FF"])
@pytest.mark.trio
async def test_resolve_bad_query_is_400(mirror: Mirror, query: str) -> None:
    response = await mirror.client.get(f"/resolve?{query}")

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_query"


SHORT_PATHS = [
    ("/pith/KFJCOGO7/state.json", f"/pith/{FOUR_DIGIT_SUFFIX}/state.json"),
    ("/pith/pith:KFJCOGO7/state.json", f"/pith/{FOUR_DIGIT_SUFFIX}/state.json"),
    ("/pith/KFJCOGO7YT64/bundle.json", f"/pith/{FOUR_DIGIT_SUFFIX}/bundle.json"),
    (f"/pith/pith:2009:{FOUR_DIGIT_SUFFIX}/state.json", f"/pith/{FOUR_DIGIT_SUFFIX}/state.json"),
    (f"/pith/{SUFFIX.lower()}/state.json", STATE_PATH),
    ("/.well-known/pith/JXMVLSVZ/bundle.json", f"/.well-known/pith/{SUFFIX}/bundle.json"),
]


@pytest.mark.parametrize(("path", "location"), SHORT_PATHS, ids=[path for path, _ in SHORT_PATHS])
@pytest.mark.trio
async def test_short_path_redirects_permanently(mirror: Mirror, path: str, location: str) -> None:
    response = await mirror.client.get(path)

    assert response.status_code == 301
    assert response.headers["location"] == location


UNKNOWN_PATHS = [
    ("/pith/AAAAAAAAAAAAAAAAAAAAAAAAAA/state.json", "AAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ("/pith/ZZZZZZZZ/bundle.json", "ZZZZZZZZ"),
    ("/.well-known/pith/not-a-number/bundle.json", "not-a-number"),
    ("/pith/JXMVLSVZ/other.json", "/pith/JXMVLSVZ/other.json"),
    ("/no/such/path", "/no/such/path"),
]


@pytest.mark.parametrize(("path", "named"), UNKNOWN_PATHS, ids=[path for path, _ in UNKNOWN_PATHS])
@pytest.mark.trio
async def test_unknown_path_is_404(mirror: Mirror, path: str, named: str) -> None:
    response = await mirror.client.get(path)

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert error_of(response)["status"] == 404
    assert error_of(response)["code"] == "not_found"
    assert named in error_of(response)["message"]


# Caching headers, HEAD and methods


@pytest.mark.trio
async def test_state_etag_is_state_hash(mirror: Mirror) -> None:
    response = await mirror.client.get(STATE_PATH)

    assert response.headers["etag"] == PUBLISHED_ETAG


@pytest.mark.parametrize("header", [PUBLISHED_ETAG, f"W/{PUBLISHED_ETAG}", f'"other", {PUBLISHED_ETAG}', "*"])
@pytest.mark.trio
async def test_matching_etag_gives_304(mirror: Mirror, header: str) -> None:
    response = await mirror.client.get(STATE_PATH, headers={"if-none-match": header})

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == PUBLISHED_ETAG


@pytest.mark.trio
async def test_stale_etag_gives_200(mirror: Mirror) -> None:
    response = await mirror.client.get(STATE_PATH, headers={"if-none-match": '"' + "0" * 64 + '"'})

    assert response.status_code == 200
    assert response.content == published_bytes()


@pytest.mark.trio
async def test_bundle_etag_gives_304(mirror: Mirror) -> None:
    first = await mirror.client.get(f"/pith/{SUFFIX}/bundle.json")
    second = await mirror.client.get(f"/pith/{SUFFIX}/bundle.json", headers={"if-none-match": first.headers["etag"]})

    assert first.headers["etag"] == '"' + hashlib.sha256(first.content).hexdigest() + '"'
    assert second.status_code == 304
    assert second.content == b""


@pytest.mark.trio
async def test_head_sends_headers_only(mirror: Mirror) -> None:
    response = await mirror.client.head(STATE_PATH)

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(published_bytes()))
    assert response.headers["etag"] == PUBLISHED_ETAG
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "POST"])
@pytest.mark.trio
async def test_document_method_not_allowed(mirror: Mirror, method: str) -> None:
    response = await mirror.client.request(method, STATE_PATH)

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert error_of(response)["code"] == "method_not_allowed"


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
@pytest.mark.trio
async def test_events_method_not_allowed(mirror: Mirror, method: str) -> None:
    response = await mirror.client.request(method, "/events")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


CONTENT_TYPES = [
    (STATE_PATH, "application/json"),
    (f"/pith/{SUFFIX}/bundle.json", "application/json"),
    ("/pith-mirrors.json", "application/json"),
    ("/healthz", "application/json"),
    ("/metrics", "text/plain; version=1.0.0; charset=utf-8"),
    ("/", "text/html; charset=utf-8"),
]


@pytest.mark.parametrize(("path", "content_type"), CONTENT_TYPES, ids=[path for path, _ in CONTENT_TYPES])
@pytest.mark.trio
async def test_content_type_per_route(mirror: Mirror, path: str, content_type: str) -> None:
    response = await mirror.client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"] == content_type


# POST /events


@pytest.mark.trio
async def test_posted_hint_changes_state(mirror: Mirror) -> None:
    event = hint("api-hint")
    before = await mirror.client.get(STATE_PATH)

    posted = await post_json(mirror, event)
    after = await mirror.client.get(STATE_PATH)
    state = read_document(after.content)

    assert before.headers["etag"] == PUBLISHED_ETAG
    assert posted.status_code == 200
    assert posted.json()["outcomes"][0]["status"] == "accepted"
    assert posted.json()["outcomes"][0]["event_id"] == event["event_id"]
    assert after.headers["etag"] == f'"{state["state_sha256"]}"'
    assert after.headers["etag"] != PUBLISHED_ETAG
    assert [item["event_id"] for item in state["current"]["mirror_hints"]] == [event["event_id"]]


@pytest.mark.trio
async def test_posted_hint_reaches_bundle(mirror: Mirror) -> None:
    event = hint("api-bundle")
    await mirror.client.get(f"/pith/{SUFFIX}/bundle.json")

    await post_json(mirror, event)
    bundle = read_document((await mirror.client.get(f"/pith/{SUFFIX}/bundle.json")).content)
    state = read_document((await mirror.client.get(STATE_PATH)).content)
    merge_input = bundle_input(bundle)

    assert event["event_id"] in [item["event_id"] for item in bundle["events"]]
    assert merge(merge_input.record, merge_input.aliases, merge_input.events, default_trust())["state_sha256"] == state["state_sha256"]


@pytest.mark.trio
async def test_repeated_event_is_duplicate(mirror: Mirror) -> None:
    event = hint("api-duplicate")
    await post_json(mirror, event)
    etag = (await mirror.client.get(STATE_PATH)).headers["etag"]

    again = await post_json(mirror, event)

    assert again.status_code == 200
    assert again.json()["duplicate"] == 1
    assert again.json()["outcomes"][0]["status"] == "duplicate"
    assert (await mirror.client.get(STATE_PATH)).headers["etag"] == etag


@pytest.mark.trio
async def test_forged_event_is_422(mirror: Mirror) -> None:
    forged = hint("api-forged")
    forged["payload"]["url"] = "https://attacker.example.org/pith/"
    events_before = mirror.service.store.stats().events

    response = await post_json(mirror, forged)
    outcome = response.json()["outcomes"][0]

    assert response.status_code == 422
    assert outcome["status"] == "rejected"
    assert outcome["code"] == "event_id_mismatch"
    assert mirror.service.store.stats().events == events_before
    assert mirror.service.store.get_event_by_id(SUBJECT, forged["event_id"]) is None
    assert (await mirror.client.get(STATE_PATH)).headers["etag"] == PUBLISHED_ETAG


@pytest.mark.trio
async def test_event_list_gets_outcome_each(mirror: Mirror) -> None:
    forged = hint("api-list-forged")
    forged["created_at"] = "2026-06-02T00:00:00Z"
    response = await post_json(mirror, {"events": [hint("api-list"), forged]})

    assert response.status_code == 422
    assert [outcome["status"] for outcome in response.json()["outcomes"]] == ["accepted", "rejected"]
    assert response.json()["accepted"] == 1
    assert response.json()["rejected"] == 1


BAD_BODIES = [
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b'{"event_id": "a", "event_id": "b"}', id="duplicate-keys"),
    pytest.param(b'{"size_bytes": 1.5}', id="float"),
    pytest.param(b'{"size_bytes": 1e3}', id="exponent"),
    pytest.param(b'{"size_bytes": NaN}', id="nan"),
    pytest.param(b'{"size_bytes": 9007199254740993}', id="unsafe-integer"),
    pytest.param(b"[" * 33 + b"]" * 33, id="depth-33"),
    pytest.param(b"[" * 20_000 + b"]" * 20_000, id="depth-20000"),
    pytest.param(b'{"url": "\xff"}', id="invalid-utf8"),
    pytest.param(b'{"url": "\\ud800"}', id="lone-surrogate"),
    pytest.param(b'{"a": 1} {"b": 2}', id="trailing-value"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
@pytest.mark.trio
async def test_bad_json_body_is_400(mirror: Mirror, body: bytes) -> None:
    response = await mirror.client.post("/events", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
@pytest.mark.trio
async def test_wrong_content_type_is_415(mirror: Mirror, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await mirror.client.post("/events", content=json.dumps(hint("api-type")).encode(), headers=headers)

    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


@pytest.mark.trio
async def test_json_charset_is_accepted(mirror: Mirror) -> None:
    body = json.dumps(hint("api-charset")).encode()
    response = await mirror.client.post("/events", content=body, headers={"content-type": "Application/JSON; charset=utf-8"})

    assert response.status_code == 200


@pytest.mark.trio
async def test_declared_large_body_is_413(mirror: Mirror) -> None:
    body = b" " * (BODY_LIMIT + 1)
    response = await mirror.client.post("/events", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"


@pytest.mark.trio
async def test_chunked_large_body_is_413(mirror: Mirror) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (BODY_LIMIT // 4)

    response = await mirror.client.post("/events", content=chunks(), headers={"content-type": "application/json"})

    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"


@pytest.mark.trio
async def test_chunked_body_within_limit_is_read(mirror: Mirror) -> None:
    body = json.dumps(hint("api-chunked")).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = await mirror.client.post("/events", content=chunks(), headers={"content-type": "application/json"})

    assert response.status_code == 200
    assert response.json()["accepted"] == 1


# Health, metrics and the status page


@pytest.mark.trio
async def test_healthz_reports_ok(mirror: Mirror) -> None:
    response = await mirror.client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.trio
async def test_metrics_count_activity(mirror: Mirror) -> None:
    await mirror.client.get(STATE_PATH)
    await post_json(mirror, hint("api-metrics"))
    forged = hint("api-metrics-forged")
    forged["payload"]["url"] = "https://attacker.example.org/pith/"
    await post_json(mirror, forged)

    text = (await mirror.client.get("/metrics")).text

    assert 'pith_mirror_http_requests_total{route="state",status="200"} 1.0' in text
    assert 'pith_mirror_http_requests_total{route="events",status="200"} 1.0' in text
    assert 'pith_mirror_http_requests_total{route="events",status="422"} 1.0' in text
    assert 'pith_mirror_ingested_events_total{outcome="accepted",source="http"} 1.0' in text
    assert 'pith_mirror_ingested_events_total{outcome="rejected",source="http"} 1.0' in text
    assert 'pith_mirror_invalid_events_total{code="event_id_mismatch"} 1.0' in text
    # The two published events and the hint.
    assert "pith_mirror_stored_events 3.0" in text
    # The published state and the 20 record lines with a canonical record.
    assert "pith_mirror_records 21.0" in text


@pytest.mark.trio
async def test_status_page_shows_subject(mirror: Mirror) -> None:
    event = hint("api-status")
    await post_json(mirror, event)

    response = await mirror.client.get("/")

    assert response.status_code == 200
    assert SUBJECT in response.text
    assert event["event_id"] in response.text


# Arbitrary bodies against a real daemon process


@pytest.fixture(scope="module")
def daemon_url(tmp_path_factory: pytest.TempPathFactory, seeded_store: Path) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    shutil.copyfile(seeded_store, data_dir / STORE_FILENAME)
    with DaemonProcess(data_dir, env={"PITH_MIRROR_MAX_REQUEST_BODY_BYTES": str(BODY_LIMIT)}) as daemon:
        yield daemon.url


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_ENVELOPE_FIELDS = ["event_id", "event_type", "subject_pith_number", "target", "created_at", "signer", "payload", "signature_b64"]


@st.composite
def _mutated_events(draw: st.DrawFn) -> Any:
    event = hint("fuzz-base")
    field = draw(st.sampled_from(_ENVELOPE_FIELDS))
    event[field] = draw(_json_values)
    return event


_bodies = st.one_of(
    st.binary(max_size=200),
    _json_values.map(lambda value: json.dumps(value).encode()),
    _mutated_events().map(lambda value: json.dumps(value).encode()),
    st.lists(_mutated_events(), max_size=3).map(lambda value: json.dumps({"events": value}).encode()),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies)
def test_arbitrary_bodies_never_5xx(daemon_url: str, body: bytes) -> None:
    response = httpx.post(daemon_url + "/events", content=body, headers={"content-type": "application/json"}, timeout=DAEMON_SECONDS)

    assert response.status_code < 500
    assert response.headers["content-type"] == "application/json"

