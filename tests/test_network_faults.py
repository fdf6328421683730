"""Network faults between two real daemons, injected by a loopback fault proxy.

Node ``b`` has the proxy as its only seed, and the proxy forwards to node
``a``. Both nodes reject loopback addresses from hellos and peer exchange,
so the proxy is the only path between them. Each test connects the pair
and injects one fault. Both nodes must detect it, close the connection,
log it, and keep serving HTTP and accepting events meanwhile. Once the
fault clears, ``b`` must reconnect and store the event posted to ``a``
during the fault. The timeouts are shortened (``FAULT_SETTINGS``) so that every fault
is detected within about a second.

Run with ``-s`` to print the measured seconds to detect and to reconverge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from harness.faultproxy import FaultProxy, abort_stream, open_proxy
from harness.federation import (
    FAST,
    SETTLE_SECONDS,
    START_SECONDS,
    Node,
    RawPeer,
    build_published_store,
    federation,
    post_event,
    wait_for,
)
from helpers import signed_event

from node.gossip import MAX_DELIVERY_ATTEMPTS, GossipSettings
from node.peers import PeerLimits
from protocol import EventsRequested, item_id

CITED_RECORD = "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3"
IDLE_TIMEOUT = 1.0
HANDSHAKE_TIMEOUT = 1.0
WANT_TIMEOUT = 1.0
FAULT_SETTINGS = GossipSettings(
    **{
        **FAST.__dict__,
        "handshake_timeout": HANDSHAKE_TIMEOUT,
        "ping_interval": 0.2,
        "idle_timeout": IDLE_TIMEOUT,
        "want_timeout": WANT_TIMEOUT,
        "flush_seconds": 0.5,
        "peer_limits": PeerLimits(backoff_base=0.2, backoff_max=1.0),
    }
)


@pytest.fixture(scope="module")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_published_store(tmp_path_factory.mktemp("published"))


@dataclass
class Pair:
    a: Node
    b: Node
    proxy: FaultProxy


@asynccontextmanager
async def proxied_pair(root: Path, store_file: Path) -> AsyncIterator[Pair]:
    """Start ``a``, a proxy to it, and ``b`` seeded with the proxy; return once they are connected."""
    async with federation(root) as group, trio.open_nursery() as proxies:
        a = await group.start("a", store_file=store_file, settings=FAULT_SETTINGS, allow_loopback=False)
        proxy = await open_proxy(proxies, a.address, "b to a")
        b = await group.start("b", peers=(proxy.address,), store_file=store_file, settings=FAULT_SETTINGS, allow_loopback=False)
        await wait_for(lambda: connected(a, b), SETTLE_SECONDS, "a and b are connected")
        try:
            yield Pair(a, b, proxy)
        finally:
            proxies.cancel_scope.cancel()


def connected(a: Node, b: Node) -> bool:
    return b.gossip.node_key in a.gossip.sessions and a.gossip.node_key in b.gossip.sessions


def disconnected(a: Node, b: Node) -> bool:
    return not a.gossip.sessions and not b.gossip.sessions


def citation(label: str) -> dict[str, Any]:
    return signed_event(label, "citation_signature", {"cites_pith_number": CITED_RECORD, "context": f"posted during {label}"})


def stores(node: Node, event: dict[str, Any]) -> bool:
    return node.service.store.get_event(item_id(event).hex()) is not None


def disconnect_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("disconnected from peer")]


async def health(node: Node) -> int:
    async with httpx.AsyncClient(base_url=node.url, timeout=START_SECONDS) as client:
        return (await client.get("/healthz")).status_code


@dataclass
class Outcome:
    detect_seconds: float
    reconverge_seconds: float
    post_status: int
    post_outcome: str
    health_a: int
    health_b: int
    b_stores_event: bool
    same_states: bool


async def run_fault(
    pair: Pair, label: str, inject: Callable[[FaultProxy], None], hold_seconds: float, hold_until: Callable[[], bool] | None = None
) -> Outcome:
    """Inject a fault, wait until both nodes dropped the connection, post, clear the fault and wait for sync.

    The fault holds for ``hold_seconds`` after the post, and then until ``hold_until`` returns True.
    """
    started = trio.current_time()
    inject(pair.proxy)
    await wait_for(lambda: disconnected(pair.a, pair.b), SETTLE_SECONDS, f"both nodes drop the connection ({label})")
    detect_seconds = trio.current_time() - started

    event = citation(label)
    response = await post_event(pair.a, event)
    health_a, health_b = await health(pair.a), await health(pair.b)
    # The fault holds for a while, so that redials meet it too.
    await trio.sleep(hold_seconds)
    if hold_until is not None:
        await wait_for(hold_until, SETTLE_SECONDS, f"the fault has done its work ({label})")

    cleared = trio.current_time()
    pair.proxy.pass_through()
    await wait_for(lambda: stores(pair.b, event), SETTLE_SECONDS, f"b stores the event posted during the fault ({label})")
    await wait_for(lambda: pair.a.all_states() == pair.b.all_states(), SETTLE_SECONDS, "a and b hold the same states")
    reconverge_seconds = trio.current_time() - cleared
    print(f"\n{label}: detected in {detect_seconds:.3f} s, reconverged {reconverge_seconds:.3f} s after the fault cleared")
    return Outcome(
        detect_seconds,
        reconverge_seconds,
        response.status_code,
        response.json()["outcomes"][0]["status"],
        health_a,
        health_b,
        stores(pair.b, event),
        pair.a.all_states() == pair.b.all_states(),
    )


@pytest.fixture
def gossip_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="pith_mirror")
    return caplog


@pytest.mark.trio
async def test_partition_refuses_then_heals(tmp_path: Path, published_store: Path, gossip_log: pytest.LogCaptureFixture) -> None:
    async with proxied_pair(tmp_path, published_store) as pair:
        outcome = await run_fault(pair, "partition", FaultProxy.partition, hold_seconds=1.5)
        dial_failures = [record.getMessage() for record in gossip_log.records if record.getMessage().startswith(f"connect to {pair.proxy.address} failed")]

    assert outcome.post_status == 200
    assert outcome.post_outcome == "accepted"
    assert outcome.health_a == 200
    assert outcome.health_b == 200
    assert outcome.b_stores_event
    assert outcome.same_states
    assert len(dial_failures) >= 1
    assert any("connection lost" in reason for reason in disconnect_reasons(gossip_log))
    assert pair.proxy.counters.aborted == 1


@pytest.mark.trio
async def test_reset_reconnects_at_once(tmp_path: Path, published_store: Path, gossip_log: pytest.LogCaptureFixture) -> None:
    async with proxied_pair(tmp_path, published_store) as pair:
        outcome = await run_fault(pair, "reset", FaultProxy.reset, hold_seconds=0.0)

    reasons = disconnect_reasons(gossip_log)
    assert outcome.post_outcome == "accepted"
    assert outcome.health_b == 200
    assert outcome.b_stores_event
    assert outcome.same_states
    assert any("reset by peer" in reason for reason in reasons)
    assert pair.proxy.counters.aborted == 1
    # b dialled once more, through the proxy.
    assert pair.proxy.counters.accepted == 2


@pytest.mark.slow
@pytest.mark.trio
async def test_half_open_times_out(tmp_path: Path, published_store: Path, gossip_log: pytest.LogCaptureFixture) -> None:
    def handshake_timeouts() -> list[str]:
        return [record.getMessage() for record in gossip_log.records if "handshake timed out" in record.getMessage()]

    async with proxied_pair(tmp_path, published_store) as pair:
        # The drop stays until b's redial into the black hole timed out.
        outcome = await run_fault(pair, "drop", FaultProxy.drop, hold_seconds=0.0, hold_until=lambda: len(handshake_timeouts()) >= 1)

    reasons = disconnect_reasons(gossip_log)
    assert outcome.post_outcome == "accepted"
    assert outcome.health_b == 200
    assert outcome.b_stores_event
    assert outcome.same_states
    # The idle timeout, not a reset, ended both connections.
    assert sum(f"no data for {IDLE_TIMEOUT:g} s" in reason for reason in reasons) == 2
    assert len(handshake_timeouts()) >= 1
    assert pair.proxy.counters.bytes_dropped > 0


@pytest.mark.trio
async def test_excess_delay_times_out(tmp_path: Path, published_store: Path, gossip_log: pytest.LogCaptureFixture) -> None:
    async with proxied_pair(tmp_path, published_store) as pair:
        outcome = await run_fault(pair, "delay 1.5 s", lambda proxy: proxy.delay(1.5), hold_seconds=0.5)

    reasons = disconnect_reasons(gossip_log)
    assert outcome.post_outcome == "accepted"
    assert outcome.b_stores_event
    assert outcome.same_states
    assert any(f"no data for {IDLE_TIMEOUT:g} s" in reason for reason in reasons)


@pytest.mark.trio
async def test_small_delay_keeps_connection(tmp_path: Path, published_store: Path) -> None:
    async with proxied_pair(tmp_path, published_store) as pair:
        session = pair.b.gossip.sessions[pair.a.gossip.node_key]
        pair.proxy.delay(0.2)
        event = citation("delay 0.2 s")
        started = trio.current_time()
        response = await post_event(pair.a, event)
        await wait_for(lambda: stores(pair.b, event), SETTLE_SECONDS, "b stores the event through the delay")
        delivery_seconds = trio.current_time() - started
        print(f"\ndelay 0.2 s per chunk: delivered by push in {delivery_seconds:.3f} s on the same connection")
        same_session = pair.b.gossip.sessions.get(pair.a.gossip.node_key) is session

    assert response.status_code == 200
    assert same_session
    # announce, want and items each cross the proxy once.
    assert delivery_seconds >= 3 * 0.2
    assert pair.proxy.counters.accepted == 1


@pytest.mark.slow
@pytest.mark.trio
async def test_trickle_times_out_want(tmp_path: Path, published_store: Path, gossip_log: pytest.LogCaptureFixture) -> None:
    async with proxied_pair(tmp_path, published_store) as pair:
        # 1 byte per 20 ms: pings keep the connection alive, but the items
        # reply (about 1.5 KB) takes 30 s, and a hello 3 s.
        pair.proxy.trickle(1, 0.02)
        event = citation("trickle")
        started = time.monotonic()
        response = await post_event(pair.a, event)
        await wait_for(lambda: disconnected(pair.a, pair.b), SETTLE_SECONDS, "the trickled connection is dropped")
        detect_seconds = time.monotonic() - started
        await trio.sleep(1.5 * HANDSHAKE_TIMEOUT)
        cleared = time.monotonic()
        pair.proxy.pass_through()
        await wait_for(lambda: stores(pair.b, event), SETTLE_SECONDS, "b stores the event once the trickle stops")
        print(f"\ntrickle 1 byte per 20 ms: dropped {detect_seconds:.3f} s after the post, reconverged {time.monotonic() - cleared:.3f} s after it cleared")
        messages = [record.getMessage() for record in gossip_log.records]

    # Which timeout ends the trickled session first depends on what is in
    # flight: the want reply, or the trickled pings.
    timeouts = (f"did not answer a want request within {WANT_TIMEOUT:g} s", f"no data for {IDLE_TIMEOUT:g} s")
    assert response.status_code == 200
    assert any(timeout in message for message in messages for timeout in timeouts)
    assert any("handshake timed out" in message for message in messages)


@pytest.mark.trio
async def test_item_fetched_after_three_resets(tmp_path: Path, published_store: Path) -> None:
    event = citation("three resets")
    announced = item_id(event)
    requests = 0
    async with federation(tmp_path) as group:
        node = await group.start("node", store_file=published_store, settings=FAULT_SETTINGS)
        for attempt in range(MAX_DELIVERY_ATTEMPTS):
            peer = await RawPeer.open(node.address, f"reset-peer-{attempt}")
            await peer.handshake()
            await peer.stream.send_all(peer.conn.send_announce([announced]))
            seen = await peer.events_until(lambda received: isinstance(received, EventsRequested))
            requests += isinstance(seen[-1], EventsRequested)
            # The connection breaks while the request is outstanding.
            abort_stream(peer.stream)

        holder = await group.start("holder", peers=(node.address,), store_file=published_store, settings=FAULT_SETTINGS)
        response = await post_event(holder, event)
        # The push and at least two anti-entropy sessions of 1 s.
        with trio.move_on_after(3.0):
            while not stores(node, event):
                await trio.sleep(0.02)
        fetched = stores(node, event)

    assert requests == MAX_DELIVERY_ATTEMPTS
    assert response.status_code == 200
    assert fetched
