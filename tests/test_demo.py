"""The README's main command: ``pith-mirror demo`` on the shipped published records."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from node.cli import main as cli_main
from node.demo import FIXTURE_STATE_SHA256, run_demo

SUBJECT = "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY"
HINT_SUBJECT = "pith:2009:KFJCOGO7YT64GKAVQGHGNND6W4"
FINGERPRINT = "[0-9a-f]{32}"
URL = r"http://127\.0\.0\.1:\d+"
ADDRESS = r"127\.0\.0\.1:\d+"
SECONDS = r"\d+\.\d\d"


def demo_output(nodes: int = 3) -> tuple[int, str]:
    output = io.StringIO()
    console = Console(file=output, width=250, soft_wrap=True, color_system=None)
    status = run_demo(console, nodes=nodes)
    return status, output.getvalue()


def table_rows(text: str, step: str) -> list[re.Match[str]]:
    """Return the rows of the state table printed by ``step``."""
    block = text.split(f"{step} state_sha256 of {SUBJECT} on each node (seconds since the step began):\n", 1)[1]
    rows = []
    for line in block.splitlines()[1:]:
        row = re.fullmatch(rf"   ([A-H])    ({FINGERPRINT}) ({URL}) +([0-9a-f]{{64}}) ({SECONDS})", line)
        if row is None:
            break
        rows.append(row)
    return rows


def test_demo_passes_every_step() -> None:
    status, text = demo_output()

    assert status == 0
    assert "verified 51 published items: 51 passed, 0 failed" in text
    assert f"state_sha256 {FIXTURE_STATE_SHA256} matches the registry" in text
    assert "invalid: ['event_id_mismatch']" in text
    assert "23 accepted, 0 rejected, 30 record lines without a record skipped" in text
    assert f'HTTP 200, ETag "{FIXTURE_STATE_SHA256}", 5490 bytes' in text
    assert "the published file byte for byte" in text
    assert text.rstrip().endswith("demo passed")


def test_demo_federation_lines() -> None:
    status, text = demo_output()
    lines = text.splitlines()
    start = lines.index("7. started 3 nodes on 127.0.0.1: B seeded with A (connected: yes), C seeded with B only")
    hint_line, discovery_line = lines[start + 1], lines[start + 8]

    assert status == 0
    assert re.fullmatch(
        rf"   A signed a mirror hint on {HINT_SUBJECT} naming its gossip address {ADDRESS} with key {FINGERPRINT}: \['accepted'\]", hint_line
    )
    assert lines[start + 7] == "   3 nodes, 1 distinct state_sha256: converged"
    assert re.fullmatch(
        rf"   C stores the hint: yes; C connected to A \({FINGERPRINT}\) directly: yes; "
        rf"C's peer table names {ADDRESS} from hint",
        discovery_line,
    )
    assert lines[start + 9] == "   state.json served by 3 of 3 nodes is the published file byte for byte"
    assert re.fullmatch(rf"9\. posted a citation signature sha256:[0-9a-f]{{64}} to node C at {URL}/events: HTTP 200", lines[start + 10])
    assert lines[-3] == "   3 nodes, 1 distinct state_sha256: converged"
    assert lines[-2] == "   the new state_sha256 differs from the published one: yes"


def test_demo_hint_names_node_a() -> None:
    _, text = demo_output()
    hinted = re.search(rf"naming its gossip address ({ADDRESS})", text)
    listed = re.search(rf"C's peer table names ({ADDRESS})", text)
    node_a = re.search(rf"C connected to A \(({FINGERPRINT})\)", text)
    first_row = table_rows(text, "8.")[0]

    assert hinted is not None
    assert listed is not None
    assert listed.group(1) == hinted.group(1)
    assert node_a is not None
    assert first_row.group(2) == node_a.group(1)


def test_demo_nodes_reach_published_state() -> None:
    _, text = demo_output()
    rows = table_rows(text, "8.")

    assert [row.group(1) for row in rows] == ["A", "B", "C"]
    assert [row.group(4) for row in rows] == [FIXTURE_STATE_SHA256] * 3
    assert len({row.group(2) for row in rows}) == 3
    assert len({row.group(3) for row in rows}) == 3


def test_demo_event_reaches_every_node() -> None:
    _, text = demo_output()
    rows = table_rows(text, "10.")
    hashes = {row.group(4) for row in rows}

    assert [row.group(1) for row in rows] == ["A", "B", "C"]
    assert len(hashes) == 1
    assert FIXTURE_STATE_SHA256 not in hashes


def test_demo_five_nodes() -> None:
    status, text = demo_output(nodes=5)
    before, after = table_rows(text, "8."), table_rows(text, "10.")

    assert status == 0
    assert "7. started 5 nodes on 127.0.0.1: B seeded with A (connected: yes), C, D, E seeded with B only" in text
    assert [row.group(1) for row in before] == ["A", "B", "C", "D", "E"]
    assert {row.group(4) for row in before} == {FIXTURE_STATE_SHA256}
    assert len({row.group(4) for row in after}) == 1
    assert re.search(rf"9\. posted a citation signature sha256:[0-9a-f]{{64}} to node E at {URL}/events: HTTP 200", text)


def test_demo_rejects_nine_nodes() -> None:
    with pytest.raises(ValueError, match="the demo federation has 3 to 8 nodes, not 9"):
        run_demo(Console(file=io.StringIO()), nodes=9)


def test_demo_cli_rejects_two_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--nodes", "2"])

    assert exit_info.value.code == 2
    assert "argument --nodes: invalid choice: 2 (choose from 3, 4, 5, 6, 7, 8)" in capsys.readouterr().err
