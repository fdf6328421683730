"""Process faults: SIGKILL of ``pith-mirror`` processes during gossip, import and reconciliation.

The first three tests run ``bench/kill_bench.py`` in its smoke sizes on
real subprocess daemons (``python -m bench.kill_bench --trials 20`` is the
full run). The last test shows, with daemons in this process, that a
restarted node finds a peer's newest items in its first reconciliation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from harness.federation import FAST, SETTLE_SECONDS, build_published_store, federation, post_event, wait_for
from helpers import signed_event

from bench import kill_bench
from node.gossip import GossipSettings
from protocol import item_id

CITED_RECORD = "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3"


@pytest.mark.slow
def test_sigkill_during_gossip_loses_nothing(tmp_path: Path) -> None:
    smoke = kill_bench.SMOKE
    trials = kill_bench.run_gossip_trials(
        tmp_path, smoke["trials"], events_per_trial=smoke["events_per_trial"], restart_delay=smoke["restart_delay"]
    )

    assert len(trials) == 2
    assert all(trial.acknowledged_in_trial > 0 for trial in trials)
    assert [trial.lost_on_victim_disk for trial in trials] == [0, 0]
    assert [trial.mismatched_on_victim_disk for trial in trials] == [0, 0]
    assert [trial.lost_after_reconverge for trial in trials] == [0, 0]
    assert all(trial.reconverge_seconds is not None for trial in trials)
    assert [trial.unexpected for trial in trials] == [[], []]


@pytest.mark.slow
def test_sigkill_during_import_leaves_prefix(tmp_path: Path) -> None:
    [trial] = kill_bench.run_import_trials(tmp_path, 1, bundle_count=kill_bench.SMOKE["bundles"])

    assert trial.files_total == 100
    assert trial.prefix_consistent
    assert trial.mismatched == 0
    assert trial.rerun_exit_code == 0
    assert trial.rerun_matches_reference


@pytest.mark.slow
def test_sigkill_during_reconciliation(tmp_path: Path) -> None:
    [trial] = kill_bench.run_reconcile_trials(tmp_path, 1, bundle_count=kill_bench.SMOKE["reconcile_bundles"])

    assert trial.difference_items == 1600
    assert trial.mismatched_on_victim_disk == 0
    assert trial.reconverge_seconds is not None


# Snapshots are reused for 30 s here (5 s by default) and anti-entropy
# waits 60 s, so only the reconciliation on dial can move the event.
STALE_SNAPSHOT_SETTINGS = GossipSettings(**{**FAST.__dict__, "snapshot_max_age": 30.0, "anti_entropy_interval": 60.0})


@pytest.mark.trio
async def test_dial_reconciliation_sees_recent_items(tmp_path: Path) -> None:
    (tmp_path / "published").mkdir()
    (tmp_path / "nodes").mkdir()
    published = build_published_store(tmp_path / "published")
    async with federation(tmp_path / "nodes") as group:
        a = await group.start("a", store_file=published, settings=STALE_SNAPSHOT_SETTINGS)
        b = await group.start("b", peers=(a.address,), store_file=published, settings=STALE_SNAPSHOT_SETTINGS)
        # b's dial starts a reconciliation, for which a builds its snapshot.
        await wait_for(lambda: a.gossip.counters["reconciliations"] >= 1, SETTLE_SECONDS, "a reconciled with b")
        event = signed_event("stale-snapshot", "citation_signature", {"cites_pith_number": CITED_RECORD, "context": "after the snapshot"})
        response = await post_event(a, event)
        await wait_for(lambda: b.service.store.get_event(item_id(event).hex()) is not None, SETTLE_SECONDS, "b got the event by push")

        # c arrives after the push, like a node restarted after a SIGKILL.
        c = await group.start("c", peers=(a.address,), store_file=published, settings=STALE_SNAPSHOT_SETTINGS)
        await wait_for(lambda: c.gossip.counters["reconciliations"] >= 1, SETTLE_SECONDS, "c reconciled with a")
        with trio.move_on_after(3.0):
            while c.service.store.get_event(item_id(event).hex()) is None:
                await trio.sleep(0.02)
        c_has_event = c.service.store.get_event(item_id(event).hex()) is not None

    assert response.status_code == 200
    assert c_has_event
