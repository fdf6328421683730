"""The gossip federation of a mirror node: listener, dialer, push, pull and peer discovery.

``GossipNode`` runs inside the daemon's nursery:

* it listens with ``trio.serve_tcp`` and dials peers from its ``PeerTable``
  with ``trio.open_tcp_stream``; each connection is one ``PeerSession``;
* push: when the node stores new items (an HTTP POST, or items from a
  peer), it announces their ids to every connected peer (or to
  ``push_fanout`` random ones when that is set). A peer requests
  (``want``) only ids it neither stores nor has requested from another
  peer, so each item is normally delivered once per node. A node requests one id at most ``MAX_DELIVERY_ATTEMPTS`` times while
  the id is in the attempts cache;
* pull: every ``anti_entropy_interval`` seconds it runs a reconciliation
  session (``node.sync``) with one random connected peer, and each side
  requests what it lacks. A dialled connection also starts one at once;
* discovery: the ``gossip`` address of every signed mirror hint in a merged
  state, and the addresses peers send in ``peers`` messages or their hello,
  go through the dial policy into the table;
* ingest: received items are queued and stored in batches through
  ``MirrorService.ingest_items``, events before records, so a record that
  arrives with its events merges them once.

The node's identity is the Ed25519 key in ``data_dir/node.key``, created
with mode 0600 on the first start. docs/protocol.md, section "Gossip",
describes the behaviour for other implementations.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from prometheus_client import Counter, Gauge

from protocol import HandshakeFailed, MergeProfile, PeerError, Role, SigningKey
from protocol.reconcile import DEFAULT_FRAME_BUDGET

from .config import Config
from .dialpolicy import split_host_port
from .gossip_store import GossipStore, HintAddress, Snapshot
from .keyfile import KeyFileError, create_key_file, load_key_file
from .peers import PeerEntry, PeerLimits, PeerSource, PeerState, PeerTable, Penalty
from .ratelimit import RateLimitedLog
from .service import MirrorService, SubmitOutcome
from .session import PeerSession
from .store import EventOutcome, Status, StoreError
from .sync import ReconcileResult

__all__ = [
    "GossipNode",
    "GossipRoutes",
    "GossipSettings",
    "MAX_DELIVERY_ATTEMPTS",
    "NODE_KEY_FILENAME",
    "load_node_key",
]

logger = logging.getLogger("pith_mirror.gossip")

NODE_KEY_FILENAME = "node.key"
# Deliveries of one id that a node accepts while the id is in the attempts
# cache; after that it requests the id no more.
MAX_DELIVERY_ATTEMPTS = 3
# Ids remembered as stored or already tried, so that announcements of them
# cost no store lookup. After eviction the store lookup still finds them.
SEEN_CACHE_ENTRIES = 65_536
# Items messages queued for the ingest worker, which is also the most it
# stores in one batch (each message is at most 1 MiB), and the most items
# in one batch.
INGEST_QUEUE_MESSAGES = 64
MAX_INGEST_ITEMS = 8_192
# Reconciliation results kept for /status.json.
RECENT_RESULTS = 20
# Rejection codes that are no fault of the sending peer.
_BLAMELESS_CODES = frozenset({"pending_limit", "pending_subject_limit"})


@dataclass(frozen=True)
class GossipSettings:
    """Timings and limits of the gossip node; tests shorten the intervals.

    Attributes:
        anti_entropy_interval: mean seconds between reconciliation sessions
            this node starts (each waits 0.75 to 1.25 times this).
        dial_interval: seconds between checks of the peer table for
            addresses to dial.
        connect_timeout: seconds to resolve and connect to a peer.
        handshake_timeout: seconds from connect to a completed handshake.
        ping_interval: seconds without data before sending a ping.
        idle_timeout: seconds without data before closing a connection.
        session_timeout: seconds one reconciliation session may run.
        want_timeout: seconds a peer may take to reply to a want request.
        flush_seconds: seconds to send a final error or bye frame.
        snapshot_max_age: seconds a snapshot is reused after the store
            changed, so that busy nodes do not rebuild it for every session.
        fresh_snapshot_min_age: the minimum age, in seconds, at which the
            first session on a new connection rebuilds an outdated snapshot.
            A peer that reconnects over and over then forces at most one
            full rebuild per interval.
        ingest_linger: seconds without new items after which the ingest
            worker stores what it has, unless requests are in flight.
        ingest_max_linger: the longest the ingest worker collects items
            for one write.
        peer_exchange_interval: seconds between peers messages to a peer.
        max_connected_peers: sessions kept at once, both directions.
        target_outbound_peers: sessions this node dials and keeps. The
            rest of ``max_connected_peers`` stays free for inbound
            connections, so that nodes joining later find room.
        max_handshaking: inbound connections still in their handshake.
        max_handshaking_per_host: inbound connections from one address
            still in their handshake, so that one slow host cannot take
            every handshake slot.
        reconcile_frame_budget: the largest reconciliation payload this
            node sends, in bytes; larger differences take more round trips.
        reconcile_need_limit: ids a reconciliation session may find
            missing here before this node ends it, to fetch them and
            reconcile the rest in a later session.
        max_fetch_backlog: ids queued for requests over all peers; ids
            found beyond it are left to a later session. With the limit
            above it bounds the memory that reconciliation can make a node
            spend on missing ids, about 70 bytes each.
        push_fanout: how many random connected peers each new item is
            announced to; None announces to every connected peer. A node
            misses a push only when every neighbour that stores the item
            skips it, so a node with few connections among neighbours with
            many is often missed by a small fanout, and pull must repair it.
        receive_bytes_per_second: bytes read from one peer per second.
        rate_window: seconds of one window for the flood limits below.
        max_announced_ids_per_window, max_wanted_ids_per_window,
        max_pings_per_window, max_peers_messages_per_window: flood limits
            per peer and window.
        advertise: the ``HOST:PORT`` sent in hello as our gossip address;
            None derives it from the bound address unless that is a
            wildcard address.
        peer_limits: bounds, backoff and bans of the peer table.
    """

    anti_entropy_interval: float = 30.0
    dial_interval: float = 1.0
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    ping_interval: float = 15.0
    idle_timeout: float = 60.0
    session_timeout: float = 300.0
    want_timeout: float = 60.0
    flush_seconds: float = 2.0
    snapshot_max_age: float = 5.0
    fresh_snapshot_min_age: float = 1.0
    ingest_linger: float = 0.25
    ingest_max_linger: float = 10.0
    peer_exchange_interval: float = 300.0
    max_connected_peers: int = 32
    target_outbound_peers: int = 8
    max_handshaking: int = 16
    max_handshaking_per_host: int = 4
    push_fanout: int | None = None
    reconcile_frame_budget: int = DEFAULT_FRAME_BUDGET
    reconcile_need_limit: int = 262_144
    max_fetch_backlog: int = 1_048_576
    receive_bytes_per_second: int = 32 * 1024 * 1024
    rate_window: float = 10.0
    max_announced_ids_per_window: int = 100_000
    max_wanted_ids_per_window: int = 100_000
    max_pings_per_window: int = 20
    max_peers_messages_per_window: int = 5
    advertise: str | None = None
    peer_limits: PeerLimits = field(default_factory=PeerLimits)


def load_node_key(data_dir: Path) -> SigningKey:
    """Return the node key in ``data_dir/node.key``, creating the file (mode 0600) on first use.

    Raises:
        KeyFileError: the file exists but cannot be read or is invalid.
    """
    path = data_dir / NODE_KEY_FILENAME
    if not path.exists():
        try:
            return create_key_file(path, "pith-mirror-node", "pith-mirror-node", "mirror").signing_key
        except KeyFileError:
            if not path.exists():
                raise
            # Another process created it first; fall through and load it.
    return load_key_file(path).signing_key


def format_host_port(host: str, port: int) -> str:
    """Return ``HOST:PORT``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


# Host name lookups run at once. A lookup that times out keeps its thread
# busy for the resolver's timeout, so lookups get threads of their own and
# never starve the store and reconciliation work of threads.
_DNS_THREADS = 4
# Worker threads for gossip's store reads, snapshots, reconciliation and
# frame decoding.
GOSSIP_THREADS = 8
# Worker threads that check large frames at once, over all peers. A 1 MiB
# frame of one-byte empty arrays builds a million lists, about 80 MB until
# it is rejected, so this also bounds that transient memory.
DECODE_THREADS = 2
# Item ids stored since the last snapshot that a fresh snapshot copies in
# between rebuilds; beyond this, the next fresh request rebuilds instead.
MAX_ADDED_SINCE_SNAPSHOT = 65_536


async def _resolve(host: str, port: int, limiter: trio.CapacityLimiter) -> list[str]:
    infos = await trio.to_thread.run_sync(
        partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM), limiter=limiter, abandon_on_cancel=True
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GossipMetrics:
    """Prometheus metrics of the gossip node, in the service's registry."""

    def __init__(self, registry: Any) -> None:
        self.connected = Gauge("pith_mirror_gossip_connected_peers", "Peers with a completed handshake", registry=registry)
        self.known = Gauge("pith_mirror_gossip_known_peers", "Addresses in the peer table", registry=registry)
        self.bans = Counter("pith_mirror_gossip_bans", "Peers or hosts banned", registry=registry)
        self.penalties = Counter("pith_mirror_gossip_penalties", "Penalties given to peers, by kind", ["kind"], registry=registry)
        self.items_sent = Counter("pith_mirror_gossip_items_sent", "Items sent to peers", registry=registry)
        self.items_received = Counter(
            "pith_mirror_gossip_items_received", "Items received from peers, by outcome", ["outcome"], registry=registry
        )
        self.bytes_sent = Counter("pith_mirror_gossip_sent_bytes", "Bytes sent to peers", registry=registry)
        self.reconciliations = Counter(
            "pith_mirror_gossip_reconciliations", "Reconciliation sessions, by outcome", ["outcome"], registry=registry
        )


class GossipNode:
    """The gossip side of one mirror node; see the module docstring.

    Args:
        service: the node's service, which owns the store.
        config: the daemon configuration (``gossip_listen``, ``peers`` and
            the dial policy settings).
        signing_key: the node key.
        settings: timings and limits.
        rng: the random source for peer choice and jitter.

    Attributes:
        connect: ``async (host, port) -> Stream``, ``trio.open_tcp_stream``
            unless a test replaces it.
        resolve: ``async (host, port) -> list of IP text``, used for peer
            names that are not seeds.
        listen_address: the bound ``HOST:PORT`` once ``run`` has started.
    """

    def __init__(
        self,
        service: MirrorService,
        config: Config,
        signing_key: SigningKey,
        *,
        settings: GossipSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.settings = settings or GossipSettings()
        self.signing_key = signing_key
        self.node_key = signing_key.public_key
        self.fingerprint = signing_key.fingerprint
        self.profile = MergeProfile.from_trust(service.trust)
        self.rng = rng or random.Random()
        self.policy = config.dial_policy()
        self.table = PeerTable(self.policy, self.settings.peer_limits, self.rng, known_redial_max=self.settings.anti_entropy_interval)
        self.store = GossipStore(service.store, service.trust)
        self.threads = trio.CapacityLimiter(GOSSIP_THREADS)
        self.decode_threads = trio.CapacityLimiter(DECODE_THREADS)
        self.connect: Callable[[str, int], Awaitable[trio.abc.Stream]] = trio.open_tcp_stream
        self.resolve: Callable[[str, int], Awaitable[list[str]]] = partial(_resolve, limiter=trio.CapacityLimiter(_DNS_THREADS))
        self.listen_address: str | None = None
        self.advertised_listen: str | None = None

        self.sessions: dict[bytes, PeerSession] = {}
        self.handshaking: set[PeerSession] = set()
        self.counters: dict[str, int] = {
            "connections_accepted": 0,
            "dials": 0,
            "dials_failed": 0,
            "items_sent": 0,
            "items_received": 0,
            "items_accepted": 0,
            "items_duplicate": 0,
            "items_rejected": 0,
            "ids_announced": 0,
            "bytes_sent": 0,
            "reconciliations": 0,
            "bans": 0,
        }
        self.recent_reconciliations: deque[dict[str, Any]] = deque(maxlen=RECENT_RESULTS)
        # Per item id: the fingerprints of the peers that delivered it, for
        # measuring push (deliveries per node); bounded like the seen cache.
        self.deliveries: OrderedDict[bytes, list[str]] = OrderedDict()
        self.metrics = GossipMetrics(service.metrics.registry)
        # Log lines that peers can trigger at will (rejections, invalid input)
        # share one rate limit per node.
        self.hostile_log = RateLimitedLog(logging.getLogger("pith_mirror.gossip.session"))

        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._attempts: OrderedDict[bytes, int] = OrderedDict()
        self._claims: dict[bytes, PeerSession] = {}
        self._snapshot: Snapshot | None = None
        self._snapshot_time = 0.0
        self._added_since_snapshot: list[bytes] = []
        self._added_overflow = False
        self._snapshot_lock = trio.Lock()
        self._ingest_send, self._ingest_receive = trio.open_memory_channel[tuple[PeerSession, list[bytes], list[dict[str, Any]]]](
            INGEST_QUEUE_MESSAGES
        )
        self._dial_wakeup = trio.Event()
        self._dialling = 0
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._started = time.time()

    # --- running -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial and gossip until cancelled; report the bound ``HOST:PORT`` through ``task_status``.

        Raises:
            OSError: the listen address cannot be bound.
        """
        host, port = self.config.gossip_address
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle_inbound, port, host=host))
            bound = listeners[0].socket.getsockname()
            self.listen_address = format_host_port(str(bound[0]), int(bound[1]))
            advertise = self.settings.advertise or self.config.gossip_advertise
            self.advertised_listen = advertise or (None if _wildcard(host) else self.listen_address)
            self.table.own_addresses.update(address for address in (self.listen_address, self.advertised_listen) if address)

            now = trio.current_time()
            for address in self.config.peers:
                self.table.add_seed(address, now)
            for task in (self._dialer, self._anti_entropy, self._ingest_worker, self._housekeeping, self._bootstrap_hints):
                nursery.start_soon(task)
            logger.info(
                "gossip listening on %s as node %s (advertised as %s; %d seed peers; merge profile %s)",
                self.listen_address, self.fingerprint, self.advertised_listen or "nothing", len(self.config.peers), self.profile.describe(),
            )
            task_status.started(self.listen_address)

    async def stop(self) -> None:
        """Send bye to every peer, wait up to ``flush_seconds`` for the sessions to end, then stop."""
        self._stopping = True
        for session in list(self.sessions.values()):
            session.finish("this node is stopping", lambda conn: conn.send_bye())
        with trio.move_on_after(self.settings.flush_seconds):
            while self.sessions or self.handshaking:
                await trio.sleep(0.01)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        logger.info("gossip stopped")

    # --- connections ---------------------------------------------------------

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()
        host, port = str(peer[0]), int(peer[1])
        remote = format_host_port(host, port)
        now = trio.current_time()
        reason = self._inbound_rejection(host, now)
        if reason is not None:
            self.hostile_log.log(logging.INFO, "rejected connection from %s: %s", remote, reason)
            await trio.aclose_forcefully(stream)
            return
        self.counters["connections_accepted"] += 1
        session = PeerSession(self, stream, Role.RESPONDER, remote, host, None)
        self.handshaking.add(session)
        await session.run()

    def _inbound_rejection(self, host: str, now: float) -> str | None:
        """Return why an inbound connection from ``host`` is closed before its handshake, or None."""
        if self._stopping:
            return "the node is stopping"
        ban = self.table.banned(None, host, now)
        if ban is not None:
            return f"host is banned for {ban.until - now:.0f} s more: {ban.reason}"
        if len(self.handshaking) >= self.settings.max_handshaking:
            return f"too many connections in their handshake ({self.settings.max_handshaking})"
        from_host = sum(1 for session in self.handshaking if not session.initiated and session.remote_host == host)
        if from_host >= self.settings.max_handshaking_per_host:
            return f"too many connections from this host in their handshake ({self.settings.max_handshaking_per_host})"
        return None

    async def _dialer(self) -> None:
        while True:
            now = trio.current_time()
            # Dialled connections still in their handshake count as outbound,
            # or slow handshakes would let the dialer overshoot its target.
            outbound = sum(1 for session in self.sessions.values() if session.initiated)
            outbound += sum(1 for session in self.handshaking if session.initiated)
            free = min(
                self.settings.max_connected_peers - len(self.sessions),
                self.settings.target_outbound_peers - outbound,
            ) - self._dialling
            for entry in self.table.due(now, set(self.sessions), free):
                self._dialling += 1
                self.table.dialling(entry)
                assert self._nursery is not None
                self._nursery.start_soon(self._dial, entry)
            self.metrics.known.set(len(self.table.entries))
            with trio.move_on_after(self.settings.dial_interval):
                await self._dial_wakeup.wait()
            self._dial_wakeup = trio.Event()

    def wake_dialer(self) -> None:
        """Make the dialer look at the table now instead of after ``dial_interval``."""
        self._dial_wakeup.set()

    async def _dial(self, entry: PeerEntry) -> None:
        """Resolve (checking the dial policy), connect to and run a session with one table entry."""
        self.counters["dials"] += 1
        try:
            try:
                host, port = split_host_port(entry.address)
                target = await self._dial_target(entry, host, port)
                if target is None:
                    return
                with trio.fail_after(self.settings.connect_timeout):
                    stream = await self.connect(target, port)
            except (OSError, trio.TooSlowError) as error:
                self.counters["dials_failed"] += 1
                reason = f"connect to {entry.address} failed: {error or type(error).__name__}"
                delay = self.table.failed(entry, trio.current_time(), reason)
                logger.info("%s; retrying in %.1f s", reason, delay)
                return
        finally:
            self._dialling -= 1
        remote_host = target
        session = PeerSession(self, stream, Role.INITIATOR, format_host_port(target, port), remote_host, entry)
        self.handshaking.add(session)
        await session.run()

    async def _dial_target(self, entry: PeerEntry, host: str, port: int) -> str | None:
        """Return the address to connect to, or None when the dial policy rejects the entry."""
        if entry.source is PeerSource.SEED:
            # The operator configured it: no policy check, and the name is
            # resolved by open_tcp_stream itself.
            return host
        now = trio.current_time()
        decision = self.policy.check_peer(entry.address)
        if not decision.allowed or decision.target is None:
            logger.info("not dialling %s: %s", entry.address, decision.reason)
            self.table.entries.pop(entry.address, None)
            return None
        if decision.target.address is not None:
            return str(decision.target.address)
        with trio.fail_after(self.settings.connect_timeout):
            addresses = await self.resolve(host, port)
        resolved = self.policy.check_resolved(addresses)
        if not resolved.allowed:
            delay = self.table.failed(entry, now, f"{host} {resolved.reason}", delay=self.settings.peer_limits.mismatch_backoff)
            logger.info("not dialling %s: %s; next try in %.0f s", entry.address, resolved.reason, delay)
            return None
        return addresses[0]

    # --- session callbacks ---------------------------------------------------

    def check_hello(self, session: PeerSession) -> str | None:
        """Return why a peer's hello is rejected (a ban, or the node stopping), or None."""
        if self._stopping:
            return "the node is stopping"
        now = trio.current_time()
        ban = self.table.banned(session.node_key, session.remote_host, now)
        if ban is not None:
            self.hostile_log.log(logging.INFO, "rejected peer %s: banned for %.0f s more: %s", session.describe(), ban.until - now, ban.reason)
            return f"banned for {ban.until - now:.0f} s more: {ban.reason}"
        return None

    def register(self, session: PeerSession) -> str | None:
        """Add an authenticated session; return why it is rejected (a duplicate or the peer limit), or None."""
        key = session.node_key
        assert key is not None
        self.handshaking.discard(session)
        existing = self.sessions.get(key)
        if existing is not None:
            if _preferred(existing, session, self.node_key) is existing:
                return "duplicate connection: this node keeps the connection opened by the node with the smaller key"
            existing.finish("replaced by a duplicate connection", lambda conn: conn.send_error("busy", "duplicate connection"))
        elif len(self.sessions) >= self.settings.max_connected_peers:
            # A node whose only seed is full would otherwise never learn
            # another address, so it gets this node's peers before the error.
            self._send_peers(session)
            return f"peer limit reached ({self.settings.max_connected_peers} connected)"
        elif not session.initiated and self._inbound_count() >= self._max_inbound():
            # Inbound peers may not take the slots this node dials, or one
            # host with many keys could cut it off from everyone else.
            self._send_peers(session)
            return f"inbound peer limit reached ({self._max_inbound()} inbound)"

        now = trio.current_time()
        self.sessions[key] = session
        if session.entry is not None:
            self.table.connected(session.entry, key, now)
        if session.listen is not None:
            advertised = self.table.add_candidate(session.listen, PeerSource.ADVERTISED, now, reporter=session.describe())
            if advertised is not None and advertised.state in (PeerState.IDLE, PeerState.BACKOFF):
                self.table.connected(advertised, key, now)
        self.metrics.connected.set(len(self.sessions))
        logger.info(
            "connected to peer %s (%s, listens on %s); %d peers connected",
            session.describe(), "dialled" if session.initiated else "inbound", session.listen or "nothing", len(self.sessions),
        )
        return None

    def session_started(self, session: PeerSession) -> None:
        """Start a ready session's work: peer exchange, and a first reconciliation on dialled connections."""
        self._send_peers(session)
        if session.initiated:
            session.start_task(session.reconcile.initiate)

    def session_closed(self, session: PeerSession) -> None:
        """Forget a session that ended and update the peer table."""
        self.handshaking.discard(session)
        key = session.node_key
        if key is not None and self.sessions.get(key) is session:
            del self.sessions[key]
            self.metrics.connected.set(len(self.sessions))
            logger.info("disconnected from peer %s: %s; %d peers connected", session.describe(), session.end_reason or "closed", len(self.sessions))
        self.release_claims(session, [item for item, owner in self._claims.items() if owner is session])

        now = trio.current_time()
        reason = session.end_reason or "closed"
        live = self.sessions.get(key) if key is not None else None
        if live is not None and session.entry is not None:
            # A duplicate of a live connection ended: the address reaches
            # a connected peer, so it is neither a failure nor redialled.
            self.table.connected(session.entry, live.node_key or b"", now)
            self.wake_dialer()
            return
        entries = [session.entry] if session.entry is not None else []
        if key is not None and key not in self.sessions:
            entries += [entry for entry in self.table.entries.values() if entry.node_key == key and entry is not session.entry]
        for entry in entries:
            if entry.state is PeerState.SELF:
                continue
            if entry is session.entry and (session.failed or not session.ready):
                delay = self.table.failed(entry, now, reason, delay=session.retry_delay)
                logger.info("connection to %s ended: %s; redial in %.1f s", entry.address, reason, delay)
            elif entry.state in (PeerState.CONNECTED, PeerState.CONNECTING) or entry is session.entry:
                self.table.disconnected(entry, now, reason)
        self.wake_dialer()

    def handshake_failed(self, session: PeerSession, event: HandshakeFailed) -> None:
        """Log a failed handshake and decide how the peer is treated."""
        if event.code == "self_connection":
            logger.info("address %s reaches this node itself; it is not dialled again", session.remote)
            if session.entry is not None:
                self.table.mark_self(session.entry)
            return
        if event.code in ("profile_mismatch", "protocol_mismatch"):
            session.retry_delay = self.settings.peer_limits.mismatch_backoff
            logger.warning(
                "disconnecting peer %s: %s (%s); not redialled for %.0f s",
                session.describe(), event.reason, event.code, session.retry_delay,
            )
            return
        self.hostile_log.log(logging.WARNING, "handshake with %s failed (%s at %s): %s", session.describe(), event.code, event.field, event.reason)
        self.penalize(session, Penalty.HANDSHAKE_FAILED, f"{event.code}: {event.reason}")

    def peer_error(self, session: PeerSession, event: PeerError) -> None:
        """Log an error message from a peer and set how long to wait before redialling it."""
        if event.code in ("profile_mismatch", "protocol_mismatch"):
            session.retry_delay = self.settings.peer_limits.mismatch_backoff
            logger.warning(
                "peer %s disconnected us: %s (%s); not redialled for %.0f s",
                session.describe(), event.reason, event.code, session.retry_delay,
            )
        else:
            logger.info("peer %s sent error %s: %s", session.describe(), event.code, event.reason)

    def penalize(self, session: PeerSession, penalty: Penalty, reason: str, times: int = 1) -> None:
        """Score a peer down (its key once authenticated, else its host); close the session on a ban."""
        now = trio.current_time()
        key = session.node_key if session.ready else None
        ban = self.table.penalize(key, session.remote_host, penalty, f"{reason} (from {session.remote})", now, times)
        self.metrics.penalties.labels(kind=penalty.value).inc(times)
        if ban is None:
            return
        self._count_ban()
        if key is not None:
            # A new node key costs nothing, so a host that made one per ban
            # would never be stopped: each key ban also scores the host as a
            # protocol violation, and three key bans from one host ban it.
            host_reason = f"key {session.fingerprint} was banned: {reason} (from {session.remote})"
            if self.table.penalize(None, session.remote_host, Penalty.PROTOCOL_VIOLATION, host_reason, now) is not None:
                self._count_ban()
        message = f"banned for {ban.until - now:.0f} s: {reason}"
        session.finish(message, lambda conn: conn.send_error("busy", message), failed=True)

    def _count_ban(self) -> None:
        self.counters["bans"] += 1
        self.metrics.bans.inc()

    def peers_received(self, session: PeerSession, addresses: Iterable[str]) -> None:
        """Add the addresses a peer sent to the table, each checked by the dial policy."""
        now = trio.current_time()
        added = 0
        for address in addresses:
            if self.table.add_candidate(address, PeerSource.PEER_EXCHANGE, now, reporter=session.describe()) is not None:
                added += 1
        if added:
            self.wake_dialer()

    def _inbound_count(self) -> int:
        return sum(1 for other in self.sessions.values() if not other.initiated)

    def _max_inbound(self) -> int:
        return max(1, self.settings.max_connected_peers - self.settings.target_outbound_peers)

    def _send_peers(self, session: PeerSession) -> None:
        """Send ``session`` the gossip addresses of the other connected peers that the dial policy accepts."""
        addresses = []
        for other in self.sessions.values():
            if other is session or not other.listen or other.listen == session.listen:
                continue
            # A peer's hello names any address it likes; pass on only those
            # this node would dial itself.
            if self.table.policy.check_peer(other.listen).allowed:
                addresses.append(other.listen)
            if len(addresses) == 64:
                break
        session.send_control(lambda conn: conn.send_peers(addresses))

    def record_reconciliation(self, session: PeerSession, result: ReconcileResult) -> None:
        """Log and count the result of one reconciliation session."""
        self.counters["reconciliations"] += 1
        self.metrics.reconciliations.labels(outcome=result.outcome.split(":")[0]).inc()
        self.recent_reconciliations.append({"peer": session.fingerprint, "address": session.remote, **asdict(result)})
        logger.info(
            "reconciliation %d with %s (%s) %s: %d local ids compared, have %d, need %d, %d messages sent and %d received, "
            "%d bytes sent and %d received, %.3f s",
            result.session, session.describe(), "we started" if result.initiator else "peer started", result.outcome,
            result.local_ids, result.have, result.need, result.messages_sent, result.messages_received,
            result.bytes_sent, result.bytes_received, result.seconds,
        )

    def count_items_sent(self, count: int) -> None:
        """Count items sent to a peer."""
        self.counters["items_sent"] += count
        self.metrics.items_sent.inc(count)

    def count_bytes_sent(self, count: int) -> None:
        """Count bytes sent to a peer."""
        self.counters["bytes_sent"] += count
        self.metrics.bytes_sent.inc(count)

    async def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call in one of the gossip worker threads."""
        return await trio.to_thread.run_sync(function, *args, limiter=self.threads)

    # --- requests ------------------------------------------------------------

    def _remember(self, cache: OrderedDict[bytes, Any], item_id: bytes, value: Any) -> None:
        cache[item_id] = value
        cache.move_to_end(item_id)
        while len(cache) > SEEN_CACHE_ENTRIES:
            cache.popitem(last=False)

    async def claim(self, session: PeerSession, ids: Sequence[bytes]) -> list[bytes]:
        """Return the ids to request from ``session``: not stored, not claimed by another request, not tried too often.

        The returned ids are claimed for ``session`` until its reply ends or
        the session closes. Ids already stored cost one index lookup and
        are then remembered as seen.
        """
        fresh = [item for item in ids if item not in self._seen and item not in self._claims]
        if not fresh:
            return []
        missing = set(await self.in_thread(self.store.missing, fresh))
        requested = []
        for item in fresh:
            if item not in missing:
                self._remember(self._seen, item, None)
            elif item not in self._claims and item not in self._seen and self._attempts.get(item, 0) < MAX_DELIVERY_ATTEMPTS:
                self._claims[item] = session
                requested.append(item)
        session.claimed += len(requested)
        return requested

    def note_delivered(self, session: PeerSession, ids: Iterable[bytes]) -> None:
        """Count a delivery of each of ``ids`` by ``session``, stored or rejected.

        Only a delivery counts toward MAX_DELIVERY_ATTEMPTS: a request that
        a reset, a timeout or an empty reply ended may go to another peer.
        """
        for item_id in ids:
            self._remember(self._seen, item_id, None)
            self._remember(self.deliveries, item_id, self.deliveries.get(item_id, []) + [session.fingerprint])
            self._remember(self._attempts, item_id, self._attempts.get(item_id, 0) + 1)

    def release_claims(self, session: PeerSession, ids: Iterable[bytes]) -> None:
        """Drop the claims of ``session`` on ``ids``, so another peer may be asked."""
        for item in ids:
            if self._claims.get(item) is session:
                del self._claims[item]
                session.claimed -= 1

    async def load_items(self, ids: Sequence[bytes]) -> list[tuple[bytes, dict[str, Any], int]]:
        """Return the stored items among ``ids`` with their sizes; unknown ids cost one lookup each."""
        return await self.in_thread(self.store.load_items, ids)

    async def snapshot(self, *, fresh: bool = False) -> Snapshot:
        """Return the id snapshot for reconciliation, rebuilt when the store changed and the old one is old enough.

        With ``fresh`` it is rebuilt when the store changed and the snapshot
        is at least ``fresh_snapshot_min_age`` old. The first session on a
        new connection requests that, because the node at the other end may
        have been away and lack exactly the newest items.
        """
        async with self._snapshot_lock:
            now = trio.current_time()
            current = self._snapshot
            stale = current is not None and current.generation != self.store.generation
            age = now - self._snapshot_time
            max_age = min(self.settings.fresh_snapshot_min_age, self.settings.snapshot_max_age) if fresh else self.settings.snapshot_max_age
            if current is None or (stale and age >= max_age):
                started = time.perf_counter()
                # Ids added before the build began are in the new snapshot.
                added = len(self._added_since_snapshot)
                current = await self.in_thread(self.store.build_snapshot)
                self._snapshot, self._snapshot_time = current, now
                del self._added_since_snapshot[:added]
                self._added_overflow = False
                logger.debug("built an id snapshot of %d items (%d events) in %.3f s", len(current.ids), current.event_count, time.perf_counter() - started)
            elif fresh and stale and self._added_since_snapshot and not self._added_overflow:
                # Too soon for another rebuild: the ids this node stored
                # since are added to a copy, so the new peer still gets them.
                ids = await self.in_thread(current.ids.with_added, list(self._added_since_snapshot))
                return Snapshot(ids, current.records, current.event_count, current.generation)
            return current

    def _note_added(self, ids: Sequence[bytes]) -> None:
        """Remember item ids stored since the last snapshot, for fresh snapshots between rebuilds."""
        if self._added_overflow:
            return
        self._added_since_snapshot.extend(ids)
        if len(self._added_since_snapshot) > MAX_ADDED_SINCE_SNAPSHOT:
            # Too many to copy in; the next fresh request rebuilds instead.
            self._added_since_snapshot.clear()
            self._added_overflow = True

    # --- ingest --------------------------------------------------------------

    async def ingest(self, session: PeerSession, ids: list[bytes], items: list[dict[str, Any]]) -> None:
        """Queue items received from ``session`` for storing; waits while the queue is full."""
        await self._ingest_send.send((session, ids, items))

    async def _ingest_worker(self) -> None:
        async for first in self._ingest_receive:
            batch = [first]
            total = len(first[1])
            # The store re-merges every subject a write touches, so one write
            # of many items costs far less than many writes of a few. The
            # worker keeps collecting while requests are in flight, for up
            # to ingest_max_linger seconds, and stops after ingest_linger
            # seconds without new items once none are.
            deadline = trio.current_time() + self.settings.ingest_max_linger
            while total < MAX_INGEST_ITEMS and len(batch) < INGEST_QUEUE_MESSAGES and trio.current_time() < deadline:
                with trio.move_on_after(min(self.settings.ingest_linger, deadline - trio.current_time())) as waited:
                    following = await self._ingest_receive.receive()
                if waited.cancelled_caught:
                    if not any(session.requests_in_flight for session in self.sessions.values()):
                        break
                    continue
                batch.append(following)
                total += len(following[1])

            groups: dict[PeerSession, tuple[list[bytes], list[dict[str, Any]]]] = {}
            for session, ids, items in batch:
                group = groups.setdefault(session, ([], []))
                group[0].extend(ids)
                group[1].extend(items)
            for session, (ids, items) in groups.items():
                try:
                    await self._ingest_from(session, ids, items)
                except StoreError:
                    logger.exception("storing %d items from %s failed; they will be requested again", len(ids), session.describe())
                    self.release_claims(session, ids)

    async def _ingest_from(self, session: PeerSession, ids: list[bytes], items: list[dict[str, Any]]) -> None:
        started = time.perf_counter()
        source = f"peer:{session.fingerprint}"
        plan = await self.in_thread(self.store.plan_ingest, items)
        event_outcomes, document_outcomes = await self.service.ingest_items([items[index] for index in plan.loose], plan.bundles, source)
        outcomes: dict[int, EventOutcome] = dict(zip(plan.loose, event_outcomes))

        rejected: list[str] = []
        record_subjects: set[str] = set()
        retry: list[int] = []
        for document, positions, record_index in zip(document_outcomes, plan.bundle_events, plan.bundle_record):
            if document.status == Status.REJECTED:
                if record_index is not None:
                    rejected.append(f"{ids[record_index].hex()}: {document.code} at {document.field}: {document.reason}")
                # The events did not reach the store with the document, so
                # they are stored on their own.
                retry.extend(positions)
                continue
            outcomes.update(zip(positions, document.events))
            if record_index is not None and document.subject and (document.status == Status.ACCEPTED or document.state_changed):
                record_subjects.add(document.subject)
        if retry:
            retried, _ = await self.service.ingest_items([items[index] for index in retry], [], source)
            outcomes.update(zip(retry, retried))
        for index, reason in plan.invalid_records:
            rejected.append(f"{ids[index].hex()}: invalid record: {reason}")
        logger.debug("stored %d items (%d bundles) from %s in %.3f s", len(ids), len(plan.bundles), session.describe(), time.perf_counter() - started)

        new_ids: list[bytes] = []
        hint_subjects: set[str] = set()
        for index, outcome in sorted(outcomes.items()):
            if outcome.status == Status.ACCEPTED:
                new_ids.append(ids[index])
                if items[index].get("event_type") == "mirror_hint" and not outcome.pending and outcome.subject:
                    hint_subjects.add(outcome.subject)
            elif outcome.status == Status.REJECTED and outcome.code not in _BLAMELESS_CODES:
                rejected.append(f"{ids[index].hex()}: {outcome.code} at {outcome.field}: {outcome.reason}")

        accepted = len(new_ids) + len(record_subjects)
        self._count_received(len(ids), accepted, len(rejected))
        self.note_delivered(session, ids)
        self.release_claims(session, ids)
        if accepted:
            self.store.note_changed()
            if session.node_key is not None:
                self.table.reward(session.node_key, 0.1 * accepted, trio.current_time())
        if rejected:
            self.hostile_log.log(
                logging.WARNING, "rejected %d of %d items from %s, such as %s", len(rejected), len(ids), session.describe(), rejected[0]
            )
            self.penalize(session, Penalty.INVALID_ITEM, f"sent {len(rejected)} invalid items, such as {rejected[0]}", times=len(rejected))

        if record_subjects:
            entry_ids = await self.in_thread(self.store.record_entry_ids, record_subjects)
            new_ids.extend(entry_ids.values())
            hint_subjects |= record_subjects
        self._note_added(new_ids)
        self.announce(new_ids, exclude=session)
        if hint_subjects:
            self._add_hints(await self.in_thread(self.store.hint_addresses, hint_subjects))

    def _count_received(self, received: int, accepted: int, rejected: int) -> None:
        self.counters["items_received"] += received
        self.counters["items_accepted"] += accepted
        self.counters["items_rejected"] += rejected
        self.counters["items_duplicate"] += max(0, received - accepted - rejected)
        self.metrics.items_received.labels(outcome="accepted").inc(accepted)
        self.metrics.items_received.labels(outcome="rejected").inc(rejected)
        self.metrics.items_received.labels(outcome="duplicate").inc(max(0, received - accepted - rejected))

    def fetch_room(self, session: PeerSession) -> int:
        """Return how many more ids may be queued for requests to ``session``.

        One peer may hold at most a quarter of ``max_fetch_backlog``, queued
        or requested, plus the chunk of up to 1,024 ids its fetcher is
        checking. So a peer that names ids and never replies cannot leave
        the others without room.
        """
        queued = sum(other.fetch_backlog for other in self.sessions.values())
        share = self.settings.max_fetch_backlog // 4 - session.fetch_backlog - session.claimed
        return max(0, min(self.settings.max_fetch_backlog - queued, share))

    # --- push ----------------------------------------------------------------

    def announce(self, ids: Sequence[bytes], exclude: PeerSession | None = None) -> None:
        """Announce new item ids to the connected peers other than ``exclude`` (``push_fanout`` random ones when set)."""
        if not ids:
            return
        for item_id in ids:
            self._remember(self._seen, item_id, None)
        candidates = [session for session in self.sessions.values() if session is not exclude and session.ready]
        if self.settings.push_fanout is not None and len(candidates) > self.settings.push_fanout:
            candidates = self.rng.sample(candidates, self.settings.push_fanout)
        for session in candidates:
            session.announce(ids)
        self.counters["ids_announced"] += len(ids) * len(candidates)

    def stored_locally(self, outcomes: list[SubmitOutcome]) -> None:
        """Announce what an HTTP submission stored (``MirrorService.stored_listeners`` hook)."""
        if self._nursery is None or self._stopping:
            return
        self._nursery.start_soon(self._announce_local, outcomes)

    async def _announce_local(self, outcomes: list[SubmitOutcome]) -> None:
        ids = [
            bytes.fromhex(outcome.input_sha256)
            for outcome in outcomes
            if outcome.kind == "event" and outcome.status == "accepted" and outcome.input_sha256
        ]
        records = {outcome.subject for outcome in outcomes if outcome.kind != "event" and outcome.status != "rejected" and outcome.subject}
        subjects = {outcome.subject for outcome in outcomes if outcome.status == "accepted" and outcome.subject}
        if not ids and not records:
            return
        self.store.note_changed()
        try:
            if records:
                entry_ids = await self.in_thread(self.store.record_entry_ids, records)
                ids.extend(entry_ids.values())
            self._note_added(ids)
            self.announce(ids)
            self._add_hints(await self.in_thread(self.store.hint_addresses, subjects | records))
        except StoreError:
            logger.exception("reading the items of an HTTP submission failed; peers will find them by reconciliation")

    # --- discovery -----------------------------------------------------------

    def _add_hints(self, hints: Iterable[HintAddress]) -> None:
        now = trio.current_time()
        added = 0
        for hint in hints:
            known = hint.address in self.table.entries
            entry = self.table.add_candidate(
                hint.address, PeerSource.HINT, now, signer=hint.signer, reporter=f"mirror hint {hint.event_id} on {hint.subject}"
            )
            if entry is not None and not known:
                added += 1
        if added:
            self.wake_dialer()

    async def _bootstrap_hints(self) -> None:
        try:
            subjects = await self.in_thread(self.store.subjects_with_hints)
            self._add_hints(await self.in_thread(self.store.hint_addresses, subjects))
        except StoreError:
            logger.exception("reading mirror hints from the store failed; peers from hints are found as hints arrive")

    # --- periodic work -------------------------------------------------------

    async def _anti_entropy(self) -> None:
        interval = self.settings.anti_entropy_interval
        while True:
            await trio.sleep(interval * (0.75 + 0.5 * self.rng.random()))
            # A peer whose items are still being fetched is skipped: a new
            # session would only find the same difference again.
            idle = [session for session in self.sessions.values() if session.ready and not session.reconcile.busy and not session.fetching]
            if idle:
                session = self.rng.choice(idle)
                session.start_task(session.reconcile.initiate)

    async def _housekeeping(self) -> None:
        last_exchange = trio.current_time()
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            for session in list(self.sessions.values()):
                if session.oldest_want_age > self.settings.want_timeout:
                    self.penalize(session, Penalty.TIMEOUT, f"did not answer a want request within {self.settings.want_timeout:g} s")
                    session.finish("want request timed out", failed=True)
            if now - last_exchange >= self.settings.peer_exchange_interval:
                last_exchange = now
                for session in list(self.sessions.values()):
                    self._send_peers(session)

    # --- reports -------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        """Return the node's gossip status for ``/status.json`` (store counts are added by the route)."""
        now = trio.current_time()
        return {
            "node_key": self.node_key.hex(),
            "fingerprint": self.fingerprint,
            "gossip_listen": self.listen_address,
            "advertised": self.advertised_listen,
            "profile": {"merge_version": self.profile.merge_version, "trust_sha256": self.profile.trust_sha256},
            "uptime_seconds": round(time.time() - self._started, 3),
            "peers": {
                "connected": len(self.sessions),
                "handshaking": len(self.handshaking),
                "known": len(self.table.entries),
                "banned": len(self.table.bans(now)),
            },
            "gossip": dict(self.counters),
            "recent_reconciliations": list(self.recent_reconciliations),
        }

    def peers_json(self) -> dict[str, Any]:
        """Return the peer table, connections, scores and bans for ``/peers.json``."""
        now = trio.current_time()
        connected = []
        for session in self.sessions.values():
            connected.append(
                {
                    "node_key": session.node_key.hex() if session.node_key else None,
                    "fingerprint": session.fingerprint,
                    "address": session.remote,
                    "direction": "dialled" if session.initiated else "inbound",
                    "listen": session.listen,
                    "connected_seconds": round(time.time() - session.connected_at, 3),
                    "score": round(self.table.score_of(session.node_key, None, now), 2),
                    "items_sent": session.items_sent,
                    "items_received": session.items_received,
                    "bytes_sent": session.bytes_sent,
                    "bytes_received": session.bytes_received,
                    "reconciliations": session.reconcile.completed,
                }
            )
        return {
            "connected": connected,
            "known": [entry.as_json(now) for entry in self.table.entries.values()],
            "scores": self.table.scores_json(now),
            "bans": [{"peer": ban.subject, "seconds_left": round(ban.until - now, 3), "reason": ban.reason} for ban in self.table.bans(now)],
        }


def _preferred(first: PeerSession, second: PeerSession, our_key: bytes) -> PeerSession:
    """Return which of two sessions with one peer to keep: the one opened by the smaller key, else the newer."""

    def opener(session: PeerSession) -> bytes:
        return our_key if session.initiated else session.node_key or b""

    if opener(first) == opener(second):
        return second
    return first if opener(first) < opener(second) else second


class GossipRoutes:
    """An ASGI wrapper that serves ``/peers.json`` and ``/status.json`` and passes every other request on."""

    def __init__(self, app: Any, service: MirrorService, node: GossipNode) -> None:
        self.app = app
        self.service = service
        self.node = node

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in ("/peers.json", "/status.json"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = path.removeprefix("/").removesuffix(".json")
        if scope["method"] not in ("GET", "HEAD"):
            status = 405
            body: dict[str, Any] = {"error": {"status": 405, "code": "method_not_allowed", "message": f"use GET for {path}"}}
        elif path == "/peers.json":
            status, body = 200, self.node.peers_json()
        else:
            status, body = 200, {**self.node.status_json(), "store": await self.service.stats()}
        encoded = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self.service.metrics.observe_request(route, status, time.perf_counter() - started)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(encoded)).encode("ascii"))]
        if status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": encoded if scope["method"] != "HEAD" else b""})
