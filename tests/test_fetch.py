"""MirrorClient against real HTTP servers on 127.0.0.1 and the C18 vectors.

Servers come from ``tests/http_servers.py``. A spy network backend records
every connection the client makes, so tests can assert that a rejected
address was never dialled. Addresses outside 127.0.0.0/8 only ever reach
``httpcore.AsyncMockBackend``, which opens no socket.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpcore
import pytest
import trio
from conftest import load_case
from http_servers import OTHER_SUFFIX, OVERSIZED_STREAM_BYTES, SUFFIX, MirrorServer

from node.demo import FIXTURE_STATE_SHA256, fixture_path
from node.dialpolicy import DialPolicy
from node import fetch
from node.fetch import FetchError, FetchTimeouts, MirrorClient
from protocol import bundle_input, check_state, default_trust, merge, parse_json

pytestmark = pytest.mark.trio

LOCAL_POLICY = DialPolicy(allow_loopback=True, allow_http=True)
SHORT_TIMEOUTS = FetchTimeouts(connect=0.5, read=0.5, total=3.0)
C18_VECTORS: list[dict[str, Any]] = load_case("C18")["vectors"]


class SpyBackend(httpcore.AsyncNetworkBackend):
    """Records every (host, port) the client connects to, then delegates."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.inner = inner or httpcore.TrioBackend()
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise AssertionError("the client must never open a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class StubResolver:
    """Resolves names from a fixed table and records every lookup."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


@pytest.fixture
def server() -> Iterator[MirrorServer]:
    with MirrorServer() as running:
        yield running


def make_client(
    policy: DialPolicy = LOCAL_POLICY,
    *,
    backend: SpyBackend | None = None,
    resolver: StubResolver | None = None,
    timeout: FetchTimeouts = SHORT_TIMEOUTS,
    max_response_bytes: int = 1024 * 1024,
    retries: int = 2,
) -> MirrorClient:
    return MirrorClient(
        policy,
        timeout,
        max_response_bytes,
        retries,
        0.01,
        resolver=resolver or StubResolver(),
        network_backend=backend or SpyBackend(),
    )


async def fetch_failure(client: MirrorClient, base_url: str) -> FetchError:
    """Fetch a manifest that must fail and return the FetchError."""
    async with client:
        with pytest.raises(FetchError) as caught:
            await client.fetch_manifest(base_url)
    return caught.value


def mirror_state_url(server: MirrorServer, prefix: str = "") -> str:
    return f"{server.base_url}{prefix}/pith/{{suffix}}/state.json"


# Real fixtures served under the registry's URL patterns.


async def test_manifest_points_at_server(server: MirrorServer) -> None:
    async with make_client() as client:
        manifest = await client.fetch_manifest(server.base_url)

    published = parse_json(fixture_path("pith-mirrors.json").read_bytes())
    mirror = manifest["mirrors"][0]
    assert mirror["base_url"] == server.base_url
    assert mirror["state_pattern"] == f"{server.base_url}/pith/{{suffix}}/state.json"
    assert mirror["public_key"]["public_key_hex"] == published["mirrors"][0]["public_key"]["public_key_hex"]
    assert manifest["generated_at"] == published["generated_at"]
    assert server.count("/pith-mirrors.json") == 1


async def test_state_from_manifest_pattern(server: MirrorServer) -> None:
    async with make_client() as client:
        manifest = await client.fetch_manifest(server.base_url)
        state = await client.fetch_state(manifest["mirrors"][0]["state_pattern"], SUFFIX)

    assert state["state_sha256"] == FIXTURE_STATE_SHA256
    assert check_state(state, default_trust())[0] == "state_sha256"
    assert server.count(f"/pith/{SUFFIX}/state.json") == 1


async def test_bundle_merges_to_published_state(server: MirrorServer) -> None:
    async with make_client() as client:
        manifest = await client.fetch_manifest(server.base_url)
        bundle = await client.fetch_bundle(manifest["mirrors"][0]["bundle_pattern"], SUFFIX)
        well_known = await client.fetch_bundle(manifest["mirrors"][0]["well_known_pattern"], SUFFIX)

    merge_input = bundle_input(bundle)
    state = merge(merge_input.record, merge_input.aliases, merge_input.events, default_trust())
    assert state["state_sha256"] == FIXTURE_STATE_SHA256
    assert well_known == bundle


async def test_connections_reuse_checked_address(server: MirrorServer) -> None:
    backend = SpyBackend()
    async with make_client(backend=backend) as client:
        await client.fetch_manifest(server.base_url)
        await client.fetch_state(mirror_state_url(server), SUFFIX)

    assert backend.connects == [("127.0.0.1", server.port)]


# Slow, truncated and oversized bodies.


async def test_stalled_body_times_out(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(retries=0), f"{server.base_url}/stall")

    assert error.reason.endswith("reading the response timed out")
    assert error.retryable is True
    assert error.attempts == 1
    assert server.count("/stall/pith-mirrors.json") == 1


async def test_stalled_body_retried_once(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(retries=1), f"{server.base_url}/stall")

    assert error.attempts == 2
    assert server.count("/stall/pith-mirrors.json") == 2


async def test_trickle_hits_total_timeout(server: MirrorServer) -> None:
    timeouts = FetchTimeouts(connect=0.5, read=0.5, total=1.0)
    error = await fetch_failure(make_client(timeout=timeouts, retries=0), f"{server.base_url}/trickle")

    assert error.reason == "timed out after 1.0 s (total time limit)"
    assert error.attempts == 1


async def test_truncated_body_not_retried(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(), f"{server.base_url}/truncated")

    assert "invalid or truncated HTTP response" in error.reason
    assert error.retryable is False
    assert server.count("/truncated/pith-mirrors.json") == 1


async def test_declared_oversize_rejected_unread(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(max_response_bytes=10_000), f"{server.base_url}/oversized-declared")

    assert error.reason == "Content-Length of 104857600 bytes exceeds the limit of 10000 bytes"
    assert server.count("/oversized-declared/pith-mirrors.json") == 1


async def test_streamed_oversize_aborted(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(max_response_bytes=100_000), f"{server.base_url}/oversized-stream")

    assert error.reason == "response body exceeds the limit of 100000 bytes; reading stopped"
    assert server.count("/oversized-stream/pith-mirrors.json") == 1
    finished = await trio.to_thread.run_sync(server.oversized_done.wait, 10.0)
    assert finished is True
    assert server.oversized_bytes_sent < OVERSIZED_STREAM_BYTES


async def test_oversize_cap_reaches_parser(server: MirrorServer) -> None:
    # The state is 5,490 bytes; a cap of 5,000 rejects it by Content-Length.
    async with make_client(max_response_bytes=5_000) as client:
        with pytest.raises(FetchError) as caught:
            await client.fetch_state(mirror_state_url(server), SUFFIX)

    assert caught.value.reason == "Content-Length of 5490 bytes exceeds the limit of 5000 bytes"


# Content type, encoding and JSON checks.


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("/wrong-type", "response Content-Type 'text/html' is not application/json"),
        ("/no-type", "response has no Content-Type (expected application/json)"),
        ("/charset-latin1", "response charset in 'application/json; charset=iso-8859-1' is not UTF-8"),
    ],
)
async def test_content_type_rejected(server: MirrorServer, prefix: str, expected: str) -> None:
    error = await fetch_failure(make_client(), server.base_url + prefix)

    assert error.reason == expected
    assert server.count(f"{prefix}/pith-mirrors.json") == 1


async def test_utf8_charset_accepted(server: MirrorServer) -> None:
    async with make_client() as client:
        manifest = await client.fetch_manifest(f"{server.base_url}/charset-utf8")

    assert manifest["manifest_type"] == "pith_mirror_manifest"


async def test_gzip_encoding_rejected(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(), f"{server.base_url}/gzip")

    assert error.reason == "response has Content-Encoding 'gzip'; only identity is accepted"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("/invalid-json", "invalid JSON document: not valid JSON"),
        ("/duplicate-keys", "invalid JSON document: manifest_type: duplicate key 'manifest_type'"),
        ("/not-object", "invalid JSON document: document must be a JSON object, got list"),
    ],
)
async def test_invalid_json_rejected(server: MirrorServer, prefix: str, expected: str) -> None:
    error = await fetch_failure(make_client(), server.base_url + prefix)

    assert error.reason.startswith(expected)
    assert error.retryable is False
    assert server.count(f"{prefix}/pith-mirrors.json") == 1


# Redirects.


async def test_redirect_loop_rejected(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(), f"{server.base_url}/redirect-loop")

    assert error.reason.startswith("redirect loop:")
    assert server.count("/redirect-loop/pith-mirrors.json") == 1


async def test_three_redirects_followed(server: MirrorServer) -> None:
    async with make_client() as client:
        manifest = await client.fetch_manifest(f"{server.base_url}/hops/3")

    paths = [request.path for request in server.requests]
    assert manifest["manifest_type"] == "pith_mirror_manifest"
    assert paths == [f"/hops/{hop}/pith-mirrors.json" for hop in (3, 2, 1, 0)]


async def test_fourth_redirect_rejected(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(), f"{server.base_url}/hops/4")

    paths = [request.path for request in server.requests]
    assert "more than 3 redirects" in error.reason
    assert paths == [f"/hops/{hop}/pith-mirrors.json" for hop in (4, 3, 2, 1)]


async def test_relative_redirect_followed(server: MirrorServer) -> None:
    async with make_client() as client:
        state = await client.fetch_state(mirror_state_url(server, "/moved"), SUFFIX)

    assert state["state_sha256"] == FIXTURE_STATE_SHA256
    assert server.count(f"/pith/{SUFFIX}/state.json") == 1


@pytest.mark.parametrize(
    ("prefix", "expected_code_text"),
    [
        ("/redirect-metadata", "169.254.169.254 is a cloud metadata service address"),
        ("/redirect-mapped", "is an IPv4-mapped address (of 169.254.169.254)"),
        ("/redirect-userinfo", "contains userinfo"),
    ],
)
async def test_redirect_target_never_dialled(server: MirrorServer, prefix: str, expected_code_text: str) -> None:
    backend = SpyBackend()
    resolver = StubResolver()
    error = await fetch_failure(make_client(backend=backend, resolver=resolver), server.base_url + prefix)

    assert "was rejected by the dial policy" in error.reason
    assert expected_code_text in error.reason
    assert backend.connects == [("127.0.0.1", server.port)]
    assert resolver.lookups == []
    assert server.count(f"{prefix}/pith-mirrors.json") == 1


async def test_redirect_without_location(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(), f"{server.base_url}/redirect-no-location")

    assert error.reason == "HTTP 302 redirect without a Location"


def mock_backend(response: bytes) -> SpyBackend:
    """Return a spy over httpcore's in-memory backend: no socket is opened."""
    return SpyBackend(httpcore.AsyncMockBackend([response]))


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("https://127.0.0.1:8443/pith-mirrors.json", "127.0.0.1 is a loopback address (127.0.0.0/8); allow_loopback_addresses is off"),
        ("https://169.254.169.254/latest/", "169.254.169.254 is a cloud metadata service address"),
        ("http://mirror.example.net/pith-mirrors.json", "redirect from https to http"),
    ],
)
async def test_public_mirror_redirect_rejected(location: str, expected: str) -> None:
    response = f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
    backend = mock_backend(response)
    resolver = StubResolver({"mirror.example.org": ["93.184.216.34"]})
    client = make_client(DialPolicy(), backend=backend, resolver=resolver)

    error = await fetch_failure(client, "https://mirror.example.org")

    assert expected in error.reason
    assert backend.connects == [("93.184.216.34", 443)]
    assert resolver.lookups == ["mirror.example.org"]


# Retries.


async def test_500_then_success(server: MirrorServer) -> None:
    path = f"/flaky/pith/{SUFFIX}/state.json"
    server.fail_next(path, 500)

    async with make_client(retries=2) as client:
        state = await client.fetch_state(mirror_state_url(server, "/flaky"), SUFFIX)

    assert state["state_sha256"] == FIXTURE_STATE_SHA256
    assert server.count(path) == 2


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_retryable_statuses_exhausted(server: MirrorServer, status: int, caplog: pytest.LogCaptureFixture) -> None:
    path = f"/flaky/pith/{SUFFIX}/state.json"
    server.fail_next(path, status, status, status)
    caplog.set_level(logging.WARNING, logger="pith_mirror.fetch")

    async with make_client(retries=2) as client:
        with pytest.raises(FetchError) as caught:
            await client.fetch_state(mirror_state_url(server, "/flaky"), SUFFIX)

    retry_lines = [record for record in caplog.records if "retrying in" in record.getMessage()]
    assert caught.value.status == status
    assert caught.value.attempts == 3
    assert server.count(path) == 3
    assert len(retry_lines) == 2


@pytest.mark.parametrize("status", [400, 403, 404, 410])
async def test_client_errors_not_retried(server: MirrorServer, status: int) -> None:
    path = f"/flaky/pith/{SUFFIX}/state.json"
    server.fail_next(path, status)

    async with make_client(retries=2) as client:
        with pytest.raises(FetchError) as caught:
            await client.fetch_state(mirror_state_url(server, "/flaky"), SUFFIX)

    assert caught.value.status == status
    assert caught.value.attempts == 1
    assert caught.value.reason == f"server responded with HTTP {status}"
    assert server.count(path) == 1


async def test_missing_record_404(server: MirrorServer) -> None:
    async with make_client() as client:
        with pytest.raises(FetchError) as caught:
            await client.fetch_state(mirror_state_url(server), OTHER_SUFFIX)

    assert caught.value.status == 404
    assert server.count(f"/pith/{OTHER_SUFFIX}/state.json") == 1


async def test_refused_connection_retried() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = SpyBackend()

    error = await fetch_failure(make_client(backend=backend, retries=2), f"http://127.0.0.1:{port}")

    assert "connection failed" in error.reason
    assert error.attempts == 3
    assert backend.connects == [("127.0.0.1", port)] * 3


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this machine has no IPv6 loopback")
async def test_ipv6_loopback_mirror() -> None:
    backend = SpyBackend()
    with MirrorServer("::1") as server:
        async with make_client(backend=backend) as client:
            manifest = await client.fetch_manifest(server.base_url)
            state = await client.fetch_state(manifest["mirrors"][0]["state_pattern"], SUFFIX)

    assert state["state_sha256"] == FIXTURE_STATE_SHA256
    assert backend.connects == [("::1", server.port)]


async def test_ipv6_loopback_rejected_by_default() -> None:
    backend = SpyBackend()

    error = await fetch_failure(make_client(DialPolicy(allow_http=True), backend=backend), "http://[::1]:8080")

    assert error.reason == "rejected by the dial policy: ::1 is the loopback address; allow_loopback_addresses is off"
    assert backend.connects == []


# Host names: resolved, checked, then pinned.


async def test_name_pinned_to_checked_address(server: MirrorServer) -> None:
    backend = SpyBackend()
    resolver = StubResolver({"mirror.test": ["127.0.0.1"]})

    async with make_client(backend=backend, resolver=resolver) as client:
        manifest = await client.fetch_manifest(f"http://mirror.test:{server.port}")

    assert manifest["manifest_type"] == "pith_mirror_manifest"
    assert backend.connects == [("127.0.0.1", server.port)]
    assert server.requests[0].host == f"mirror.test:{server.port}"


@pytest.mark.parametrize("addresses", [["127.0.0.1"], ["93.184.216.34", "127.0.0.1"], ["::ffff:169.254.169.254"]])
async def test_name_resolving_inside_rejected(addresses: list[str]) -> None:
    backend = SpyBackend()
    resolver = StubResolver({"mirror.test": addresses})
    client = make_client(DialPolicy(allow_http=True), backend=backend, resolver=resolver)

    error = await fetch_failure(client, "http://mirror.test:8080")

    assert "resolved address" in error.reason
    assert error.retryable is False
    assert backend.connects == []
    assert resolver.lookups == ["mirror.test"]


async def test_unresolvable_name_retried() -> None:
    backend = SpyBackend()
    resolver = StubResolver()

    error = await fetch_failure(make_client(backend=backend, resolver=resolver, retries=1), "http://missing.test:8080")

    assert "resolving missing.test failed" in error.reason
    assert error.attempts == 2
    assert resolver.lookups == ["missing.test", "missing.test"]
    assert backend.connects == []


@pytest.mark.parametrize("vector", C18_VECTORS, ids=lambda vector: vector.get("host") or vector["url"])
async def test_c18_never_resolved_or_dialled(vector: dict[str, Any]) -> None:
    url = vector.get("url") or f"http://{vector['host']}:8080/bundles/"
    backend = SpyBackend()
    resolver = StubResolver()

    error = await fetch_failure(make_client(DialPolicy(allow_http=True), backend=backend, resolver=resolver), url)

    assert "rejected by the dial policy" in error.reason
    assert error.attempts == 1
    assert backend.connects == []
    assert resolver.lookups == []


# Manifest and document validation.


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("no-suffix", "mirrors[0].state_pattern"),
        ("two-suffixes", "contains {suffix} 2 times, expected once"),
        ("suffix-in-host", "must have {suffix} in its path"),
        ("metadata-pattern", "169.254.169.254 is a cloud metadata service address"),
        ("userinfo-base", "mirrors[0].base_url is rejected by the dial policy"),
        ("pattern-not-text", "mirrors[0].bundle_pattern must be a URL pattern, got int"),
        ("wrong-type", "manifest_type 'pith_mirror_list' is not 'pith_mirror_manifest'"),
        ("wrong-version", "manifest_version '2.0' is not supported (expected '1.0')"),
        ("no-mirrors", "mirrors must be a non-empty list"),
    ],
)
async def test_invalid_manifest_rejected(server: MirrorServer, variant: str, expected: str) -> None:
    error = await fetch_failure(make_client(), f"{server.base_url}/bad-manifest/{variant}")

    assert error.reason.startswith("invalid manifest: ")
    assert expected in error.reason
    assert server.count(f"/bad-manifest/{variant}/pith-mirrors.json") == 1


async def test_bundle_served_as_state(server: MirrorServer) -> None:
    async with make_client() as client:
        with pytest.raises(FetchError) as caught:
            await client.fetch_state(mirror_state_url(server, "/swapped"), SUFFIX)

    assert caught.value.reason == "document has state_type None, expected 'pith_open_graph_state'"


async def test_state_for_other_suffix(server: MirrorServer) -> None:
    async with make_client() as client:
        with pytest.raises(FetchError) as caught:
            await client.fetch_state(mirror_state_url(server, "/any"), OTHER_SUFFIX)

    assert caught.value.reason.endswith(f"not for the requested suffix {OTHER_SUFFIX}")


@pytest.mark.parametrize(
    ("pattern", "suffix", "expected"),
    [
        ("http://127.0.0.1:9/pith/{suffix}/state.json", "../../etc/passwd", "is not a Pith suffix"),
        ("http://127.0.0.1:9/pith/state.json", SUFFIX, "contains {suffix} 0 times"),
        ("http://{suffix}.example/state.json", SUFFIX, "must have {suffix} in its path"),
    ],
)
async def test_bad_pattern_or_suffix(pattern: str, suffix: str, expected: str) -> None:
    backend = SpyBackend()
    async with make_client(backend=backend) as client:
        with pytest.raises(FetchError) as caught:
            await client.fetch_state(pattern, suffix)

    assert expected in caught.value.reason
    assert backend.connects == []


async def test_fetch_error_message(server: MirrorServer) -> None:
    error = await fetch_failure(make_client(), f"{server.base_url}/gzip")

    assert str(error) == f"fetching {server.base_url}/gzip/pith-mirrors.json failed: {error.reason}"
    assert error.url == f"{server.base_url}/gzip/pith-mirrors.json"


async def test_public_names_pinned() -> None:
    expected = ["FetchError", "FetchTimeouts", "MANIFEST_TYPE", "MAX_REDIRECTS", "MirrorClient", "Resolver", "resolve_host"]

    assert sorted(fetch.__all__) == expected
