"""One hostile peer against a real daemon, one test per attack.

Each test starts daemons from the federation harness and attacks with
``harness.hostile.HostilePeer``. It asserts what the node did: the error
it sent, the score or ban of the attacker, what it stored (nothing forged)
and what it dialled and resolved (nothing forbidden). Most also check that
the node still serves HTTP and gossips with an honest daemon afterwards.

Attackers that break the protocol before their handshake are scored by
host, so they connect from their own loopback addresses (127.66.0.0/16),
and a host ban never touches the honest daemons on 127.0.0.1.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import load_case
from harness.federation import (
    FAST,
    PUBLISHED_STATE_SHA256,
    SETTLE_SECONDS,
    START_SECONDS,
    STATE_PATH,
    Federation,
    Node,
    build_published_store,
    federation,
    now_text,
    wait_for,
)
from harness.hostile import HostilePeer, depth_bomb, random_ids, size_bombs
from helpers import SUBJECT, key, signed_event

from node.demo import fixture_path
from node.gossip import GossipSettings
from node.peers import PeerLimits, PeerSource
from node.session import MAX_ANNOUNCED_QUEUE_IDS, MAX_QUEUED_WANTS
from protocol import (
    ItemsReceived,
    PeerAuthenticated,
    PeerClosed,
    PeerError,
    ReconcileReceived,
    SigningKey,
    item_id,
)
from protocol.frames import MAX_FRAME_BYTES
from protocol.keys import encode_signature_b64

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a closed store file holding the published state."""
    return build_published_store(tmp_path_factory.mktemp("published"))


def key_subject(label: str) -> str:
    return f"key:{SigningKey.from_label(label).public_key.hex()}"


def score_of(node: Node, subject: str) -> float:
    rows = {row["peer"]: row["score"] for row in node.gossip.peers_json()["scores"]}
    return rows.get(subject, 0.0)


def ban_reasons(node: Node) -> dict[str, str]:
    return {ban["peer"]: ban["reason"] for ban in node.gossip.peers_json()["bans"]}


async def healthz(node: Node) -> int:
    async with httpx.AsyncClient(base_url=node.url, timeout=START_SECONDS) as client:
        return (await client.get("/healthz")).status_code


async def honest_copy_syncs(group: Federation, node: Node, name: str) -> bool:
    """Start an honest daemon seeded with ``node``; return whether it reaches the published state."""
    copy = await group.start(name, peers=(node.address,))
    await wait_for(lambda: copy.state_sha256() == PUBLISHED_STATE_SHA256, SETTLE_SECONDS, f"{name} syncs from the attacked node")
    return True


async def served_state(node: Node) -> bytes:
    async with httpx.AsyncClient(base_url=node.url, timeout=START_SECONDS) as client:
        return (await client.get(STATE_PATH)).content


# --- forged and equivocating events ------------------------------------------


def forged_hints(count: int) -> list[dict[str, Any]]:
    """Return signed hints made invalid after signing: odd ones carry another key's signature, even ones a changed payload."""
    forged = []
    for number in range(count):
        event = signed_event("forgery-victim", "mirror_hint", {"slot": f"forged-{number}", "url": "https://victim.example.org/pith/"}, now_text())
        if number % 2:
            signature = key("forger").sign(bytes.fromhex(event["event_id"].removeprefix("sha256:")))
            event["signature_b64"] = encode_signature_b64(signature)
        else:
            event["payload"]["url"] = "https://forger.example.org/pith/"
        forged.append(event)
    return forged


@pytest.mark.trio
async def test_forged_events_rejected_and_banned(tmp_path: Path, published_store: Path) -> None:
    forged = forged_hints(21)
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peer = await HostilePeer.open(node.address, "forging-peer")
        await peer.handshake()

        served = await peer.serve(forged)
        final = (await peer.until_closed())[-1]
        await peer.close()
        stored = [node.service.store.get_event(item_id(event).hex()) for event in forged]
        counters = dict(node.gossip.counters)
        bans = ban_reasons(node)
        health = await healthz(node)
        synced = await honest_copy_syncs(group, node, "honest")
        state = await served_state(node)

    assert served.sent == 21
    assert counters["items_received"] == 21
    assert counters["items_rejected"] == 21
    assert counters["items_accepted"] == 0
    assert stored == [None] * 21
    assert isinstance(final, PeerError)
    assert final.code == "busy"
    assert final.reason.startswith("banned for 3600 s: sent 21 invalid items, such as ")
    assert list(bans) == [key_subject("forging-peer")]
    assert health == 200
    assert synced is True
    assert state == fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()


@pytest.mark.trio
async def test_forged_event_codes(tmp_path: Path, published_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pith_mirror")
    forged = forged_hints(2)
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        for number, event in enumerate(forged):
            peer = await HostilePeer.open(node.address, f"forging-peer-{number}")
            await peer.handshake()
            await peer.serve([event])
            await wait_for(lambda: node.gossip.counters["items_rejected"] == number + 1, SETTLE_SECONDS, "the item is rejected")
            await peer.close()
        scores = [score_of(node, key_subject(f"forging-peer-{number}")) for number in range(2)]

    assert f"{item_id(forged[0]).hex()}: event_id_mismatch at event_id" in caplog.text
    assert f"{item_id(forged[1]).hex()}: bad_signature at signature_b64" in caplog.text
    assert scores == [-5.0, -5.0]


@pytest.mark.trio
async def test_equivocation_never_wins(tmp_path: Path, published_store: Path) -> None:
    created = now_text()
    first = signed_event("equivocator", "mirror_hint", {"slot": "primary", "url": "https://a.example.org/pith/", "gossip": "a.example.org:7400"}, created)
    second = signed_event("equivocator", "mirror_hint", {"slot": "primary", "url": "https://b.example.org/pith/", "gossip": "b.example.org:7400"}, created)
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peer = await HostilePeer.open(node.address, "equivocating-peer")
        await peer.handshake()

        served = await peer.serve([first, second])
        await wait_for(lambda: node.gossip.counters["items_accepted"] == 2, SETTLE_SECONDS, "both events are stored")
        # Several dial rounds pass; neither address may be picked up.
        await trio.sleep(FAST.dial_interval * 5)
        await peer.close()
        state = node.service.store.get_state(SUBJECT)
        table = dict(node.gossip.table.entries)

    assert state is not None
    assert served.sent == 2
    assert [entry["event_id"] for entry in state["current"]["mirror_hints"]] == []
    assert len(state["equivocations"]) == 1
    assert state["equivocations"][0]["slot"] == "primary"
    assert sorted(event["event_id"] for event in state["equivocations"][0]["events"]) == sorted([first["event_id"], second["event_id"]])
    assert state["state_sha256"] != PUBLISHED_STATE_SHA256
    assert "a.example.org:7400" not in table
    assert "b.example.org:7400" not in table
    assert node.dialled == []
    assert node.resolved == []


# --- replay ------------------------------------------------------------------


@pytest.mark.trio
async def test_replayed_handshake_fails(tmp_path: Path) -> None:
    async with federation(tmp_path) as group:
        node = await group.start("node")
        victim = await HostilePeer.open(node.address, "replay-victim")
        assert isinstance(await victim.handshake(), PeerAuthenticated)
        recorded = bytes(victim.sent)
        await victim.close()
        await wait_for(lambda: not node.gossip.sessions, SETTLE_SECONDS, "the victim's session ends")

        replayer = await HostilePeer.open(node.address, "replayer", local_host="127.66.0.1")
        events = await replayer.replay(recorded)
        await replayer.close()
        sessions = dict(node.gossip.sessions)
        score = score_of(node, "host:127.66.0.1")

    assert isinstance(events[-1], PeerError)
    assert events[-1].code == "auth_failed"
    assert events[-1].reason == "Ed25519 signature does not verify"
    assert sessions == {}
    assert score == -20.0


@pytest.mark.trio
async def test_replayed_items_unsolicited(tmp_path: Path, published_store: Path) -> None:
    posted = signed_event("replayed-hint", "mirror_hint", {"slot": "replayed", "url": "https://replayed.example.org/pith/"}, now_text())
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peer = await HostilePeer.open(node.address, "replaying-peer")
        await peer.handshake()

        await peer.unsolicited_items([posted])
        await peer.send(peer.conn.send_ping(b"replay!!"))
        await peer.read_until(lambda event: type(event).__name__ == "PongReceived")
        await peer.close()
        stored = node.service.store.get_event(item_id(posted).hex())
        score = score_of(node, key_subject("replaying-peer"))

    assert stored is None
    assert score == -5.0


# --- frames and msgpack bombs ------------------------------------------------


def value_bomb(size: int) -> bytes:
    """Return a payload of ``size`` bytes: an array of empty arrays, one value per byte.

    At 1 MiB the node spends about 1.6 s of CPU checking it (bench/hostile_bench.py), so the tests send 64 KiB.
    """
    count = size - 5
    return b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count


FRAME_ATTACKS: dict[str, tuple[str, str]] = {
    "oversized": ("oversized", "invalid_frame at frame: frame length 1048577 exceeds the limit of 1048576 bytes"),
    "zero_length": ("zero_length", "invalid_frame at frame: frame length 0 is invalid (a frame contains one msgpack value)"),
    "trailing_bytes": ("trailing_bytes", "invalid_frame at frame: frame contains bytes after its msgpack value"),
    "array32": ("array32", "invalid_frame at frame: a msgpack length is larger than the frame could hold (4294967295 exceeds max_array_len(5))"),
    "map32": ("map32", "invalid_frame at frame: a msgpack length is larger than the frame could hold (4294967295 exceeds max_map_len(2))"),
    "bin32": ("bin32", "invalid_frame at frame: msgpack value is truncated: the frame ends inside it"),
    "str32": ("str32", "invalid_frame at frame: msgpack value is truncated: the frame ends inside it"),
    "ids_array32": (
        "ids_array32",
        "invalid_frame at frame: a msgpack length is larger than the frame could hold (4294967295 exceeds max_array_len(20))",
    ),
    "depth": ("depth", "invalid_frame at frame: nesting is deeper than 34 levels"),
    "values": ("values", "invalid_message at frame: a message must be a msgpack map, got array"),
}


async def run_frame_attack(peer: HostilePeer, kind: str) -> list[Any]:
    if kind == "oversized":
        return await peer.oversized_frame()
    if kind == "zero_length":
        return await peer.zero_length_frame()
    if kind == "trailing_bytes":
        return await peer.trailing_bytes_frame()
    if kind == "depth":
        return await peer.send_payload(depth_bomb(MAX_FRAME_BYTES - 1))
    if kind == "values":
        return await peer.send_payload(value_bomb(64 * 1024))
    return await peer.send_payload(size_bombs()[kind])


@pytest.mark.trio
async def test_frame_attacks_closed_then_banned(tmp_path: Path, published_store: Path) -> None:
    replies: dict[str, list[tuple[str, str]]] = {}
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        for number, kind in enumerate(FRAME_ATTACKS):
            replies[kind] = []
            # Three protocol violations (40 points each) take a key below -100.
            for _ in range(3):
                peer = await HostilePeer.open(node.address, f"bomber-{kind}", local_host=f"127.66.1.{number + 1}")
                assert isinstance(await peer.handshake(), PeerAuthenticated)
                final = (await run_frame_attack(peer, kind))[-1]
                await peer.close()
                assert isinstance(final, PeerError), kind
                replies[kind].append((final.code, final.reason))
        bans = ban_reasons(node)
        health = await healthz(node)
        synced = await honest_copy_syncs(group, node, "honest")

    for kind, (_, reason) in FRAME_ATTACKS.items():
        codes = [code for code, _ in replies[kind]]
        assert codes == ["invalid_frame" if reason.startswith("invalid_frame") else "invalid_message"] * 2 + ["busy"], kind
        assert replies[kind][0][1].startswith(reason), kind
        assert replies[kind][2][1].startswith("banned for 3600 s: "), kind
        assert key_subject(f"bomber-{kind}") in bans, kind
    assert len(bans) == len(FRAME_ATTACKS)
    assert health == 200
    assert synced is True


@pytest.mark.trio
async def test_new_keys_get_host_banned(tmp_path: Path) -> None:
    replies = []
    async with federation(tmp_path) as group:
        node = await group.start("node")
        for number in range(3):
            for _ in range(3):
                peer = await HostilePeer.open(node.address, f"rotating-key-{number}", local_host="127.66.2.1")
                await peer.handshake()
                replies.append((await peer.send_payload(depth_bomb(100)))[-1])
                await peer.close()
        late = await HostilePeer.open(node.address, "rotating-key-3", local_host="127.66.2.1")
        late_events = await late.until_closed()
        await late.close()
        bans = ban_reasons(node)
        honest = await HostilePeer.open(node.address, "honest-neighbour")
        honest_final = await honest.handshake()
        await honest.close()

    assert [reply.code for reply in replies] == ["invalid_frame", "invalid_frame", "busy"] * 3
    assert [type(event).__name__ for event in late_events] == ["PeerClosed"]
    fingerprint = SigningKey.from_label("rotating-key-2").fingerprint
    assert bans["host:127.66.2.1"].startswith(f"key {fingerprint} was banned: invalid_frame at {'[0]' * 34}: nesting is deeper than 34 levels")
    assert len(bans) == 4
    assert isinstance(honest_final, PeerAuthenticated)


@pytest.mark.trio
async def test_malformed_messages_closed(tmp_path: Path) -> None:
    messages: dict[str, tuple[dict[str, Any], str]] = {
        "short id": ({"type": "announce", "ids": [b"x" * 31]}, "invalid_message at ids[0]: "),
        "unknown type": ({"type": "gimme"}, "invalid_message at type: "),
        "extra field": ({"type": "ping", "nonce": b"12345678", "extra": 1}, "invalid_message at extra: "),
        "float": ({"type": "ping", "nonce": 1.0}, "invalid_frame at nonce: "),
        "hello again": ({"type": "bye", "now": True}, "invalid_message at now: "),
    }
    replies = {}
    async with federation(tmp_path) as group:
        node = await group.start("node")
        for name, (message, _) in messages.items():
            peer = await HostilePeer.open(node.address, f"malformed-{name}")
            await peer.handshake()
            replies[name] = (await peer.send_message(message))[-1]
            await peer.close()
        health = await healthz(node)

    for name, (_, reason) in messages.items():
        assert isinstance(replies[name], PeerError), name
        assert replies[name].reason.startswith(reason), (name, replies[name].reason)
    assert health == 200


# --- slow handshakes -----------------------------------------------------------


@pytest.mark.trio
async def test_trickled_handshake_times_out(tmp_path: Path) -> None:
    settings = GossipSettings(**{**FAST.__dict__, "handshake_timeout": 0.3})
    async with federation(tmp_path) as group:
        node = await group.start("node", settings=settings)
        peer = await HostilePeer.open(node.address, "trickler", local_host="127.66.0.2")
        written, events = await peer.trickle_hello(0.02)
        await peer.close()
        score = score_of(node, "host:127.66.0.2")
        hello_length = len(HostilePeer(peer.stream, "trickler").conn.send_hello(bytes(32), None))

    assert 0 < written < hello_length
    assert isinstance(events[-1], PeerClosed)
    assert score == -5.0


@pytest.mark.trio
async def test_trickling_host_banned(tmp_path: Path) -> None:
    # One host may take at most 4 handshake slots at once, and 21 timeouts of 5
    # points each take it below -100. Waves of 8 connections run until then.
    settings = GossipSettings(**{**FAST.__dict__, "handshake_timeout": 0.3})
    async with federation(tmp_path) as group:
        node = await group.start("node", settings=settings)
        peers: list[HostilePeer] = []
        max_handshaking_seen = 0

        async def trickle(number: int) -> None:
            peer = await HostilePeer.open(node.address, f"trickler-{number}", local_host="127.66.0.3")
            peers.append(peer)
            await peer.trickle_hello(0.05)

        async def watch() -> None:
            nonlocal max_handshaking_seen
            while True:
                max_handshaking_seen = max(max_handshaking_seen, len(node.gossip.handshaking))
                await trio.sleep(0.01)

        with trio.fail_after(SETTLE_SECONDS):
            async with trio.open_nursery() as watcher:
                watcher.start_soon(watch)
                for wave in range(12):
                    if "host:127.66.0.3" in ban_reasons(node):
                        break
                    async with trio.open_nursery() as nursery:
                        for number in range(8):
                            nursery.start_soon(trickle, wave * 8 + number)
                watcher.cancel_scope.cancel()
        for peer in peers:
            await peer.close()
        bans = ban_reasons(node)
        refused = await HostilePeer.open(node.address, "trickler-late", local_host="127.66.0.3")
        refused_events = await refused.until_closed()
        await refused.close()
        honest = await HostilePeer.open(node.address, "honest-after-trickle")
        honest_final = await honest.handshake()
        await honest.close()

    assert max_handshaking_seen == 4
    assert "host:127.66.0.3" in bans
    assert bans["host:127.66.0.3"] == "handshake timed out (from " + bans["host:127.66.0.3"].split("(from ")[1]
    assert [type(event).__name__ for event in refused_events] == ["PeerClosed"]
    assert isinstance(honest_final, PeerAuthenticated)


@pytest.mark.trio
async def test_slow_host_leaves_slots_free(tmp_path: Path) -> None:
    settings = GossipSettings(**{**FAST.__dict__, "handshake_timeout": 5.0})
    async with federation(tmp_path) as group:
        node = await group.start("node", settings=settings)
        slow = [await HostilePeer.open(node.address, f"slow-{number}", local_host="127.66.0.4") for number in range(6)]
        await wait_for(lambda: len(node.gossip.handshaking) == 4, SETTLE_SECONDS, "four slow handshakes are held")
        # Opened while the slow host takes its 4 slots: another host still gets in.
        honest = await HostilePeer.open(node.address, "honest-beside-slow", local_host="127.66.0.5")
        honest_final = await honest.handshake()
        await honest.close()
        held = len([session for session in node.gossip.handshaking if session.remote_host == "127.66.0.4"])
        closed = [await peer.until_closed(1.0) for peer in slow[4:]]
        for peer in slow:
            await peer.close()

    assert held == 4
    assert isinstance(honest_final, PeerAuthenticated)
    assert [[type(event).__name__ for event in events] for events in closed] == [["PeerClosed"], ["PeerClosed"]]


# --- floods --------------------------------------------------------------------


@pytest.mark.trio
async def test_announce_flood_banned(tmp_path: Path) -> None:
    settings = GossipSettings(**{**FAST.__dict__, "rate_window": 0.2, "max_announced_ids_per_window": 2048})
    async with federation(tmp_path) as group:
        node = await group.start("node", settings=settings)
        peer = await HostilePeer.open(node.address, "announcer")
        await peer.handshake()
        largest_queue = 0
        for window in range(12):
            await peer.flood_announce(random_ids(3072, f"flood {window}"))
            for session in node.gossip.sessions.values():
                largest_queue = max(largest_queue, session._fetch_queued + len(node.gossip._claims))
            if peer.broken or not node.gossip.sessions:
                break
            await trio.sleep(0.21)
        # The peer reads nothing, so the node's error frame may be cut off
        # behind its want frames; the ban is read from the node.
        await peer.close()
        bans = ban_reasons(node)
        health = await healthz(node)

    assert bans[key_subject("announcer")].startswith("sent 3072 announced ids in 0.2 s (limit 2048)")
    assert largest_queue <= MAX_ANNOUNCED_QUEUE_IDS
    assert health == 200


@pytest.mark.trio
async def test_announced_queue_capped(tmp_path: Path) -> None:
    # The peer announces 40,960 unknown ids and never replies to a want, so
    # without a cap every id would wait in the node's fetch queue.
    async with federation(tmp_path) as group:
        node = await group.start("node")
        peer = await HostilePeer.open(node.address, "silent-announcer")
        await peer.handshake()
        await peer.flood_announce(random_ids(40 * 1024, "silent"))
        await peer.send(peer.conn.send_ping(b"announce"))
        await peer.read_until(lambda event: type(event).__name__ == "PongReceived")
        session = node.gossip.sessions[peer.key.public_key]
        await wait_for(lambda: session.claimed == 5 * 1024, SETTLE_SECONDS, "the fetcher holds its requests")
        queued, claimed, dropped = session._fetch_queued, session.claimed, session.announcements_dropped
        await peer.close()

    assert MAX_ANNOUNCED_QUEUE_IDS == 16_384
    assert queued + claimed + dropped == 40_960
    assert queued <= 16_384
    assert dropped >= 40_960 - 16_384 - 5 * 1024


@pytest.mark.trio
async def test_want_flood_closed(tmp_path: Path, published_store: Path) -> None:
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peer = await HostilePeer.open(node.address, "requester")
        await peer.handshake()
        frames = b"".join(peer.conn.send_want(random_ids(1, f"want {number}")) for number in range(MAX_QUEUED_WANTS + 8))
        await peer.send(frames)
        events = await peer.until_closed()
        await peer.close()
        score = score_of(node, key_subject("requester"))
        synced = await honest_copy_syncs(group, node, "honest")

    assert isinstance(events[-1], PeerError)
    assert events[-1].reason == f"queued more than {MAX_QUEUED_WANTS} want requests"
    assert score == -20.0
    assert synced is True


@pytest.mark.trio
async def test_c14_want_10000_ids_rejected(tmp_path: Path, published_store: Path) -> None:
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peer = await HostilePeer.open(node.address, "wide-requester")
        await peer.handshake()
        events = await peer.want_in_one_frame(random_ids(10_000, "c14 want"))
        await peer.close()
        sent = node.gossip.counters["items_sent"]
        score = score_of(node, key_subject("wide-requester"))

    assert isinstance(events[-1], PeerError)
    assert events[-1].code == "invalid_message"
    assert events[-1].reason.startswith("invalid_message at ids: ")
    assert sent == 0
    assert score == -40.0


@pytest.mark.trio
async def test_wanted_ids_over_window_unserved(tmp_path: Path, published_store: Path) -> None:
    settings = GossipSettings(**{**FAST.__dict__, "max_wanted_ids_per_window": 1024, "rate_window": 60.0})
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store, settings=settings)
        stored = list((await node.gossip.snapshot()).ids)
        peer = await HostilePeer.open(node.address, "window-requester")
        await peer.handshake()
        replies = []
        for ids in (random_ids(1024, "window"), stored):
            await peer.send(peer.conn.send_want(ids))
            events = await peer.read_until(lambda event: isinstance(event, ItemsReceived))
            replies.append(events[-1])
        await peer.close()
        sent = node.gossip.counters["items_sent"]
        score = score_of(node, key_subject("window-requester"))

    assert len(stored) == 3
    assert [(len(reply.items), reply.more) for reply in replies] == [(0, False), (0, False)]
    assert sent == 0
    assert score == -20.0


# --- reconciliation --------------------------------------------------------------


@pytest.mark.trio
async def test_reconciliation_lie_scored_down(tmp_path: Path, published_store: Path) -> None:
    fake = random_ids(3000, "lie")
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peer = await HostilePeer.open(node.address, "liar")
        await peer.handshake()
        ours = await peer.lie_in_reconciliation(fake)
        requested = await peer.answer_wants_empty(SETTLE_SECONDS, expected=len(fake))
        # The last empty reply is scored once the node reads it.
        await wait_for(lambda: score_of(node, f"key:{peer.key.public_key.hex()}") == -3.0, SETTLE_SECONDS, "three replies are scored")
        await peer.close()
        counters = dict(node.gossip.counters)
        stats = node.service.store.stats()
        health = await healthz(node)

    assert ours.done
    assert len(ours.need_ids) == 3
    assert sorted(set(requested)) == sorted(fake)
    # 3,000 ids are requested 1,024 per want: three replies without them.
    assert len(requested) == 3000
    assert counters["items_received"] == 0
    assert stats.events == 2
    assert health == 200


@pytest.mark.trio
async def test_random_fingerprints_split(tmp_path: Path, published_store: Path) -> None:
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peer = await HostilePeer.open(node.address, "fingerprint-liar")
        await peer.handshake()
        events = await peer.random_fingerprints(16)
        await peer.close()

    assert isinstance(events[-1], ReconcileReceived)
    assert events[-1].round == 1


@pytest.mark.trio
async def test_reconcile_garbage_banned(tmp_path: Path) -> None:
    replies = []
    async with federation(tmp_path) as group:
        node = await group.start("node")
        for attempt in range(3):
            peer = await HostilePeer.open(node.address, "reconcile-garbage")
            await peer.handshake()
            replies.append((await peer.reconcile_garbage(b"\xff" * 40, round_number=0))[-1])
            await peer.close()
        bans = ban_reasons(node)

    assert [reply.code for reply in replies] == ["invalid_message", "invalid_message", "busy"]
    assert replies[0].reason.startswith("invalid reconcile payload in session 0: ")
    assert key_subject("reconcile-garbage") in bans


@pytest.mark.trio
async def test_session_flood_scored(tmp_path: Path) -> None:
    async with federation(tmp_path) as group:
        node = await group.start("node")
        peer = await HostilePeer.open(node.address, "session-flooder")
        await peer.handshake()
        await peer.flood_sessions(12)
        await peer.send(peer.conn.send_ping(b"sessions"))
        await peer.read_until(lambda event: type(event).__name__ == "PongReceived")
        await peer.close()
        score = score_of(node, key_subject("session-flooder"))

    assert score == -20.0


# --- discovery: peer exchange, hello and hints ---------------------------------


FORBIDDEN_PEERS = [
    "169.254.169.254:9090",
    "127.0.0.1:9090",
    "10.0.0.5:9090",
    "[::1]:9090",
    "[fd00:ec2::254]:9090",
    "[::ffff:127.0.0.1]:9090",
    "2130706433:9090",
    "localhost:9090",
    "0:9090",
    "100.100.100.200:9090",
]


@pytest.mark.trio
async def test_forbidden_peer_exchange_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pith_mirror.gossip")
    async with federation(tmp_path) as group:
        node = await group.start("node", allow_loopback=False)
        peer = await HostilePeer.open(node.address, "advertiser")
        await peer.handshake(listen="169.254.169.254:9090")
        await peer.advertise(FORBIDDEN_PEERS)
        await peer.send(peer.conn.send_ping(b"advertis"))
        await peer.read_until(lambda event: type(event).__name__ == "PongReceived")
        await trio.sleep(FAST.dial_interval * 5)
        await peer.close()
        table = dict(node.gossip.table.entries)

    assert table == {}
    assert node.dialled == []
    assert node.resolved == []
    for address in FORBIDDEN_PEERS:
        assert f"ignored peer address {address!r} from peer_exchange" in caplog.text, address
    assert "ignored peer address '169.254.169.254:9090' from advertised" in caplog.text


C18_HOSTS = [vector["host"] for vector in load_case("C18")["vectors"] if "host" in vector]


def c18_hint(number: int, host: str) -> dict[str, Any]:
    payload = {"slot": f"c18-{number}", "url": f"http://{host}:8080/bundles/", "gossip": f"{host}:8080"}
    return signed_event("c18-signer", "mirror_hint", payload, now_text())


@pytest.mark.trio
async def test_c18_hints_by_gossip_ignored(tmp_path: Path, published_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pith_mirror.gossip")
    hints = [c18_hint(number, host) for number, host in enumerate(C18_HOSTS)]
    # Each node logs 20 ignored addresses per minute, so the vectors go to two nodes.
    halves = [hints[:13], hints[13:]]
    async with federation(tmp_path) as group:
        nodes = [await group.start(f"node{number}", store_file=published_store, allow_loopback=False) for number in range(2)]
        for node, half in zip(nodes, halves):
            peer = await HostilePeer.open(node.address, "c18-relay")
            await peer.handshake()
            await peer.serve(half)
            await wait_for(lambda: node.gossip.counters["items_received"] == len(half), SETTLE_SECONDS, "the hints arrive")
            await peer.close()
        await trio.sleep(FAST.dial_interval * 5)
        tables = [dict(node.gossip.table.entries) for node in nodes]
        counters = [dict(node.gossip.counters) for node in nodes]

    assert [count["items_accepted"] for count in counters] == [13, 12]
    assert tables == [{}, {}]
    for node in nodes:
        assert node.dialled == []
        assert node.resolved == []
    for number, (host, hint) in enumerate(zip(C18_HOSTS, hints)):
        line = f"ignored peer address '{host}:8080' from hint mirror hint {hint['event_id']} on {SUBJECT}: "
        assert line in caplog.text, host


@pytest.mark.trio
async def test_c14_hint_flood_capped(tmp_path: Path, published_store: Path) -> None:
    # One key signs 300 hints (C14 pattern: slot s<i>, port 20000 + i);
    # 40 other keys sign one each against a table of 16 addresses.
    flood = [
        signed_event("c14-flooder", "mirror_hint", {"slot": f"s{number}", "url": f"https://peer-{number}.example.net:{20000 + number}/bundles/",
                                                   "gossip": f"peer-{number}.example.net:{20000 + number}"}, now_text())
        for number in range(300)
    ]
    others = [
        signed_event(f"c14-key-{number}", "mirror_hint", {"slot": "s0", "url": f"https://other-{number}.example.net/bundles/",
                                                         "gossip": f"other-{number}.example.net:7400"}, now_text())
        for number in range(40)
    ]
    limits = PeerLimits(max_known=16)
    settings = GossipSettings(**{**FAST.__dict__, "peer_limits": limits})
    flooder_key = key("c14-flooder").public_key_hex
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store, settings=settings)
        peer = await HostilePeer.open(node.address, "c14-relay")
        await peer.handshake()
        await peer.serve(flood + others)
        await wait_for(lambda: node.gossip.counters["items_accepted"] == 340, SETTLE_SECONDS, "every hint is stored")
        largest_dialling = 0
        for _ in range(20):
            largest_dialling = max(largest_dialling, node.gossip._dialling)
            await trio.sleep(FAST.dial_interval)
        await peer.close()
        entries = list(node.gossip.table.entries.values())
        health = await healthz(node)

    from_flooder = [entry for entry in entries if entry.signer == flooder_key]
    assert len(from_flooder) == 4
    assert len(entries) == 16
    assert all(entry.source is PeerSource.HINT for entry in entries)
    assert largest_dialling <= 16
    assert len({host for host, _ in node.resolved}) <= 16
    assert node.dialled == []
    assert health == 200


@pytest.mark.trio
async def test_c14_same_event_from_20_peers(tmp_path: Path, published_store: Path) -> None:
    event = signed_event("c14-popular", "mirror_hint", {"slot": "popular", "url": "https://popular.example.org/pith/"}, now_text())
    wanted: list[int] = []
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store)
        peers = []
        for number in range(20):
            peer = await HostilePeer.open(node.address, f"c14-relay-{number}")
            assert isinstance(await peer.handshake(), PeerAuthenticated)
            peers.append(peer)

        async def offer(peer: HostilePeer) -> None:
            served = await peer.serve([event], seconds=1.5)
            wanted.append(len(served.requested))

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(offer, peer)
        await wait_for(lambda: node.service.store.get_event(item_id(event).hex()) is not None, SETTLE_SECONDS, "the event is stored")
        for peer in peers:
            await peer.close()
        deliveries = node.gossip.deliveries.get(item_id(event), [])
        counters = dict(node.gossip.counters)

    assert sorted(wanted) == [0] * 19 + [1]
    assert len(deliveries) == 1
    assert counters["items_accepted"] == 1
    assert counters["items_duplicate"] == 0


# --- benchmark smoke ---------------------------------------------------------------


@pytest.mark.slow
def test_hostile_bench_smoke() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.hostile_bench", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "convergence ratio" in result.stdout
