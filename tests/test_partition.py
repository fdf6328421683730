"""A five-node federation split 2|3 by fault proxies, written to on both sides, then healed.

Every pair of nodes is linked through its own fault proxy: the node with
the lower number has the proxy as a seed, and the proxy forwards to the
other node. Every node rejects loopback addresses from hellos and peer
exchange, so the proxies are the only paths. The test partitions the six
links between {n0, n1} and {n2, n3, n4}, posts distinct events to nodes on
both sides and counts those acknowledged as accepted, heals the links and
measures the time until all five nodes hold identical state hashes for
every subject and store every acknowledged event.

A redialled connection starts a reconciliation at once, so the sides sync
as soon as a node redials across the healed links. The redial waits for the
backoff that the failed dials during the partition left in the peer table,
and that wait is measured at the heal. The bound is one anti-entropy
interval (with its jitter factor of 1.25) plus that wait.

Run with ``-s`` to print the measured figures.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from harness.faultproxy import FaultProxy, open_proxy
from harness.federation import (
    FAST,
    SETTLE_SECONDS,
    Node,
    build_published_store,
    federation,
    post_event,
    wait_for,
)
from helpers import signed_event

from node.gossip import GossipSettings
from node.peers import PeerLimits, PeerState
from protocol import item_id

CITED_RECORD = "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3"
NODES = 5
SIDE_A = (0, 1)
SIDE_B = (2, 3, 4)
EVENTS_SIDE_A = 10
EVENTS_SIDE_B = 15
ANTI_ENTROPY_INTERVAL = 2.0
# The anti-entropy loop waits 0.75 to 1.25 times the interval.
JITTER = 1.25
PARTITION_SECONDS = 3.0
SETTINGS = GossipSettings(
    **{
        **FAST.__dict__,
        "anti_entropy_interval": ANTI_ENTROPY_INTERVAL,
        "handshake_timeout": 1.0,
        "ping_interval": 0.5,
        "idle_timeout": 2.0,
        "peer_limits": PeerLimits(backoff_base=0.2, backoff_max=1.0),
    }
)


@dataclass
class Mesh:
    nodes: list[Node]
    # (lower, higher) node numbers to the proxy between them.
    links: dict[tuple[int, int], FaultProxy]

    def cross_links(self) -> list[FaultProxy]:
        return [self.links[min(i, j), max(i, j)] for i in SIDE_A for j in SIDE_B]


@asynccontextmanager
async def proxied_mesh(root: Path, store_file: Path, settings: GossipSettings) -> AsyncIterator[Mesh]:
    """Start the nodes from the highest number down, each seeded with proxies to the nodes above it."""
    async with federation(root) as group, trio.open_nursery() as proxies:
        started: dict[int, Node] = {}
        links: dict[tuple[int, int], FaultProxy] = {}
        for number in reversed(range(NODES)):
            seeds = []
            for higher in range(number + 1, NODES):
                proxy = await open_proxy(proxies, started[higher].address, f"n{number} to n{higher}")
                links[number, higher] = proxy
                seeds.append(proxy.address)
            started[number] = await group.start(f"n{number}", peers=tuple(seeds), store_file=store_file, settings=settings, allow_loopback=False)
        nodes = [started[number] for number in range(NODES)]
        await wait_for(lambda: all(len(node.gossip.sessions) == NODES - 1 for node in nodes), SETTLE_SECONDS, "every node has 4 peers")
        try:
            yield Mesh(nodes, links)
        finally:
            proxies.cancel_scope.cancel()


def citation(side: str, index: int) -> dict[str, Any]:
    label = f"partition-{side}-{index}"
    return signed_event(label, "citation_signature", {"cites_pith_number": CITED_RECORD, "context": f"event {index} of side {side}"})


async def post_all(nodes: list[Node], side: str, count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Post ``count`` events round robin to ``nodes``; return the acknowledged events and any other outcome."""
    acknowledged, other = [], []
    for index in range(count):
        event = citation(side, index)
        response = await post_event(nodes[index % len(nodes)], event)
        status = response.json()["outcomes"][0]["status"] if response.status_code == 200 else str(response.status_code)
        if status == "accepted":
            acknowledged.append(event)
        else:
            other.append(status)
    return acknowledged, other


def pending_backoff(mesh: Mesh, now: float) -> float:
    """Return the longest wait before a node may redial a partitioned link."""
    addresses = {proxy.address for proxy in mesh.cross_links()}
    waits = [
        max(0.0, entry.next_attempt - now)
        for node in mesh.nodes
        for entry in node.gossip.table.entries.values()
        if entry.address in addresses and entry.state is PeerState.BACKOFF
    ]
    return max(waits, default=0.0)


def converged(nodes: list[Node], events: list[dict[str, Any]]) -> bool:
    if len({tuple(sorted(node.all_states().items())) for node in nodes}) != 1:
        return False
    ids = [item_id(event).hex() for event in events]
    return all(node.service.store.get_event(event_id) is not None for node in nodes for event_id in ids)


@pytest.fixture(scope="module")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_published_store(tmp_path_factory.mktemp("published"))


@pytest.mark.slow
@pytest.mark.trio
async def test_partitioned_sides_converge_after_heal(tmp_path: Path, published_store: Path) -> None:
    async with proxied_mesh(tmp_path, published_store, SETTINGS) as mesh:
        side_a = [mesh.nodes[number] for number in SIDE_A]
        side_b = [mesh.nodes[number] for number in SIDE_B]
        for proxy in mesh.cross_links():
            proxy.partition()
        split_started = trio.current_time()
        await wait_for(lambda: all(len(node.gossip.sessions) == len(side_a) - 1 for node in side_a), SETTLE_SECONDS, "side A lost side B")
        await wait_for(lambda: all(len(node.gossip.sessions) == len(side_b) - 1 for node in side_b), SETTLE_SECONDS, "side B lost side A")

        acknowledged_a, other_a = await post_all(side_a, "a", EVENTS_SIDE_A)
        acknowledged_b, other_b = await post_all(side_b, "b", EVENTS_SIDE_B)
        acknowledged = acknowledged_a + acknowledged_b
        await wait_for(lambda: converged(side_a, acknowledged_a), SETTLE_SECONDS, "side A agrees within itself")
        await wait_for(lambda: converged(side_b, acknowledged_b), SETTLE_SECONDS, "side B agrees within itself")
        hashes_during = {node.state_sha256() for node in mesh.nodes}
        await trio.sleep(max(0.0, PARTITION_SECONDS - (trio.current_time() - split_started)))

        healed = trio.current_time()
        backoff = pending_backoff(mesh, healed)
        for proxy in mesh.cross_links():
            proxy.pass_through()
        await wait_for(lambda: converged(mesh.nodes, acknowledged), SETTLE_SECONDS, "all five nodes hold every event and the same states")
        reconverge_seconds = trio.current_time() - healed
        bound = JITTER * ANTI_ENTROPY_INTERVAL + backoff
        states = [node.all_states() for node in mesh.nodes]
        missing = sum(node.service.store.get_event(item_id(event).hex()) is None for node in mesh.nodes for event in acknowledged)
        print(
            f"\npartition 2|3 for {healed - split_started:.2f} s: {len(acknowledged_a)} + {len(acknowledged_b)} events acknowledged; "
            f"redial backoff left at the heal {backoff:.3f} s; identical on all {NODES} nodes {reconverge_seconds:.3f} s after the heal "
            f"(bound {bound:.3f} s); {missing} acknowledged events missing"
        )

    assert other_a == []
    assert other_b == []
    assert len(acknowledged) == EVENTS_SIDE_A + EVENTS_SIDE_B
    assert len(hashes_during) == 2
    assert all(state == states[0] for state in states)
    assert missing == 0
    assert reconverge_seconds <= bound


@pytest.mark.trio
async def test_proxy_mesh_has_ten_links(tmp_path: Path, published_store: Path) -> None:
    async with proxied_mesh(tmp_path, published_store, SETTINGS) as mesh:
        accepted = {pair: proxy.counters.accepted for pair, proxy in mesh.links.items()}
        dialled = [sorted(node.dialled) for node in mesh.nodes]

    assert sorted(accepted) == list(itertools.combinations(range(NODES), 2))
    assert all(count >= 1 for count in accepted.values())
    # Each node dials only its proxies to the higher-numbered nodes.
    assert [len({port for _, port in ports}) for ports in dialled] == [4, 3, 2, 1, 0]
    assert math.comb(NODES, 2) == len(mesh.links)


# The default peer limits back off to 300 s, ten anti-entropy intervals of
# 30 s. These settings keep that ratio at a scale a test can wait for.
DEFAULT_RATIO_SETTINGS = GossipSettings(
    **{**SETTINGS.__dict__, "anti_entropy_interval": 0.5, "peer_limits": PeerLimits(backoff_base=0.2, backoff_max=5.0)}
)


@pytest.mark.slow
@pytest.mark.trio
async def test_redial_within_interval_after_long_partition(tmp_path: Path, published_store: Path) -> None:
    interval = DEFAULT_RATIO_SETTINGS.anti_entropy_interval
    async with federation(tmp_path) as group, trio.open_nursery() as proxies:
        a = await group.start("a", store_file=published_store, settings=DEFAULT_RATIO_SETTINGS, allow_loopback=False)
        proxy = await open_proxy(proxies, a.address, "b to a")
        b = await group.start("b", peers=(proxy.address,), store_file=published_store, settings=DEFAULT_RATIO_SETTINGS, allow_loopback=False)
        await wait_for(lambda: a.gossip.node_key in b.gossip.sessions, SETTLE_SECONDS, "b is connected to a")
        entry = b.gossip.table.entries[proxy.address]

        proxy.partition()
        # Six failed redials: uncapped, the sixth backoff would be 0.2 s *
        # 2**5 = 6.4 s (jittered down to 3.2 s), over 5 intervals.
        await wait_for(lambda: entry.failures >= 6, SETTLE_SECONDS, "b fails to redial a six times")
        longest_wait = entry.next_attempt - trio.current_time()
        proxy.pass_through()
        with trio.move_on_after(JITTER * interval):
            while a.gossip.node_key not in b.gossip.sessions:
                await trio.sleep(0.01)
        redialled = a.gossip.node_key in b.gossip.sessions
        proxies.cancel_scope.cancel()

    assert longest_wait <= interval
    assert redialled
