"""Crash test: SIGKILL a ``pith-mirror run`` process while a client submits events.

The daemon commits an event before it responds with 200 and ``accepted``,
so no SIGKILL can lose an acknowledged event. It writes states in the same
transaction as their events, so the store is consistent after any kill.
Each trial posts pre-built signed events to the published subject one at
a time, kills the process after a random delay, checks the store on disk,
restarts the daemon on the same store and checks what it serves. The
restarted daemon runs the next trial.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import SUBJECT, signed_event
from node.demo import fixture_path
from node.store import Store
from protocol import bundle_input, default_trust, merge, read_document
from test_daemon import STOP_SECONDS, DaemonProcess

TRIALS = 20
SEED = 20_261_204
MIN_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 1.0
# Posting stops this long after the kill was due, even if the kill failed.
POST_GRACE_SECONDS = 3.0
# More than the trials can post: a POST takes 20 ms or more.
EVENT_POOL = 1_000
CITED_RECORD = "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3"


def build_events(count: int) -> list[dict[str, Any]]:
    """Return distinct mirror hints and citations on the published subject, each by its own key."""
    events = []
    for index in range(count):
        label = f"crash-{index}"
        if index % 2 == 0:
            payload = {"slot": "primary", "url": f"https://{label}.example.org/pith/"}
            events.append(signed_event(label, "mirror_hint", payload, "2026-06-01T00:00:00Z"))
        else:
            payload = {"cites_pith_number": CITED_RECORD, "context": f"cited in trial event {index}"}
            events.append(signed_event(label, "citation_signature", payload, "2026-06-01T00:00:00Z"))
    return events


def post_until_killed(url: str, events: list[dict[str, Any]], deadline: float) -> tuple[list[str], list[str]]:
    """Post events one at a time until the connection fails; return acknowledged ids and unexpected responses."""
    acknowledged: list[str] = []
    unexpected: list[str] = []
    with httpx.Client(base_url=url, timeout=STOP_SECONDS) as client:
        for event in events:
            if time.monotonic() > deadline:
                break
            try:
                response = client.post("/events", content=json.dumps(event).encode(), headers={"content-type": "application/json"})
            except httpx.TransportError:
                break
            outcome = response.json()["outcomes"][0] if response.status_code == 200 else {}
            if outcome.get("status") == "accepted":
                acknowledged.append(event["event_id"])
            else:
                unexpected.append(f"{response.status_code} {response.text[:200]}")
    return acknowledged, unexpected


def missing_on_disk(data_dir: Path, event_ids: list[str]) -> tuple[list[str], list[str]]:
    """Open the killed daemon's store; return acknowledged ids it lacks, and the subjects verify_all lists with integrity_check's findings."""
    with Store(data_dir, read_only=True) as store:
        missing = [event_id for event_id in event_ids if store.get_event_by_id(SUBJECT, event_id) is None]
        mismatched = store.verify_all() + store.integrity_check()
    return missing, mismatched


def served_documents(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    suffix = SUBJECT.rsplit(":", 1)[1]
    with httpx.Client(base_url=url, timeout=STOP_SECONDS) as client:
        state = read_document(client.get(f"/pith/{suffix}/state.json").content)
        bundle = read_document(client.get(f"/pith/{suffix}/bundle.json").content)
    return state, bundle


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.add_state(read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()), "test", time.time())
    events = build_events(EVENT_POOL)
    rng = random.Random(SEED)
    acknowledged: list[str] = []
    unexpected: list[str] = []
    posted = 0

    daemon = DaemonProcess(tmp_path).start()
    for trial in range(TRIALS):
        delay = rng.uniform(MIN_DELAY_SECONDS, MAX_DELAY_SECONDS)
        killer = threading.Timer(delay, daemon.kill)
        killer.start()
        acked, odd = post_until_killed(daemon.url, events[posted:], time.monotonic() + delay + POST_GRACE_SECONDS)
        killer.join()
        # The event in flight at the kill may or may not be stored; it
        # is skipped, so that every later trial posts new events only.
        posted += len(acked) + len(odd) + 1
        acknowledged.extend(acked)
        unexpected.extend(f"trial {trial}: {text}" for text in odd)

        missing, mismatched = missing_on_disk(tmp_path, acknowledged)
        assert missing == [], f"trial {trial}: acknowledged events lost"
        assert mismatched == [], f"trial {trial}: stored states differ from their events"

        daemon = DaemonProcess(tmp_path).start()
        state, bundle = served_documents(daemon.url)
        merge_input = bundle_input(bundle)
        recomputed = merge(merge_input.record, merge_input.aliases, merge_input.events, default_trust())
        assert set(acknowledged) <= set(state["applied_event_ids"]), f"trial {trial}: served state lacks events"
        assert recomputed["state_sha256"] == state["state_sha256"], f"trial {trial}: bundle does not merge to the state"

    stop_code = daemon.stop(signal.SIGTERM)
    with Store(tmp_path, read_only=True) as store:
        final_mismatched = store.verify_all()

    assert unexpected == []
    assert stop_code == 0
    assert final_mismatched == []
    assert posted < EVENT_POOL
    assert len(acknowledged) >= TRIALS
