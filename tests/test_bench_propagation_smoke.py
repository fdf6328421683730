"""The propagation benchmark in its smoke configuration: counts only, no timing."""

from __future__ import annotations

import pytest

from bench.propagation_bench import EVERY_PEER, Trial, run_smoke


@pytest.fixture(scope="module")
def trials() -> list[Trial]:
    return run_smoke()


def test_smoke_runs_both_modes(trials: list[Trial]) -> None:
    assert [(trial.nodes, trial.mode) for trial in trials] == [(8, EVERY_PEER), (8, "5 random peers")]


def test_every_peer_reaches_all(trials: list[Trial]) -> None:
    default = trials[0]
    assert default.reached == 7
    assert default.missed == 0


def test_every_peer_within_target(trials: list[Trial]) -> None:
    default = trials[0]
    assert default.rounds <= default.target_rounds
    assert default.max_deliveries <= 3


def test_smoke_mesh_fully_connected(trials: list[Trial]) -> None:
    # Eight nodes that each keep up to 8 dialled peers connect to all 7 others.
    assert trials[0].mean_degree == 7.0
