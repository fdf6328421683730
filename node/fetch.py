"""Fetching manifests, bundles and states from HTTP mirrors (httpx on trio).

Every URL here comes from untrusted input (a mirror manifest, a mirror hint,
a redirect), so each request goes through the dial policy twice:

1. ``DialPolicy.check_url`` checks the URL text before the request is built,
   and again for every redirect ``Location``.
2. ``_PolicyNetworkBackend``, the httpcore network backend under the httpx
   client, resolves the host itself, passes every resolved address to
   ``DialPolicy.check_resolved`` and connects only to those checked
   addresses. The connection is pinned to the checked address, so DNS
   rebinding between the check and the connect cannot redirect it. TLS
   still uses the host name for SNI and certificate checks.

Responses are read as a stream and dropped as soon as the body exceeds
``max_response_bytes``. A ``Content-Length`` above the cap is rejected
before any body byte is read. Only ``Content-Encoding: identity`` is
accepted, so the cap counts the bytes that are parsed and no compressed
body can expand past it.

Error handling: every failure reaches the caller as ``FetchError``, never
as an httpx, httpcore or trio exception. Timeouts, connection errors and
HTTP 429 and 5xx responses are retried up to ``retries`` times with
exponential backoff and jitter. Policy rejections, other 4xx responses,
malformed HTTP, bad content types, oversized and invalid documents are not
retried, because asking again gives the same answer.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpcore
import httpx
import trio

from protocol import BUNDLE_TYPE, STATE_TYPE, InvalidInput, read_document
from protocol.documents import DOCUMENT_LIMITS
from protocol.identifiers import check_suffix

from .dialpolicy import DialPolicy, DialRejected

__all__ = [
    "FetchError",
    "FetchTimeouts",
    "MANIFEST_TYPE",
    "MAX_REDIRECTS",
    "MirrorClient",
    "Resolver",
    "resolve_host",
]

logger = logging.getLogger("pith_mirror.fetch")

MANIFEST_TYPE = "pith_mirror_manifest"
MANIFEST_VERSION = "1.0"
MANIFEST_PATTERNS = ("bundle_pattern", "state_pattern", "well_known_pattern")
SUFFIX_PLACEHOLDER = "{suffix}"
# A manifest lists a handful of mirrors; more than this is not a manifest a
# registry would publish.
MAX_MANIFEST_MIRRORS = 100

MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 30.0
# A name that resolves to more addresses than this is cut to the first ones
# for connecting; all of them are still checked.
_MAX_CONNECT_ADDRESSES = 8

Resolver = Callable[[str, int], Awaitable[list[str]]]


class FetchError(Exception):
    """A fetch from an HTTP mirror failed.

    Attributes:
        url: the URL that was requested first (before redirects).
        reason: what failed, naming the offending URL, status or value.
        status: the HTTP status of the last response, if one arrived.
        attempts: how many attempts were made.
        retryable: whether the last failure was of a kind that is retried.
    """

    def __init__(self, url: str, reason: str, *, status: int | None = None, attempts: int = 1, retryable: bool = False) -> None:
        super().__init__(f"fetching {url} failed: {reason}")
        self.url = url
        self.reason = reason
        self.status = status
        self.attempts = attempts
        self.retryable = retryable


@dataclass(frozen=True)
class FetchTimeouts:
    """Time limits of one attempt, in seconds.

    Attributes:
        connect: resolving the host and opening the TCP and TLS connection.
        read: the maximum wait for the next bytes of a response.
        total: one whole attempt, redirects and body included. A server
            that trickles a byte just before each read timeout is stopped
            by this limit.
    """

    connect: float = 5.0
    read: float = 10.0
    total: float = 60.0


class _AttemptFailed(Exception):
    """One attempt failed; ``FetchError`` is raised from it by the retry loop."""

    def __init__(self, reason: str, *, retryable: bool, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


async def resolve_host(host: str, port: int) -> list[str]:
    """Resolve a host name to its TCP addresses with the system resolver."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class _PolicyNetworkBackend(httpcore.AsyncNetworkBackend):
    """A network backend that dials only addresses the dial policy allows.

    httpcore passes the request's host to ``connect_tcp``. The host is
    checked, resolved here, every resolved address is checked, and the
    connection goes to a checked address through ``inner``.
    """

    def __init__(self, policy: DialPolicy, resolver: Resolver, inner: httpcore.AsyncNetworkBackend) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._policy.check_port(port).raise_if_rejected()
        target = self._policy.check_host(host).raise_if_rejected()
        assert target is not None
        if target.address is not None:
            addresses = [str(target.address)]
        else:
            addresses = await self._resolve(target.host, port, timeout)
        self._policy.check_resolved(addresses).raise_if_rejected()

        last_error: Exception | None = None
        for address in addresses[:_MAX_CONNECT_ADDRESSES]:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                logger.debug("connecting to %s port %d for %s failed: %s", address, port, host, error)
                last_error = error
        assert last_error is not None
        raise last_error

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        try:
            with trio.fail_after(float("inf") if timeout is None else timeout):
                return list(await self._resolver(host, port))
        except trio.TooSlowError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as error:
            raise httpcore.ConnectError(f"resolving {host} failed: {error}") from error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise DialRejected(f"Unix socket {path!r} is not a mirror address")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore exceptions and their public httpx equivalents, most specific first.
_HTTPCORE_TO_HTTPX: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _to_httpx_error(error: Exception) -> Exception:
    for source, mapped in _HTTPCORE_TO_HTTPX:
        if isinstance(error, source):
            return mapped(str(error))
    return error


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> Any:
        try:
            async for part in self._stream:
                yield part
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as error:
            raise _to_httpx_error(error) from error

    async def aclose(self) -> None:
        await self._stream.aclose()


class _PolicyTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool that dials through the dial policy.

    httpx's own ``AsyncHTTPTransport`` takes no network backend, so this
    transport builds the httpcore pool itself and maps httpcore exceptions
    to the httpx ones, as ``AsyncHTTPTransport`` does.
    """

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=10,
            max_keepalive_connections=10,
            keepalive_expiry=30.0,
            http1=True,
            http2=False,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as error:
            raise _to_httpx_error(error) from error
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _check_content_type(value: str | None) -> None:
    if value is None:
        raise _AttemptFailed("response has no Content-Type (expected application/json)", retryable=False)
    media_type, _, parameters = value.partition(";")
    if media_type.strip().lower() != "application/json":
        raise _AttemptFailed(f"response Content-Type {value[:100]!r} is not application/json", retryable=False)
    for parameter in parameters.split(";"):
        name, _, argument = parameter.partition("=")
        if name.strip().lower() == "charset" and argument.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise _AttemptFailed(f"response charset in {value[:100]!r} is not UTF-8", retryable=False)


def _map_httpx_error(error: httpx.HTTPError) -> _AttemptFailed:
    if isinstance(error, httpx.ConnectTimeout):
        return _AttemptFailed("connecting timed out", retryable=True)
    if isinstance(error, httpx.ReadTimeout):
        return _AttemptFailed("reading the response timed out", retryable=True)
    if isinstance(error, httpx.TimeoutException):
        return _AttemptFailed(f"request timed out ({type(error).__name__})", retryable=True)
    if isinstance(error, httpx.NetworkError):
        return _AttemptFailed(f"connection failed: {error}", retryable=True)
    if isinstance(error, httpx.RemoteProtocolError):
        return _AttemptFailed(f"invalid or truncated HTTP response: {error}", retryable=False)
    return _AttemptFailed(f"request failed: {type(error).__name__}: {error}", retryable=False)


def _parse_retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_BACKOFF_SECONDS)


class MirrorClient:
    """An async client for HTTP mirrors, for use inside a trio task.

    Use it as an async context manager, or call ``aclose`` when done::

        async with MirrorClient(DialPolicy()) as client:
            manifest = await client.fetch_manifest("https://pith.science")

    Args:
        policy: the dial policy every URL and resolved address must pass.
        timeout: connect, read and total limits of one attempt.
        max_response_bytes: the largest accepted response body.
        retries: attempts after the first one, for retryable failures.
        backoff: the delay before the first retry, in seconds. It doubles
            on each retry up to 30 s. A random factor from 0.5 to 1 spreads
            the retries of many nodes.
        resolver: resolves a host name to addresses; ``resolve_host`` by
            default. Tests pass a stub.
        network_backend: the httpcore backend that makes the connections
            to checked addresses; ``httpcore.TrioBackend`` by default.
    """

    def __init__(
        self,
        policy: DialPolicy,
        timeout: FetchTimeouts = FetchTimeouts(),
        max_response_bytes: int = 64 * 1024 * 1024,
        retries: int = 3,
        backoff: float = 0.5,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        if max_response_bytes < 1 or retries < 0 or backoff < 0:
            raise ValueError("max_response_bytes must be positive, retries and backoff not negative")
        self.policy = policy
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.retries = retries
        self.backoff = backoff
        self._random = random.Random()
        backend = _PolicyNetworkBackend(policy, resolver or resolve_host, network_backend or httpcore.TrioBackend())
        self._client = httpx.AsyncClient(
            transport=_PolicyTransport(backend),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(connect=timeout.connect, read=timeout.read, write=timeout.read, pool=timeout.connect),
            headers={"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": "pith-mirror/0.1"},
        )

    async def __aenter__(self) -> MirrorClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()

    async def fetch_manifest(self, base_url: str) -> dict[str, Any]:
        """Fetch and validate ``<base_url>/pith-mirrors.json``.

        Checks ``manifest_type`` and ``manifest_version``, and that every
        mirror's ``base_url`` and URL patterns pass the dial policy and each
        pattern has exactly one ``{suffix}``, after the host.

        Returns:
            The manifest as parsed, in the shape of the registry's file.

        Raises:
            FetchError: the fetch failed or the manifest is invalid.
        """
        url = base_url.rstrip("/") + "/pith-mirrors.json"
        manifest, attempts = await self._fetch_document(url)
        try:
            self._check_manifest(manifest)
        except _AttemptFailed as error:
            raise self._fail(url, f"invalid manifest: {error.reason}", attempts=attempts) from None
        return manifest

    async def fetch_bundle(self, pattern: str, suffix: str) -> dict[str, Any]:
        """Fetch the bundle of one record from a mirror's ``bundle_pattern``.

        Raises:
            FetchError: the fetch failed, or the document is not the bundle of ``suffix``.
        """
        return await self._fetch_record_document(pattern, suffix, "bundle_type", BUNDLE_TYPE)

    async def fetch_state(self, pattern: str, suffix: str) -> dict[str, Any]:
        """Fetch the state of one record from a mirror's ``state_pattern``.

        Raises:
            FetchError: the fetch failed, or the document is not the state of ``suffix``.
        """
        return await self._fetch_record_document(pattern, suffix, "state_type", STATE_TYPE)

    async def _fetch_record_document(self, pattern: str, suffix: str, type_key: str, type_value: str) -> dict[str, Any]:
        try:
            check_suffix(suffix)
            self._check_pattern(pattern, "pattern")
        except InvalidInput as error:
            raise self._fail(str(pattern), str(error)) from None
        except _AttemptFailed as error:
            raise self._fail(str(pattern), error.reason) from None

        url = pattern.replace(SUFFIX_PLACEHOLDER, suffix)
        document, attempts = await self._fetch_document(url)
        if document.get(type_key) != type_value:
            reason = f"document has {type_key} {document.get(type_key)!r:.80}, expected {type_value!r}"
            raise self._fail(url, reason, attempts=attempts)
        number = document.get("pith_number")
        if not isinstance(number, str) or not number.endswith(":" + suffix):
            reason = f"document is for {number!r:.80}, not for the requested suffix {suffix}"
            raise self._fail(url, reason, attempts=attempts)
        return document

    async def _fetch_document(self, url: str) -> tuple[dict[str, Any], int]:
        """GET ``url`` and strictly decode the body; return it and the number of attempts."""
        body, attempts = await self._get_with_retries(url)
        limits = dataclasses.replace(DOCUMENT_LIMITS, max_bytes=self.max_response_bytes)
        try:
            return read_document(body, limits), attempts
        except InvalidInput as error:
            raise self._fail(url, f"invalid JSON document: {error}", attempts=attempts) from None

    async def _get_with_retries(self, url: str) -> tuple[bytes, int]:
        """GET ``url`` with retries; return the body and the number of attempts."""
        attempts = 0
        while True:
            attempts += 1
            try:
                with trio.fail_after(self.timeout.total):
                    return await self._get_once(url), attempts
            except trio.TooSlowError:
                failure = _AttemptFailed(f"timed out after {self.timeout.total} s (total time limit)", retryable=True)
            except _AttemptFailed as error:
                failure = error

            if not failure.retryable or attempts > self.retries:
                raise self._fail(url, failure.reason, status=failure.status, attempts=attempts, retryable=failure.retryable)
            delay = self._backoff_delay(attempts, failure.retry_after)
            logger.warning(
                "fetching %s failed (attempt %d of %d): %s; retrying in %.2f s",
                url, attempts, self.retries + 1, failure.reason, delay,
            )
            await trio.sleep(delay)

    def _backoff_delay(self, attempts: int, retry_after: float | None) -> float:
        delay = min(self.backoff * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)
        delay *= self._random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def _fail(self, url: str, reason: str, *, status: int | None = None, attempts: int = 1, retryable: bool = False) -> FetchError:
        error = FetchError(url, reason, status=status, attempts=attempts, retryable=retryable)
        logger.warning("%s (attempts: %d)", error, attempts)
        return error

    async def _get_once(self, url: str) -> bytes:
        """Make one attempt: follow up to MAX_REDIRECTS redirects and read the body.

        Reasons name the URL only after a redirect, because FetchError
        already names the first URL.
        """
        current = url
        visited = {url}
        for hop in range(MAX_REDIRECTS + 1):
            try:
                response = await self._send(current)
                try:
                    if response.status_code not in _REDIRECT_STATUSES:
                        return await self._read_response(response)
                    current = self._next_location(current, response, hop, visited)
                finally:
                    await response.aclose()
            except _AttemptFailed as error:
                if current != url:
                    error.reason = f"after redirects, at {current}: {error.reason}"
                raise
        raise AssertionError("unreachable: the loop returns or raises")

    async def _send(self, url: str) -> httpx.Response:
        request = self._build_request(url)
        try:
            return await self._client.send(request, stream=True)
        except DialRejected as error:
            raise _AttemptFailed(f"rejected by the dial policy: {error.reason}", retryable=False) from None
        except httpx.HTTPError as error:
            raise _map_httpx_error(error) from error

    def _build_request(self, url: str) -> httpx.Request:
        decision = self.policy.check_url(url)
        if not decision.allowed or decision.target is None:
            raise _AttemptFailed(f"rejected by the dial policy: {decision.reason}", retryable=False)
        try:
            request = self._client.build_request("GET", url)
        except httpx.InvalidURL as error:
            raise _AttemptFailed(f"invalid URL: {error}", retryable=False) from None

        # httpx parses the URL again. Both parsers must see the same
        # scheme, host and port, or the policy checked a different target.
        target = decision.target
        raw_host = request.url.raw_host.decode("ascii")
        if target.address is not None:
            same_host = raw_host == str(target.address) or ipaddress.ip_address(raw_host) == target.address
        else:
            same_host = raw_host.lower() == target.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        if not same_host or port != target.port or request.url.scheme != target.scheme:
            reason = f"httpx parses the URL as host {raw_host!r} port {port}, not as the checked {target.authority}"
            raise _AttemptFailed(reason, retryable=False)
        return request

    def _next_location(self, current: str, response: httpx.Response, hop: int, visited: set[str]) -> str:
        status = response.status_code
        location = response.headers.get("location")
        if not location:
            raise _AttemptFailed(f"HTTP {status} redirect without a Location", retryable=False, status=status)
        try:
            following = str(httpx.URL(current).join(location))
        except httpx.InvalidURL as error:
            raise _AttemptFailed(f"redirect to an invalid Location {location[:200]!r}: {error}", retryable=False) from None

        if hop == MAX_REDIRECTS:
            raise _AttemptFailed(f"more than {MAX_REDIRECTS} redirects (the last to {following[:200]})", retryable=False)
        if following in visited:
            raise _AttemptFailed(f"redirect loop: {current} redirects back to {following[:200]}", retryable=False)
        if current.lower().startswith("https:") and following.lower().startswith("http:"):
            raise _AttemptFailed(f"redirect from https to http ({following[:200]}) is not followed", retryable=False)
        decision = self.policy.check_url(following)
        if not decision.allowed:
            reason = f"redirect to {following[:200]} was rejected by the dial policy: {decision.reason}"
            raise _AttemptFailed(reason, retryable=False)

        logger.info("%s redirects (HTTP %d) to %s", current, status, following)
        visited.add(following)
        return following

    async def _read_response(self, response: httpx.Response) -> bytes:
        status = response.status_code
        if status in _RETRY_STATUSES:
            retry_after = _parse_retry_after(response.headers.get("retry-after"))
            raise _AttemptFailed(f"server responded with HTTP {status}", retryable=True, status=status, retry_after=retry_after)
        if status != 200:
            raise _AttemptFailed(f"server responded with HTTP {status}", retryable=False, status=status)

        _check_content_type(response.headers.get("content-type"))
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise _AttemptFailed(f"response has Content-Encoding {encoding[:40]!r}; only identity is accepted", retryable=False)
        declared = response.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _AttemptFailed(f"response has an invalid Content-Length {declared[:40]!r}", retryable=False)
            if int(declared) > self.max_response_bytes:
                reason = f"Content-Length of {declared} bytes exceeds the limit of {self.max_response_bytes} bytes"
                raise _AttemptFailed(reason, retryable=False)
        return await self._read_body(response)

    async def _read_body(self, response: httpx.Response) -> bytes:
        # Each chunk is at most what one socket read returns (64 KiB in
        # httpcore 1.0), so no more than the cap plus one chunk is in memory.
        chunks: list[bytes] = []
        received = 0
        try:
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > self.max_response_bytes:
                    reason = f"response body exceeds the limit of {self.max_response_bytes} bytes; reading stopped"
                    raise _AttemptFailed(reason, retryable=False)
                chunks.append(chunk)
        except httpx.HTTPError as error:
            raise _map_httpx_error(error) from error
        return b"".join(chunks)

    def _check_pattern(self, pattern: Any, field: str) -> None:
        if not isinstance(pattern, str):
            raise _AttemptFailed(f"{field} must be a URL pattern, got {type(pattern).__name__}", retryable=False)
        count = pattern.count(SUFFIX_PLACEHOLDER)
        if count != 1:
            raise _AttemptFailed(f"{field} {pattern[:200]!r} contains {SUFFIX_PLACEHOLDER} {count} times, expected once", retryable=False)
        # The placeholder must sit in the path, so a record's suffix can
        # never choose the host that is dialled.
        scheme_end = pattern.find("://")
        path_start = pattern.find("/", scheme_end + 3) if scheme_end >= 0 else -1
        if path_start < 0 or pattern.index(SUFFIX_PLACEHOLDER) < path_start:
            raise _AttemptFailed(f"{field} {pattern[:200]!r} must have {SUFFIX_PLACEHOLDER} in its path", retryable=False)
        # The policy checks the pattern with a made-up suffix in place of
        # the placeholder; its reason quotes that URL.
        example = pattern.replace(SUFFIX_PLACEHOLDER, "A" * 26)
        decision = self.policy.check_url(example)
        if not decision.allowed:
            raise _AttemptFailed(
                f"{field} {pattern[:200]!r} is rejected by the dial policy (checked as {example[:200]!r}): {decision.reason}",
                retryable=False,
            )

    def _check_manifest(self, manifest: dict[str, Any]) -> None:
        if manifest.get("manifest_type") != MANIFEST_TYPE:
            raise _AttemptFailed(f"manifest_type {manifest.get('manifest_type')!r:.80} is not {MANIFEST_TYPE!r}", retryable=False)
        if manifest.get("manifest_version") != MANIFEST_VERSION:
            raise _AttemptFailed(
                f"manifest_version {manifest.get('manifest_version')!r:.80} is not supported (expected {MANIFEST_VERSION!r})",
                retryable=False,
            )
        mirrors = manifest.get("mirrors")
        if not isinstance(mirrors, list) or not mirrors:
            raise _AttemptFailed("mirrors must be a non-empty list", retryable=False)
        if len(mirrors) > MAX_MANIFEST_MIRRORS:
            raise _AttemptFailed(f"mirrors lists {len(mirrors)} mirrors, more than {MAX_MANIFEST_MIRRORS}", retryable=False)
        for index, mirror in enumerate(mirrors):
            path = f"mirrors[{index}]"
            if not isinstance(mirror, dict):
                raise _AttemptFailed(f"{path} must be an object", retryable=False)
            base_url = mirror.get("base_url")
            if not isinstance(base_url, str):
                raise _AttemptFailed(f"{path}.base_url is missing or not text", retryable=False)
            decision = self.policy.check_url(base_url)
            if not decision.allowed:
                raise _AttemptFailed(f"{path}.base_url is rejected by the dial policy: {decision.reason}", retryable=False)
            for key in MANIFEST_PATTERNS:
                self._check_pattern(mirror.get(key), f"{path}.{key}")
