"""The merge and the verifier reproduce what the Pith registry published."""

from __future__ import annotations

import json

from protocol import default_trust, merge, read_document, state_input

PUBLISHED_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"


def test_merge_reproduces_published_state_hash(published_state_bytes: bytes) -> None:
    merge_input = state_input(read_document(published_state_bytes))
    state = merge(merge_input.record, merge_input.aliases, merge_input.events, default_trust())
    assert state["state_sha256"] == PUBLISHED_STATE_SHA256


def test_merge_reproduces_published_bytes(published_state_bytes: bytes) -> None:
    merge_input = state_input(read_document(published_state_bytes))
    state = merge(merge_input.record, merge_input.aliases, merge_input.events, default_trust())
    served = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert served == published_state_bytes
