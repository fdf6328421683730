"""Push propagation: rounds, seconds and deliveries for one new event to reach every node.

Run from the repository root::

    python -m bench.propagation_bench
    python -m bench.propagation_bench --nodes 8 32 --trials 5
    python -m bench.propagation_bench --smoke

For each size N the benchmark starts N daemons in this process on 127.0.0.1
(``node.localnet``), every one with a copy of a store that contains the
published state of the fixture subject. Node i > 0 is seeded with one random
earlier node, and peer exchange grows the mesh until every node has at least
``min(N - 1, push fanout)`` connected peers. Then each trial posts one new
signed citation event over HTTP to a random node and waits until every node
has stored it.

Anti-entropy runs only every ``ANTI_ENTROPY_SECONDS`` here, so every copy
arrives by push: an announce of the id, a want request, and the items reply.
A round is one such hop. A node's round is its first sender's round plus
one (the origin is round 0); the trial's rounds are the largest of these.
Deliveries count the items replies carrying the event that a node received.
The target is ceil(log2 N) + 2 rounds and at most 3 deliveries per node.

Nodes announce to every connected peer, the default. The baseline, run on
the same mesh in the same run, announces to ceil(log2 N) + 2 random peers
(``push_fanout``), a common rule for push gossip. It sends fewer
announcements but misses some nodes, which then wait for anti-entropy; its
rows count the nodes that push reached within ``BASELINE_SECONDS``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import trio

from node.demo import FIXTURE_SUBJECT_SUFFIX, fixture_path
from node.gossip import GossipSettings
from node.localnet import LocalFederation, LocalNode, wait_until
from node.store import STORE_FILENAME, Store
from protocol import SigningKey, build_event, format_timestamp, item_id, read_document

__all__ = ["DEFAULT_SIZES", "SMOKE_SIZES", "Trial", "main", "run", "run_smoke"]

DEFAULT_SIZES = (8, 32, 64)
SMOKE_SIZES = (8,)
DEFAULT_TRIALS = 10
EVERY_PEER = "every peer"
SUBJECT = f"pith:2017:{FIXTURE_SUBJECT_SUFFIX}"
ANTI_ENTROPY_SECONDS = 600.0
# Bounds on waits, in seconds; nothing below is a pass or fail on time.
MESH_SECONDS = 120.0
SPREAD_SECONDS = 60.0
BASELINE_SECONDS = 5.0
QUIET_SECONDS = 0.5
POLL_SECONDS = 0.002

PUSH_SETTINGS = GossipSettings(
    anti_entropy_interval=ANTI_ENTROPY_SECONDS,
    dial_interval=0.05,
    handshake_timeout=10.0,
    ping_interval=30.0,
    idle_timeout=120.0,
    flush_seconds=0.5,
    snapshot_max_age=0.2,
    ingest_linger=0.01,
    ingest_max_linger=0.5,
    # Peers send at most max_peers_messages_per_window (5) peers messages
    # per 10 s window without being scored down for flooding.
    peer_exchange_interval=2.5,
)


@dataclass(frozen=True)
class Trial:
    """One new event spreading through one mesh."""

    nodes: int
    mode: str
    origin: int
    missed: int
    rounds: int
    seconds: float
    max_deliveries: int
    mean_deliveries: float
    announcements: int
    reached: int
    mean_degree: float

    @property
    def target_rounds(self) -> int:
        return math.ceil(math.log2(self.nodes)) + 2


def _published_store(directory: Path) -> Path:
    state = read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes())
    with Store(directory) as store:
        store.add_state(state, "bench", time.time())
    return directory / STORE_FILENAME


def _new_event(key: SigningKey, number: int) -> dict:
    return build_event(
        key,
        event_type="citation_signature",
        subject=SUBJECT,
        payload={"cites_pith_number": SUBJECT, "context": f"propagation trial {number}"},
        created_at=format_timestamp(int(time.time()) - 60),
        key_id="bench-key",
        signer_id="bench.localhost",
        signer_type="mirror",
    )


def _degrees(nodes: list[LocalNode]) -> list[int]:
    return [sum(1 for session in node.gossip.sessions.values() if session.ready) for node in nodes]


async def _build_mesh(group: LocalFederation, size: int, store_file: Path, rng: random.Random) -> list[LocalNode]:
    nodes: list[LocalNode] = []
    for number in range(size):
        name = f"n{number:02d}"
        (group.root / name).mkdir()
        shutil.copyfile(store_file, group.root / name / STORE_FILENAME)
        seeds = [rng.choice(nodes).address] if nodes else []
        nodes.append(await group.start(name, group.config(name, seeds)))
    expected = min(size - 1, PUSH_SETTINGS.target_outbound_peers)
    if not await wait_until(lambda: min(_degrees(nodes)) >= expected, MESH_SECONDS):
        raise RuntimeError(f"the {size}-node mesh did not reach {expected} peers per node within {MESH_SECONDS} s: {_degrees(nodes)}")
    return nodes


async def _spread(nodes: list[LocalNode], origin: int, event: dict, mode: str, client: httpx.AsyncClient) -> Trial:
    item = item_id(event)
    announced_before = sum(node.gossip.counters["ids_announced"] for node in nodes)
    response = await client.post(f"{nodes[origin].url}/events", content=json.dumps(event).encode(), headers={"content-type": "application/json"})
    if response.status_code != 200:
        raise RuntimeError(f"posting the trial event to node {origin} failed with HTTP {response.status_code}: {response.text}")
    started = time.perf_counter()
    others = [node for number, node in enumerate(nodes) if number != origin]
    reached_all = await wait_until(lambda: all(item in node.gossip.deliveries for node in others), BASELINE_SECONDS if mode != EVERY_PEER else SPREAD_SECONDS)
    seconds = time.perf_counter() - started
    if not reached_all and mode == EVERY_PEER:
        missing = [f"{node.name} ({len(node.gossip.sessions)} peers)" for node in others if item not in node.gossip.deliveries]
        raise RuntimeError(f"the {len(nodes)}-node trial did not reach {missing} within {SPREAD_SECONDS} s")
    # Later announcements still cause wants; let them finish before counting.
    await trio.sleep(QUIET_SECONDS)

    by_fingerprint = {node.gossip.fingerprint: number for number, node in enumerate(nodes)}
    senders = {number: node.gossip.deliveries.get(item, []) for number, node in enumerate(nodes)}
    rounds = {origin: 0}

    def round_of(number: int, depth: int = 0) -> int:
        if number not in rounds:
            if depth > len(nodes):
                raise RuntimeError("the first senders form a cycle")
            rounds[number] = round_of(by_fingerprint[senders[number][0]], depth + 1) + 1
        return rounds[number]

    for number in range(len(nodes)):
        if senders[number] or number == origin:
            round_of(number)
    counts = [len(senders[number]) for number in range(len(nodes)) if number != origin and senders[number]]
    return Trial(
        nodes=len(nodes),
        mode=mode,
        origin=origin,
        missed=sum(1 for number in range(len(nodes)) if number != origin and not senders[number]),
        rounds=max(rounds.values()),
        seconds=seconds,
        max_deliveries=max(counts),
        mean_deliveries=statistics.fmean(counts),
        announcements=sum(node.gossip.counters["ids_announced"] for node in nodes) - announced_before,
        reached=len(counts),
        mean_degree=statistics.fmean(_degrees(nodes)),
    )


async def _run_size(size: int, trials: int, seed: int, root: Path, store_file: Path) -> list[Trial]:
    rng = random.Random(seed * 1000 + size)
    key = SigningKey.from_label(f"propagation-bench-{seed}")
    results: list[Trial] = []
    async with trio.open_nursery() as nursery:
        group = LocalFederation(nursery, root / f"mesh-{size}", PUSH_SETTINGS)
        group.root.mkdir()
        try:
            nodes = await _build_mesh(group, size, store_file, rng)
            async with httpx.AsyncClient(timeout=30.0) as client:
                for number in range(trials):
                    baseline = math.ceil(math.log2(size)) + 2
                    for mode, fanout in ((EVERY_PEER, None), (f"{baseline} random peers", baseline)):
                        for node in nodes:
                            node.gossip.settings = replace(node.gossip.settings, push_fanout=fanout)
                        event = _new_event(key, number * 2 + (fanout is not None))
                        results.append(await _spread(nodes, rng.randrange(size), event, mode, client))
        finally:
            group.shutdown.set()
            nursery.cancel_scope.deadline = trio.current_time() + 30.0
    return results


def run(sizes: Sequence[int], trials: int, seed: int) -> list[Trial]:
    """Run ``trials`` events of each mode through a mesh of each size and return every trial."""
    results: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="pith-propagation-") as directory:
        root = Path(directory)
        store_file = _published_store(root / "published-store")
        for size in sizes:
            results.extend(trio.run(_run_size, size, trials, seed, root, store_file))
    return results


def run_smoke() -> list[Trial]:
    """Run one trial of each mode on an 8-node mesh."""
    return run(SMOKE_SIZES, 1, 1)


def _summary(rows: list[Trial]) -> str:
    lines = [
        "| nodes | announced to | trials | mean peers | nodes missed by push | rounds (max, mean) | target rounds | seconds (median, max) | deliveries per node (max, mean) | announcements per trial |",
        "|---:|---|---:|---:|---:|---|---:|---|---|---:|",
    ]
    groups: dict[tuple[int, str], list[Trial]] = {}
    for row in rows:
        groups.setdefault((row.nodes, row.mode), []).append(row)
    for (size, mode), group in groups.items():
        lines.append(
            f"| {size} | {mode} | {len(group)} | {statistics.fmean(row.mean_degree for row in group):.1f} | {sum(row.missed for row in group)} "
            f"| {max(row.rounds for row in group)}, {statistics.fmean(row.rounds for row in group):.2f} | {group[0].target_rounds} "
            f"| {statistics.median(row.seconds for row in group):.3f}, {max(row.seconds for row in group):.3f} "
            f"| {max(row.max_deliveries for row in group)}, {statistics.fmean(row.mean_deliveries for row in group):.2f} "
            f"| {statistics.fmean(row.announcements for row in group):.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print a Markdown table, and exit 1 when a trial of the default push misses the target."""
    parser = argparse.ArgumentParser(prog="python -m bench.propagation_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="federation sizes")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="events per size and mode")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mesh seeds and the trial origins")
    parser.add_argument("--smoke", action="store_true", help=f"run sizes {SMOKE_SIZES} with one trial only")
    args = parser.parse_args(argv)
    if args.smoke:
        sizes, trials = SMOKE_SIZES, 1
    else:
        sizes, trials = tuple(args.nodes), args.trials
    if min(sizes) < 2 or trials < 1:
        parser.error("every size must be at least 2 and --trials at least 1")
    started = time.perf_counter()
    rows = run(sizes, trials, args.seed)
    print(f"# propagation benchmark, {datetime.date.today()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, {sys.platform}")
    print(f"# sizes {list(sizes)}, {trials} trials per size and mode, seed {args.seed}, {time.perf_counter() - started:.0f} s in all")
    print(_summary(rows))
    missed = [row for row in rows if row.mode == EVERY_PEER and (row.rounds > row.target_rounds or row.max_deliveries > 3)]
    for row in missed:
        print(f"missed target: {row}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
