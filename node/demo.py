"""``pith-mirror demo``: the whole pipeline on the real published records shipped with the package.

Steps 1-4 run offline. They verify every published record line and the
published state, then merge the state's own events and compare the hash with
the published one. Next they sign a mirror hint with a throwaway key and
merge it in, and show that a forged copy of that hint is recorded as invalid.

Steps 5-10 run a local federation of real daemons in this process, every one
on 127.0.0.1 with free ports and a temporary store: node A imports the
published data and serves the state byte for byte; B is seeded with A and
the rest with B only. A stores a signed mirror hint naming its gossip
address, C connects to A directly, every node converges on the published
state, and a citation signature posted to the last node over HTTP reaches
every node.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import trio
from rich.console import Console

from protocol import (
    SigningKey,
    build_event,
    default_trust,
    format_timestamp,
    merge,
    read_document,
    state_input,
)

from .gossip import GossipSettings
from .importer import import_sources
from .localnet import LocalFederation, LocalNode, wait_until
from .offline import read_items, verify_item

__all__ = ["FIXTURE_STATE_SHA256", "MAX_NODES", "MIN_NODES", "fixture_path", "run_demo"]

FIXTURE_SUBJECT_SUFFIX = "JXMVLSVZ7B4A7F3JLM5PIYYILY"
FIXTURE_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"

MIN_NODES = 3
MAX_NODES = 8
NODE_NAMES = "ABCDEFGH"
# Bounds on waits, in seconds. The federation normally settles in under one.
SETTLE_SECONDS = 20.0
CONVERGE_SECONDS = 20.0
HTTP_SECONDS = 10.0

# Short intervals so that the demo converges within seconds. Every session
# starts with a peers message, so the periodic resend keeps its default.
DEMO_GOSSIP = GossipSettings(
    anti_entropy_interval=1.0,
    dial_interval=0.05,
    handshake_timeout=5.0,
    flush_seconds=0.5,
    snapshot_max_age=0.2,
    ingest_linger=0.05,
    ingest_max_linger=1.0,
)


def fixture_path(name: str) -> Path:
    """Return the path of a published Pith file shipped in ``node/data/pith``."""
    return Path(str(resources.files("node").joinpath("data", "pith", name)))


def run_demo(console: Console | None = None, keep_running: bool = False, nodes: int = MIN_NODES) -> int:
    """Run the demonstration; return 0 if every step gave the expected result.

    ``nodes`` daemons (3 to 8) form the local federation. With
    ``keep_running`` they keep serving until SIGINT or SIGTERM.

    Raises:
        ValueError: ``nodes`` is outside 3 to 8.
    """
    if not MIN_NODES <= nodes <= MAX_NODES:
        raise ValueError(f"the demo federation has {MIN_NODES} to {MAX_NODES} nodes, not {nodes}")
    console = console or Console(soft_wrap=True)
    trust = default_trust()
    ok = True

    records = fixture_path("records.jsonl")
    state_file = fixture_path(f"state-{FIXTURE_SUBJECT_SUFFIX}.json")
    results = [verify_item(item, trust) for path in (records, state_file) for item in read_items(str(path))]
    passed = sum(1 for good, _ in results if good)
    console.print(f"[bold]1.[/] verified {len(results)} published items: {passed} passed, {len(results) - passed} failed")
    ok &= passed == len(results)

    published = read_document(state_file.read_bytes())
    merge_input = state_input(published)
    state = merge(merge_input.record, merge_input.aliases, merge_input.events, trust)
    same = state["state_sha256"] == FIXTURE_STATE_SHA256
    console.print(f"[bold]2.[/] merged the published events of {state['pith_number']}")
    console.print(f"   state_sha256 {state['state_sha256']} {'[green]matches[/]' if same else '[red]DIFFERS from[/]'} the registry")
    ok &= same

    key = SigningKey.generate()
    hint = build_event(
        key,
        event_type="mirror_hint",
        subject=state["pith_number"],
        payload={"slot": "primary", "url": "https://mirror.example.org/pith/"},
        created_at="2026-06-01T00:00:00Z",
        key_id="demo-key",
        signer_id="mirror.example.org",
        signer_type="mirror",
    )
    with_hint = merge(merge_input.record, merge_input.aliases, [*merge_input.events, hint], trust)
    console.print(f"[bold]3.[/] signed a mirror hint with a new key {key.fingerprint} and merged it")
    console.print(f"   state_sha256 {with_hint['state_sha256']}, mirror_hints: {len(with_hint['current']['mirror_hints'])}")
    ok &= len(with_hint["current"]["mirror_hints"]) == 1

    forged = copy.deepcopy(hint)
    forged["payload"]["url"] = "https://attacker.example.net/pith/"
    with_forgery = merge(merge_input.record, merge_input.aliases, [*merge_input.events, hint, forged], trust)
    reasons = [entry["reason"] for entry in with_forgery["invalid_events"]]
    console.print(f"[bold]4.[/] a copy of the hint with another URL and the old signature is invalid: {reasons}")
    ok &= reasons == ["event_id_mismatch"] and with_forgery["current"]["mirror_hints"] == with_hint["current"]["mirror_hints"]


    ok &= trio.run(partial(_run_federation, console, state_file.read_bytes(), nodes, keep_running))
    console.print("[green]demo passed[/]" if ok else "[red]demo FAILED[/]")
    return 0 if ok else 1


def _demo_event(key: SigningKey, event_type: str, subject: str, payload: dict[str, Any]) -> dict[str, Any]:
    # Nodes reject events created more than 10 minutes ahead of their clock,
    # so the demo dates its events a minute in the past to stay clear of that.
    return build_event(
        key,
        event_type=event_type,
        subject=subject,
        payload=payload,
        created_at=format_timestamp(int(time.time()) - 60),
        key_id="demo-key",
        signer_id="demo.localhost",
        signer_type="mirror",
    )


def _hint_subject(records: Path) -> str:
    """Return the first subject in ``records`` whose line carries its canonical record, so a node stores the record."""
    for line in records.read_bytes().splitlines():
        item = json.loads(line) if line.strip() else None
        if isinstance(item, dict) and "canonical_record" in item:
            return str(item["pith_number"])
    raise ValueError(f"{records} has no line with a canonical record")


async def _run_federation(console: Console, published: bytes, count: int, keep_running: bool) -> bool:
    """Serve the published data from a local federation of ``count`` daemons and check what they converge to."""
    with tempfile.TemporaryDirectory(prefix="pith-mirror-demo-") as data_dir:
        async with trio.open_nursery() as nursery:
            group = LocalFederation(nursery, Path(data_dir), DEMO_GOSSIP)
            try:
                ok = await _federate(console, group, published, count)
                if keep_running and ok:
                    console.print(f"   the federation keeps running until Ctrl-C (data in {data_dir}, deleted on exit):")
                    for node in group.nodes:
                        console.print(f"   node {node.name}: HTTP {node.url}, gossip {node.address}")
                    await group.shutdown.wait()
            finally:
                group.shutdown.set()
    return ok


async def _federate(console: Console, group: LocalFederation, published: bytes, count: int) -> bool:
    subject = f"pith:2017:{FIXTURE_SUBJECT_SUFFIX}"
    records = fixture_path("records.jsonl")
    config_a = group.config("A", [])
    sources = [str(fixture_path(f"state-{FIXTURE_SUBJECT_SUFFIX}.json")), str(records)]
    summary = await import_sources(config_a, sources, [], show_progress=False)
    console.print(
        f"[bold]5.[/] imported the published files into a new store: {summary.accepted} accepted, "
        f"{summary.rejected} rejected, {summary.skipped} record lines without a record skipped"
    )

    node_a = await group.start("A", config_a)
    ok = await _fetch_published(console, node_a, published)

    started = time.perf_counter()
    node_b = await group.start("B", group.config("B", [node_a.address]))
    linked = await wait_until(lambda: node_a.gossip.node_key in node_b.gossip.sessions, SETTLE_SECONDS)

    key = SigningKey.generate()
    hint_subject = _hint_subject(records)
    hint = _demo_event(key, "mirror_hint", hint_subject, {"slot": "gossip", "url": node_a.url, "gossip": node_a.address})
    outcomes = await node_a.service.submit(hint, "demo")
    stored = [outcome.status for outcome in outcomes]
    for number in range(2, count):
        await group.start(NODE_NAMES[number], group.config(NODE_NAMES[number], [node_b.address]))
    console.print(
        f"[bold]7.[/] started {count} nodes on 127.0.0.1: B seeded with A (connected: {'yes' if linked else 'NO'}), "
        f"{', '.join(node.name for node in group.nodes[2:])} seeded with B only"
    )
    console.print(f"   A signed a mirror hint on {hint_subject} naming its gossip address {node_a.address} with key {key.fingerprint}: {stored}")
    ok &= linked and stored == ["accepted"]

    ok &= await _show_convergence(console, group, subject, FIXTURE_STATE_SHA256, started, "8.")
    ok &= await _show_discovery(console, group, hint)
    ok &= await _check_served(console, group, published)
    ok &= await _push_event(console, group, key, subject, hint_subject)
    return ok


async def _fetch_published(console: Console, node: LocalNode, published: bytes) -> bool:
    url = f"{node.url}/pith/{FIXTURE_SUBJECT_SUFFIX}/state.json"
    async with httpx.AsyncClient(timeout=HTTP_SECONDS) as client:
        started = time.perf_counter()
        response = await client.get(url)
        elapsed_ms = (time.perf_counter() - started) * 1000
    same = response.status_code == 200 and response.content == published
    console.print(f"[bold]6.[/] started a mirror daemon and fetched {url}")
    console.print(
        f"   HTTP {response.status_code}, ETag {response.headers.get('etag')}, {len(response.content)} bytes in "
        f"{elapsed_ms:.1f} ms: {'[green]the published file byte for byte[/]' if same else '[red]NOT the published file[/]'}"
    )
    return same


async def _show_discovery(console: Console, group: LocalFederation, hint: dict[str, Any]) -> bool:
    """Print whether node C stores A's signed hint and has a direct session with A."""
    node_a, node_c = group.nodes[0], group.nodes[2]
    event_id, hint_subject = hint["event_id"], hint["subject_pith_number"]

    def has_hint() -> bool:
        return node_c.service.store.get_event_by_id(hint_subject, event_id) is not None

    def found() -> bool:
        entry = node_c.gossip.table.entries.get(node_a.address)
        from_hint = entry is not None and str(entry.source) == "hint"
        return has_hint() and from_hint and node_a.gossip.node_key in node_c.gossip.sessions

    reached = await wait_until(found, SETTLE_SECONDS)
    entry = node_c.gossip.table.entries.get(node_a.address)
    source = str(entry.source) if entry is not None else "none"
    console.print(
        f"   C stores the hint: {'yes' if has_hint() else 'NO'}; "
        f"C connected to A ({node_a.gossip.fingerprint}) directly: {'yes' if node_a.gossip.node_key in node_c.gossip.sessions else 'NO'}; "
        f"C's peer table names {node_a.address} from {source}"
    )
    # B sends C its peers as soon as their session starts, so C usually
    # learns A's address by peer exchange first; the signed hint then
    # becomes the entry's source.
    return reached and entry is not None


async def _show_convergence(console: Console, group: LocalFederation, subject: str, expected: str | None, started: float, step: str) -> bool:
    """Wait until every node has the state_sha256 ``expected`` (or the last node's, when None), then print a table.

    Return whether all nodes reached one state_sha256 within ``CONVERGE_SECONDS``.
    """
    reached: dict[str, float] = {}

    def target() -> str | None:
        return expected if expected is not None else group.nodes[-1].state_sha256(subject)

    def converged() -> bool:
        goal = target()
        for node in group.nodes:
            if node.name not in reached and goal is not None and node.state_sha256(subject) == goal:
                reached[node.name] = time.perf_counter() - started
        return len(reached) == len(group.nodes) and all(node.state_sha256(subject) == goal for node in group.nodes)

    done = await wait_until(converged, CONVERGE_SECONDS)
    hashes = {node.state_sha256(subject) for node in group.nodes}
    console.print(f"[bold]{step}[/] state_sha256 of {subject} on each node (seconds since the step began):")
    console.print(f"   {'node':<4} {'fingerprint':<32} {'http URL':<24} {'state_sha256':<64} seconds")
    for node in group.nodes:
        seconds = f"{reached[node.name]:.2f}" if node.name in reached else "not reached"
        console.print(f"   {node.name:<4} {node.gossip.fingerprint:<32} {node.url:<24} {node.state_sha256(subject)} {seconds}")
    console.print(f"   {len(group.nodes)} nodes, {len(hashes)} distinct state_sha256: {'[green]converged[/]' if done else '[red]NOT converged[/]'}")
    return done and len(hashes) == 1


async def _check_served(console: Console, group: LocalFederation, published: bytes) -> bool:
    same = 0
    async with httpx.AsyncClient(timeout=HTTP_SECONDS) as client:
        for node in group.nodes:
            response = await client.get(f"{node.url}/pith/{FIXTURE_SUBJECT_SUFFIX}/state.json")
            same += response.status_code == 200 and response.content == published
    console.print(f"   state.json served by {same} of {len(group.nodes)} nodes is the published file byte for byte")
    return same == len(group.nodes)


async def _push_event(console: Console, group: LocalFederation, key: SigningKey, subject: str, cited: str) -> bool:
    """POST a new citation signature to the last node and show every node merging it."""
    last = group.nodes[-1]
    event = _demo_event(key, "citation_signature", subject, {"cites_pith_number": cited, "context": "pith-mirror demo"})
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=HTTP_SECONDS) as client:
        response = await client.post(
            f"{last.url}/events", content=json.dumps(event).encode(), headers={"content-type": "application/json"}
        )
    console.print(f"[bold]9.[/] posted a citation signature {event['event_id']} to node {last.name} at {last.url}/events: HTTP {response.status_code}")
    converged = await _show_convergence(console, group, subject, None, started, "10.")
    new_hash = last.state_sha256(subject)
    changed = new_hash != FIXTURE_STATE_SHA256
    console.print(f"   the new state_sha256 differs from the published one: {'yes' if changed else '[red]NO[/]'}")
    return response.status_code == 200 and converged and changed
