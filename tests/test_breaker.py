"""Attacks and races on the gossip limits and penalties, each against real daemons on loopback.

The limits are the reconciliation need limit, the fetch backlog, the
undelivered penalty, the connection slots and the frame container limit.

Every test asserts the correct behaviour. A test marked xfail(strict=True)
shows a fault that is still in the code: its reason names the file, the
function and what goes wrong. Attackers that break the protocol connect
from their own loopback addresses (127.67.0.0/16), so that a host score
never touches the honest daemons on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from harness.federation import (
    FAST,
    PUBLISHED_STATE_SHA256,
    START_SECONDS,
    build_published_store,
    federation,
    now_text,
    wait_for,
)
from harness.hostile import HostilePeer, random_ids
from helpers import published_input, signed_event

from node.dialpolicy import split_host_port
from node.gossip import GossipSettings
from node.peers import PeerLimits
from node.session import ITEMS_FRAME_CONTAINERS, _item_batches
from node.store import MAX_ITEM_CONTAINERS
from protocol import (
    Connection,
    HelloReceived,
    MergeProfile,
    PeerAuthenticated,
    PeerError,
    PeersReceived,
    PingReceived,
    ReconcileReceived,
    Reconciler,
    Role,
    SigningKey,
    SortedIds,
    default_trust,
    derive_aliases,
    emit_bundle,
    item_id,
    record_pith_number,
)
from protocol.frames import MAX_FRAME_CONTAINERS
from protocol.wire import MAX_ITEMS


@pytest.fixture(scope="module")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a closed store file holding the published state."""
    return build_published_store(tmp_path_factory.mktemp("published"))


def settings(**changes: Any) -> GossipSettings:
    return GossipSettings(**{**FAST.__dict__, **changes})


def key_subject(label: str) -> str:
    return f"key:{SigningKey.from_label(label).public_key.hex()}"


async def post_json(url: str, document: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=START_SECONDS) as client:
        return await client.post("/events", content=json.dumps(document).encode(), headers={"content-type": "application/json"})


# --- frames: the container limit against stored items ------------------------


def padded_record_bundle(empty_arrays: int) -> dict[str, Any]:
    """Return a bundle whose canonical record carries ``empty_arrays`` empty arrays in an extra metadata field.

    A canonical record may carry fields the registry adds later, and a
    record needs no receipt, so any HTTP client can store such a record.
    """
    record = {
        "metadata": {"padding": [[] for _ in range(empty_arrays)], "submitted_at": "2009-04-08T10:07:02Z"},
        "schema_version": "1.0",
        "source": {"id": "0904.1299", "kind": "arxiv", "version": 1},
    }
    number, digest = record_pith_number(record)
    aliases = [{"alias_kind": kind, "alias_value": value} for kind, value in sorted(derive_aliases(record, digest).items())]
    return emit_bundle(record, aliases, [], default_trust())


@pytest.mark.trio
async def test_padded_record_rejected_at_post(tmp_path: Path) -> None:
    # A record that no frame could carry is refused where it enters, so no
    # relay ever sends a frame that its peers must reject.
    bundle = padded_record_bundle(MAX_FRAME_CONTAINERS + 10)
    async with federation(tmp_path) as group:
        receiver = await group.start("receiver")
        relay = await group.start("relay", peers=(receiver.address,))
        await wait_for(lambda: len(receiver.gossip.sessions) == 1, START_SECONDS, "the relay connects")
        response = await post_json(relay.url, bundle)
        stored = relay.service.store.stats().records
        await trio.sleep(1.0)
        bans = [ban.subject for ban in receiver.gossip.table.bans(trio.current_time())]

    outcome = response.json()["outcomes"][0]
    assert response.status_code == 422
    assert (outcome["field"], outcome["code"]) == ("canonical_record", "too_many_containers")
    # The padding plus the record's own 4 objects and arrays.
    assert outcome["reason"] == f"the record holds 65550 arrays and objects, over the limit of {MAX_ITEM_CONTAINERS}"
    assert stored == 0
    assert bans == []


def test_item_batches_respect_container_budget() -> None:
    # Five items of 16,000 containers: a frame takes four (64,000 <= 65,534).
    found = [(bytes([number]) * 32, {"n": number}, 100, 16_000) for number in range(5)]
    batches = _item_batches(found)
    assert [[item["n"] for item in batch] for batch in batches] == [[0, 1, 2, 3], [4]]


def test_item_over_frame_budget_left_out() -> None:
    found = [(bytes(32), {"n": 0}, 100, ITEMS_FRAME_CONTAINERS + 1), (b"\x01" * 32, {"n": 1}, 100, 3)]
    assert _item_batches(found) == [[{"n": 1}]]


def test_full_items_frame_of_events_decodes() -> None:
    # 256 real signed events, the most one items message carries, pass the
    # container limit with room to spare, because each event has 3 containers.
    events = [signed_event(f"frame-signer-{number}", "mirror_hint", {"slot": "primary", "url": f"https://m{number}.example.org/"})
              for number in range(MAX_ITEMS)]
    profile = MergeProfile.from_trust(default_trust())
    sender = Connection(Role.INITIATOR, SigningKey.from_label("frame-sender"), profile)
    receiver = Connection(Role.RESPONDER, SigningKey.from_label("frame-receiver"), profile)
    receiver.receive_data(sender.send_hello(os.urandom(32), None))
    sender.receive_data(receiver.send_hello(os.urandom(32), None))
    receiver.receive_data(sender.send_auth())
    sender.receive_data(receiver.send_auth())
    events_seen = receiver.receive_data(sender.send_items(events, False))

    assert [type(event).__name__ for event in events_seen] == ["ItemsReceived"]
    assert len(events_seen[0].items) == 256
    assert events_seen[0].ids[0] == item_id(events[0])


# --- connection slots ------------------------------------------------------------


@pytest.mark.trio
async def test_inbound_flood_keeps_outbound_room(tmp_path: Path, published_store: Path) -> None:
    limits = settings(max_connected_peers=4, target_outbound_peers=2)
    async with federation(tmp_path) as group:
        node = await group.start("node", settings=limits)
        honest = await group.start("honest", store_file=published_store)
        attackers = []
        for number in range(4):
            peer = await HostilePeer.open(node.address, f"slot-taker-{number}", local_host="127.67.0.1")
            attackers.append((peer, await peer.handshake()))
        # The attacker names the honest node, which the node should now dial.
        await attackers[0][0].advertise([honest.address])
        with trio.move_on_after(3):
            while node.state_sha256() != PUBLISHED_STATE_SHA256:
                await trio.sleep(0.05)
        dialled = set(node.dialled)
        known = set(node.gossip.table.entries)
        synced = node.state_sha256()
        for peer, _ in attackers:
            await peer.close()

    assert [isinstance(event, PeerAuthenticated) for _, event in attackers] == [True] * 4
    assert honest.address in known
    assert dialled == {split_host_port(honest.address)}
    assert synced == PUBLISHED_STATE_SHA256


class SlowResponders:
    """Listeners that complete a correct handshake only after ``delay`` seconds, then reply to pings."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.addresses: list[str] = []
        self.accepted = 0

    async def start(self, nursery: trio.Nursery, count: int) -> None:
        for number in range(count):
            listeners = await nursery.start(partial(trio.serve_tcp, self._handler(number), 0, host="127.0.0.1"))
            self.addresses.append(f"127.0.0.1:{listeners[0].socket.getsockname()[1]}")

    def _handler(self, number: int) -> Any:
        async def handle(stream: trio.SocketStream) -> None:
            self.accepted += 1
            conn = Connection(Role.RESPONDER, SigningKey.from_label(f"slow-responder-{number}"), MergeProfile.from_trust(default_trust()))
            await trio.sleep(self.delay)
            try:
                await stream.send_all(conn.send_hello(os.urandom(32), None))
                for _ in range(10_000):
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    for event in conn.receive_data(data):
                        if isinstance(event, HelloReceived):
                            await stream.send_all(conn.send_auth())
                        elif isinstance(event, PingReceived) and conn.ready:
                            await stream.send_all(conn.send_pong(event.nonce))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

        return handle


@pytest.mark.trio
async def test_outbound_target_not_exceeded(tmp_path: Path) -> None:
    responders = SlowResponders(delay=0.6)
    async with trio.open_nursery() as servers:
        await responders.start(servers, 12)
        async with federation(tmp_path) as group:
            node = await group.start("node", peers=tuple(responders.addresses), settings=settings(target_outbound_peers=2))
            await wait_for(lambda: len(node.gossip.sessions) >= 2, START_SECONDS, "two dialled sessions are ready")
            # Handshakes that started later finish within one more delay.
            await trio.sleep(1.0)
            outbound = sum(1 for session in node.gossip.sessions.values() if session.initiated)
            dials = len(node.dialled)
        servers.cancel_scope.cancel()

    assert outbound == 2
    assert dials == 2


# --- peer exchange ---------------------------------------------------------------


@pytest.mark.trio
async def test_full_node_forwards_no_forbidden_address(tmp_path: Path) -> None:
    async with federation(tmp_path) as group:
        node = await group.start("node", settings=settings(max_connected_peers=1), allow_loopback=False)
        first = await HostilePeer.open(node.address, "metadata-advertiser")
        await first.handshake(listen="169.254.169.254:9090")
        newcomer = await HostilePeer.open(node.address, "newcomer")
        await newcomer.send(newcomer.conn.send_hello(os.urandom(32), None))
        events = await newcomer.until_closed()
        await first.close()
        await newcomer.close()
        table = dict(node.gossip.table.entries)

    forwarded = [event.addresses for event in events if isinstance(event, PeersReceived)]
    assert table == {}
    assert isinstance(events[-1], PeerError)
    assert events[-1].code == "busy"
    assert forwarded == [()]


# --- fetch backlog and reconciliation -------------------------------------------------


@pytest.mark.trio
async def test_liar_cannot_fill_fetch_backlog(tmp_path: Path, published_store: Path) -> None:
    limits = settings(reconcile_need_limit=2048, max_fetch_backlog=8192)
    async with federation(tmp_path) as group:
        node = await group.start("node", settings=limits)
        liar = await HostilePeer.open(node.address, "backlog-liar", local_host="127.67.1.1")
        await liar.handshake()
        # Each session names 4,096 ids the liar never sends. The node stops
        # each session early and queues what it found, and no want gets a reply.
        for number in range(6):
            await liar.lie_in_reconciliation(random_ids(4096, f"backlog {number}"), session=2 * number)
        liar_session = next(iter(node.gossip.sessions.values()))
        liar_queue = liar_session.fetch_backlog + liar_session.claimed
        honest = await group.start("honest", store_file=published_store, peers=(node.address,))
        with trio.move_on_after(4):
            while node.state_sha256() != PUBLISHED_STATE_SHA256:
                await trio.sleep(0.05)
        synced = node.state_sha256()
        results = list(node.gossip.recent_reconciliations)
        await liar.close()

    honest_fingerprint = honest.gossip.fingerprint
    # One peer may hold a quarter of the backlog of 8,192 ids, plus the one
    # chunk of 1,024 ids between its queue and its claims.
    assert liar_queue <= 2048 + 1024
    assert any(result["peer"] == honest_fingerprint for result in results)
    assert synced == PUBLISHED_STATE_SHA256


@pytest.mark.trio
async def test_reconnects_rebuild_snapshot_bounded(tmp_path: Path, published_store: Path) -> None:
    # Peers that reconnect get the node's newest ids without forcing a
    # rebuild: the ids stored since the last build are copied in.
    builds = 0
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store, settings=settings(snapshot_max_age=60.0, fresh_snapshot_min_age=60.0))
        store = node.gossip.store
        build = store.build_snapshot

        def counting_build() -> Any:
            nonlocal builds
            builds += 1
            return build()

        store.build_snapshot = counting_build  # type: ignore[method-assign]
        await node.gossip.snapshot()
        statuses = []
        seen_new = []
        for number in range(5):
            # A new signed hint changes the store, as any busy node's store changes.
            hint = signed_event("rebuild-hinter", "mirror_hint", {"slot": f"rebuild-{number}", "url": "https://r.example.org/"}, now_text())
            statuses.append((await post_json(node.url, hint)).status_code)
            await wait_for(lambda: node.gossip.store.generation > 0 and bool(node.gossip._added_since_snapshot), START_SECONDS, "the hint is noted")
            peer = await HostilePeer.open(node.address, "reconnecting-peer")
            await peer.handshake()
            ours = Reconciler(SortedIds([]), peer.conn.reconcile_key(0))
            await peer.send(peer.conn.send_reconcile(0, 0, ours.initiate()))
            events = await peer.read_until(lambda event: isinstance(event, ReconcileReceived))
            ours.receive(next(event for event in events if isinstance(event, ReconcileReceived)).payload)
            seen_new.append(item_id(hint) in ours.need_ids)
            await peer.close()

    assert statuses == [200] * 5
    assert seen_new == [True] * 5
    # One build before the loop; both ages of 60 s allow no other.
    assert builds == 1


# --- the undelivered penalty -------------------------------------------------------


@pytest.mark.trio
async def test_want_window_reply_not_penalized(tmp_path: Path, published_store: Path) -> None:
    # The server serves at most 2 requested ids per minute and leaves the
    # 3 published items out of every reply; the requester, which bans at
    # -5, forgives up to 16 missing ids per reply.
    server_settings = settings(rate_window=60.0, max_wanted_ids_per_window=2)
    requester_settings = settings(anti_entropy_interval=0.2, peer_limits=PeerLimits(ban_threshold=-5.0))
    async with federation(tmp_path) as group:
        server = await group.start("server", store_file=published_store, settings=server_settings)
        requester = await group.start("requester", peers=(server.address,), settings=requester_settings)
        with trio.move_on_after(5):
            while not requester.gossip.table.bans(trio.current_time()):
                await trio.sleep(0.05)
        bans = [ban.subject for ban in requester.gossip.table.bans(trio.current_time())]
        server_key = f"key:{server.gossip.node_key.hex()}"

    assert server_key not in bans


@pytest.mark.trio
async def test_alias_change_not_penalized(tmp_path: Path, published_store: Path) -> None:
    published = published_input()
    record, aliases = published.record, published.aliases
    # One second earlier than the published created_at of the arxiv alias:
    # the store keeps the earliest, so the record entry id changes.
    earlier = [dict(alias, created_at="2026-05-18T00:22:38Z") if alias["alias_kind"] == "arxiv" else alias for alias in aliases]
    bundle = emit_bundle(record, earlier, [], default_trust())
    async with federation(tmp_path) as group:
        server = await group.start("server", store_file=published_store, settings=settings(snapshot_max_age=60.0))
        requester = await group.start(
            "requester", store_file=published_store, peers=(server.address,), settings=settings(anti_entropy_interval=0.3)
        )
        await wait_for(lambda: bool(requester.gossip.recent_reconciliations), START_SECONDS, "a first session runs")
        # The same change reaches both nodes, from an HTTP client or a third node.
        responses = [await post_json(node.url, bundle) for node in (server, requester)]
        # About five sessions of the requester with the server, fewer than
        # the 8 per 10 s that the server accepts.
        await trio.sleep(1.5)
        rows = {row["peer"]: row for row in requester.gossip.peers_json()["scores"]}
        server_row = rows.get(f"key:{server.gossip.node_key.hex()}", {"penalties": 0})

    assert [response.status_code for response in responses] == [200, 200]
    assert server_row["penalties"] == 0
