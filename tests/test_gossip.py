"""Tests of gossip items over a real store, the push fanout, requests and the node key.

The store is a real SQLite file holding the published state. Sessions over
sockets are tested in test_federation.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import SUBJECT, signed_event
from node.config import Config
from node.demo import fixture_path
from node.gossip import MAX_DELIVERY_ATTEMPTS, NODE_KEY_FILENAME, GossipNode, GossipSettings, load_node_key
from node.gossip_store import GossipStore, PackedIds, record_entry, record_entry_bytes
from node.service import MirrorService
from node.store import Store
from protocol import Reconciler, SigningKey, SortedIds, canonical_bytes, default_trust, read_document

PUBLISHED_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"
NOW = 1_800_000_000


def digest(number: int) -> bytes:
    return hashlib.sha256(b"gossip-test-id:%d" % number).digest()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    state = read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes())
    with Store(tmp_path, default_trust()) as opened:
        outcome = opened.add_state(state, "test", NOW)
        assert outcome.state_sha256 == PUBLISHED_STATE_SHA256
        yield opened
        assert opened.integrity_check() == []


@pytest.fixture
def items(store: Store) -> GossipStore:
    return GossipStore(store, default_trust())


def stored_inputs(store: Store) -> dict[bytes, bytes]:
    with store.snapshot() as conn:
        return {bytes.fromhex(sha): bytes(raw) for sha, raw in conn.execute("SELECT input_sha256, raw_json FROM events")}


def stored_entry(store: Store) -> dict[str, Any]:
    bundle = store.get_bundle(SUBJECT)
    assert bundle is not None
    return record_entry(bundle["canonical_record"], bundle["source_aliases"])


# --- PackedIds ---------------------------------------------------------------


def test_packed_ids_sorted_and_distinct() -> None:
    ids = [digest(3), digest(1), digest(2), digest(1)]

    packed = PackedIds.from_ids(ids)

    assert len(packed) == 3
    assert list(packed) == sorted({digest(1), digest(2), digest(3)})


def test_packed_ids_bisect_matches_sorted_ids() -> None:
    ids = [digest(number) for number in range(200)]
    packed, reference = PackedIds.from_ids(ids), SortedIds(ids)
    bounds = [bytes(32), b"\x80" + bytes(31), b"\xff" * 33, *ids[:20]]

    for bound in bounds:
        assert packed.bisect_left(bound) == reference.bisect_left(bound)
    assert packed.ids_between(10, 20) == list(reference.ids_between(10, 20))
    assert packed.id_at(199) == reference.id_at(199)


def test_packed_ids_membership() -> None:
    packed = PackedIds.from_ids([digest(1), digest(2)])

    assert digest(1) in packed
    assert digest(3) not in packed
    assert b"short" not in packed


def test_packed_ids_costs_32_bytes_each() -> None:
    packed = PackedIds.from_ids(digest(number) for number in range(1000))

    assert len(packed._data) == 32_000


def test_packed_ids_reject_bad_length() -> None:
    with pytest.raises(ValueError):
        PackedIds(b"x" * 33)
    with pytest.raises(ValueError):
        PackedIds.from_ids([b"x" * 31])


def test_packed_ids_reconcile_like_sorted_ids() -> None:
    ours = [digest(number) for number in range(0, 3000)]
    theirs = [digest(number) for number in range(40, 3040)]
    key = bytes(range(32))

    packed_session = Reconciler(PackedIds.from_ids(ours), key)
    sorted_peer = Reconciler(SortedIds(theirs), key)
    message: bytes | None = packed_session.initiate()
    sender, receiver = packed_session, sorted_peer
    for _ in range(50):
        assert message is not None
        message = receiver.receive(message)
        if message is None or (receiver.done and sender.done):
            break
        sender, receiver = receiver, sender

    assert packed_session.done
    assert packed_session.have_ids == frozenset(digest(number) for number in range(0, 40))
    assert packed_session.need_ids == frozenset(digest(number) for number in range(3000, 3040))


# --- record entries ----------------------------------------------------------


def test_record_entry_bytes_are_canonical(store: Store) -> None:
    entry = stored_entry(store)
    record_json = canonical_bytes(entry["canonical_record"])

    assert record_entry_bytes(record_json, entry["source_aliases"]) == canonical_bytes(entry)


def test_snapshot_holds_events_and_record(store: Store, items: GossipStore) -> None:
    snapshot = items.build_snapshot()
    record_id = hashlib.sha256(canonical_bytes(stored_entry(store))).digest()

    assert snapshot.event_count == 2
    assert len(snapshot.ids) == 3
    assert set(snapshot.ids) == set(stored_inputs(store)) | {record_id}
    assert snapshot.records.rowid_of(record_id) == 1


def test_snapshot_skips_excluded_events(store: Store, items: GossipStore) -> None:
    excluded = sorted(stored_inputs(store))[0]
    with store._write_lock, store._write_transaction() as conn:
        conn.execute("UPDATE events SET excluded = 1 WHERE input_sha256 = ?", (excluded.hex(),))

    snapshot = items.build_snapshot()

    assert excluded not in snapshot.ids
    assert len(snapshot.ids) == 2


def test_missing_returns_unknown_ids(store: Store, items: GossipStore) -> None:
    items.build_snapshot()
    known = sorted(stored_inputs(store))
    record_id = hashlib.sha256(canonical_bytes(stored_entry(store))).digest()

    missing = items.missing([known[0], digest(1), record_id, digest(2)])

    assert missing == [digest(1), digest(2)]


def test_missing_finds_events_without_snapshot(store: Store, items: GossipStore) -> None:
    # Events are looked up in the store itself, so a stale snapshot never
    # makes a stored event look missing.
    known = sorted(stored_inputs(store))

    assert items.missing(known) == []


def test_load_items_returns_stored_forms(store: Store, items: GossipStore) -> None:
    items.build_snapshot()
    inputs = stored_inputs(store)
    record = stored_entry(store)
    record_id = hashlib.sha256(canonical_bytes(record)).digest()
    requested = [*sorted(inputs), digest(9), record_id]

    loaded = items.load_items(requested)

    assert [item_id for item_id, _, _, _ in loaded] == [*sorted(inputs), record_id]
    for item_id, item, size, _ in loaded[:2]:
        assert canonical_bytes(item) == inputs[item_id]
        assert size == len(inputs[item_id])
    assert loaded[2][1] == record
    assert hashlib.sha256(canonical_bytes(loaded[2][1])).digest() == record_id


def test_changed_aliases_change_record_id(store: Store, items: GossipStore) -> None:
    snapshot = items.build_snapshot()
    old_id = next(iter(set(snapshot.ids) - set(stored_inputs(store))))
    with store._write_lock, store._write_transaction() as conn:
        conn.execute("UPDATE aliases SET created_at = '2020-01-01T00:00:00Z' WHERE pith_number = ?", (SUBJECT,))

    new_id = items.record_entry_ids([SUBJECT])[SUBJECT]

    assert new_id != old_id
    assert items.load_items([old_id]) == []
    assert [item_id for item_id, _, _, _ in items.load_items([new_id])] == [new_id]
    assert items.missing([new_id]) == []


# --- ingest plans ------------------------------------------------------------


def test_plan_bundles_events_with_stored_record(store: Store, items: GossipStore) -> None:
    hint = signed_event("gossip-plan", "mirror_hint", {"slot": "primary", "url": "https://plan.example.org/pith/"})

    plan = items.plan_ingest([hint])

    assert plan.loose == []
    assert plan.bundle_events == [[0]]
    assert plan.bundle_record == [None]
    assert plan.bundles[0]["pith_number"] == SUBJECT
    assert plan.bundles[0]["events"] == [hint]


def test_plan_bundles_events_with_record_item(store: Store, items: GossipStore) -> None:
    record = stored_entry(store)
    hint = signed_event("gossip-plan", "mirror_hint", {"slot": "primary", "url": "https://plan.example.org/pith/"})

    plan = items.plan_ingest([hint, record])

    assert plan.bundle_events == [[0]]
    assert plan.bundle_record == [1]
    assert len(plan.bundles) == 1


def test_plan_leaves_unknown_subjects_loose(items: GossipStore) -> None:
    other = "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3"
    event = signed_event("gossip-plan", "mirror_hint", {"slot": "primary", "url": "https://plan.example.org/pith/"}, subject=other)
    malformed = {"event_type": "mirror_hint", "subject_pith_number": 17}

    plan = items.plan_ingest([event, malformed])

    assert plan.loose == [0, 1]
    assert plan.bundles == []


def test_plan_reports_invalid_record(store: Store, items: GossipStore) -> None:
    record = stored_entry(store)
    record["canonical_record"] = {**record["canonical_record"], "schema_version": 7}

    plan = items.plan_ingest([record])

    assert [index for index, _ in plan.invalid_records] == [0]
    assert plan.bundles == []


# --- hints -------------------------------------------------------------------


def test_hint_addresses_from_merged_state(store: Store, items: GossipStore) -> None:
    payload = {"slot": "primary", "url": "https://hint.example.org/pith/", "gossip": "hint.example.org:7400"}
    hint = signed_event("gossip-hint", "mirror_hint", payload)
    store.add_events([hint], "test", NOW)

    found = items.hint_addresses(items.subjects_with_hints())

    assert [(entry.address, entry.subject, entry.event_id) for entry in found] == [("hint.example.org:7400", SUBJECT, hint["event_id"])]
    assert found[0].signer == hint["signer"]["public_key_hex"]


def test_hint_without_gossip_ignored(store: Store, items: GossipStore) -> None:
    hint = signed_event("gossip-hint", "mirror_hint", {"slot": "primary", "url": "https://hint.example.org/pith/"})
    store.add_events([hint], "test", NOW)

    assert items.hint_addresses([SUBJECT]) == []


# --- push ----------------------------------------------------------------


def dialled_mesh(nodes: int, outbound: int, rng: random.Random) -> list[list[int]]:
    """Return neighbour lists of a mesh built by nodes joining one by one, links both ways.

    Each node dials ``outbound`` random nodes that joined before it, as a
    node does that learns addresses from its seed's peer exchange. So the
    last nodes have no inbound links, and their neighbours have many.
    """
    links: list[set[int]] = [set() for _ in range(nodes)]
    for node in range(1, nodes):
        for other in rng.sample(range(node), min(outbound, node)):
            links[node].add(other)
            links[other].add(node)
    return [sorted(peers) for peers in links]


def push_rounds(links: list[list[int]], fanout: int | None, rng: random.Random) -> tuple[int, int]:
    """Spread one item from node 0 by push alone, as GossipNode.announce does; return (rounds, nodes reached).

    Each node that stores the item announces it to its neighbours other
    than the one it came from (``fanout`` random ones when set), and a node
    requests it from its first announcer only.
    """
    reached = {0}
    frontier: dict[int, int | None] = {0: None}
    rounds = 0
    while frontier and len(reached) < len(links):
        rounds += 1
        following: dict[int, int | None] = {}
        for node, source in frontier.items():
            candidates = [peer for peer in links[node] if peer != source]
            if fanout is not None and len(candidates) > fanout:
                candidates = rng.sample(candidates, fanout)
            for peer in candidates:
                if peer not in reached and peer not in following:
                    following[peer] = node
        reached |= set(following)
        frontier = following
    return rounds, len(reached)


@pytest.mark.parametrize("nodes", [8, 64, 256])
def test_push_reaches_all_within_bound(nodes: int) -> None:
    # 200 seeded meshes per size, each node dialling target_outbound_peers.
    rng = random.Random(nodes)
    outbound = GossipSettings().target_outbound_peers
    bound = math.ceil(math.log2(nodes)) + 2
    outcomes = [push_rounds(dialled_mesh(nodes, outbound, rng), None, rng) for _ in range(200)]

    assert all(reached == nodes for _, reached in outcomes)
    assert max(rounds for rounds, _ in outcomes) <= bound


def test_small_fanout_misses_nodes() -> None:
    # The reason every peer gets the announcement: with ceil(log2 N) + 2
    # random peers, a node that only dialled is skipped by all its
    # neighbours in some of the 200 seeded runs.
    rng = random.Random(64)
    outbound = GossipSettings().target_outbound_peers
    outcomes = [push_rounds(dialled_mesh(64, outbound, rng), 8, rng) for _ in range(200)]

    assert sum(1 for _, reached in outcomes if reached < 64) > 0


# --- requests (claims) -------------------------------------------------------


class FakeSession:
    """The attributes of a PeerSession that claims and deliveries touch."""

    def __init__(self) -> None:
        self.claimed = 0
        self.fingerprint = "fake-session"


@pytest.fixture
def node(store: Store, tmp_path: Path) -> GossipNode:
    service = MirrorService(store, default_trust(), "http://127.0.0.1:1")
    return GossipNode(service, Config(data_dir=tmp_path), SigningKey.from_label("gossip-test-node"))


@pytest.mark.trio
async def test_claim_skips_stored_ids(node: GossipNode, store: Store) -> None:
    session = FakeSession()
    known = sorted(stored_inputs(store))

    claimed = await node.claim(session, [known[0], digest(1)])  # type: ignore[arg-type]

    assert claimed == [digest(1)]
    assert session.claimed == 1


@pytest.mark.trio
async def test_claim_once_across_peers(node: GossipNode) -> None:
    first, second = FakeSession(), FakeSession()

    assert await node.claim(first, [digest(1), digest(2)]) == [digest(1), digest(2)]  # type: ignore[arg-type]
    assert await node.claim(second, [digest(2), digest(3)]) == [digest(3)]  # type: ignore[arg-type]


@pytest.mark.trio
async def test_stored_id_recognised_after_eviction(node: GossipNode, store: Store) -> None:
    session = FakeSession()
    known = sorted(stored_inputs(store))[0]
    assert await node.claim(session, [known]) == []  # type: ignore[arg-type]

    node._seen.clear()

    assert await node.claim(session, [known]) == []  # type: ignore[arg-type]
    assert session.claimed == 0


@pytest.mark.trio
async def test_deliveries_capped(node: GossipNode) -> None:
    # Each delivery is rejected, so the id stays missing; forgetting it as
    # seen lets the node consider it again.
    session = FakeSession()
    requests = 0
    for _ in range(MAX_DELIVERY_ATTEMPTS + 2):
        if await node.claim(session, [digest(5)]):  # type: ignore[arg-type]
            requests += 1
            node.note_delivered(session, [digest(5)])  # type: ignore[arg-type]
        node.release_claims(session, [digest(5)])  # type: ignore[arg-type]
        node._seen.clear()

    assert requests == MAX_DELIVERY_ATTEMPTS
    assert session.claimed == 0


@pytest.mark.trio
async def test_undelivered_requests_not_counted(node: GossipNode) -> None:
    session = FakeSession()
    requests = 0
    for _ in range(MAX_DELIVERY_ATTEMPTS + 2):
        if await node.claim(session, [digest(5)]):  # type: ignore[arg-type]
            requests += 1
        node.release_claims(session, [digest(5)])  # type: ignore[arg-type]

    assert requests == MAX_DELIVERY_ATTEMPTS + 2
    assert session.claimed == 0


# --- node key ----------------------------------------------------------------


def test_node_key_created_private(tmp_path: Path) -> None:
    key = load_node_key(tmp_path)
    path = tmp_path / NODE_KEY_FILENAME

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["public_key_hex"] == key.public_key_hex


def test_node_key_reused(tmp_path: Path) -> None:
    first = load_node_key(tmp_path)

    second = load_node_key(tmp_path)

    assert second.public_key == first.public_key
