"""Shared fixtures: paths of the published Pith files and the hostile-input vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.demo import fixture_path

CASES_DIR = Path(__file__).parent / "data" / "cases"


def load_case(case_id: str) -> dict[str, Any]:
    """Return one hostile-input vector file, such as ``C01``."""
    return json.loads((CASES_DIR / f"{case_id}.json").read_text(encoding="utf-8"))


@pytest.fixture
def published_state_bytes() -> bytes:
    return fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()


@pytest.fixture
def records_path() -> Path:
    return fixture_path("records.jsonl")
