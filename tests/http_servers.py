"""A threaded HTTP server on 127.0.0.1 or ::1 for the fetch tests.

``MirrorServer`` serves the published Pith files from ``node/data/pith``
under the registry's URL patterns, with the manifest's URLs rewritten to
point at the server, and a set of misbehaving endpoints. It records every
request so tests can count attempts exactly.

Every handler that waits or trickles stops when the client disconnects or
when the server is stopped, and never runs longer than ``MAX_HANDLER_SECONDS``.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from node.demo import FIXTURE_SUBJECT_SUFFIX, fixture_path
from protocol import default_trust, emit_bundle, read_document, state_input

SUFFIX = FIXTURE_SUBJECT_SUFFIX
# A valid suffix that names no record on the server.
OTHER_SUFFIX = "AAAAAAAAAAAAAAAAAAAAAAAAAA"
REGISTRY_BASE_URL = "https://pith.science"
MAX_HANDLER_SECONDS = 10.0
OVERSIZED_STREAM_BYTES = 64 * 1024 * 1024
_CHUNK = 64 * 1024

STATE_BYTES = fixture_path(f"state-{SUFFIX}.json").read_bytes()
MANIFEST_TEXT = fixture_path("pith-mirrors.json").read_text(encoding="utf-8")


def build_bundle_bytes() -> bytes:
    """Return a bundle that ``emit_bundle`` builds from the published state's events."""
    merge_input = state_input(read_document(STATE_BYTES))
    bundle = emit_bundle(merge_input.record, merge_input.aliases, merge_input.events, default_trust())
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


BUNDLE_BYTES = build_bundle_bytes()


def _manifest_variants(base_url: str) -> dict[str, Callable[[dict[str, Any]], None]]:
    """Return the edits that turn the served manifest into each invalid variant."""

    def set_mirror(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda manifest: manifest["mirrors"][0].__setitem__(key, value)

    return {
        "no-suffix": set_mirror("state_pattern", f"{base_url}/pith/state.json"),
        "two-suffixes": set_mirror("bundle_pattern", f"{base_url}/pith/{{suffix}}/{{suffix}}.json"),
        "suffix-in-host": set_mirror("well_known_pattern", "http://{suffix}.mirror.example/bundle.json"),
        "metadata-pattern": set_mirror("state_pattern", "http://169.254.169.254/pith/{suffix}/state.json"),
        "userinfo-base": set_mirror("base_url", base_url.replace("http://", "http://mirror@")),
        "pattern-not-text": set_mirror("bundle_pattern", 7),
        "wrong-type": lambda manifest: manifest.__setitem__("manifest_type", "pith_mirror_list"),
        "wrong-version": lambda manifest: manifest.__setitem__("manifest_version", "2.0"),
        "no-mirrors": lambda manifest: manifest.__setitem__("mirrors", []),
    }


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    host: str


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.record(RecordedRequest(self.path, self.headers.get("Host", "")))
        status = owner.take_failure(self.path)
        if status is not None:
            self.send_bytes(b'{"error": "injected"}', status=status)
            return
        route = owner.find_route(self.path)
        if route is None:
            self.send_bytes(b'{"error": "not found"}', status=404)
            return
        route(self)

    def send_bytes(self, body: bytes, *, status: int = 200, content_type: str | None = "application/json", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.send_bytes(b"", status=status, content_type=None, headers={"Location": location})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: MirrorServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class MirrorServer:
    """The test mirror; use it as a context manager.

    Args:
        host: ``127.0.0.1``, or ``::1`` for an IPv6 server.

    Attributes:
        base_url: ``http://127.0.0.1:<port>`` or ``http://[::1]:<port>``.
        oversized_bytes_sent: bytes the unbounded endpoint wrote before the
            client hung up; valid once ``oversized_done`` is set.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.base_url = f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        self.stopping = threading.Event()
        self.oversized_done = threading.Event()
        self.oversized_bytes_sent = 0
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._failures: dict[str, list[int]] = {}
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._routes = self._build_routes()

    def __enter__(self) -> MirrorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=MAX_HANDLER_SECONDS)

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, path: str) -> int:
        """Return the number of requests for ``path``."""
        return sum(1 for request in self.requests if request.path == path)

    def fail_next(self, path: str, *statuses: int) -> None:
        """Respond to the next requests for ``path`` with these statuses, in order."""
        with self._lock:
            self._failures.setdefault(path, []).extend(statuses)

    def take_failure(self, path: str) -> int | None:
        with self._lock:
            pending = self._failures.get(path)
            return pending.pop(0) if pending else None

    def manifest(self) -> dict[str, Any]:
        """Return the registry's manifest with its URLs pointing at this server."""
        return json.loads(MANIFEST_TEXT.replace(REGISTRY_BASE_URL, self.base_url))

    def find_route(self, path: str) -> Callable[[_Handler], None] | None:
        if path in self._routes:
            return self._routes[path]
        for prefix, route in self._prefix_routes:
            if path.startswith(prefix):
                return route
        return None

    def _build_routes(self) -> dict[str, Callable[[_Handler], None]]:
        state = lambda handler: handler.send_bytes(STATE_BYTES)  # noqa: E731
        bundle = lambda handler: handler.send_bytes(BUNDLE_BYTES)  # noqa: E731
        routes: dict[str, Callable[[_Handler], None]] = {
            "/pith-mirrors.json": lambda handler: handler.send_bytes(json.dumps(self.manifest()).encode()),
            f"/pith/{SUFFIX}/state.json": state,
            f"/pith/{SUFFIX}/bundle.json": bundle,
            f"/.well-known/pith/{SUFFIX}/bundle.json": bundle,
            f"/flaky/pith/{SUFFIX}/state.json": state,
            f"/swapped/pith/{SUFFIX}/state.json": bundle,
            f"/any/pith/{OTHER_SUFFIX}/state.json": state,
            f"/moved/pith/{SUFFIX}/state.json": lambda handler: handler.redirect(f"/pith/{SUFFIX}/state.json", 301),
            "/charset-utf8/pith-mirrors.json": lambda handler: handler.send_bytes(
                json.dumps(self.manifest()).encode(), content_type="application/json; charset=UTF-8"
            ),
            "/charset-latin1/pith-mirrors.json": lambda handler: handler.send_bytes(
                json.dumps(self.manifest()).encode(), content_type="application/json; charset=iso-8859-1"
            ),
            "/wrong-type/pith-mirrors.json": lambda handler: handler.send_bytes(
                json.dumps(self.manifest()).encode(), content_type="text/html"
            ),
            "/no-type/pith-mirrors.json": lambda handler: handler.send_bytes(json.dumps(self.manifest()).encode(), content_type=None),
            "/gzip/pith-mirrors.json": lambda handler: handler.send_bytes(
                gzip.compress(json.dumps(self.manifest()).encode()), headers={"Content-Encoding": "gzip"}
            ),
            "/invalid-json/pith-mirrors.json": lambda handler: handler.send_bytes(b'{"manifest_type": '),
            "/duplicate-keys/pith-mirrors.json": lambda handler: handler.send_bytes(
                b'{"manifest_type": "pith_mirror_manifest", "manifest_type": "pith_mirror_manifest"}'
            ),
            "/not-object/pith-mirrors.json": lambda handler: handler.send_bytes(b"[]"),
            "/stall/pith-mirrors.json": self._stall,
            "/trickle/pith-mirrors.json": self._trickle,
            "/truncated/pith-mirrors.json": self._truncated,
            "/oversized-declared/pith-mirrors.json": self._oversized_declared,
            "/oversized-stream/pith-mirrors.json": self._oversized_stream,
            "/redirect-loop/pith-mirrors.json": lambda handler: handler.redirect("/redirect-loop/pith-mirrors.json"),
            "/redirect-metadata/pith-mirrors.json": lambda handler: handler.redirect("http://169.254.169.254/latest/meta-data/"),
            "/redirect-mapped/pith-mirrors.json": lambda handler: handler.redirect("http://[::ffff:169.254.169.254]/"),
            "/redirect-userinfo/pith-mirrors.json": lambda handler: handler.redirect(
                f"http://mirror.example.org@127.0.0.1:{self.port}/pith-mirrors.json"
            ),
            "/redirect-no-location/pith-mirrors.json": lambda handler: handler.send_bytes(b"", status=302, content_type=None),
        }
        for name, edit in _manifest_variants(self.base_url).items():
            routes[f"/bad-manifest/{name}/pith-mirrors.json"] = self._edited_manifest(edit)
        self._prefix_routes: list[tuple[str, Callable[[_Handler], None]]] = [("/hops/", self._hops)]
        return routes

    def _edited_manifest(self, edit: Callable[[dict[str, Any]], None]) -> Callable[[_Handler], None]:
        def route(handler: _Handler) -> None:
            manifest = self.manifest()
            edit(manifest)
            handler.send_bytes(json.dumps(manifest).encode())

        return route

    def _hops(self, handler: _Handler) -> None:
        # /hops/<n>/pith-mirrors.json redirects n times before the manifest.
        remaining = int(handler.path.split("/")[2])
        if remaining == 0:
            handler.send_bytes(json.dumps(self.manifest()).encode())
        else:
            handler.redirect(f"/hops/{remaining - 1}/pith-mirrors.json")

    def _wait_for_stop(self) -> None:
        self.stopping.wait(MAX_HANDLER_SECONDS)

    def _stall(self, handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b'{"manifest_type"')
        handler.wfile.flush()
        self._wait_for_stop()
        handler.close_connection = True

    def _trickle(self, handler: _Handler) -> None:
        # One byte every 50 ms: each read finishes well inside the read
        # timeout, so only the total time limit stops the client.
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "10000")
        handler.end_headers()
        handler.close_connection = True
        deadline = time.monotonic() + MAX_HANDLER_SECONDS
        try:
            while time.monotonic() < deadline and not self.stopping.wait(0.05):
                handler.wfile.write(b" ")
                handler.wfile.flush()
        except OSError:
            return

    def _truncated(self, handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "5000")
        handler.end_headers()
        handler.wfile.write(STATE_BYTES[:100])
        handler.wfile.flush()
        handler.close_connection = True

    def _oversized_declared(self, handler: _Handler) -> None:
        # Headers only: a client that tried to read the body would hit its
        # read timeout instead of rejecting the Content-Length.
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(100 * 1024 * 1024))
        handler.end_headers()
        handler.wfile.flush()
        self._wait_for_stop()
        handler.close_connection = True

    def _oversized_stream(self, handler: _Handler) -> None:
        # No Content-Length: the body runs until the connection closes.
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        sent = 0
        chunk = b" " * _CHUNK
        deadline = time.monotonic() + MAX_HANDLER_SECONDS
        try:
            while sent < OVERSIZED_STREAM_BYTES and time.monotonic() < deadline and not self.stopping.is_set():
                handler.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            self.oversized_bytes_sent = sent
            self.oversized_done.set()
