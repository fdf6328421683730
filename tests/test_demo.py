"""The README's main command: ``pith-mirror demo`` on the shipped published records."""

from __future__ import annotations

import io

from rich.console import Console

from node.demo import FIXTURE_STATE_SHA256, run_demo


def test_demo_passes_every_step() -> None:
    output = io.StringIO()
    console = Console(file=output, width=200, soft_wrap=True, color_system=None)

    status = run_demo(console)

    text = output.getvalue()
    assert status == 0
    assert "verified 51 published items: 51 passed, 0 failed" in text
    assert f"state_sha256 {FIXTURE_STATE_SHA256} matches the registry" in text
    assert "invalid: ['event_id_mismatch']" in text
    assert "23 accepted, 0 rejected, 30 record lines without a record skipped" in text
    assert f'HTTP 200, ETag "{FIXTURE_STATE_SHA256}", 5490 bytes' in text
    assert "the published file byte for byte" in text
    assert text.rstrip().endswith("demo passed")
