"""A federation of real daemons (run_daemon in this process) on loopback TCP, for any test.

Every node listens on 127.0.0.1 with port 0. Its ``connect`` is wrapped to
record each dial and refuse any address outside 127.0.0.0/8, and its
``resolve`` records the name and fails, so no test sends a packet or a DNS
query anywhere but loopback. Every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from helpers import SUBJECT

from node.config import Config
from node.daemon import run_daemon
from node.demo import FIXTURE_SUBJECT_SUFFIX, fixture_path
from node.dialpolicy import split_host_port
from node.gossip import GossipNode, GossipSettings
from node.localnet import LocalNode
from node.service import MirrorService
from node.store import STORE_FILENAME, Store
from protocol import (
    Connection,
    ConnectionEvent,
    HandshakeFailed,
    MergeProfile,
    PeerAuthenticated,
    PeerClosed,
    PeerError,
    Role,
    SigningKey,
    default_trust,
    format_timestamp,
    read_document,
)

PUBLISHED_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"
STATE_PATH = f"/pith/{FIXTURE_SUBJECT_SUFFIX}/state.json"
# Bounds on waits, in seconds. Nothing here is timed; a wait that runs out
# means the federation did not get there.
START_SECONDS = 15.0
SETTLE_SECONDS = 20.0
CONVERGE_SECONDS = 150.0

FAST = GossipSettings(
    anti_entropy_interval=1.0,
    dial_interval=0.05,
    handshake_timeout=5.0,
    ping_interval=5.0,
    idle_timeout=30.0,
    flush_seconds=0.5,
    snapshot_max_age=0.2,
    ingest_linger=0.05,
    ingest_max_linger=2.0,
    # Peers may send 5 peers messages per 10 s window before they are
    # scored for flooding, so the resend interval stays above 2 s.
    peer_exchange_interval=2.5,
)


async def wait_for(condition: Callable[[], bool], seconds: float, description: str, every: float = 0.02) -> None:
    """Poll ``condition`` every ``every`` seconds; fail the test with ``description`` after ``seconds``."""
    try:
        with trio.fail_after(seconds):
            while not condition():
                await trio.sleep(every)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {seconds} s waiting until {description}") from None


def now_text() -> str:
    return format_timestamp(int(time.time()) - 60)


@dataclass
class Node(LocalNode):
    """One running daemon, its data directory, and what its gossip node dialled and resolved."""

    data_dir: Path = Path()
    dialled: list[tuple[str, int]] = field(default_factory=list)
    resolved: list[tuple[str, int]] = field(default_factory=list)

    def state_sha256(self, subject: str = SUBJECT) -> str | None:
        return super().state_sha256(subject)

    def all_states(self) -> dict[str, str]:
        return self.service.store.state_hashes()


class Federation:
    """Starts daemons in one nursery and stops them all at the end of the block."""

    def __init__(self, nursery: trio.Nursery, root: Path) -> None:
        self.nursery = nursery
        self.root = root
        self.shutdown = trio.Event()
        self.nodes: list[Node] = []

    async def start(
        self,
        name: str,
        *,
        peers: tuple[str, ...] = (),
        store_file: Path | None = None,
        settings: GossipSettings = FAST,
        trust_file: Path | None = None,
        allow_loopback: bool = True,
        listen: str = "127.0.0.1:0",
        advertise: str | None = None,
    ) -> Node:
        data_dir = self.root / name
        data_dir.mkdir()
        if store_file is not None:
            shutil.copyfile(store_file, data_dir / STORE_FILENAME)
        config = Config(
            data_dir=data_dir,
            http_listen="127.0.0.1:0",
            gossip_listen=listen,
            peers=peers,
            trust_file=trust_file,
            allow_loopback_addresses=allow_loopback,
            gossip_advertise=advertise,
        )
        dialled: list[tuple[str, int]] = []
        resolved: list[tuple[str, int]] = []

        async def connect(host: str, port: int) -> trio.SocketStream:
            dialled.append((host, port))
            if not host.startswith("127."):
                raise OSError(f"the test federation dials only 127.0.0.0/8, not {host}")
            return await trio.open_tcp_stream(host, port)

        async def resolve(host: str, port: int) -> list[str]:
            resolved.append((host, port))
            raise OSError(f"the test federation resolves no names ({host})")

        def prepare(gossip: GossipNode) -> None:
            gossip.connect = connect
            gossip.resolve = resolve

        ready = trio.Event()
        started: dict[str, Any] = {}

        def on_ready(service: MirrorService, bound: list[str]) -> None:
            started["service"], started["url"] = service, bound[0]
            ready.set()

        self.nursery.start_soon(
            partial(run_daemon, config, shutdown=self.shutdown, on_ready=on_ready, gossip_settings=settings, prepare_gossip=prepare)
        )
        with trio.fail_after(START_SECONDS):
            await ready.wait()
        node = Node(name, started["service"], started["url"], data_dir, dialled, resolved)
        self.nodes.append(node)
        return node


@asynccontextmanager
async def federation(root: Path) -> AsyncIterator[Federation]:
    async with trio.open_nursery() as nursery:
        group = Federation(nursery, root)
        try:
            yield group
        finally:
            group.shutdown.set()
            nursery.cancel_scope.deadline = trio.current_time() + START_SECONDS


def build_published_store(data_dir: Path) -> Path:
    """Write a store holding the published state into ``data_dir`` and return the closed store file."""
    state = read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes())
    with Store(data_dir) as store:
        assert store.add_state(state, "test", time.time()).state_sha256 == PUBLISHED_STATE_SHA256
    return data_dir / STORE_FILENAME


async def post_event(node: Node, event: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url, timeout=START_SECONDS) as client:
        return await client.post("/events", content=json.dumps(event).encode(), headers={"content-type": "application/json"})


async def get_json(node: Node, path: str) -> Any:
    async with httpx.AsyncClient(base_url=node.url, timeout=START_SECONDS) as client:
        response = await client.get(path)
    assert response.status_code == 200
    return response.json()


class RawPeer:
    """A test peer that speaks the wire protocol through a Connection and can send anything."""

    def __init__(self, stream: trio.SocketStream, label: str) -> None:
        self.stream = stream
        self.key = SigningKey.from_label(label)
        self.conn = Connection(Role.INITIATOR, self.key, MergeProfile.from_trust(default_trust()))
        # Events read after the one an events_until call stopped at; the
        # next call returns them first.
        self._left: list[ConnectionEvent] = []

    @classmethod
    async def open(cls, address: str, label: str) -> RawPeer:
        host, port = split_host_port(address)
        return cls(await trio.open_tcp_stream(host, port), label)

    async def events(self) -> list[ConnectionEvent]:
        """Read one chunk and return its events; a closed stream gives PeerClosed."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        return self.conn.receive_data(data)

    async def events_until(self, done: Callable[[ConnectionEvent], bool], seconds: float = SETTLE_SECONDS) -> list[ConnectionEvent]:
        seen: list[ConnectionEvent] = []
        with trio.fail_after(seconds):
            while not seen or not done(seen[-1]):
                if self._left:
                    batch, self._left = self._left, []
                else:
                    batch = await self.events()
                    if not batch and self.conn.closed:
                        break
                for position, event in enumerate(batch):
                    seen.append(event)
                    if type(event).__name__ == "HelloReceived" and not self.conn.closed:
                        await self.stream.send_all(self.conn.send_auth())
                    if done(event):
                        self._left = batch[position + 1 :]
                        return seen
        return seen

    async def handshake(self) -> list[ConnectionEvent]:
        await self.stream.send_all(self.conn.send_hello(os.urandom(32), None))
        return await self.events_until(lambda event: isinstance(event, (PeerAuthenticated, PeerError, HandshakeFailed, PeerClosed)))

    async def close(self) -> None:
        await self.stream.aclose()


def ended(event: ConnectionEvent) -> bool:
    return isinstance(event, (PeerError, PeerClosed))
