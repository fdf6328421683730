"""One peer connection: a trio task that drives ``protocol.wire.Connection`` over a TCP stream.

A session runs these tasks in one nursery:

* the reader (the session's main task) reads with a bounded
  ``receive_some``, feeds ``Connection.receive_data`` and dispatches the
  events. It never waits for the network to take our bytes, so two nodes
  that request items from each other at once cannot deadlock on full TCP
  buffers. It does wait for the ingest queue, which slows a fast sender;
* the writer sends queued frames: control frames (handshake, ``want``,
  ``reconcile``, ``peers``, ``ping``, ``pong``, ``error``, ``bye``) before bulk
  frames (``items``, ``announce``), of which at most ``BULK_FRAMES`` wait;
* after the handshake: the item server, which answers ``want`` requests
  one at a time; the fetcher, which requests announced and reconciled ids
  with at most ``MAX_OUTSTANDING_WANTS`` requests in flight; and the
  announcer, which sends ``announce`` messages for ids the node pushes.

Error handling: a ``ProtocolViolation`` or ``HandshakeFailed`` event, a
reconciliation ``WireError``, a flood or a timeout ends this session only.
The session sends an ``error`` frame where the protocol allows one, logs
the reason with the peer's address and key fingerprint, and has the node
score the peer. ``trio.BrokenResourceError`` and ``ClosedResourceError``
end the session quietly. A send that was cancelled may have written part
of a frame, so the stream is then closed and never written to again.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from protocol import (
    Connection,
    EventsAnnounced,
    EventsRequested,
    HandshakeFailed,
    HelloReceived,
    ItemsReceived,
    PeerAuthenticated,
    PeerClosed,
    PeerError,
    PeersReceived,
    PingReceived,
    PongReceived,
    ProtocolViolation,
    ReconcileReceived,
    Role,
    State,
    UsageError,
    key_fingerprint,
)
from protocol.frames import MAX_FRAME_BYTES, MAX_FRAME_CONTAINERS
from protocol.wire import MAX_ANNOUNCE_IDS, MAX_ITEMS, NONCE_BYTES, PING_NONCE_BYTES

from .peers import PeerEntry, Penalty
from .sync import Reconciliations

if TYPE_CHECKING:
    from .gossip import GossipNode

__all__ = ["PeerSession", "RECEIVE_BYTES"]

logger = logging.getLogger("pith_mirror.gossip.session")

# Bytes asked for per receive_some call.
RECEIVE_BYTES = 64 * 1024
# A chunk that may complete a frame larger than this is decoded in a worker
# thread, because checking a hostile 1 MiB frame can take over a second.
INLINE_DECODE_BYTES = 64 * 1024
# Bulk frames (items, announce) queued for the writer; each is up to 1 MiB.
BULK_FRAMES = 4
# want requests this node keeps in flight to one peer.
MAX_OUTSTANDING_WANTS = 4
# want requests a peer may queue with us before it counts as a flood. An
# honest node keeps MAX_OUTSTANDING_WANTS in flight.
MAX_QUEUED_WANTS = 16
# Bytes of canonical JSON per items frame. msgpack is at most about 1%
# larger than canonical JSON for events (docs/protocol.md, "Frames"), so
# this leaves room within MAX_FRAME_BYTES.
ITEMS_FRAME_BUDGET = 768 * 1024
# Arrays and maps of the items in one frame: the frame limit less the
# message map and the items array.
ITEMS_FRAME_CONTAINERS = MAX_FRAME_CONTAINERS - 2
# Ids remembered per peer as held by it, so they are not announced to it.
PEER_HAS_ENTRIES = 16_384
# Ids a reply may leave out of one request before the peer is scored.
UNDELIVERED_TOLERANCE = 16
# Announced ids queued for requests to one peer. Announcements beyond this
# are dropped, because a peer that announces faster than it replies to want
# requests would otherwise fill memory until its want timeout.
# Reconciliation later finds what was dropped; its own ids are not capped.
MAX_ANNOUNCED_QUEUE_IDS = 16_384


@dataclass
class _Want:
    """A want request this node sent, waiting for its items replies."""

    ids: set[bytes]
    sent_at: float


@dataclass
class _Window:
    """Counts of one peer's messages in the current rate window."""

    started: float
    counts: dict[str, int] = field(default_factory=dict)
    flagged: set[str] = field(default_factory=set)


class PeerSession:
    """One TCP connection to a peer, from the first byte to the close.

    Args:
        node: the gossip node that owns the session.
        stream: the connected stream; the session closes it.
        role: INITIATOR when this node dialled.
        remote: the peer's ``IP:PORT`` for logs.
        entry: the peer table entry that was dialled, or None for an
            inbound connection.
    """

    def __init__(self, node: GossipNode, stream: trio.abc.Stream, role: Role, remote: str, remote_host: str, entry: PeerEntry | None) -> None:
        self.node = node
        self.stream = stream
        self.role = role
        self.remote = remote
        self.remote_host = remote_host
        self.entry = entry
        self.conn = Connection(role, node.signing_key, node.profile)
        self.node_key: bytes | None = None
        self.listen: str | None = None
        self.ready = False
        self.connected_at = time.time()
        self.end_reason: str | None = None
        # Set when the session ended because of the peer: the table then
        # backs off, and retry_delay overrides the backoff.
        self.failed = False
        self.retry_delay: float | None = None
        # Ids this node claimed to request from this peer and has not stored yet.
        self.claimed = 0
        self.items_sent = 0
        self.items_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        # Announced ids not queued because MAX_ANNOUNCED_QUEUE_IDS were queued.
        self.announcements_dropped = 0
        self.reconcile = Reconciliations(self)

        self._cancel_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._control: deque[tuple[bytes, bool]] = deque()
        self._bulk: deque[bytes] = deque()
        self._bulk_slots = trio.Semaphore(BULK_FRAMES)
        self._writer_wakeup = trio.Event()
        self._closing = False

        self._wants_to_serve: deque[tuple[bytes, ...]] = deque()
        self._serve_wakeup = trio.Event()
        self._outstanding: deque[_Want] = deque()
        self._want_slots = trio.Semaphore(MAX_OUTSTANDING_WANTS)
        self._fetch_queue: deque[Sequence[bytes]] = deque()
        self._fetch_queued = 0
        self._fetch_wakeup = trio.Event()
        self._announce_queue: list[bytes] = []
        self._announce_wakeup = trio.Event()
        self._peer_has: OrderedDict[bytes, None] = OrderedDict()
        self._ping_nonce: bytes | None = None
        self._window = _Window(started=trio.current_time())
        self._receive_budget = float(node.settings.receive_bytes_per_second)
        self._budget_time = trio.current_time()

    # --- identity ------------------------------------------------------------

    @property
    def initiated(self) -> bool:
        """Whether this node opened the connection."""
        return self.role is Role.INITIATOR

    @property
    def fingerprint(self) -> str:
        """The peer's key fingerprint (32 hex), or ``-`` before its hello."""
        return key_fingerprint(self.node_key) if self.node_key is not None else "-"

    def describe(self) -> str:
        """Return the peer's address and key fingerprint, for log lines."""
        return f"{self.remote} (key {self.fingerprint})"

    # --- running -------------------------------------------------------------

    async def run(self) -> None:
        """Run the session until it ends. Errors end the session and are logged; only cancellation propagates."""
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._guarded, self._writer)
                    self.send_control(lambda conn: conn.send_hello(os.urandom(NONCE_BYTES), self.node.advertised_listen))
                    await self._guarded(self._reader)
                    # The reader stopped without a final frame to flush.
                    if not self._closing:
                        self._cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            self.node.session_closed(self)

    async def _guarded(self, task: Callable[[], Any]) -> None:
        """Run one task of the session; any error ends this session only."""
        try:
            await task()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._set_reason(f"connection lost: {error or type(error).__name__}")
            self._cancel_scope.cancel()
        except Exception as error:
            logger.exception("session with %s failed", self.describe())
            self._set_reason(f"internal error: {error!r}")
            self._cancel_scope.cancel()

    def start_task(self, task: Callable[[], Any]) -> None:
        """Run ``task`` inside this session, so that it ends with the session."""
        if self._nursery is not None and not self._closing:
            self._nursery.start_soon(self._guarded, task)

    def _set_reason(self, reason: str, *, failed: bool = False) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self.failed = failed

    def finish(self, reason: str, builder: Callable[[Connection], bytes] | None = None, *, failed: bool = False) -> None:
        """End the session: send ``builder``'s frame (an error or bye) first, if given, then close.

        The final frame gets ``settings.flush_seconds`` to go out. After
        that the stream is closed, even with the frame half written, and
        never written to again.
        """
        self._set_reason(reason, failed=failed)
        if self._closing:
            return
        self._closing = True
        frame = self._build(builder) if builder is not None else None
        if frame is None:
            self._cancel_scope.cancel()
            return
        self._control.append((frame, True))
        self._writer_wakeup.set()
        self._cancel_scope.deadline = min(self._cancel_scope.deadline, trio.current_time() + self.node.settings.flush_seconds)

    def violation(self, penalty: Penalty, reason: str, code: str = "invalid_message") -> None:
        """End the session because the peer broke the protocol, and score it."""
        self.node.hostile_log.log(logging.WARNING, "closing connection to %s: %s", self.describe(), reason)
        self.node.penalize(self, penalty, reason)
        self.finish(reason, lambda conn: conn.send_error(code, reason), failed=True)

    # --- sending -------------------------------------------------------------

    def _build(self, builder: Callable[[Connection], bytes]) -> bytes | None:
        """Return the frame ``builder`` makes, or None when the connection no longer allows it."""
        if self.conn.our_state is State.CLOSED:
            return None
        try:
            return builder(self.conn)
        except UsageError:
            if self.conn.closed:
                return None
            raise

    def send_control(self, builder: Callable[[Connection], bytes]) -> bool:
        """Queue a control frame; return False when the session is closing."""
        if self._closing:
            return False
        frame = self._build(builder)
        if frame is None:
            return False
        self._control.append((frame, False))
        self._writer_wakeup.set()
        return True

    async def send_bulk(self, builder: Callable[[Connection], bytes]) -> bool:
        """Queue a bulk frame, waiting while ``BULK_FRAMES`` are queued; return False when closing."""
        await self._bulk_slots.acquire()
        try:
            frame = None if self._closing else self._build(builder)
        except BaseException:
            self._bulk_slots.release()
            raise
        if frame is None:
            self._bulk_slots.release()
            return False
        self._bulk.append(frame)
        self._writer_wakeup.set()
        return True

    async def _writer(self) -> None:
        while True:
            while not self._control and not self._bulk:
                self._writer_wakeup = trio.Event()
                await self._writer_wakeup.wait()
            final = False
            if self._control:
                frame, final = self._control.popleft()
            else:
                frame = self._bulk.popleft()
                self._bulk_slots.release()
            try:
                await self.stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                self._set_reason(f"connection lost while sending: {error or type(error).__name__}")
                self._cancel_scope.cancel()
                return
            self.bytes_sent += len(frame)
            self.node.count_bytes_sent(len(frame))
            if final:
                self._cancel_scope.cancel()
                return

    # --- reading -------------------------------------------------------------

    async def _reader(self) -> None:
        settings = self.node.settings
        with trio.move_on_after(settings.handshake_timeout) as deadline:
            while not self.ready:
                if not await self._receive_once():
                    return
        if deadline.cancelled_caught:
            self.node.penalize(self, Penalty.TIMEOUT, "handshake timed out")
            self.finish(f"handshake did not complete within {settings.handshake_timeout:g} s", failed=True)
            return

        assert self._nursery is not None
        for task in (self._item_server, self._fetcher, self._announcer):
            self._nursery.start_soon(self._guarded, task)
        self.node.session_started(self)
        while await self._receive_once():
            pass

    async def _receive_once(self) -> bool:
        """Read one chunk and handle its events; return False once the session should stop reading."""
        settings = self.node.settings
        idle_start = trio.current_time()
        while True:
            with trio.move_on_after(settings.ping_interval) as idle:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            if not idle.cancelled_caught:
                break
            if trio.current_time() - idle_start >= settings.idle_timeout:
                self.node.penalize(self, Penalty.TIMEOUT, "idle timeout")
                self.finish(f"no data for {settings.idle_timeout:g} s", failed=True)
                return False
            if self.ready:
                nonce = os.urandom(PING_NONCE_BYTES)
                self._ping_nonce = nonce
                self.send_control(lambda conn: conn.send_ping(nonce))

        self.bytes_received += len(data)
        await self._throttle(len(data))
        if len(data) + self.conn.buffered > INLINE_DECODE_BYTES:
            events = await trio.to_thread.run_sync(self.conn.receive_data, data, limiter=self.node.decode_threads)
        else:
            events = self.conn.receive_data(data)
        for event in events:
            if not await self._dispatch(event):
                return False
        return not self.conn.closed and not self._closing

    async def _throttle(self, size: int) -> None:
        """Wait while this peer has sent more than ``receive_bytes_per_second`` allows (a token bucket)."""
        rate = self.node.settings.receive_bytes_per_second
        now = trio.current_time()
        self._receive_budget = min(float(rate), self._receive_budget + (now - self._budget_time) * rate)
        self._budget_time = now
        self._receive_budget -= size
        if self._receive_budget < 0:
            await trio.sleep(-self._receive_budget / rate)

    async def _dispatch(self, event: Any) -> bool:
        if isinstance(event, HelloReceived):
            return self._on_hello(event)
        if isinstance(event, PeerAuthenticated):
            return self._on_authenticated(event)
        if isinstance(event, HandshakeFailed):
            self.node.handshake_failed(self, event)
            self.finish(f"handshake failed ({event.code}): {event.reason}", lambda conn: conn.send_error(event.code, event.reason), failed=True)
            return False
        if isinstance(event, ProtocolViolation):
            self.violation(Penalty.PROTOCOL_VIOLATION, f"{event.code} at {event.field or 'frame'}: {event.reason}", event.code)
            return False
        if isinstance(event, PeerError):
            self.node.peer_error(self, event)
            self.finish(f"peer sent error {event.code}: {event.reason}", failed=True)
            return False
        if isinstance(event, PeerClosed):
            self.finish(event.reason)
            return False
        if isinstance(event, EventsAnnounced):
            self._on_announce(event.ids)
        elif isinstance(event, EventsRequested):
            self._on_want(event.ids)
        elif isinstance(event, ItemsReceived):
            await self._on_items(event)
        elif isinstance(event, ReconcileReceived):
            await self.reconcile.on_message(event)
        elif isinstance(event, PeersReceived):
            if self.count("peers", 1, self.node.settings.max_peers_messages_per_window):
                self.node.peers_received(self, event.addresses)
        elif isinstance(event, PingReceived):
            if self.count("pings", 1, self.node.settings.max_pings_per_window):
                self.send_control(lambda conn: conn.send_pong(event.nonce))
        elif isinstance(event, PongReceived):
            if event.nonce == self._ping_nonce:
                self._ping_nonce = None
        return not self._closing

    def _on_hello(self, event: HelloReceived) -> bool:
        self.node_key = event.node_key
        self.listen = event.listen
        rejection = self.node.check_hello(self)
        if rejection is not None:
            self.finish(rejection, lambda conn: conn.send_error("busy", rejection))
            return False
        self.send_control(lambda conn: conn.send_auth())
        return True

    def _on_authenticated(self, event: PeerAuthenticated) -> bool:
        # Not conn.ready: a later frame of the same chunk may already have
        # moved the peer's state on, and this event still counts.
        if self.conn.our_state is not State.READY:
            return True
        self.ready = True
        rejection = self.node.register(self)
        if rejection is not None:
            self.ready = False
            self.finish(rejection, lambda conn: conn.send_error("busy", rejection))
            return False
        return True

    # --- rate windows --------------------------------------------------------

    def count(self, kind: str, amount: int, limit: int) -> bool:
        """Add ``amount`` to this window's count of ``kind``; return False (and score once) above ``limit``."""
        now = trio.current_time()
        window = self._window
        if now - window.started >= self.node.settings.rate_window:
            window = self._window = _Window(started=now)
        total = window.counts.get(kind, 0) + amount
        window.counts[kind] = total
        if total <= limit:
            return True
        if kind not in window.flagged:
            window.flagged.add(kind)
            reason = f"sent {total} {kind} in {self.node.settings.rate_window:g} s (limit {limit})"
            self.node.hostile_log.log(logging.WARNING, "flood from %s: %s", self.describe(), reason)
            self.node.penalize(self, Penalty.FLOOD, reason)
        return False

    # --- push: announcements and requests ------------------------------------

    def _remember_peer_has(self, ids: Sequence[bytes]) -> None:
        peer_has = self._peer_has
        for item in ids:
            peer_has[item] = None
            peer_has.move_to_end(item)
        while len(peer_has) > PEER_HAS_ENTRIES:
            peer_has.popitem(last=False)

    def _on_announce(self, ids: tuple[bytes, ...]) -> None:
        if not self.count("announced ids", len(ids), self.node.settings.max_announced_ids_per_window):
            return
        self._remember_peer_has(ids)
        if self._fetch_queued + len(ids) > MAX_ANNOUNCED_QUEUE_IDS:
            self.announcements_dropped += len(ids)
            return
        self.queue_fetch(ids)

    def queue_fetch(self, ids: Sequence[bytes]) -> None:
        """Queue ids to request from this peer, unless they are stored or requested already."""
        if not ids or self._closing:
            return
        self._fetch_queue.append(ids)
        self._fetch_queued += len(ids)
        self._fetch_wakeup.set()

    def announce(self, ids: Sequence[bytes]) -> None:
        """Queue ids to announce to this peer, skipping those it is known to hold."""
        fresh = [item for item in ids if item not in self._peer_has]
        if fresh:
            self._announce_queue.extend(fresh)
            self._announce_wakeup.set()

    async def _announcer(self) -> None:
        while True:
            while not self._announce_queue:
                self._announce_wakeup = trio.Event()
                await self._announce_wakeup.wait()
            batch = self._announce_queue[:MAX_ANNOUNCE_IDS]
            del self._announce_queue[:MAX_ANNOUNCE_IDS]
            batch = list(dict.fromkeys(batch))
            self._remember_peer_has(batch)
            await self.send_bulk(lambda conn: conn.send_announce(batch))

    async def _next_fetch_chunk(self) -> list[bytes]:
        while not self._fetch_queue:
            self._fetch_wakeup = trio.Event()
            await self._fetch_wakeup.wait()
        chunk: list[bytes] = []
        while self._fetch_queue and len(chunk) < MAX_ANNOUNCE_IDS:
            head = self._fetch_queue[0]
            take = MAX_ANNOUNCE_IDS - len(chunk)
            chunk.extend(head[:take])
            if len(head) <= take:
                self._fetch_queue.popleft()
            else:
                self._fetch_queue[0] = head[take:]
        self._fetch_queued -= len(chunk)
        return list(dict.fromkeys(chunk))

    async def _fetcher(self) -> None:
        while True:
            chunk = await self._next_fetch_chunk()
            requested = await self.node.claim(self, chunk)
            if not requested:
                continue
            await self._want_slots.acquire()
            if not self.send_control(lambda conn: conn.send_want(requested)):
                self._want_slots.release()
                self.node.release_claims(self, requested)
                return
            self._outstanding.append(_Want(set(requested), trio.current_time()))

    @property
    def fetch_backlog(self) -> int:
        """Ids queued for requests to this peer and not yet requested."""
        return self._fetch_queued

    @property
    def fetching(self) -> bool:
        """Whether ids are queued, requested or received but not yet stored from this peer."""
        return bool(self._fetch_queued or self._outstanding or self.claimed)

    @property
    def requests_in_flight(self) -> bool:
        """Whether a want request to this peer awaits its items."""
        return bool(self._outstanding)

    @property
    def oldest_want_age(self) -> float:
        """Seconds the oldest unanswered want request has waited, or 0."""
        if not self._outstanding:
            return 0.0
        return trio.current_time() - self._outstanding[0].sent_at

    async def _on_items(self, event: ItemsReceived) -> None:
        want = self._outstanding[0] if self._outstanding else None
        ids: list[bytes] = []
        items: list[dict[str, Any]] = []
        unsolicited = 0
        for item_id, item in zip(event.ids, event.items):
            if want is None or item_id not in want.ids:
                unsolicited += 1
                continue
            want.ids.discard(item_id)
            ids.append(item_id)
            items.append(item)
        if unsolicited:
            self.node.penalize(self, Penalty.UNSOLICITED_ITEM, f"sent {unsolicited} items that were not requested")
        elif want is None:
            self.node.penalize(self, Penalty.UNSOLICITED_ITEM, "sent an items reply while no request was outstanding")
        self.items_received += len(ids)
        self._remember_peer_has(ids)
        if ids:
            await self.node.ingest(self, ids, items)
        if not event.more and want is not None:
            self._outstanding.popleft()
            self._want_slots.release()
            if want.ids:
                # Ids the peer did not send; another peer may have them. The
                # peer named each of them, by announcing it or in
                # reconciliation. An honest peer loses a few: a record entry
                # id changes when the record's aliases do, and its snapshot
                # may still name the old one. A reply that leaves out more
                # than UNDELIVERED_TOLERANCE costs a point, so a peer that
                # names ids by the thousand is banned after 100 such replies.
                if len(want.ids) > UNDELIVERED_TOLERANCE:
                    self.node.penalize(self, Penalty.UNDELIVERED, f"did not send {len(want.ids)} of the ids it named")
                self.node.release_claims(self, want.ids)

    # --- serving requests ----------------------------------------------------

    def _on_want(self, ids: tuple[bytes, ...]) -> None:
        if len(self._wants_to_serve) >= MAX_QUEUED_WANTS:
            self.violation(Penalty.FLOOD, f"queued more than {MAX_QUEUED_WANTS} want requests", "invalid_message")
            return
        if not self.count("wanted ids", len(ids), self.node.settings.max_wanted_ids_per_window):
            # Over the limit: the reply is empty, so the request costs no lookup.
            ids = ()
        self._wants_to_serve.append(ids)
        self._serve_wakeup.set()

    async def _item_server(self) -> None:
        while True:
            while not self._wants_to_serve:
                self._serve_wakeup = trio.Event()
                await self._serve_wakeup.wait()
            ids = self._wants_to_serve.popleft()
            found = await self.node.load_items(ids) if ids else []
            self._remember_peer_has([item_id for item_id, _, _, _ in found])
            batches = _item_batches(found)
            for index, batch in enumerate(batches):
                if not await self._send_items(batch, index < len(batches) - 1):
                    return

    async def _send_items(self, items: list[dict[str, Any]], more: bool) -> bool:
        """Queue one items frame, halving a batch whose frame would exceed the limit; return False when closing."""
        try:
            sent = await self.send_bulk(lambda conn: conn.send_items(items, more))
        except UsageError:
            if len(items) <= 1:
                logger.error("an item does not fit in a frame of %d bytes; not sent to %s", MAX_FRAME_BYTES, self.describe())
                return await self._send_items([], more)
            half = len(items) // 2
            return await self._send_items(items[:half], True) and await self._send_items(items[half:], more)
        if sent:
            self.items_sent += len(items)
            self.node.count_items_sent(len(items))
        return sent


def _item_batches(found: list[tuple[bytes, dict[str, Any], int, int]]) -> list[list[dict[str, Any]]]:
    """Split items into batches that each fit one items frame; at least one batch.

    A batch has at most MAX_ITEMS items, ITEMS_FRAME_BUDGET bytes and
    ITEMS_FRAME_CONTAINERS arrays and objects, so that the receiver never
    rejects a frame of valid items. An item over the container budget on
    its own cannot be sent and is left out.
    """
    batches: list[list[dict[str, Any]]] = [[]]
    size = 0
    containers = 0
    for item_id, item, item_size, item_containers in found:
        if item_containers > ITEMS_FRAME_CONTAINERS:
            logger.error(
                "item %s not sent: it has up to %d arrays and objects, over the %d one frame may carry",
                item_id.hex(), item_containers, ITEMS_FRAME_CONTAINERS,
            )
            continue
        full = len(batches[-1]) >= MAX_ITEMS or size + item_size > ITEMS_FRAME_BUDGET or containers + item_containers > ITEMS_FRAME_CONTAINERS
        if batches[-1] and full:
            batches.append([])
            size = 0
            containers = 0
        batches[-1].append(item)
        size += item_size
        containers += item_containers
    return batches

