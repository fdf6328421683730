"""A local federation: several daemons in one trio process, on 127.0.0.1 with free ports.

``pith-mirror demo`` and the propagation benchmark use it. Every node dials
only 127.0.0.0/8 and resolves no host names, so nothing leaves this machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from .config import Config, load_config
from .daemon import run_daemon
from .gossip import GossipNode, GossipSettings
from .service import MirrorService

__all__ = ["LocalFederation", "LocalNode", "loopback_only", "wait_until"]

START_SECONDS = 15.0
POLL_SECONDS = 0.02


@dataclass
class LocalNode:
    """One daemon of a local federation, once its HTTP server accepts connections."""

    name: str
    service: MirrorService
    url: str

    @property
    def gossip(self) -> GossipNode:
        assert self.service.gossip is not None
        return self.service.gossip

    @property
    def address(self) -> str:
        assert self.gossip.listen_address is not None
        return self.gossip.listen_address

    def state_sha256(self, subject: str) -> str | None:
        return self.service.store.get_state_sha256(subject)


class LocalFederation:
    """Daemons started in one nursery and stopped together by one shared event."""

    def __init__(self, nursery: trio.Nursery, root: Path, settings: GossipSettings) -> None:
        self.nursery = nursery
        self.root = root
        self.settings = settings
        self.shutdown = trio.Event()
        self.nodes: list[LocalNode] = []

    def config(self, name: str, peers: list[str]) -> Config:
        """Return the configuration of node ``name``: its own data directory, free loopback ports, ``peers`` as seeds."""
        data_dir = self.root / name
        data_dir.mkdir(exist_ok=True)
        return load_config(
            {
                "data_dir": str(data_dir),
                "http_listen": "127.0.0.1:0",
                "gossip_listen": "127.0.0.1:0",
                "peers": peers,
                "allow_loopback_addresses": True,
                "log_level": "WARNING",
            },
            {},
            None,
        )

    async def start(self, name: str, config: Config) -> LocalNode:
        """Start a daemon with ``config`` and return it once it serves HTTP and gossip."""
        ready = trio.Event()
        started: list[LocalNode] = []

        def on_ready(service: MirrorService, urls: list[str]) -> None:
            started.append(LocalNode(name, service, urls[0]))
            ready.set()

        self.nursery.start_soon(
            partial(
                run_daemon, config, shutdown=self.shutdown, on_ready=on_ready,
                gossip_settings=self.settings, prepare_gossip=loopback_only,
            )
        )
        with trio.fail_after(START_SECONDS):
            await ready.wait()
        self.nodes.append(started[0])
        return started[0]


def loopback_only(gossip: GossipNode) -> None:
    """Make ``gossip`` dial only 127.0.0.0/8 and resolve no names, so a local federation sends nothing off this machine."""

    async def connect(host: str, port: int) -> trio.SocketStream:
        if not host.startswith("127."):
            raise OSError(f"a local federation dials only 127.0.0.0/8, not {host}")
        return await trio.open_tcp_stream(host, port)

    async def resolve(host: str, port: int) -> list[str]:
        raise OSError(f"a local federation resolves no host names ({host})")

    gossip.connect = connect
    gossip.resolve = resolve


async def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` until it is true and return True, or return False once ``seconds`` pass."""
    with trio.move_on_after(seconds):
        while not condition():
            await trio.sleep(POLL_SECONDS)
        return True
    return False
