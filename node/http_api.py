"""The HTTP API of a mirror: an ASGI application served by Hypercorn's trio worker.

Paths follow the registry's, so existing clients work unchanged:

| method and path | response |
|---|---|
| GET /pith/{suffix}/state.json | the state document, as the registry serves it |
| GET /pith/{suffix}/bundle.json | the bundle document |
| GET /.well-known/pith/{suffix}/bundle.json | the same bundle |
| GET /pith-mirrors.json | this mirror's manifest: URL patterns and trusted keys |
| GET /resolve?arxiv=ID, ?doi=DOI, ?pith=NUMBER or ?q=ANY | 302 to the canonical state path |
| POST /events | signed events, a list of them, or a whole bundle; per-event outcomes |
| GET /healthz | liveness and store reachability |
| GET /metrics | Prometheus text format |
| GET / | an HTML status page |

A path whose ``{suffix}`` is another form of a known number (a short
number, a ``pith_short_*`` alias or a full Pith number) is redirected with
301 to the canonical path. Errors are JSON objects
``{"error": {"status": 404, "code": "not_found", "message": "..."}}``. Bad
input gets a 4xx response and is logged. A 5xx response means a bug or a
broken disk, never bad input.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote

from protocol import InvalidInput, parse_json
from protocol.identifiers import check_suffix
from protocol.documents import DOCUMENT_LIMITS

from .ratelimit import RateLimitedLog
from .service import MirrorService, SubmitOutcome

__all__ = ["MirrorApp"]

logger = logging.getLogger("pith_mirror.http")
rejected_body_log = RateLimitedLog(logger)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_TYPE = b"application/json"


class HTTPError(Exception):
    """An error response: status, stable code and a message for the client."""

    def __init__(self, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


class Response:
    """A complete response, built before any byte is sent."""

    def __init__(self, status: int, body: bytes, content_type: bytes = JSON_TYPE, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = [(b"content-type", content_type), *(headers or [])]


def _json_response(status: int, value: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), headers=headers)


def _error_response(error: HTTPError) -> Response:
    body = {"error": {"status": error.status, "code": error.code, "message": error.message}}
    return _json_response(error.status, body, error.headers)


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    if header.strip() == "*":
        return True
    # Weak and strong forms compare equal for GET, as RFC 9110 section 13.1.2 allows.
    candidates = [part.strip().removeprefix("W/") for part in header.split(",")]
    return etag in candidates


class MirrorApp:
    """The ASGI application of one mirror node."""

    def __init__(self, service: MirrorService, max_body_bytes: int) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return

        started = time.perf_counter()
        route = "other"
        try:
            route, response = await self._dispatch(scope, receive)
        except HTTPError as error:
            response = _error_response(error)
        except Exception:
            logger.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            response = _error_response(HTTPError(500, "internal_error", "internal error; see the node's log"))
        self.service.metrics.observe_request(route, response.status, time.perf_counter() - started)

        body = response.body if scope.get("method") != "HEAD" else b""
        headers = [*response.headers, (b"content-length", str(len(response.body)).encode("ascii"))]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, scope: Scope, receive: Receive) -> tuple[str, Response]:
        method = scope["method"]
        path = scope["path"]
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}

        if path == "/events":
            if method != "POST":
                raise HTTPError(405, "method_not_allowed", "use POST for /events", [(b"allow", b"POST")])
            return "events", await self._post_events(receive, headers)
        if method not in ("GET", "HEAD"):
            raise HTTPError(405, "method_not_allowed", f"{method} is not allowed on {path}", [(b"allow", b"GET, HEAD")])

        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "pith" and parts[3] in ("state.json", "bundle.json"):
            kind = parts[3].removesuffix(".json")
            return kind, await self._document(kind, parts[2], headers, prefix="/pith")
        if len(parts) == 5 and parts[1:3] == [".well-known", "pith"] and parts[4] == "bundle.json":
            return "bundle", await self._document("bundle", parts[3], headers, prefix="/.well-known/pith")
        if path == "/pith-mirrors.json":
            return "manifest", _json_response(200, self.service.manifest())
        if path == "/resolve":
            return "resolve", await self._resolve(scope.get("query_string", b""))
        if path == "/healthz":
            return "healthz", await self._health()
        if path == "/metrics":
            body, content_type = await self.service.metrics_text()
            return "metrics", Response(200, body, content_type.encode("ascii"))
        if path == "/":
            return "status", await self._status_page()
        raise HTTPError(404, "not_found", f"no resource at {path}")

    async def _canonical_number(self, suffix_text: str) -> str:
        """Return the Pith number a path segment names, or raise 404 or a 301 to the canonical path."""
        try:
            check_suffix(suffix_text)
        except InvalidInput:
            number = await self.service.resolve(suffix_text) if len(suffix_text) <= 128 else None
            if number is None:
                raise HTTPError(404, "not_found", f"{suffix_text[:128]!r} is not a known Pith number, short form or suffix") from None
            raise _Redirect(number.rsplit(":", 1)[1]) from None
        number = await self.service.number_for_suffix(suffix_text)
        if number is None:
            raise HTTPError(404, "not_found", f"no record with suffix {suffix_text} on this mirror")
        return number

    async def _document(self, kind: str, suffix_text: str, headers: dict[str, str], prefix: str) -> Response:
        try:
            number = await self._canonical_number(suffix_text)
        except _Redirect as redirect:
            location = f"{prefix}/{redirect.suffix}/{kind}.json".encode("ascii")
            return Response(301, b"", headers=[(b"location", location)])

        if kind == "state":
            served = await self.service.state_bytes(number)
        else:
            served = await self.service.bundle_bytes(number)
        if served is None:
            raise HTTPError(404, "not_found", f"{number} has no merged state yet on this mirror")
        body, etag = served
        cache_headers = [(b"etag", etag.encode("ascii")), (b"cache-control", b"public, max-age=60")]
        if _etag_matches(headers.get("if-none-match"), etag):
            return Response(304, b"", headers=cache_headers)
        return Response(200, body, headers=cache_headers)

    async def _resolve(self, query_string: bytes) -> Response:
        try:
            query = parse_qs(query_string.decode("ascii"), max_num_fields=4, strict_parsing=True, errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise HTTPError(400, "invalid_query", "query must be one of arxiv=, doi=, pith= or q= with a value") from None
        values = [(key, query[key][0]) for key in ("arxiv", "doi", "pith", "q") if key in query]
        if len(values) != 1:
            raise HTTPError(400, "invalid_query", "give exactly one of arxiv=, doi=, pith= or q=")
        key, value = values[0]
        if len(value) > 256:
            raise HTTPError(400, "invalid_query", f"{key} value is longer than 256 characters")
        number = await self.service.resolve(value)
        if number is None:
            raise HTTPError(404, "not_found", f"no record on this mirror for {key}={value!r}")
        suffix = number.rsplit(":", 1)[1]
        location = f"/pith/{quote(suffix)}/state.json".encode("ascii")
        return Response(302, b"", headers=[(b"location", location)])

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise HTTPError(413, "body_too_large", f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client_disconnected", "client closed the connection before the body ended")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise HTTPError(413, "body_too_large", f"request body exceeds the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _post_events(self, receive: Receive, headers: dict[str, str]) -> Response:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HTTPError(415, "unsupported_media_type", f"content type must be application/json, got {content_type or 'none'!r}")
        body = await self._read_body(receive, headers)
        try:
            document = parse_json(body, DOCUMENT_LIMITS)
        except InvalidInput as error:
            rejected_body_log.log(logging.INFO, "rejected POST /events body: %s", error)
            raise HTTPError(400, "invalid_json", f"request body is not acceptable JSON: {error}") from None

        outcomes = await self.service.submit(document, source="http")
        return _outcomes_response(outcomes)

    async def _health(self) -> Response:
        ok = await self.service.healthy()
        status = 200 if ok else 503
        return _json_response(status, {"status": "ok" if ok else "store_unavailable"})

    async def _status_page(self) -> Response:
        stats = await self.service.stats()
        activity = await self.service.recent_activity(20)
        rows = "".join(
            f"<tr><td>{html.escape(str(item.get('time', '')))}</td><td>{html.escape(str(item.get('what', '')))}</td>"
            f"<td>{html.escape(str(item.get('detail', '')))}</td></tr>"
            for item in activity
        )
        stat_rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>" for key, value in stats.items())
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pith-mirror status</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}</style></head>
<body><h1>pith-mirror</h1>
<p>Merge profile: <code>{html.escape(self.service.profile_text())}</code></p>
<h2>Store</h2><table>{stat_rows}</table>
<h2>Recent activity</h2><table><tr><th>time</th><th>what</th><th>detail</th></tr>{rows}</table>
<p><a href="/pith-mirrors.json">manifest</a> · <a href="/metrics">metrics</a> · <a href="/healthz">health</a></p>
</body></html>
"""
        return Response(200, page.encode("utf-8"), b"text/html; charset=utf-8")


class _Redirect(Exception):
    def __init__(self, suffix: str) -> None:
        super().__init__(suffix)
        self.suffix = suffix


def _outcomes_response(outcomes: list[SubmitOutcome]) -> Response:
    rejected = [outcome for outcome in outcomes if outcome.status == "rejected"]
    body = {
        "accepted": sum(1 for outcome in outcomes if outcome.status == "accepted"),
        "duplicate": sum(1 for outcome in outcomes if outcome.status == "duplicate"),
        "rejected": len(rejected),
        "outcomes": [outcome.as_json() for outcome in outcomes],
    }
    # 422 signals that at least one item was rejected even though the others
    # were stored. Each outcome names its item.
    return _json_response(422 if rejected else 200, body)
