"""A hostile gossip peer for tests and benchmarks: it speaks the wire protocol and breaks it on purpose.

``HostilePeer`` drives a ``protocol.Connection`` as the initiator, so its
hello, auth and well-formed messages are exactly what an honest node would
send, and it writes raw frames beside that for everything a Connection
refuses to build. Each attack is one method. Every method returns the
events the honest node sent back, so that a caller can assert the node's
reply (an ``error`` frame with its code, a closed stream, a want request).

Every read is bounded by ``trio.fail_after`` and every loop by a count, and
the peer only ever connects to the address it is given. Tests pass
loopback addresses of daemons they started.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from node.dialpolicy import split_host_port
from protocol import (
    Connection,
    ConnectionEvent,
    EventsRequested,
    HandshakeFailed,
    HelloReceived,
    MergeProfile,
    PeerAuthenticated,
    PeerClosed,
    PeerError,
    PingReceived,
    ProtocolViolation,
    ReconcileReceived,
    Reconciler,
    Role,
    SigningKey,
    SortedIds,
    State,
    default_trust,
    item_id,
)
from protocol.frames import MAX_FRAME_BYTES
from protocol.reconcile import Mode, Range, encode_message
from protocol.wire import MAX_ANNOUNCE_IDS

__all__ = ["HostilePeer", "depth_bomb", "ended", "random_ids", "raw_frame", "size_bombs"]

# Seconds any single read waits; a wait that runs out fails the caller.
READ_SECONDS = 20.0
# Bytes asked for per receive_some call.
RECEIVE_BYTES = 65536


def ended(event: ConnectionEvent) -> bool:
    """Return whether ``event`` ends the connection from the honest node's side."""
    return isinstance(event, (PeerError, PeerClosed, ProtocolViolation, HandshakeFailed))


def raw_frame(payload: bytes) -> bytes:
    """Return ``payload`` behind a 4-byte big-endian length, with no check of size or content."""
    return struct.pack(">I", len(payload)) + payload


def raw_message(message: dict[str, Any]) -> bytes:
    """Return a frame holding the msgpack encoding of ``message``, built without any schema check."""
    return raw_frame(msgpack.packb(message, use_bin_type=True))


def depth_bomb(levels: int) -> bytes:
    """Return a msgpack payload of ``levels`` nested one-element arrays around nil."""
    return b"\x91" * levels + b"\xc0"


def size_bombs() -> dict[str, bytes]:
    """Return msgpack payloads whose headers claim far more data than they carry (4 to 6 bytes each)."""
    return {
        "array32": b"\xdd\xff\xff\xff\xff",
        "map32": b"\xdf\xff\xff\xff\xff",
        "bin32": b"\xc6\xff\xff\xff\xff",
        "str32": b"\xdb\xff\xff\xff\xff",
        # A message map whose ids array claims 4 billion entries.
        "ids_array32": b"\x82\xa4type\xa4want\xa3ids\xdd\xff\xff\xff\xff",
    }


def random_ids(count: int, label: str) -> list[bytes]:
    """Return ``count`` distinct 32-byte ids that no real item has, derived from ``label``."""
    return [hashlib.sha256(f"hostile {label} {number}".encode()).digest() for number in range(count)]


@dataclass
class Served:
    """What ``HostilePeer.serve`` did: the ids the node requested and the items sent."""

    requested: list[bytes] = field(default_factory=list)
    sent: int = 0
    events: list[ConnectionEvent] = field(default_factory=list)


class HostilePeer:
    """One connection of an attacker to an honest node; see the module docstring.

    Args:
        stream: a connected stream to the node's gossip listener.
        label: the seed label of the peer's node key (``SigningKey.from_label``).
        profile: the merge profile sent in hello; by default the node's own.
    """

    def __init__(self, stream: trio.abc.Stream, label: str, profile: MergeProfile | None = None) -> None:
        self.stream = stream
        self.label = label
        self.key = SigningKey.from_label(label)
        self.conn = Connection(Role.INITIATOR, self.key, profile or MergeProfile.from_trust(default_trust()))
        # Every byte this peer wrote, in order, so a later peer can replay it.
        self.sent = bytearray()
        self.broken = False
        # Whether reads reply to the node's hello with our auth. A trickled
        # hello must not be interleaved with an auth frame.
        self.answer_hello = True
        # Events read after the one where a read_until call stopped.
        self._left: list[ConnectionEvent] = []

    @classmethod
    async def open(cls, address: str, label: str, *, local_host: str | None = None, profile: MergeProfile | None = None) -> HostilePeer:
        """Connect to ``address`` (``HOST:PORT``), from ``local_host`` when given (such as 127.66.0.1)."""
        host, port = split_host_port(address)
        stream = await trio.open_tcp_stream(host, port, local_address=local_host)
        return cls(stream, label, profile)

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)

    # --- raw writing and reading ----------------------------------------------

    async def send(self, data: bytes) -> bool:
        """Write ``data`` as it is; return False once the node has closed the stream."""
        if self.broken:
            return False
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.broken = True
            return False
        self.sent += data
        return True

    async def read(self) -> list[ConnectionEvent]:
        """Read one chunk and return its events; a closed stream gives a PeerClosed event."""
        try:
            data = await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        return self.conn.receive_data(data)

    async def read_until(
        self,
        done: Callable[[ConnectionEvent], bool],
        seconds: float = READ_SECONDS,
        on_event: Callable[[ConnectionEvent], Any] | None = None,
    ) -> list[ConnectionEvent]:
        """Read events until ``done`` is true for one or the connection ends; answer hello and ping on the way.

        ``on_event`` may be an async function; it runs for every event.

        Raises:
            trio.TooSlowError: ``seconds`` passed first.
        """
        seen: list[ConnectionEvent] = []
        with trio.fail_after(seconds):
            while True:
                if self._left:
                    batch, self._left = self._left, []
                else:
                    batch = await self.read()
                for position, event in enumerate(batch):
                    seen.append(event)
                    await self._answer(event)
                    if on_event is not None:
                        result = on_event(event)
                        if hasattr(result, "__await__"):
                            await result
                    if done(event) or ended(event):
                        # Later events of the same chunk go to the next call.
                        self._left = batch[position + 1 :]
                        return seen
                if self.conn.closed and not self._left:
                    return seen

    async def _answer(self, event: ConnectionEvent) -> None:
        # A later frame of the same chunk (an error after the hello) may
        # already have closed the connection.
        if self.conn.closed:
            return
        if isinstance(event, HelloReceived) and self.answer_hello and self.conn.our_state is State.AWAIT_AUTH:
            await self.send(self.conn.send_auth())
        elif isinstance(event, PingReceived) and self.conn.ready:
            await self.send(self.conn.send_pong(event.nonce))

    async def handshake(self, listen: str | None = None) -> ConnectionEvent:
        """Run the handshake, advertising ``listen``; return the last event (PeerAuthenticated on success)."""
        await self.send(self.conn.send_hello(os.urandom(32), listen))
        events = await self.read_until(lambda event: isinstance(event, PeerAuthenticated))
        return events[-1]

    async def until_closed(self, seconds: float = READ_SECONDS) -> list[ConnectionEvent]:
        """Read, answering pings, until the node ends the connection."""
        return await self.read_until(lambda event: False, seconds)

    # --- frame and msgpack attacks --------------------------------------------

    async def oversized_frame(self) -> list[ConnectionEvent]:
        """Send a length prefix one byte above the frame cap, and no body."""
        await self.send(struct.pack(">I", MAX_FRAME_BYTES + 1))
        return await self.until_closed()

    async def zero_length_frame(self) -> list[ConnectionEvent]:
        """Send a frame of length 0."""
        await self.send(struct.pack(">I", 0))
        return await self.until_closed()

    async def trailing_bytes_frame(self) -> list[ConnectionEvent]:
        """Send a valid ping followed by extra bytes inside the same frame."""
        payload = msgpack.packb({"type": "ping", "nonce": b"12345678"}, use_bin_type=True) + b"\x00"
        await self.send(raw_frame(payload))
        return await self.until_closed()

    async def send_payload(self, payload: bytes) -> list[ConnectionEvent]:
        """Send one frame holding ``payload`` (a bomb, garbage) and read until the node closes."""
        await self.send(raw_frame(payload))
        return await self.until_closed()

    async def send_message(self, message: dict[str, Any]) -> list[ConnectionEvent]:
        """Send ``message`` encoded without any schema check and read until the node closes."""
        await self.send(raw_message(message))
        return await self.until_closed()

    async def trickle_hello(self, delay: float, max_bytes: int = 4096) -> tuple[int, list[ConnectionEvent]]:
        """Send our hello one byte every ``delay`` seconds until the node closes; return (bytes sent, events).

        The node's replies are read concurrently, so the close is seen at once.
        """
        frame = self.conn.send_hello(os.urandom(32), None)
        self.answer_hello = False
        written = 0
        events: list[ConnectionEvent] = []

        async def reader(cancel: trio.CancelScope) -> None:
            events.extend(await self.until_closed(seconds=READ_SECONDS * 3))
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, nursery.cancel_scope)
            for byte in frame[:max_bytes]:
                if not await self.send(bytes([byte])):
                    break
                written += 1
                await trio.sleep(delay)
            else:
                # The whole hello went out; wait for the reader to see the end.
                await trio.sleep_forever()
        return written, events

    async def replay(self, recorded: bytes) -> list[ConnectionEvent]:
        """Send bytes another connection wrote (a hello and auth), and read until the node closes."""
        await self.send(recorded)
        return await self.until_closed()

    # --- session-message attacks ----------------------------------------------

    async def flood_announce(self, ids: Sequence[bytes]) -> None:
        """Announce ``ids`` in messages of the largest allowed size, without reading in between."""
        for start in range(0, len(ids), MAX_ANNOUNCE_IDS):
            if not await self.send(self.conn.send_announce(ids[start : start + MAX_ANNOUNCE_IDS])):
                return

    async def flood_wants(self, requests: int, ids_per_request: int = 1) -> None:
        """Send ``requests`` want messages back to back, without reading the replies."""
        for number in range(requests):
            if not await self.send(self.conn.send_want(random_ids(ids_per_request, f"{self.label} want {number}"))):
                return

    async def want_in_one_frame(self, ids: Sequence[bytes]) -> list[ConnectionEvent]:
        """Request every id in ``ids`` in one want frame, whatever the per-message limit."""
        await self.send(raw_message({"type": "want", "ids": list(ids)}))
        return await self.until_closed()

    async def flood_pings(self, count: int) -> None:
        """Send ``count`` pings back to back."""
        for number in range(count):
            if not await self.send(self.conn.send_ping(number.to_bytes(8, "big"))):
                return

    async def advertise(self, addresses: Sequence[str]) -> None:
        """Send a peers message naming ``addresses``."""
        await self.send(self.conn.send_peers(addresses))

    async def unsolicited_items(self, items: Sequence[dict[str, Any]]) -> None:
        """Send items nobody requested."""
        await self.send(self.conn.send_items(list(items), False))

    async def serve(self, items: Iterable[dict[str, Any]], seconds: float = READ_SECONDS) -> Served:
        """Announce ``items`` and answer the node's want requests with them, until every id was requested once.

        The items may be forged, equivocating or invalid: the node sees them
        only as a reply to its own request, as with an honest peer. Ids the
        node never requests (stored already, or requested elsewhere) end
        the wait after ``seconds``.
        """
        by_id = {item_id(item): item for item in items}
        served = Served()
        await self.flood_announce(list(by_id))

        async def on_event(event: ConnectionEvent) -> None:
            if isinstance(event, EventsRequested) and self.conn.ready:
                found = [by_id[wanted] for wanted in event.ids if wanted in by_id]
                served.requested.extend(event.ids)
                for start in range(0, max(1, len(found)), 64):
                    chunk = found[start : start + 64]
                    await self.send(self.conn.send_items(chunk, start + 64 < len(found)))
                served.sent += len(found)

        def complete(_: ConnectionEvent) -> bool:
            return len(set(served.requested) & set(by_id)) == len(by_id)

        with trio.move_on_after(seconds):
            served.events = await self.read_until(complete, seconds + 1, on_event)
        return served

    async def answer_wants_empty(self, seconds: float, expected: int | None = None) -> list[bytes]:
        """Reply to every want with an empty items message for ``seconds``, or until ``expected`` distinct ids were requested.

        Returns the ids requested.
        """
        requested: list[bytes] = []

        async def on_event(event: ConnectionEvent) -> None:
            if isinstance(event, EventsRequested) and self.conn.ready:
                requested.extend(event.ids)
                await self.send(self.conn.send_items([], False))

        def complete(_: ConnectionEvent) -> bool:
            return expected is not None and len(set(requested)) >= expected

        with trio.move_on_after(seconds):
            await self.read_until(complete, seconds + 1, on_event)
        return requested

    # --- reconciliation attacks ------------------------------------------------

    async def lie_in_reconciliation(self, fake_ids: Sequence[bytes], session: int = 0, seconds: float = READ_SECONDS) -> Reconciler:
        """Run a reconciliation session whose fingerprints describe ``fake_ids``, which this peer does not hold.

        The honest node then learns ids to request that nobody can deliver.
        Returns this side's reconciler once the session is done.
        """
        reconciler = Reconciler(SortedIds(fake_ids), self.conn.reconcile_key(session))
        await self.send(self.conn.send_reconcile(session, 0, reconciler.initiate()))

        async def on_event(event: ConnectionEvent) -> None:
            if isinstance(event, ReconcileReceived) and event.session == session and not reconciler.done:
                reply = reconciler.receive(event.payload)
                if reply is not None:
                    await self.send(self.conn.send_reconcile(session, event.round + 1, reply))

        await self.read_until(lambda event: reconciler.done, seconds, on_event)
        return reconciler

    async def random_fingerprints(self, ranges: int, session: int = 0) -> list[ConnectionEvent]:
        """Open a session with ``ranges`` fingerprint ranges of random bytes, which match nothing; return the node's first reply."""
        bounds = sorted(os.urandom(32) for _ in range(ranges - 1))
        lowers = [bytes(32), *bounds]
        uppers = [*bounds, b"\xff" * 33]
        payload = encode_message(Range(lower, upper, Mode.FINGERPRINT, fingerprint=os.urandom(16)) for lower, upper in zip(lowers, uppers))
        await self.send(self.conn.send_reconcile(session, 0, payload))
        return await self.read_until(lambda event: isinstance(event, ReconcileReceived))

    async def reconcile_garbage(self, payload: bytes, session: int = 0, round_number: int = 0) -> list[ConnectionEvent]:
        """Send a reconcile message with ``payload`` and read until the node closes."""
        await self.send(self.conn.send_reconcile(session, round_number, payload))
        return await self.until_closed()

    async def flood_sessions(self, count: int) -> None:
        """Open ``count`` reconciliation sessions back to back (round 0 each, session numbers 0, 2, 4, ...)."""
        empty = Reconciler(SortedIds([]), bytes(32)).initiate()
        for number in range(count):
            if not await self.send(self.conn.send_reconcile(2 * number, 0, empty)):
                return
