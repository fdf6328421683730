"""Honest convergence with and without one hostile peer attacking each honest node.

Run from the repository root::

    python -m bench.hostile_bench                       # 4 nodes, 20,000 events, 3 repetitions
    python -m bench.hostile_bench --nodes 4 --events 20000 --subjects 200 --repetitions 5
    python -m bench.hostile_bench --smoke

Each honest node is its own process (``run_daemon`` with the harness's FAST
timings) on 127.0.0.1, so that its resident memory is its own. The
workload of ``bench.verify_merge`` (signed events over generated records)
is split by subject into one store per node. Node 0 starts first and the
others are seeded with it. A node has converged once the state hash of
every workload subject equals the hash of the merge of all its events.
The convergence time runs from the moment the last node was ready until
the last node converged.

In the attacked runs one more process starts before the honest nodes. For
each honest node it runs one ``HostilePeer`` identity (one node key, one
source address 127.66.0.<i+1>) that cycles through every attack of
``tests/harness/hostile.py`` on fresh connections until the run ends, and
keeps ``TRICKLES_PER_TARGET`` slow handshakes open from a second address
(127.66.1.<i+1>). A node lets one address hold only 4 handshakes, so from
one address the trickles alone would shut out every other attack.
Baseline and attacked runs alternate, so drift of the machine hits both.

The report gives, per run, the convergence time, each node's peak RSS
(``VmHWM``) and growth from ready to the end, the largest sizes of the
bounded gossip structures, the bans, and per attack the outcomes the
attacker saw. The headline figure is the ratio of the median attacked
convergence time to the median baseline time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The hostile peer and the harness timings live with the tests.
sys.path.insert(0, str(ROOT / "tests"))

import trio  # noqa: E402

from harness.federation import FAST  # noqa: E402
from harness.hostile import HostilePeer, depth_bomb, random_ids, size_bombs  # noqa: E402
from node.config import Config  # noqa: E402
from node.daemon import run_daemon  # noqa: E402
from node.store import STORE_FILENAME, Store  # noqa: E402
from protocol import (  # noqa: E402
    EventsRequested,
    PeerAuthenticated,
    PeerClosed,
    PeerError,
    SigningKey,
    build_event,
    default_trust,
    emit_bundle,
    format_timestamp,
    merge,
)
from protocol.frames import MAX_FRAME_BYTES  # noqa: E402
from protocol.keys import encode_signature_b64  # noqa: E402

from .verify_merge import load_or_build_workload  # noqa: E402

__all__ = ["main"]

# The subject of the published record, which the workload does not use.
# The attacker's own signed events name it, so they never change a
# workload state.
FOREIGN_SUBJECT = "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY"
# Bound on one run, in seconds; a run that does not converge by then fails.
RUN_SECONDS = 300.0
# Seconds between checks of a node's states and memory.
POLL_SECONDS = 0.25
# Seconds one attack may take before the attacker moves on.
ATTACK_SECONDS = 10.0
# Handshakes the attacker keeps trickling at once against each node.
TRICKLES_PER_TARGET = 4


# --- honest node process --------------------------------------------------------


def _rss_kib() -> tuple[int, int]:
    """Return this process's VmRSS and VmHWM in KiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def _bounded_sizes(gossip: Any) -> dict[str, int]:
    """Return the sizes of the gossip structures that a peer can make grow."""
    sessions = list(gossip.sessions.values())
    return {
        "peer_table": len(gossip.table.entries),
        "scores": len(gossip.table._scores),
        "handshaking": len(gossip.handshaking),
        "sessions": len(gossip.sessions),
        "fetch_queue_ids": sum(session._fetch_queued for session in sessions),
        "claims": len(gossip._claims),
        "seen": len(gossip._seen),
        "attempts": len(gossip._attempts),
        "peer_has_ids": sum(len(session._peer_has) for session in sessions),
        "queued_wants": sum(len(session._wants_to_serve) for session in sessions),
    }


async def _run_node(args: argparse.Namespace) -> None:
    expected: dict[str, str] = json.loads(Path(args.expected).read_text())
    data_dir = Path(args.data_dir)
    config = Config(
        data_dir=data_dir,
        http_listen="127.0.0.1:0",
        gossip_listen="127.0.0.1:0",
        peers=tuple(args.peer),
        allow_loopback_addresses=True,
    )
    ready: dict[str, Any] = {}
    started = trio.Event()

    def on_ready(service: Any, bound: list[str]) -> None:
        ready["service"] = service
        ready["http"] = bound[0]
        started.set()

    result: dict[str, Any] = {"converged_at": None, "largest": {}}

    async def monitor() -> None:
        await started.wait()
        service = ready["service"]
        gossip = service.gossip
        rss, _ = _rss_kib()
        result["rss_ready_kib"] = rss
        Path(args.ready_file).write_text(json.dumps({"gossip": gossip.listen_address, "http": ready["http"], "at": time.time()}))
        while True:
            sizes = _bounded_sizes(gossip)
            for name, value in sizes.items():
                result["largest"][name] = max(result["largest"].get(name, 0), value)
            if result["converged_at"] is None:
                states = await trio.to_thread.run_sync(service.store.state_hashes)
                if all(states.get(subject) == state for subject, state in expected.items()):
                    result["converged_at"] = time.time()
                    Path(args.converged_file).write_text(repr(result["converged_at"]))
            result["counters"] = dict(gossip.counters)
            result["bans"] = [{"peer": ban["peer"], "reason": ban["reason"]} for ban in gossip.peers_json()["bans"]]
            await trio.sleep(POLL_SECONDS)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor)
        await run_daemon(config, on_ready=on_ready, gossip_settings=FAST)
        nursery.cancel_scope.cancel()
    result["rss_end_kib"], result["rss_peak_kib"] = _rss_kib()
    Path(args.result_file).write_text(json.dumps(result))


# --- attacker process -------------------------------------------------------------


def _signed(label: str, payload: dict[str, Any], created_at: str) -> dict[str, Any]:
    return build_event(
        SigningKey.from_label(label), event_type="mirror_hint", subject=FOREIGN_SUBJECT, payload=payload,
        created_at=created_at, key_id=f"{label}-key", signer_id=f"{label}.example.org", signer_type="mirror",
    )


def _forged(count: int, tag: str) -> list[dict[str, Any]]:
    """Return hints signed and then altered, or carrying another key's signature."""
    created = format_timestamp(int(time.time()) - 60)
    forged = []
    for number in range(count):
        event = _signed("bench-victim", {"slot": f"{tag}-{number}", "url": "https://victim.example.org/pith/"}, created)
        if number % 2:
            other = SigningKey.from_label("bench-forger").sign(bytes.fromhex(event["event_id"].removeprefix("sha256:")))
            event["signature_b64"] = encode_signature_b64(other)
        else:
            event["payload"]["url"] = "https://forger.example.org/pith/"
        forged.append(event)
    return forged


def _equivocation(tag: str) -> list[dict[str, Any]]:
    created = format_timestamp(int(time.time()) - 60)
    return [
        _signed("bench-equivocator", {"slot": tag, "url": f"https://{side}.example.org/pith/", "gossip": f"{side}.example.org:7400"}, created)
        for side in ("a", "b")
    ]


FORBIDDEN = ["169.254.169.254:9090", "10.0.0.5:9090", "[::ffff:127.0.0.1]:9090", "2130706433:9090", "localhost:9090"]


def _value_bomb() -> bytes:
    count = MAX_FRAME_BYTES - 6
    return b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count


class Attacker:
    """One hostile identity against one honest node: a fixed key and source address."""

    def __init__(self, address: str, index: int) -> None:
        self.address = address
        self.label = f"bench-hostile-{index}"
        self.local_host = f"127.66.0.{index + 1}"
        self.trickle_host = f"127.66.1.{index + 1}"
        self.outcomes: dict[str, Counter[str]] = {}
        self.recorded = b""
        self.cycle = 0

    def note(self, attack: str, outcome: str) -> None:
        self.outcomes.setdefault(attack, Counter())[outcome] += 1

    async def connect(self, handshake: bool = True, local_host: str | None = None) -> tuple[HostilePeer | None, str]:
        """Open a connection; with ``handshake``, return (peer, "") when it completed, else (None, reason)."""
        try:
            peer = await HostilePeer.open(self.address, self.label, local_host=local_host or self.local_host)
        except OSError as error:
            return None, f"connect failed: {error.strerror or error}"
        if not handshake:
            return peer, ""
        final = await peer.handshake()
        if isinstance(final, PeerAuthenticated):
            self.recorded = bytes(peer.sent)
            return peer, ""
        await peer.close()
        return None, _describe(final)

    async def run(self, stop: trio.Event) -> None:
        # Attacks that cost the attacker few points come first, so each gets
        # a turn before the protocol violations at the end ban the key.
        attacks = [
            ("forged signatures", self._forged),
            ("equivocation", self._equivocate),
            ("reconciliation lie", self._lie),
            ("forbidden peers", self._forbidden_peers),
            ("announce flood", self._announce_flood),
            ("replayed handshake", self._replay),
            ("pre-handshake garbage", self._pre_handshake),
            ("want flood", self._want_flood),
            ("want of 10,000 ids", self._want_wide),
            ("reconcile garbage", self._reconcile_garbage),
            ("oversized frame", self._oversized),
            ("zero-length frame", self._zero),
            ("trailing bytes", self._trailing),
            ("size bombs", self._size_bombs),
            ("depth bomb", self._depth),
            ("value bomb", self._values),
        ]
        async with trio.open_nursery() as nursery:
            for _ in range(TRICKLES_PER_TARGET):
                nursery.start_soon(self._trickle_forever, stop)
            while not stop.is_set():
                self.cycle += 1
                for name, attack in attacks:
                    if stop.is_set():
                        break
                    with trio.move_on_after(ATTACK_SECONDS) as scope:
                        try:
                            outcome = await attack()
                        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
                            outcome = f"connection error: {type(error).__name__}"
                        except trio.TooSlowError:
                            outcome = "no answer"
                    self.note(name, "attack timed out" if scope.cancelled_caught else outcome)
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    async def _trickle_forever(self, stop: trio.Event) -> None:
        while not stop.is_set():
            peer, reason = await self.connect(handshake=False, local_host=self.trickle_host)
            if peer is None:
                self.note("trickled handshake", reason)
                await trio.sleep(0.5)
                continue
            try:
                with trio.move_on_after(ATTACK_SECONDS * 3):
                    _, events = await peer.trickle_hello(0.2)
                    self.note("trickled handshake", _describe(events[-1]) if events else "no answer")
            except (trio.TooSlowError, OSError):
                self.note("trickled handshake", "no answer")
            finally:
                await peer.close()

    async def _session(self, body: Any) -> str:
        peer, reason = await self.connect()
        if peer is None:
            return reason
        try:
            return await body(peer)
        finally:
            await peer.close()

    async def _frame(self, send: Any) -> str:
        async def body(peer: HostilePeer) -> str:
            events = await send(peer)
            return _describe(events[-1]) if events else "no answer"

        return await self._session(body)

    async def _oversized(self) -> str:
        return await self._frame(lambda peer: peer.oversized_frame())

    async def _zero(self) -> str:
        return await self._frame(lambda peer: peer.zero_length_frame())

    async def _trailing(self) -> str:
        return await self._frame(lambda peer: peer.trailing_bytes_frame())

    async def _size_bombs(self) -> str:
        outcomes = [await self._frame(lambda peer, bomb=bomb: peer.send_payload(bomb)) for bomb in size_bombs().values()]
        return ", ".join(sorted(set(outcomes)))

    async def _depth(self) -> str:
        return await self._frame(lambda peer: peer.send_payload(depth_bomb(MAX_FRAME_BYTES - 1)))

    async def _values(self) -> str:
        return await self._frame(lambda peer: peer.send_payload(_value_bomb()))

    async def _forged(self) -> str:
        async def body(peer: HostilePeer) -> str:
            served = await peer.serve(_forged(5, f"forged-{self.cycle}"), seconds=3.0)
            return f"{served.sent} of 5 requested and sent"

        return await self._session(body)

    async def _equivocate(self) -> str:
        async def body(peer: HostilePeer) -> str:
            served = await peer.serve(_equivocation(f"eq-{self.label}-{self.cycle}"), seconds=3.0)
            return f"{served.sent} of 2 requested and sent"

        return await self._session(body)

    async def _replay(self) -> str:
        if not self.recorded:
            return "nothing recorded yet"
        peer, reason = await self.connect(handshake=False)
        if peer is None:
            return reason
        try:
            events = await peer.replay(self.recorded)
            return _describe(events[-1]) if events else "no answer"
        finally:
            await peer.close()

    async def _announce_flood(self) -> str:
        async def body(peer: HostilePeer) -> str:
            await peer.flood_announce(random_ids(100_352, f"{self.label} flood {self.cycle}"))
            requested = await peer.answer_wants_empty(2.0)
            return f"{len(set(requested))} ids requested" if not peer.broken else "closed during the flood"

        return await self._session(body)

    async def _want_flood(self) -> str:
        async def body(peer: HostilePeer) -> str:
            frames = b"".join(peer.conn.send_want(random_ids(1, f"{self.label} want {number}")) for number in range(24))
            await peer.send(frames)
            events = await peer.until_closed()
            return _describe(events[-1]) if events else "no answer"

        return await self._session(body)

    async def _want_wide(self) -> str:
        return await self._frame(lambda peer: peer.want_in_one_frame(random_ids(10_000, "wide")))

    async def _lie(self) -> str:
        async def body(peer: HostilePeer) -> str:
            fake = random_ids(10_000, f"{self.label} lie {self.cycle}")
            await peer.lie_in_reconciliation(fake, seconds=ATTACK_SECONDS / 2)
            requested = await peer.answer_wants_empty(2.0)
            return f"{len(set(requested) & set(fake))} fake ids requested"

        return await self._session(body)

    async def _reconcile_garbage(self) -> str:
        return await self._frame(lambda peer: peer.reconcile_garbage(b"\xff" * 40))

    async def _forbidden_peers(self) -> str:
        peer, reason = await self.connect(handshake=False)
        if peer is None:
            return reason
        try:
            final = await peer.handshake(listen="169.254.169.254:9090")
            if not isinstance(final, PeerAuthenticated):
                return _describe(final)
            await peer.advertise(FORBIDDEN)
            return "sent"
        finally:
            await peer.close()

    async def _pre_handshake(self) -> str:
        peer, reason = await self.connect(handshake=False)
        if peer is None:
            return reason
        try:
            events = await peer.send_payload(b"\xc1")
            return _describe(events[-1]) if events else "no answer"
        finally:
            await peer.close()


def _describe(event: Any) -> str:
    if isinstance(event, PeerError):
        if event.reason.startswith("banned for "):
            return "error busy (banned)"
        return f"error {event.code}"
    if isinstance(event, PeerClosed):
        return "closed"
    if isinstance(event, EventsRequested):
        return "want"
    return type(event).__name__


async def _run_attacker(args: argparse.Namespace) -> None:
    ready_dir = Path(args.ready_dir)
    stop_file = Path(args.stop_file)
    stop = trio.Event()
    attackers: dict[int, Attacker] = {}
    async with trio.open_nursery() as nursery:
        while not stop_file.exists():
            for index in range(args.nodes):
                path = ready_dir / f"node{index}.json"
                if index not in attackers and path.exists():
                    text = path.read_text()
                    if text:
                        attackers[index] = Attacker(json.loads(text)["gossip"], index)
                        nursery.start_soon(attackers[index].run, stop)
            await trio.sleep(0.05)
        stop.set()
        nursery.cancel_scope.deadline = trio.current_time() + 2 * ATTACK_SECONDS
    summary: dict[str, dict[str, int]] = {}
    for attacker in attackers.values():
        for attack, outcomes in attacker.outcomes.items():
            merged = summary.setdefault(attack, {})
            for outcome, count in outcomes.items():
                merged[outcome] = merged.get(outcome, 0) + count
    Path(args.result_file).write_text(json.dumps(summary))


# --- coordinator --------------------------------------------------------------------


def _prepare(root: Path, nodes: int, events: int, subjects: int) -> tuple[list[Path], Path]:
    """Write one store per node and the expected state hashes; return the store files and the expected-hash file."""
    workload, _ = load_or_build_workload(events, subjects, cache_dir=None)
    trust = default_trust()
    stores = []
    expected: dict[str, str] = {}
    for index in range(nodes):
        part = workload.subjects[index::nodes]
        bundles = []
        for subject in part:
            lines = [json.loads(line) for line in subject.lines.splitlines()]
            bundles.append(emit_bundle(subject.record, subject.aliases, lines, trust))
            expected[subject.pith_number] = merge(subject.record, subject.aliases, lines, trust)["state_sha256"]
        data_dir = root / f"store{index}"
        data_dir.mkdir()
        with Store(data_dir) as store:
            outcomes = list(store.add_many_bundles(bundles, "bench", time.time()))
        if any(outcome.status != "accepted" for outcome in outcomes):
            raise SystemExit(f"the workload of node {index} did not import")
        stores.append(data_dir / STORE_FILENAME)
    expected_path = root / "expected.json"
    expected_path.write_text(json.dumps(expected))
    return stores, expected_path


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return json.loads(path.read_text())
        if process.poll() is not None:
            raise SystemExit(f"{path.stem} exited with {process.returncode} before it was ready")
        time.sleep(0.02)
    raise SystemExit(f"{path.stem} was not ready within {seconds:g} s")


def _run_once(root: Path, stores: list[Path], expected: Path, attacked: bool, number: int) -> dict[str, Any]:
    run_dir = root / f"run{number}-{'attacked' if attacked else 'baseline'}"
    run_dir.mkdir()
    module = [sys.executable, "-m", "bench.hostile_bench"]
    processes: list[subprocess.Popen[bytes]] = []
    attacker = None
    log = (run_dir / "log.txt").open("ab")
    try:
        if attacked:
            attacker = subprocess.Popen(
                [*module, "attack", "--ready-dir", str(run_dir), "--nodes", str(len(stores)), "--stop-file", str(run_dir / "stop"),
                 "--result-file", str(run_dir / "attacks.json")],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        seed = None
        for index, store_file in enumerate(stores):
            data_dir = run_dir / f"node{index}"
            data_dir.mkdir()
            (data_dir / STORE_FILENAME).write_bytes(store_file.read_bytes())
            command = [*module, "node", "--data-dir", str(data_dir), "--expected", str(expected),
                       "--ready-file", str(run_dir / f"node{index}.json"), "--result-file", str(run_dir / f"result{index}.json"),
                       "--converged-file", str(run_dir / f"converged{index}")]
            if seed is not None:
                command += ["--peer", seed]
            process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            processes.append(process)
            ready = _wait_for_file(run_dir / f"node{index}.json", process, 30.0)
            seed = seed or ready["gossip"]
        started = max(json.loads((run_dir / f"node{index}.json").read_text())["at"] for index in range(len(stores)))

        deadline = time.monotonic() + RUN_SECONDS
        while time.monotonic() < deadline:
            results = [_peek(run_dir, index) for index in range(len(stores))]
            if all(result is not None for result in results):
                break
            time.sleep(POLL_SECONDS)
        # The node processes write their results when they stop.
    finally:
        (run_dir / "stop").write_text("stop")
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if attacker is not None:
            try:
                attacker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                attacker.kill()
        log.close()

    missing = [path.name for path in [run_dir / f"result{index}.json" for index in range(len(stores))] if not path.exists()]
    if attacked and not (run_dir / "attacks.json").exists():
        missing.append("attacks.json")
    if missing:
        tail = (run_dir / "log.txt").read_text(errors="replace")[-4000:]
        raise SystemExit(f"run {run_dir.name} wrote no {', '.join(missing)}; the end of its log:\n{tail}")
    nodes = [json.loads((run_dir / f"result{index}.json").read_text()) for index in range(len(stores))]
    converged = [node["converged_at"] for node in nodes]
    if any(moment is None for moment in converged):
        tail = (run_dir / "log.txt").read_text(errors="replace")[-4000:]
        raise SystemExit(f"run {run_dir.name} did not converge within {RUN_SECONDS:g} s; the end of its log:\n{tail}")
    attacks = json.loads((run_dir / "attacks.json").read_text()) if attacked else {}
    return {
        "attacked": attacked,
        "seconds": max(converged) - started,
        "nodes": nodes,
        "attacks": attacks,
    }


def _peek(run_dir: Path, index: int) -> float | None:
    """Return when node ``index`` converged, from the marker file it writes then, or None."""
    marker = run_dir / f"converged{index}"
    return float(marker.read_text()) if marker.exists() else None


def _report(runs: list[dict[str, Any]], command: str) -> None:
    print(f"command: {command}")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print()
    print("| run | attacked | convergence s | peak RSS per node MiB | RSS growth per node MiB | bans |")
    print("|---|---|---:|---|---|---|")
    for number, run in enumerate(runs):
        peaks = ", ".join(f"{node['rss_peak_kib'] / 1024:.0f}" for node in run["nodes"])
        growth = ", ".join(f"{(node['rss_end_kib'] - node['rss_ready_kib']) / 1024:+.0f}" for node in run["nodes"])
        bans = sorted({ban["peer"][:20] for node in run["nodes"] for ban in node.get("bans", [])})
        print(f"| {number} | {'yes' if run['attacked'] else 'no'} | {run['seconds']:.2f} | {peaks} | {growth} | {len(bans)}: {', '.join(bans)} |")
    baseline = [run["seconds"] for run in runs if not run["attacked"]]
    attacked = [run["seconds"] for run in runs if run["attacked"]]
    print()
    print(f"median baseline {statistics.median(baseline):.2f} s, median attacked {statistics.median(attacked):.2f} s")
    print(f"convergence ratio (attacked / baseline, medians): {statistics.median(attacked) / statistics.median(baseline):.2f}")

    largest: dict[str, int] = {}
    for run in runs:
        if run["attacked"]:
            for node in run["nodes"]:
                for name, value in node["largest"].items():
                    largest[name] = max(largest.get(name, 0), value)
    print()
    print("largest bounded structures on any attacked node: " + ", ".join(f"{name} {value}" for name, value in sorted(largest.items())))
    print()
    print("| attack | outcomes seen by the attacker (count) |")
    print("|---|---|")
    merged: dict[str, Counter[str]] = {}
    for run in runs:
        for attack, outcomes in run["attacks"].items():
            merged.setdefault(attack, Counter()).update(outcomes)
    for attack, outcomes in merged.items():
        print(f"| {attack} | {'; '.join(f'{outcome} ({count})' for outcome, count in outcomes.most_common())} |")


def _coordinate(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as temp:
        root = Path(temp)
        stores, expected = _prepare(root, args.nodes, args.events, args.subjects)
        runs = []
        for repetition in range(args.repetitions):
            # Alternate which mode goes first, so drift hits both.
            order = (False, True) if repetition % 2 == 0 else (True, False)
            for attacked in order:
                runs.append(_run_once(root, stores, expected, attacked, len(runs)))
        command = "python -m bench.hostile_bench " + " ".join(sys.argv[1:])
        _report(runs, command.strip())
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4, help="honest nodes (default 4)")
    parser.add_argument("--events", type=int, default=20_000, help="signed events in the workload (default 20000)")
    parser.add_argument("--subjects", type=int, default=200, help="records in the workload (default 200)")
    parser.add_argument("--repetitions", type=int, default=3, help="baseline and attacked runs each (default 3)")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--smoke", action="store_true", help="2 nodes, 200 events, 1 repetition: checks that the benchmark runs")
    sub = parser.add_subparsers(dest="role")
    node = sub.add_parser("node", help="internal: run one honest node")
    node.add_argument("--data-dir", required=True)
    node.add_argument("--expected", required=True)
    node.add_argument("--ready-file", required=True)
    node.add_argument("--result-file", required=True)
    node.add_argument("--converged-file", required=True)
    node.add_argument("--peer", action="append", default=[])
    attack = sub.add_parser("attack", help="internal: run the hostile peers")
    attack.add_argument("--ready-dir", required=True)
    attack.add_argument("--nodes", type=int, required=True)
    attack.add_argument("--stop-file", required=True)
    attack.add_argument("--result-file", required=True)
    args = parser.parse_args(argv)

    if args.role == "node":
        trio.run(_run_node, args)
        return 0
    if args.role == "attack":
        trio.run(_run_attacker, args)
        return 0
    if args.smoke:
        args.nodes, args.events, args.subjects, args.repetitions = 2, 200, 4, 1
    return _coordinate(args)


if __name__ == "__main__":
    sys.exit(main())
