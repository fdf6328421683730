"""Process faults: SIGKILL of ``pith-mirror`` processes at seeded random moments.

Run from the repository root::

    python -m bench.kill_bench --trials 20
    python -m bench.kill_bench --smoke

Every daemon is a ``pith-mirror run`` subprocess on 127.0.0.1 with an
explicit HTTP port and gossip port, and every node has every other node's
gossip address as a seed. Three kinds of trial:

* gossip: ``--nodes`` daemons start from one store holding the published
  state and the published record lines. A client thread posts distinct
  signed citations round robin to the live daemons, which push them to
  each other. After a random delay one random daemon gets SIGKILL. Its
  store is then opened on disk and checked (``Store.verify_all``, and every
  event that daemon acknowledged is present). The daemon is restarted on the
  same store and ports, and the trial waits until every node has the same
  state hash for every subject and every event acknowledged so far. An event
  counts as acknowledged when ``POST /events`` returned 200 with
  ``accepted``; the event in flight at the kill is not counted;
* import: ``pith-mirror import`` of one bundle file per record into a new
  store is killed after a random delay. The store must open, pass
  ``verify_all`` and hold exactly the first k files for some k (each file is
  one transaction). Rerunning the same import must complete it, with every
  state equal to an uninterrupted import;
* reconciliation: a node with a large store and a node with only the
  published state connect, and one of the two (chosen at random) gets
  SIGKILL while the empty one reconciles and fetches the difference. After
  the restart the two must reach identical states.

The seed fixes the victims and the kill moments; the moments land at
different points of the work from run to run, because the daemons' own
timing varies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from node.demo import fixture_path
from node.store import STORE_FILENAME, Store
from protocol import SigningKey, build_event, default_trust, emit_bundle, read_document

from .import_bench import build_bundles

__all__ = [
    "GossipTrial",
    "ImportTrial",
    "ReconcileTrial",
    "main",
    "run_gossip_trials",
    "run_import_trials",
    "run_reconcile_trials",
]

SCRIPT = Path(sysconfig.get_path("scripts")) / "pith-mirror"
READY_LINE = "serving HTTP on "
START_SECONDS = 20.0
STOP_SECONDS = 10.0
# The maximum wait for a federation to reconverge after a restart. A node
# that missed a reconciliation on redial gets another within the default
# anti-entropy interval (30 s, times up to 1.25).
CONVERGE_SECONDS = 120.0
POLL_SECONDS = 0.1
DEFAULT_SEED = 20_261_205
CREATED_AT = "2026-06-01T00:00:00Z"
# Kill moments in gossip trials, in seconds after posting starts.
GOSSIP_KILL_SECONDS = (0.05, 1.5)
# Posting goes on this long after the kill, so gossip among the survivors
# continues while the victim is down.
POST_AFTER_KILL_SECONDS = 0.3
# The client waits this long between posts, about 50 events per second.
POST_INTERVAL_SECONDS = 0.02


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Daemon:
    """One ``pith-mirror run`` subprocess with fixed ports, restartable on the same data directory."""

    def __init__(self, name: str, data_dir: Path) -> None:
        self.name = name
        self.data_dir = data_dir
        self.http_port = free_port()
        self.gossip_port = free_port()
        self.peers: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def gossip_address(self) -> str:
        return f"127.0.0.1:{self.gossip_port}"

    def start(self) -> Daemon:
        """Start the process and return once it serves HTTP; raise if it exits or times out first."""
        self._ready.clear()
        command = [str(SCRIPT), "run", "--data-dir", str(self.data_dir), "--http", f"127.0.0.1:{self.http_port}", "--gossip", self.gossip_address]
        for peer in self.peers:
            command += ["--peer", peer]
        env = {**os.environ, "PITH_MIRROR_LOG_LEVEL": "INFO"}
        env.pop("PITH_MIRROR_CONFIG", None)
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._read_log, args=(self.process,), daemon=True).start()
        if not self._ready.wait(START_SECONDS) or self.process.poll() is not None:
            self.kill()
            raise RuntimeError(f"{self.name} did not serve HTTP within {START_SECONDS} s; log tail:\n{''.join(self.lines[-20:])}")
        return self

    def _read_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        # Every run of the daemon appends to one log file in its data directory.
        with open(self.data_dir / "daemon.log", "a", encoding="utf-8") as log:
            for line in process.stderr:
                self.lines.append(line)
                log.write(line)
                log.flush()
                if READY_LINE in line:
                    self._ready.set()
        self._ready.set()

    def kill(self) -> None:
        """Send SIGKILL and wait for the process to end."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_SECONDS)

    def stop(self) -> int:
        """Stop with SIGTERM (SIGKILL after STOP_SECONDS); return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


# --- data ----------------------------------------------------------------------


def build_base_store(data_dir: Path) -> list[str]:
    """Write a store with the published state and record lines into ``data_dir``; return its subjects."""
    data_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    state = read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes())
    bundles = []
    for line in fixture_path("records.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if isinstance(entry.get("canonical_record"), dict):
            bundles.append(emit_bundle(entry["canonical_record"], entry.get("source_aliases", []), [], default_trust()))
    with Store(data_dir) as store:
        store.add_state(state, "kill-bench", now)
        list(store.add_many_bundles(bundles, "kill-bench", now))
        return sorted(store.state_hashes())


def build_citations(subjects: list[str], count: int, prefix: str) -> list[dict[str, Any]]:
    """Return ``count`` distinct signed citations spread over ``subjects``, each by its own key."""
    events = []
    for index in range(count):
        label = f"{prefix}-{index}"
        subject = subjects[index % len(subjects)]
        cited = subjects[(index + 1) % len(subjects)]
        events.append(
            build_event(
                SigningKey.from_label(label),
                event_type="citation_signature",
                subject=subject,
                payload={"cites_pith_number": cited, "context": f"kill bench event {index}"},
                created_at=CREATED_AT,
                key_id=f"{label}-key",
                signer_id=f"{label}.example.org",
                signer_type="mirror",
            )
        )
    return events


def item_sha256(event: dict[str, Any]) -> str:
    """Return the store's input_sha256 of an event: SHA-256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


@dataclass
class StoreView:
    """Contents of one store on disk: its state hashes, the requested ids it lacks, and subjects whose state differs from their events."""

    hashes: dict[str, str]
    missing: list[str]
    mismatched: list[str] = field(default_factory=list)


def read_store(data_dir: Path, expected: Sequence[str], verify: bool = False) -> StoreView:
    """Open a store read-only (a daemon may be running on it) and return which of ``expected`` it lacks."""
    with Store(data_dir, read_only=True) as store:
        hashes = store.state_hashes()
        missing = [sha for sha in expected if store.get_event(sha) is None]
        mismatched = store.verify_all() if verify else []
    return StoreView(hashes, missing, mismatched)


# --- gossip trials ------------------------------------------------------------


class Poster(threading.Thread):
    """Posts events round robin to the live daemons until stopped; records the acknowledged ones."""

    def __init__(self, daemons: list[Daemon], events: list[dict[str, Any]], start_index: int) -> None:
        super().__init__(daemon=True)
        self.daemons = daemons
        self.events = events
        self.next_index = start_index
        self.live = {daemon.name for daemon in daemons}
        self.acknowledged: dict[str, list[str]] = {daemon.name: [] for daemon in daemons}
        self.unexpected: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        clients = {daemon.name: httpx.Client(base_url=daemon.url, timeout=STOP_SECONDS) for daemon in self.daemons}
        turn = 0
        try:
            while not self.stop_event.is_set() and self.next_index < len(self.events):
                targets = [daemon for daemon in self.daemons if daemon.name in self.live]
                daemon = targets[turn % len(targets)]
                turn += 1
                event = self.events[self.next_index]
                # Each event is posted once: one whose response was lost in a
                # kill is neither acknowledged nor posted again.
                self.next_index += 1
                try:
                    response = clients[daemon.name].post("/events", content=json.dumps(event).encode(), headers={"content-type": "application/json"})
                except httpx.TransportError:
                    continue
                outcome = response.json()["outcomes"][0] if response.status_code == 200 else {}
                if outcome.get("status") == "accepted":
                    self.acknowledged[daemon.name].append(item_sha256(event))
                else:
                    self.unexpected.append(f"{daemon.name}: {response.status_code} {response.text[:200]}")
                self.stop_event.wait(POST_INTERVAL_SECONDS)
        finally:
            for client in clients.values():
                client.close()


@dataclass
class GossipTrial:
    trial: int
    victim: str
    kill_after_seconds: float
    acknowledged_in_trial: int
    acknowledged_total: int
    lost_on_victim_disk: int
    mismatched_on_victim_disk: int
    lost_after_reconverge: int
    restart_delay_seconds: float
    reconverge_seconds: float | None
    unexpected: list[str]


def wait_converged(daemons: list[Daemon], expected: list[str], seconds: float) -> tuple[float | None, int]:
    """Poll the stores until they contain the same states and every expected id.

    Returns the seconds it took (None on timeout) and the number of expected ids still missing.
    """
    started = time.monotonic()
    views: list[StoreView] = []
    while time.monotonic() - started < seconds:
        views = [read_store(daemon.data_dir, expected) for daemon in daemons]
        if all(not view.missing for view in views) and all(view.hashes == views[0].hashes for view in views):
            return time.monotonic() - started, 0
        time.sleep(POLL_SECONDS)
    return None, len({sha for view in views for sha in view.missing})


def run_gossip_trials(
    work: Path, trials: int, nodes: int = 3, seed: int = DEFAULT_SEED, events_per_trial: int = 100, restart_delay: float = 0.0
) -> list[GossipTrial]:
    """Run ``trials`` SIGKILL trials on a federation of ``nodes`` daemons; see the module docstring.

    The victim is restarted ``restart_delay`` seconds after its store was checked.
    """
    rng = random.Random(seed)
    base = work / "base"
    subjects = build_base_store(base)
    events = build_citations(subjects, trials * events_per_trial, f"kill-{seed}")
    daemons = []
    for number in range(nodes):
        data_dir = work / f"node{number}"
        data_dir.mkdir()
        shutil.copyfile(base / STORE_FILENAME, data_dir / STORE_FILENAME)
        daemons.append(Daemon(f"node{number}", data_dir))
    for daemon in daemons:
        daemon.peers = [other.gossip_address for other in daemons if other is not daemon]
    results: list[GossipTrial] = []
    acknowledged: list[str] = []
    try:
        for daemon in daemons:
            daemon.start()
        posted = 0
        for trial in range(trials):
            victim = daemons[rng.randrange(nodes)]
            delay = rng.uniform(*GOSSIP_KILL_SECONDS)
            poster = Poster(daemons, events[: (trial + 1) * events_per_trial], posted)
            poster.start()
            time.sleep(delay)
            poster.live.discard(victim.name)
            victim.kill()
            time.sleep(POST_AFTER_KILL_SECONDS)
            poster.stop_event.set()
            poster.join(STOP_SECONDS * 2)
            posted = poster.next_index
            trial_acknowledged = [sha for shas in poster.acknowledged.values() for sha in shas]
            acknowledged.extend(trial_acknowledged)

            on_disk = read_store(victim.data_dir, poster.acknowledged[victim.name], verify=True)
            time.sleep(restart_delay)
            victim.start()
            seconds, lost = wait_converged(daemons, acknowledged, CONVERGE_SECONDS)
            results.append(
                GossipTrial(
                    trial, victim.name, round(delay, 3), len(trial_acknowledged), len(acknowledged),
                    len(on_disk.missing), len(on_disk.mismatched), lost, restart_delay, seconds, poster.unexpected,
                )
            )
    finally:
        for daemon in daemons:
            daemon.stop()
    return results


# --- import trials ------------------------------------------------------------


@dataclass
class ImportTrial:
    trial: int
    kill_after_seconds: float
    files_total: int
    files_stored: int
    prefix_consistent: bool
    mismatched: int
    rerun_exit_code: int
    rerun_matches_reference: bool


def _write_bundle_files(directory: Path, bundle_count: int) -> tuple[list[Path], list[str]]:
    bundles, _ = build_bundles(bundle_count, cache_dir=None)
    directory.mkdir(parents=True)
    paths, subjects = [], []
    for index, bundle in enumerate(bundles):
        path = directory / f"bundle-{index:05d}.json"
        path.write_text(json.dumps(bundle), encoding="utf-8")
        paths.append(path)
        subjects.append(bundle["pith_number"])
    return paths, subjects


def _import(data_dir: Path, paths: list[Path]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PITH_MIRROR_LOG_LEVEL": "WARNING"}
    env.pop("PITH_MIRROR_CONFIG", None)
    command = [str(SCRIPT), "import", "--data-dir", str(data_dir), *map(str, paths)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def run_import_trials(work: Path, trials: int, seed: int = DEFAULT_SEED, bundle_count: int = 300) -> list[ImportTrial]:
    """SIGKILL ``pith-mirror import`` of ``bundle_count`` files ``trials`` times; see the module docstring."""
    rng = random.Random(seed + 1)
    paths, subjects = _write_bundle_files(work / "bundles", bundle_count)

    reference_dir = work / "import-reference"
    started = time.monotonic()
    if _import(reference_dir, paths).wait() != 0:
        raise RuntimeError("the uninterrupted reference import failed")
    full_seconds = time.monotonic() - started
    with Store(reference_dir, read_only=True) as store:
        reference = store.state_hashes()

    results = []
    for trial in range(trials):
        data_dir = work / f"import-{trial}"
        delay = rng.uniform(0.1 * full_seconds, 0.9 * full_seconds)
        process = _import(data_dir, paths)
        time.sleep(delay)
        process.kill()
        process.wait(STOP_SECONDS)

        # A normal open, with the lock: the killed process left no lock behind.
        with Store(data_dir) as store:
            stored = store.state_hashes()
            mismatched = store.verify_all()
        count = sum(1 for subject in subjects if subject in stored)
        prefix = set(subjects[:count]) == set(stored) and all(stored[subject] == reference[subject] for subject in stored)
        code = _import(data_dir, paths).wait()
        with Store(data_dir, read_only=True) as store:
            final = store.state_hashes()
        results.append(ImportTrial(trial, round(delay, 3), len(paths), count, prefix, len(mismatched), code, final == reference))
    return results


# --- reconciliation trials ----------------------------------------------------


@dataclass
class ReconcileTrial:
    trial: int
    victim: str
    kill_after_seconds: float
    difference_items: int
    subjects_total: int
    subjects_on_target_at_kill: int
    mismatched_on_victim_disk: int
    reconverge_seconds: float | None


def _build_large_store(data_dir: Path, bundle_count: int, events_per_bundle: int) -> int:
    bundles, _ = build_bundles(bundle_count, events_per_bundle, cache_dir=None)
    with Store(data_dir) as store:
        store.add_state(read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()), "kill-bench", time.time())
        list(store.add_many_bundles(bundles, "kill-bench", time.time()))
    # One record entry and its events per bundle.
    return bundle_count * (1 + events_per_bundle)


def run_reconcile_trials(
    work: Path, trials: int, seed: int = DEFAULT_SEED, bundle_count: int = 500, events_per_bundle: int = 3
) -> list[ReconcileTrial]:
    """SIGKILL one of two daemons while the empty one fetches a large difference; see the module docstring."""
    rng = random.Random(seed + 2)
    full = work / "reconcile-full"
    difference = _build_large_store(full, bundle_count, events_per_bundle)
    small = work / "reconcile-small"
    small.mkdir()
    with Store(small) as store:
        store.add_state(read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()), "kill-bench", time.time())

    # One uninterrupted sync measures how long the difference takes.
    full_seconds = _sync_once(work / "reconcile-probe", full, small)
    results = []
    for trial in range(trials):
        trial_dir = work / f"reconcile-{trial}"
        source = Daemon("source", trial_dir / "source")
        target = Daemon("target", trial_dir / "target")
        _copy_store(full, source.data_dir)
        _copy_store(small, target.data_dir)
        source.peers, target.peers = [target.gossip_address], [source.gossip_address]
        victim = source if rng.random() < 0.5 else target
        delay = rng.uniform(0.05 * full_seconds, 0.8 * full_seconds)
        try:
            source.start()
            target.start()
            time.sleep(delay)
            victim.kill()
            subjects_at_kill = len(read_store(target.data_dir, []).hashes)
            on_disk = read_store(victim.data_dir, [], verify=True)
            victim.start()
            seconds, _ = wait_converged([source, target], [], CONVERGE_SECONDS)
        finally:
            source.stop()
            target.stop()
        results.append(ReconcileTrial(trial, victim.name, round(delay, 3), difference, bundle_count + 1, subjects_at_kill, len(on_disk.mismatched), seconds))
    return results


def _copy_store(source_dir: Path, data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    shutil.copyfile(source_dir / STORE_FILENAME, data_dir / STORE_FILENAME)


def _sync_once(work: Path, full: Path, small: Path) -> float:
    source = Daemon("source", work / "source")
    target = Daemon("target", work / "target")
    _copy_store(full, source.data_dir)
    _copy_store(small, target.data_dir)
    target.peers = [source.gossip_address]
    try:
        source.start()
        target.start()
        started = time.monotonic()
        seconds, _ = wait_converged([source, target], [], CONVERGE_SECONDS)
    finally:
        source.stop()
        target.stop()
    if seconds is None:
        raise RuntimeError(f"an uninterrupted sync did not finish within {CONVERGE_SECONDS} s")
    return time.monotonic() - started


# --- report ---------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "timed out" if value is None else f"{value:.2f}"


def format_report(gossip: list[GossipTrial], imports: list[ImportTrial], reconciles: list[ReconcileTrial], command: str) -> str:
    """Return the trial tables as Markdown, with the command that produced them."""
    lines = [f"Command: `{command}`", "", "### SIGKILL during gossip", ""]
    lines.append("| trial | victim | kill after s | acknowledged (trial / total) | lost on victim's disk | mismatched states | lost after reconvergence | restart delay s | reconverge s |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in gossip:
        lines.append(
            f"| {row.trial} | {row.victim} | {row.kill_after_seconds:.3f} | {row.acknowledged_in_trial} / {row.acknowledged_total} | "
            f"{row.lost_on_victim_disk} | {row.mismatched_on_victim_disk} | {row.lost_after_reconverge} | {row.restart_delay_seconds:g} | "
            f"{_seconds(row.reconverge_seconds)} |"
        )
    if gossip:
        times = sorted(row.reconverge_seconds for row in gossip if row.reconverge_seconds is not None)
        lost = sum(row.lost_on_victim_disk + row.lost_after_reconverge for row in gossip)
        median = times[len(times) // 2] if times else None
        lines += [
            "",
            f"{len(gossip)} trials, {gossip[-1].acknowledged_total} events acknowledged, {lost} lost; "
            f"reconvergence after restart median {_seconds(median)} s, max {_seconds(times[-1] if times else None)} s; "
            f"{sum(len(row.unexpected) for row in gossip)} unexpected answers",
        ]
    lines += ["", "### SIGKILL during import", ""]
    lines.append("| trial | kill after s | files stored / total | consistent prefix | mismatched states | rerun exit | rerun equals clean import |")
    lines.append("|---:|---:|---:|---|---:|---:|---|")
    for item in imports:
        lines.append(
            f"| {item.trial} | {item.kill_after_seconds:.3f} | {item.files_stored} / {item.files_total} | {item.prefix_consistent} | "
            f"{item.mismatched} | {item.rerun_exit_code} | {item.rerun_matches_reference} |"
        )
    lines += ["", "### SIGKILL during reconciliation", ""]
    lines.append("| trial | victim | kill after s | difference (items) | subjects on target at kill / total | mismatched states | reconverge s |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|")
    for entry in reconciles:
        lines.append(
            f"| {entry.trial} | {entry.victim} | {entry.kill_after_seconds:.3f} | {entry.difference_items} | "
            f"{entry.subjects_on_target_at_kill} / {entry.subjects_total} | {entry.mismatched_on_victim_disk} | {_seconds(entry.reconverge_seconds)} |"
        )
    return "\n".join(lines)


def failures(gossip: list[GossipTrial], imports: list[ImportTrial], reconciles: list[ReconcileTrial]) -> list[str]:
    """Return one line per trial that lost an acknowledged event, left an inconsistent store or did not reconverge."""
    found = []
    for row in gossip:
        if row.lost_on_victim_disk or row.mismatched_on_victim_disk or row.lost_after_reconverge or row.reconverge_seconds is None or row.unexpected:
            found.append(f"gossip trial {row.trial}: {row}")
    for item in imports:
        if not item.prefix_consistent or item.mismatched or item.rerun_exit_code != 0 or not item.rerun_matches_reference:
            found.append(f"import trial {item.trial}: {item}")
    for entry in reconciles:
        if entry.mismatched_on_victim_disk or entry.reconverge_seconds is None:
            found.append(f"reconciliation trial {entry.trial}: {entry}")
    return found


# The first reconciliation on a new connection uses a fresh id snapshot,
# so a victim restarted at once finds everything on redial.
SMOKE = {
    "trials": 2, "import_trials": 1, "reconcile_trials": 1, "events_per_trial": 100, "restart_delay": 0.0,
    "bundles": 100, "reconcile_bundles": 400,
}


def run_all(work: Path, trials: int, import_trials: int, reconcile_trials: int, seed: int, nodes: int = 3,
            events_per_trial: int = 100, restart_delay: float = 0.0, bundles: int = 300, reconcile_bundles: int = 2000) -> tuple[list[GossipTrial], list[ImportTrial], list[ReconcileTrial]]:
    """Run the three kinds of trial in subdirectories of ``work``."""
    gossip = run_gossip_trials(work / "gossip", trials, nodes, seed, events_per_trial, restart_delay) if trials else []
    imports = run_import_trials(work / "import", import_trials, seed, bundles) if import_trials else []
    reconciles = run_reconcile_trials(work / "reconcile", reconcile_trials, seed, reconcile_bundles) if reconcile_trials else []
    return gossip, imports, reconciles


def run_smoke(work: Path, seed: int = DEFAULT_SEED) -> tuple[list[GossipTrial], list[ImportTrial], list[ReconcileTrial]]:
    """Run the small configuration that the test suite checks."""
    return run_all(work, SMOKE["trials"], SMOKE["import_trials"], SMOKE["reconcile_trials"], seed,
                   events_per_trial=SMOKE["events_per_trial"], restart_delay=SMOKE["restart_delay"],
                   bundles=SMOKE["bundles"], reconcile_bundles=SMOKE["reconcile_bundles"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.kill_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="SIGKILL trials during gossip (default 20)")
    parser.add_argument("--import-trials", type=int, default=5, help="SIGKILL trials during pith-mirror import (default 5)")
    parser.add_argument("--reconcile-trials", type=int, default=5, help="SIGKILL trials during reconciliation (default 5)")
    parser.add_argument("--nodes", type=int, default=3, help="daemons in the gossip trials (default 3)")
    parser.add_argument("--events-per-trial", type=int, default=100, help="events the client may post per gossip trial (default 100)")
    parser.add_argument("--restart-delay", type=float, default=0.0, help="seconds between a kill's store check and the restart (default 0)")
    parser.add_argument("--bundles", type=int, default=300, help="bundle files in the import trials (default 300)")
    parser.add_argument("--reconcile-bundles", type=int, default=2000, help="bundles of 3 events the reconciliation trials sync (default 2000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the victims and kill moments")
    parser.add_argument("--smoke", action="store_true", help="2 gossip trials, 1 import trial and 1 reconciliation trial on small data")
    parser.add_argument("--work-dir", type=Path, help="keep the stores and logs here instead of a temporary directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m bench.kill_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="kill-bench-") as temporary:
        work = args.work_dir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        if args.smoke:
            results = run_smoke(work, args.seed)
        else:
            results = run_all(work, args.trials, args.import_trials, args.reconcile_trials, args.seed, args.nodes,
                              args.events_per_trial, args.restart_delay, args.bundles, args.reconcile_bundles)
    print(format_report(*results, command))
    problems = failures(*results)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
