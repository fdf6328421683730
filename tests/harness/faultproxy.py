"""A loopback TCP proxy between two nodes that injects network faults at run time.

A node has the proxy's address (``127.0.0.1:PORT``) as a seed peer, and the
proxy forwards each accepted connection to the target node. Its mode can be
switched at any time and applies to every connection:

* ``pass``: forward bytes unchanged;
* ``partition``: abort every open connection with a TCP reset and close the
  listening socket, so that new connections are refused (``ECONNREFUSED``)
  until the mode changes and the proxy listens on the same port again;
* ``delay``: hold each chunk for ``delay_seconds`` before forwarding it;
* ``drop``: forward nothing and send neither FIN nor RST, so each side has
  a half-open connection. Data and end of stream are read and discarded.
  A connection that lost data never forwards again, because TCP cannot
  resume a stream with a gap in it: it stays a black hole until an end
  closes it. New connections in this mode are black holes too;
* ``trickle``: forward each chunk in pieces of ``trickle_bytes`` with
  ``trickle_seconds`` between them.

``reset()`` aborts the open connections with a TCP reset (``SO_LINGER`` 0)
and leaves the mode as it is. Only 127.0.0.1 is used, for the listener and
for the target.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass, field

import trio

__all__ = ["FaultProxy", "Mode", "abort_stream", "open_proxy"]

CHUNK_BYTES = 65536
LISTEN_BACKLOG = 64
LOOPBACK = "127.0.0.1"


class Mode(enum.StrEnum):
    """What the proxy does with the connections that pass through it."""

    PASS = "pass"
    PARTITION = "partition"
    DELAY = "delay"
    DROP = "drop"
    TRICKLE = "trickle"


@dataclass
class Counters:
    """What the proxy did, for assertions that a fault was really hit."""

    accepted: int = 0
    upstream_failed: int = 0
    aborted: int = 0
    closed: int = 0
    bytes_forwarded: int = 0
    bytes_dropped: int = 0


@dataclass(eq=False)
class _Link:
    """One accepted connection and its connection to the target."""

    client: trio.SocketStream
    upstream: trio.SocketStream
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    aborted: bool = False
    # Set once data was discarded: the link never forwards again.
    black_hole: bool = False
    pumps_running: int = 2


def abort_stream(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a TCP reset: SO_LINGER on with a timeout of 0 makes close() send RST."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()


class FaultProxy:
    """Forwards connections from ``address`` to ``target`` (``127.0.0.1:PORT``); see the module docstring."""

    def __init__(self, target: str, name: str = "") -> None:
        host, _, port = target.rpartition(":")
        if host != LOOPBACK:
            raise ValueError(f"the fault proxy forwards only to {LOOPBACK}, not {target!r}")
        self.target_port = int(port)
        self.name = name or f"proxy to {target}"
        self.mode = Mode.PASS
        self.delay_seconds = 0.0
        self.trickle_bytes = 1
        self.trickle_seconds = 0.0
        self.port = 0
        self.counters = Counters()
        self.links: set[_Link] = set()
        self._changed = trio.Event()
        self._accept_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def address(self) -> str:
        """The ``127.0.0.1:PORT`` that nodes dial."""
        return f"{LOOPBACK}:{self.port}"

    # --- switching faults ----------------------------------------------------

    def _set(self, mode: Mode) -> None:
        self.mode = mode
        self._changed.set()
        self._changed = trio.Event()

    def pass_through(self) -> None:
        """Forward every byte; a partitioned proxy listens again on its port."""
        self._set(Mode.PASS)

    def partition(self) -> None:
        """Reset every open connection and reject new ones until the mode changes."""
        self._set(Mode.PARTITION)
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        self.reset()

    def delay(self, seconds: float) -> None:
        """Hold each chunk for ``seconds`` before forwarding it."""
        self.delay_seconds = seconds
        self._set(Mode.DELAY)

    def drop(self) -> None:
        """Discard all data silently: every connection becomes half-open."""
        self._set(Mode.DROP)

    def trickle(self, piece_bytes: int, piece_seconds: float) -> None:
        """Forward ``piece_bytes`` every ``piece_seconds``."""
        self.trickle_bytes = piece_bytes
        self.trickle_seconds = piece_seconds
        self._set(Mode.TRICKLE)

    def reset(self) -> None:
        """Abort every open connection with a TCP reset on both sides; the mode stays."""
        for link in list(self.links):
            link.aborted = True
            link.scope.cancel()

    # --- running -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and forward until cancelled; ``task_status`` reports once the port is bound."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            started = False
            while True:
                if self.mode is Mode.PARTITION:
                    await self._changed.wait()
                    continue
                listener = await self._listen()
                if not started:
                    task_status.started()
                    started = True
                try:
                    with trio.CancelScope() as scope:
                        self._accept_scope = scope
                        while True:
                            connection, _ = await listener.accept()
                            nursery.start_soon(self._handle, trio.SocketStream(connection))
                finally:
                    self._accept_scope = None
                    listener.close()

    async def _listen(self) -> trio.socket.SocketType:
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # The first bind picks a free port; a partition that heals binds
        # the same port again, so the nodes' seed addresses stay valid.
        await listener.bind((LOOPBACK, self.port))
        listener.listen(LISTEN_BACKLOG)
        self.port = listener.getsockname()[1]
        return listener

    async def _handle(self, client: trio.SocketStream) -> None:
        self.counters.accepted += 1
        try:
            upstream = await trio.open_tcp_stream(LOOPBACK, self.target_port)
        except OSError:
            self.counters.upstream_failed += 1
            abort_stream(client)
            return
        link = _Link(client, upstream, black_hole=self.mode is Mode.DROP)
        self.links.add(link)
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, link, client, upstream)
                    nursery.start_soon(self._pump, link, upstream, client)
        finally:
            self.links.discard(link)
            if link.aborted:
                self.counters.aborted += 1
                abort_stream(client)
                abort_stream(upstream)
            else:
                self.counters.closed += 1
                await trio.aclose_forcefully(client)
                await trio.aclose_forcefully(upstream)

    async def _pump(self, link: _Link, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        """Copy ``source`` to ``sink`` chunk by chunk, applying the current mode to each chunk."""
        try:
            while True:
                data = await source.receive_some(CHUNK_BYTES)
                if link.black_hole or self.mode is Mode.DROP:
                    link.black_hole = True
                    self.counters.bytes_dropped += len(data)
                    if not data:
                        # A half-open link passes on no end of stream.
                        break
                    continue
                if not data:
                    link.scope.cancel()
                    return
                if self.mode is Mode.DELAY:
                    await trio.sleep(self.delay_seconds)
                if self.mode is Mode.TRICKLE:
                    for offset in range(0, len(data), self.trickle_bytes):
                        await sink.send_all(data[offset : offset + self.trickle_bytes])
                        await trio.sleep(self.trickle_seconds)
                else:
                    await sink.send_all(data)
                self.counters.bytes_forwarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if not link.black_hole:
                link.scope.cancel()
                return
        # A black-hole link ends once both of its ends have closed.
        link.pumps_running -= 1
        if link.pumps_running == 0:
            link.scope.cancel()


async def open_proxy(nursery: trio.Nursery, target: str, name: str = "") -> FaultProxy:
    """Start a proxy to ``target`` in ``nursery`` and return it once it listens."""
    proxy = FaultProxy(target, name)
    await nursery.start(proxy.run)
    return proxy
