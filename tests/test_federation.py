"""Federations of real daemons over loopback TCP: convergence, discovery, push, sessions and bans."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from harness.federation import (
    CONVERGE_SECONDS,
    FAST,
    PUBLISHED_STATE_SHA256,
    SETTLE_SECONDS,
    START_SECONDS,
    STATE_PATH,
    RawPeer,
    build_published_store,
    ended,
    federation,
    get_json,
    now_text,
    post_event,
    wait_for,
)
from helpers import SUBJECT, signed_event
from test_daemon import free_port
from test_merge import C12_EQUAL_SHA256, C12_LATER_SHA256, c12_events, c12_scenario

from bench.verify_merge import load_or_build_workload
from node.cli import main as cli_main
from node.demo import fixture_path
from node.gossip import GossipSettings
from node.gossip_store import GossipStore
from node.peers import PeerSource
from node.store import STORE_FILENAME, Store
from protocol import (
    ItemsReceived,
    PeerAuthenticated,
    PeerClosed,
    PeerError,
    PeersReceived,
    PongReceived,
    SigningKey,
    default_trust,
    emit_bundle,
    item_id,
    merge,
)
from protocol.frames import encode_frame


@pytest.fixture(scope="module")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a closed store file holding the published state."""
    return build_published_store(tmp_path_factory.mktemp("published"))


# --- convergence -------------------------------------------------------------


@pytest.mark.trio
async def test_published_state_reaches_seeded_peer(tmp_path: Path, published_store: Path) -> None:
    async with federation(tmp_path) as group:
        source = await group.start("source", store_file=published_store)
        copy = await group.start("copy", peers=(source.address,), allow_loopback=False)

        await wait_for(lambda: copy.state_sha256() == PUBLISHED_STATE_SHA256, SETTLE_SECONDS, "the copy holds the published state")
        await wait_for(lambda: copy.gossip.counters["items_received"] == 3, SETTLE_SECONDS, "the copy counts the items")
        async with httpx.AsyncClient(base_url=copy.url, timeout=START_SECONDS) as client:
            served = await client.get(STATE_PATH)

        assert served.content == fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()
        assert copy.gossip.counters["items_received"] == 3
        assert copy.gossip.counters["items_rejected"] == 0
        assert copy.dialled == [("127.0.0.1", int(source.address.rsplit(":", 1)[1]))]


@dataclass(frozen=True)
class TenThousand:
    """Two stores holding disjoint halves of 10,000 signed events, and the expected states."""

    halves: tuple[Path, Path]
    items: tuple[int, int]
    expected: dict[str, str]


@pytest.fixture(scope="module")
def ten_thousand(tmp_path_factory: pytest.TempPathFactory) -> TenThousand:
    workload, _ = load_or_build_workload(10_000, 300, cache_dir=None)
    trust = default_trust()
    halves = (workload.subjects[:150], workload.subjects[150:])
    files = []
    items = []
    for number, half in enumerate(halves):
        data_dir = tmp_path_factory.mktemp(f"half{number}")
        bundles = [
            emit_bundle(subject.record, subject.aliases, [json.loads(line) for line in subject.lines.splitlines()], trust)
            for subject in half
        ]
        with Store(data_dir) as store:
            outcomes = list(store.add_many_bundles(bundles, "test", time.time()))
        assert all(outcome.status == "accepted" for outcome in outcomes)
        files.append(data_dir / STORE_FILENAME)
        items.append(sum(len(bundle["events"]) + 1 for bundle in bundles))
    expected = {
        subject.pith_number: merge(subject.record, subject.aliases, [json.loads(line) for line in subject.lines.splitlines()], trust)[
            "state_sha256"
        ]
        for subject in workload.subjects
    }
    return TenThousand((files[0], files[1]), (items[0], items[1]), expected)


@pytest.mark.slow
@pytest.mark.trio
async def test_eight_nodes_converge_on_10k_events(tmp_path: Path, ten_thousand: TenThousand) -> None:
    # Items are stored in batches of up to 10 s of arrivals (the default),
    # because the store re-merges each subject a write touches.
    settings = GossipSettings(**{**FAST.__dict__, "anti_entropy_interval": 2.0, "ingest_linger": 0.25, "ingest_max_linger": 10.0})
    async with federation(tmp_path) as group:
        nodes = [await group.start("node0", store_file=ten_thousand.halves[0], settings=settings)]
        for number in range(1, 8):
            nodes.append(await group.start(f"node{number}", peers=(nodes[0].address,), store_file=ten_thousand.halves[number % 2], settings=settings))

        def converged() -> bool:
            return all(node.service.store.stats().events == 10_000 for node in nodes)

        # Each poll reads 8 stores on the event loop's thread, so poll rarely.
        await wait_for(converged, CONVERGE_SECONDS, "all 8 nodes hold the 10,000 events", every=0.5)
        await wait_for(lambda: all(len(node.all_states()) == 300 for node in nodes), SETTLE_SECONDS, "all 8 nodes hold 300 states")
        await wait_for(
            lambda: all(node.gossip.counters["items_accepted"] >= ten_thousand.items[(number + 1) % 2] for number, node in enumerate(nodes)),
            SETTLE_SECONDS,
            "every node counts the items it stored",
        )
        states = [node.all_states() for node in nodes]
        received = [node.gossip.counters for node in nodes]

    assert ten_thousand.items == (5200, 5100)
    for number, node_states in enumerate(states):
        assert node_states == ten_thousand.expected, f"node{number}"
        lacking = ten_thousand.items[(number + 1) % 2]
        assert received[number]["items_accepted"] == lacking, f"node{number}"
        assert received[number]["items_rejected"] == 0, f"node{number}"
    for node in nodes:
        assert all(host.startswith("127.") for host, _ in node.dialled)


@pytest.mark.slow
@pytest.mark.trio
async def test_need_limit_syncs_in_several_sessions(tmp_path: Path, ten_thousand: TenThousand) -> None:
    # The empty node may learn only 1,000 missing ids per session, and the
    # half it copies has 5,200 items, so it needs at least 6 sessions.
    settings = GossipSettings(
        **{**FAST.__dict__, "anti_entropy_interval": 0.5, "reconcile_frame_budget": 8192, "reconcile_need_limit": 1_000, "ingest_linger": 0.25}
    )
    async with federation(tmp_path) as group:
        source = await group.start("source", store_file=ten_thousand.halves[0], settings=settings)
        empty = await group.start("empty", peers=(source.address,), settings=settings)
        await wait_for(lambda: empty.service.store.stats().events == 5_050, CONVERGE_SECONDS, "the empty node holds 5,050 events", every=0.5)
        await wait_for(lambda: len(empty.all_states()) == 150, SETTLE_SECONDS, "the empty node holds 150 states")
        states = empty.all_states()
        outcomes = [result["outcome"] for result in empty.gossip.recent_reconciliations]

    assert states == {number: sha for number, sha in ten_thousand.expected.items() if number in states}
    assert outcomes.count("stopped early: need limit") >= 5
    assert empty.gossip.counters["items_accepted"] == 5_200


# --- push --------------------------------------------------------------------


@pytest.mark.trio
async def test_posted_event_reaches_all_nodes(tmp_path: Path, published_store: Path) -> None:
    # Anti-entropy waits 60 s, so only push (announce, want, items) moves the event.
    settings = GossipSettings(**{**FAST.__dict__, "anti_entropy_interval": 60.0})
    async with federation(tmp_path) as group:
        nodes = [await group.start("node0", store_file=published_store, settings=settings)]
        for number in range(1, 8):
            nodes.append(await group.start(f"node{number}", peers=(nodes[0].address,), store_file=published_store, settings=settings))
        await wait_for(lambda: all(len(node.gossip.sessions) == 7 for node in nodes), SETTLE_SECONDS, "every node has 7 peers")

        event = signed_event("push-test", "mirror_hint", {"slot": "push", "url": "https://push.example.org/pith/"}, now_text())
        response = await post_event(nodes[0], event)
        new_id = item_id(event)
        await wait_for(
            lambda: all(node.service.store.get_event(new_id.hex()) is not None for node in nodes), SETTLE_SECONDS, "every node stores the event"
        )
        # Deliveries are counted once the storing task resumes after the commit.
        await wait_for(lambda: all(new_id in node.gossip.deliveries for node in nodes[1:]), SETTLE_SECONDS, "every delivery is counted")
        deliveries = {node.gossip.fingerprint: node.gossip.deliveries.get(new_id, []) for node in nodes}
        states = {node.state_sha256() for node in nodes}

    assert response.status_code == 200
    assert len(states) == 1
    origin = nodes[0].gossip.fingerprint
    assert deliveries[origin] == []
    depth = {origin: 0}
    for _ in range(len(nodes)):
        for fingerprint, senders in deliveries.items():
            if senders and senders[0] in depth:
                depth.setdefault(fingerprint, depth[senders[0]] + 1)
    assert len(depth) == 8
    assert max(depth.values()) <= math.ceil(math.log2(8)) + 2
    assert max(len(senders) for senders in deliveries.values()) <= 3


# --- discovery ---------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize(
    ("scenario", "expected"),
    [("equal_timestamp_both_orders", C12_EQUAL_SHA256), ("later_timestamp_wins", C12_LATER_SHA256)],
)
async def test_c12_orders_agree_then_sync_nothing(tmp_path: Path, published_store: Path, scenario: str, expected: str) -> None:
    events = c12_events()
    orders = c12_scenario(scenario)
    async with federation(tmp_path) as group:
        first = await group.start("first", store_file=published_store)
        second = await group.start("second", store_file=published_store)
        statuses = []
        for node, names in ((first, orders["replica_1_receives"]), (second, orders["replica_2_receives"])):
            for name in names:
                statuses.append((await post_event(node, events[name])).status_code)
        hashes = (first.state_sha256(), second.state_sha256())

        # Only now do the replicas meet; their reconciliation must find no difference.
        second.gossip.table.add_candidate(first.address, PeerSource.SEED, trio.current_time())
        second.gossip.wake_dialer()
        await wait_for(
            lambda: first.gossip.recent_reconciliations and second.gossip.recent_reconciliations, SETTLE_SECONDS, "both sides end a reconciliation"
        )
        results = [node.gossip.recent_reconciliations[0] for node in (first, second)]
        received = [node.gossip.counters["items_received"] for node in (first, second)]

    assert statuses == [200] * len(statuses)
    assert hashes == (expected, expected)
    assert [(result["have"], result["need"]) for result in results] == [(0, 0), (0, 0)]
    assert [result["outcome"] for result in results] == ["done", "done"]
    assert received == [0, 0]


@pytest.mark.trio
async def test_hint_leads_to_connection(tmp_path: Path, published_store: Path) -> None:
    async with federation(tmp_path) as group:
        target = await group.start("target")
        finder = await group.start("finder", store_file=published_store)
        payload = {"slot": "gossip", "url": "https://target.example.org/pith/", "gossip": target.address}
        hint = signed_event("hint-signer", "mirror_hint", payload, now_text())

        response = await post_event(finder, hint)
        await wait_for(lambda: target.gossip.node_key in finder.gossip.sessions, SETTLE_SECONDS, "the finder connects to the hinted node")
        entry = finder.gossip.table.entries[target.address]

    assert response.status_code == 200
    assert entry.source == "hint"
    assert entry.signer == hint["signer"]["public_key_hex"]
    assert finder.resolved == []


@pytest.mark.trio
async def test_forbidden_hint_not_dialled(tmp_path: Path, published_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pith_mirror.gossip")
    async with federation(tmp_path) as group:
        finder = await group.start("finder", store_file=published_store, allow_loopback=False)
        payload = {"slot": "gossip", "url": "https://metadata.example.org/pith/", "gossip": "169.254.169.254:9090"}
        hint = signed_event("metadata-hint", "mirror_hint", payload, now_text())

        response = await post_event(finder, hint)
        await wait_for(lambda: "169.254.169.254:9090" in caplog.text, SETTLE_SECONDS, "the hint is logged")
        # Give the dialer several rounds to (wrongly) pick the address up.
        await trio.sleep(FAST.dial_interval * 5)
        table = dict(finder.gossip.table.entries)

    assert response.status_code == 200
    assert f"ignored peer address '169.254.169.254:9090' from hint mirror hint {hint['event_id']} on {SUBJECT}" in caplog.text
    assert "169.254.169.254 is a cloud metadata service address, never dialled (metadata)" in caplog.text
    assert "169.254.169.254:9090" not in table
    assert finder.dialled == []
    assert finder.resolved == []


@pytest.mark.trio
async def test_full_node_hands_over_peers(tmp_path: Path) -> None:
    settings = GossipSettings(**{**FAST.__dict__, "max_connected_peers": 1})
    async with federation(tmp_path) as group:
        full = await group.start("full", settings=settings)
        first = await group.start("first", peers=(full.address,))
        await wait_for(lambda: len(full.gossip.sessions) == 1, SETTLE_SECONDS, "the first peer connects")
        peer = await RawPeer.open(full.address, "late-peer")
        events = await peer.handshake()
        events += await peer.events_until(ended)
        await peer.close()

    handed = [event.addresses for event in events if isinstance(event, PeersReceived)]
    errors = [(event.code, event.reason) for event in events if isinstance(event, PeerError)]
    assert handed == [(first.address,)]
    assert errors == [("busy", "peer limit reached (1 connected)")]


@pytest.mark.trio
async def test_dialer_stops_at_outbound_target(tmp_path: Path) -> None:
    settings = GossipSettings(**{**FAST.__dict__, "target_outbound_peers": 2})
    async with federation(tmp_path) as group:
        targets = [await group.start(f"target{number}") for number in range(4)]
        dialler = await group.start("dialler", peers=tuple(target.address for target in targets), settings=settings)
        await wait_for(lambda: len(dialler.gossip.sessions) == 2, SETTLE_SECONDS, "two dialled sessions are ready")
        # Several dial intervals pass; the dialler must not open a third.
        await trio.sleep(FAST.dial_interval * 10)
        sessions = len(dialler.gossip.sessions)
        dials = dialler.gossip.counters["dials"]

    assert sessions == 2
    assert dials == 2


@pytest.mark.trio
async def test_configured_gossip_address_advertised(tmp_path: Path) -> None:
    async with federation(tmp_path) as group:
        node = await group.start("node", advertise="mirror.example.org:9090")
        peer = await RawPeer.open(node.address, "advertise-reader")
        events = await peer.handshake()
        await peer.close()

    hellos = [event.listen for event in events if type(event).__name__ == "HelloReceived"]
    assert node.gossip.advertised_listen == "mirror.example.org:9090"
    assert hellos == ["mirror.example.org:9090"]


@pytest.mark.trio
async def test_seed_of_own_address_not_redialled(tmp_path: Path) -> None:
    # NOTE: another process may take the port between the probe and the bind.
    port = free_port()
    async with federation(tmp_path) as group:
        node = await group.start("node", peers=(f"127.0.0.1:{port}",), listen=f"127.0.0.1:{port}")
        entry = node.gossip.table.entries[f"127.0.0.1:{port}"]
        await wait_for(lambda: entry.state == "self", SETTLE_SECONDS, "the node recognises its own address")
        # Several dial rounds pass; the address must not be dialled again.
        await trio.sleep(FAST.dial_interval * 5)
        dialled = list(node.dialled)

    assert dialled == [("127.0.0.1", port)]
    assert node.gossip.sessions == {}


# --- rejections and bans -----------------------------------------------------


@pytest.mark.trio
async def test_profile_mismatch_disconnects(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pith_mirror.gossip")
    trust_file = tmp_path / "trust.json"
    trust_file.write_text(json.dumps({**default_trust().document, "unsigned_registry_events": "reject"}))
    async with federation(tmp_path) as group:
        ours = await group.start("ours")
        theirs = await group.start("theirs", peers=(ours.address,), trust_file=trust_file)

        def gave_up() -> bool:
            entry = theirs.gossip.table.entries[ours.address]
            return entry.state == "backoff" and entry.last_error is not None

        await wait_for(gave_up, SETTLE_SECONDS, "the dialling node gives up on the peer")
        entry = theirs.gossip.table.entries[ours.address].as_json(trio.current_time())
        sessions = (len(ours.gossip.sessions), len(theirs.gossip.sessions))

    assert "merge profiles differ" in str(entry["last_error"])
    assert entry["next_attempt_in_seconds"] > 6 * 3600 - 60
    assert sessions == (0, 0)
    assert "(profile_mismatch); not redialled for 21600 s" in caplog.text


@pytest.mark.trio
async def test_garbage_peer_banned(tmp_path: Path) -> None:
    async with federation(tmp_path) as group:
        node = await group.start("node")
        replies = []
        for _ in range(3):
            peer = await RawPeer.open(node.address, "garbage-peer")
            assert isinstance((await peer.handshake())[-1], PeerAuthenticated)
            # A frame whose payload is the msgpack integer 104 followed by
            # four more bytes: not one msgpack value.
            await peer.stream.send_all(encode_frame(b"hello"))
            replies.append((await peer.events_until(ended))[-1])
            await peer.close()

        banned = await RawPeer.open(node.address, "garbage-peer")
        rejection = (await banned.handshake())[-1]
        await banned.close()
        bans = (await get_json(node, "/peers.json"))["bans"]

    assert [type(reply).__name__ for reply in replies] == ["PeerError", "PeerError", "PeerError"]
    assert [reply.code for reply in replies] == ["invalid_frame", "invalid_frame", "busy"]
    assert isinstance(rejection, PeerError)
    assert rejection.code == "busy"
    assert rejection.reason.startswith("banned for ")
    assert [ban["peer"] for ban in bans] == [f"key:{SigningKey.from_label('garbage-peer').public_key.hex()}"]
    assert "invalid_frame" in bans[0]["reason"]


@pytest.mark.trio
async def test_silent_peer_pinged_then_closed(tmp_path: Path) -> None:
    settings = GossipSettings(**{**FAST.__dict__, "ping_interval": 0.1, "idle_timeout": 0.35})
    async with federation(tmp_path) as group:
        node = await group.start("node", settings=settings)
        peer = await RawPeer.open(node.address, "silent-peer")
        await peer.handshake()
        # The peer reads but never replies, so the node's pings go unanswered.
        events = await peer.events_until(ended)
        await peer.close()

    names = [type(event).__name__ for event in events]
    assert "PingReceived" in names
    assert isinstance(events[-1], PeerClosed)


@pytest.mark.trio
async def test_unknown_wants_get_empty_replies(tmp_path: Path, published_store: Path) -> None:
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peer = await RawPeer.open(node.address, "curious-peer")
        await peer.handshake()
        replies: list[ItemsReceived] = []
        for request in range(10):
            ids = [hashlib.sha256(b"unknown %d %d" % (request, number)).digest() for number in range(1000)]
            await peer.stream.send_all(peer.conn.send_want(ids))
            events = await peer.events_until(lambda event: isinstance(event, ItemsReceived))
            replies.extend(event for event in events if isinstance(event, ItemsReceived))
        await peer.stream.send_all(peer.conn.send_ping(b"12345678"))
        pong = (await peer.events_until(lambda event: isinstance(event, PongReceived)))[-1]
        await peer.close()
        sent = node.gossip.counters["items_sent"]

    assert [(len(reply.items), reply.more) for reply in replies] == [(0, False)] * 10
    assert isinstance(pong, PongReceived)
    assert sent == 0


@pytest.mark.trio
async def test_wanted_items_served(tmp_path: Path, published_store: Path) -> None:
    items = GossipStore(Store(published_store.parent, read_only=True), default_trust())
    snapshot = items.build_snapshot()
    items.store.close()
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peer = await RawPeer.open(node.address, "fetching-peer")
        await peer.handshake()
        await peer.stream.send_all(peer.conn.send_want(list(snapshot.ids)))
        events = await peer.events_until(lambda event: isinstance(event, ItemsReceived) and not event.more)
        await peer.close()

    received = [event for event in events if isinstance(event, ItemsReceived)]
    assert sorted(item for event in received for item in event.ids) == sorted(snapshot.ids)


@pytest.mark.trio
async def test_status_and_peers_routes(tmp_path: Path, published_store: Path) -> None:
    async with federation(tmp_path) as group:
        first = await group.start("first", store_file=published_store)
        second = await group.start("second", peers=(first.address,))
        await wait_for(lambda: second.gossip.counters["items_accepted"] == 3, SETTLE_SECONDS, "the second node syncs")
        status = await get_json(second, "/status.json")
        peers = await get_json(second, "/peers.json")

    assert status["fingerprint"] == second.gossip.fingerprint
    assert status["gossip_listen"] == second.address
    assert status["profile"] == {"merge_version": "pith-open-graph-merge-v1", "trust_sha256": default_trust().digest}
    assert status["peers"]["connected"] == 1
    assert status["store"]["events"] == 2
    assert status["store"]["records"] == 1
    assert status["gossip"]["items_accepted"] == 3
    assert [row["fingerprint"] for row in peers["connected"]] == [first.gossip.fingerprint]
    assert [row["address"] for row in peers["known"]] == [first.address]
    assert peers["known"][0]["source"] == "seed"
    assert peers["bans"] == []


# --- command line ------------------------------------------------------------


@pytest.mark.trio
async def test_cli_status_and_peers(tmp_path: Path, published_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with federation(tmp_path) as group:
        first = await group.start("first", store_file=published_store)
        second = await group.start("second", peers=(first.address,))
        await wait_for(lambda: second.gossip.counters["items_accepted"] == 3, SETTLE_SECONDS, "the second node syncs")
        http = second.url.removeprefix("http://")
        # The commands block on HTTP, so they run in a thread while the
        # daemons keep serving on this loop.
        status_code = await trio.to_thread.run_sync(cli_main, ["status", "--http", http])
        status_text = capsys.readouterr().out
        peers_code = await trio.to_thread.run_sync(cli_main, ["peers", "--http", http, "--json"])
        peers = json.loads(capsys.readouterr().out)

    assert status_code == 0
    assert f"node {second.gossip.fingerprint} (key {second.gossip.node_key.hex()})" in status_text
    assert "peers: 1 connected, 0 in handshake, 1 known, 0 banned" in status_text
    assert "items: 3 received (3 accepted, 0 duplicate, 0 rejected)" in status_text
    assert peers_code == 0
    assert [row["fingerprint"] for row in peers["connected"]] == [first.gossip.fingerprint]


def test_cli_status_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["status", "--http", "127.0.0.1:1"])

    assert code == 2
    assert "error: cannot reach the daemon at http://127.0.0.1:1/status.json" in capsys.readouterr().err
