"""The reconciliation benchmark in its smoke configuration: have and need counts only, no timing."""

from __future__ import annotations

import pytest

from bench.reconcile_bench import SMOKE_DIFFERENCES, SMOKE_SIZES, Row, main, run_smoke


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return run_smoke()


def test_smoke_runs_every_combination(rows: list[Row]) -> None:
    assert [(row.size, row.difference) for row in rows] == [
        (1_000, 0),
        (1_000, 1),
        (1_000, 100),
        (5_000, 0),
        (5_000, 1),
        (5_000, 100),
    ]


def test_smoke_counts_are_exact(rows: list[Row]) -> None:
    # A has ceil(d/2) ids that B lacks and needs the floor(d/2) new ids of B.
    assert [(row.have, row.need) for row in rows] == [(0, 0), (1, 0), (50, 50), (0, 0), (1, 0), (50, 50)]


def test_smoke_expected_counts_match(rows: list[Row]) -> None:
    assert [(row.expected_have, row.expected_need) for row in rows] == [(row.have, row.need) for row in rows]


def test_smoke_sets_are_exact(rows: list[Row]) -> None:
    assert [row.exact for row in rows] == [True] * 6


def test_smoke_constants_match_rows() -> None:
    assert SMOKE_SIZES == (1_000, 5_000)
    assert SMOKE_DIFFERENCES == (0, 1, 100)


def test_smoke_command_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--smoke"]) == 0
    output = capsys.readouterr().out
    assert "| 5,000 | 100 |" in output
    assert "| 50, 50 | yes |" in output
