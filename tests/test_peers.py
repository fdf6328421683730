"""Tests of the peer table: sources, dial policy, caps, backoff, scores and bans (no sockets)."""

from __future__ import annotations

import logging
import random

import pytest

from node.dialpolicy import DialPolicy
from node.peers import Ban, PeerLimits, PeerSource, PeerState, PeerTable, Penalty, host_of

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def table(**limits: float) -> PeerTable:
    return PeerTable(DialPolicy(), PeerLimits(**limits), random.Random(7))  # type: ignore[arg-type]


# --- adding addresses --------------------------------------------------------


def test_benchmark_range_rejected() -> None:
    peers = table()

    entry = peers.add_candidate("198.18.0.1:9090", PeerSource.PEER_EXCHANGE, 0.0)

    assert entry is None
    assert "198.18.0.1:9090" not in peers.entries


def test_public_unicast_accepted() -> None:
    peers = table()

    entry = peers.add_candidate("8.8.8.8:9090", PeerSource.PEER_EXCHANGE, 0.0)

    assert entry is not None
    assert entry.state is PeerState.IDLE
    assert entry.source is PeerSource.PEER_EXCHANGE


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("169.254.169.254:9090", "metadata"),
        ("169.254.1.1:9090", "link_local"),
        ("127.0.0.1:9090", "loopback"),
        ("10.0.0.1:9090", "private"),
        ("0.0.0.0:9090", "unspecified"),
        ("[::1]:9090", "loopback"),
        ("localhost:9090", "localhost"),
        ("8.8.8.8:22", "port"),
    ],
)
def test_forbidden_address_logged(caplog: pytest.LogCaptureFixture, address: str, code: str) -> None:
    peers = table()
    caplog.set_level(logging.INFO, logger="pith_mirror.gossip.peers")

    entry = peers.add_candidate(address, PeerSource.HINT, 0.0, signer="ab" * 32, reporter="mirror hint x")

    assert entry is None
    assert address not in peers.entries
    assert f"ignored peer address {address!r} from hint mirror hint x" in caplog.text
    assert f"({code})" in caplog.text


def test_loopback_allowed_when_configured() -> None:
    peers = PeerTable(DialPolicy(allow_loopback=True), PeerLimits(), random.Random(1))

    entry = peers.add_candidate("127.0.0.1:9091", PeerSource.ADVERTISED, 0.0)

    assert entry is not None


def test_host_name_accepted_by_syntax() -> None:
    peers = table()

    entry = peers.add_candidate("mirror.example.org:7400", PeerSource.HINT, 0.0, signer="cd" * 32)

    assert entry is not None
    assert entry.signer == "cd" * 32


def test_seed_skips_policy() -> None:
    peers = table()

    entry = peers.add_seed("127.0.0.1:9091", 0.0)

    assert entry.source is PeerSource.SEED
    assert peers.entries["127.0.0.1:9091"] is entry


def test_known_address_returned_once() -> None:
    peers = table()
    first = peers.add_candidate("8.8.8.8:9090", PeerSource.PEER_EXCHANGE, 0.0)

    second = peers.add_candidate("8.8.8.8:9090", PeerSource.HINT, 5.0, signer="ab" * 32)

    assert second is first
    assert len(peers.entries) == 1


def test_own_address_skipped() -> None:
    peers = table()
    peers.own_addresses.add("8.8.8.8:9090")

    assert peers.add_candidate("8.8.8.8:9090", PeerSource.PEER_EXCHANGE, 0.0) is None


def test_signer_cap_limits_hints() -> None:
    peers = table(max_per_signer=2)
    signer = "ef" * 32

    added = [peers.add_candidate(f"8.8.8.{index}:9090", PeerSource.HINT, 0.0, signer=signer) for index in range(1, 5)]
    other = peers.add_candidate("8.8.4.4:9090", PeerSource.HINT, 0.0, signer="01" * 32)

    assert [entry is not None for entry in added] == [True, True, False, False]
    assert other is not None


def test_hint_upgrades_exchanged_address() -> None:
    peers = table(max_per_signer=1)
    signer = "ef" * 32
    exchanged = peers.add_candidate("8.8.8.1:9090", PeerSource.PEER_EXCHANGE, 0.0)
    capped = peers.add_candidate("8.8.8.2:9090", PeerSource.PEER_EXCHANGE, 0.0)

    hinted = peers.add_candidate("8.8.8.1:9090", PeerSource.HINT, 0.0, signer=signer)
    over_cap = peers.add_candidate("8.8.8.2:9090", PeerSource.HINT, 0.0, signer=signer)

    assert hinted is exchanged
    assert hinted is not None
    assert hinted.source is PeerSource.HINT
    assert hinted.signer == signer
    assert over_cap is capped
    assert over_cap is not None
    assert over_cap.source is PeerSource.PEER_EXCHANGE
    assert over_cap.signer is None


def test_full_table_evicts_failed_entry() -> None:
    peers = table(max_known=2)
    failing = peers.add_candidate("8.8.8.1:9090", PeerSource.PEER_EXCHANGE, 0.0)
    assert failing is not None
    peers.failed(failing, 0.0, "connect failed")
    peers.add_candidate("8.8.8.2:9090", PeerSource.PEER_EXCHANGE, 0.0)

    added = peers.add_candidate("8.8.8.3:9090", PeerSource.PEER_EXCHANGE, 0.0)

    assert added is not None
    assert sorted(peers.entries) == ["8.8.8.2:9090", "8.8.8.3:9090"]


def test_full_table_keeps_healthy_entries() -> None:
    peers = table(max_known=2)
    peers.add_seed("peer-one.example.org:9090", 0.0)
    peers.add_candidate("8.8.8.2:9090", PeerSource.PEER_EXCHANGE, 0.0)

    added = peers.add_candidate("8.8.8.3:9090", PeerSource.PEER_EXCHANGE, 0.0)

    assert added is None
    assert len(peers.entries) == 2


# --- dialling and backoff ----------------------------------------------------


def test_backoff_doubles_until_cap() -> None:
    peers = table(backoff_base=1.0, backoff_max=8.0)
    entry = peers.add_seed("peer-one.example.org:9090", 0.0)

    delays = [peers.failed(entry, 100.0, "refused") for _ in range(6)]

    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for delay, base in zip(delays, bases):
        assert base * 0.5 <= delay <= base
    assert entry.failures == 6
    assert entry.state is PeerState.BACKOFF
    assert entry.last_error == "refused"


def test_recent_peer_redials_within_cap() -> None:
    peers = table(backoff_base=1.0, backoff_max=300.0, known_window=3_600.0)
    peers.known_redial_max = 30.0
    entry = peers.add_seed("peer-one.example.org:9090", 0.0)
    peers.connected(entry, KEY_A, 10.0)

    # The session breaks at 100 s, then every redial fails for an hour.
    delays = [peers.failed(entry, 100.0 + 300.0 * number, "refused") for number in range(12)]

    assert entry.last_connected == 100.0
    assert max(delays) <= 30.0
    assert delays[-1] >= 15.0


def test_old_peer_backs_off_fully() -> None:
    peers = table(backoff_base=1.0, backoff_max=300.0, known_window=3_600.0)
    peers.known_redial_max = 30.0
    entry = peers.add_seed("peer-one.example.org:9090", 0.0)
    peers.connected(entry, KEY_A, 10.0)
    peers.failed(entry, 100.0, "connection reset")

    # A day later the address has had no session for longer than known_window.
    delays = [peers.failed(entry, 86_400.0, "refused") for _ in range(9)]

    assert delays[-1] >= 150.0


def test_fixed_delay_overrides_backoff() -> None:
    peers = table(mismatch_backoff=21_600.0)
    entry = peers.add_seed("peer-one.example.org:9090", 0.0)

    delay = peers.failed(entry, 10.0, "merge profiles differ", delay=peers.limits.mismatch_backoff)

    assert delay == 21_600.0
    assert entry.next_attempt == 21_610.0


def test_clean_disconnect_resets_failures() -> None:
    peers = table(backoff_base=2.0)
    entry = peers.add_seed("peer-one.example.org:9090", 0.0)
    peers.failed(entry, 0.0, "refused")

    peers.disconnected(entry, 50.0, "the peer sent bye")

    assert entry.failures == 0
    assert entry.next_attempt == 52.0


def test_due_orders_seeds_first() -> None:
    peers = table()
    peers.add_candidate("8.8.8.8:9090", PeerSource.PEER_EXCHANGE, 0.0)
    peers.add_seed("peer-one.example.org:9090", 1.0)

    due = peers.due(5.0, set(), 10)

    assert [entry.address for entry in due] == ["peer-one.example.org:9090", "8.8.8.8:9090"]


def test_due_waits_for_backoff() -> None:
    peers = table()
    entry = peers.add_seed("peer-one.example.org:9090", 0.0)
    delay = peers.failed(entry, 0.0, "refused")

    assert peers.due(delay - 0.01, set(), 10) == []
    assert peers.due(delay, set(), 10) == [entry]


def test_due_skips_connected_key() -> None:
    peers = table()
    entry = peers.add_seed("peer-one.example.org:9090", 0.0)
    entry.node_key = KEY_A

    assert peers.due(1.0, {KEY_A}, 10) == []


def test_due_respects_limit() -> None:
    peers = table()
    for index in range(1, 6):
        peers.add_candidate(f"8.8.8.{index}:9090", PeerSource.PEER_EXCHANGE, 0.0)

    assert len(peers.due(1.0, set(), 2)) == 2
    assert peers.due(1.0, set(), 0) == []


def test_self_entry_never_due() -> None:
    peers = table()
    entry = peers.add_seed("peer-one.example.org:9090", 0.0)

    peers.mark_self(entry)

    assert entry.state is PeerState.SELF
    assert peers.due(1e9, set(), 10) == []
    assert "peer-one.example.org:9090" in peers.own_addresses


# --- scores and bans ---------------------------------------------------------


def test_violations_ban_key() -> None:
    peers = table(ban_threshold=-100.0, ban_seconds=600.0)

    first = peers.penalize(KEY_A, "127.0.0.1", Penalty.PROTOCOL_VIOLATION, "invalid_frame", 0.0)
    second = peers.penalize(KEY_A, "127.0.0.1", Penalty.PROTOCOL_VIOLATION, "invalid_frame", 1.0)
    third = peers.penalize(KEY_A, "127.0.0.1", Penalty.PROTOCOL_VIOLATION, "invalid_frame", 2.0)

    assert first is None
    assert second is None
    assert third == Ban(f"key:{KEY_A.hex()}", 602.0, "invalid_frame")
    assert peers.banned(KEY_A, None, 3.0) == third
    assert peers.banned(KEY_B, None, 3.0) is None


def test_ban_expires() -> None:
    peers = table(ban_seconds=600.0)
    peers.penalize(KEY_A, None, Penalty.PROTOCOL_VIOLATION, "garbage", 0.0, times=3)

    assert peers.banned(KEY_A, None, 599.0) is not None
    assert peers.banned(KEY_A, None, 600.0) is None


def test_host_scored_without_key() -> None:
    peers = table()

    ban = peers.penalize(None, "192.0.2.7", Penalty.PROTOCOL_VIOLATION, "garbage before hello", 0.0, times=3)

    assert ban is not None
    assert ban.subject == "host:192.0.2.7"
    assert peers.banned(None, "192.0.2.7", 1.0) == ban
    assert peers.banned(KEY_A, "192.0.2.7", 1.0) == ban


def test_ban_logged_with_reason(caplog: pytest.LogCaptureFixture) -> None:
    peers = table()
    caplog.set_level(logging.INFO, logger="pith_mirror.gossip.peers")

    peers.penalize(KEY_A, None, Penalty.INVALID_ITEM, "sent 21 invalid items", 0.0, times=21)

    assert f"banned peer key:{KEY_A.hex()} for 3600 s: score -105 is below -100; last reason: sent 21 invalid items" in caplog.text


def test_score_recovers_over_time() -> None:
    peers = table(recovery_per_hour=50.0)
    peers.penalize(KEY_A, None, Penalty.PROTOCOL_VIOLATION, "garbage", 0.0)

    assert peers.score_of(KEY_A, None, 0.0) == -40.0
    assert peers.score_of(KEY_A, None, 1800.0) == -15.0
    assert peers.score_of(KEY_A, None, 7200.0) == 0.0


def test_reward_capped_at_100() -> None:
    peers = table()

    peers.reward(KEY_A, 250.0, 0.0)

    assert peers.score_of(KEY_A, None, 0.0) == 100.0


def test_scores_bounded() -> None:
    peers = table(max_scores=3)

    for index in range(5):
        peers.penalize(bytes([index]) * 32, None, Penalty.TIMEOUT, "idle", float(index))

    assert len(peers.scores_json(10.0)) == 3


def test_bans_listed() -> None:
    peers = table(ban_seconds=100.0, recovery_per_hour=0.0)
    peers.penalize(KEY_A, None, Penalty.FLOOD, "announce flood", 0.0, times=6)

    rows = peers.scores_json(10.0)

    assert peers.bans(10.0) == [Ban(f"key:{KEY_A.hex()}", 100.0, "announce flood")]
    assert rows == [
        {"peer": f"key:{KEY_A.hex()}", "score": -120.0, "penalties": 6, "banned_for_seconds": 90.0, "ban_reason": "announce flood"}
    ]


def test_entry_json_fields() -> None:
    peers = table()
    entry = peers.add_seed("peer-one.example.org:9090", 0.0)
    peers.failed(entry, 0.0, "connect failed", delay=30.0)

    assert entry.as_json(10.0) == {
        "address": "peer-one.example.org:9090",
        "source": "seed",
        "state": "backoff",
        "node_key": None,
        "signer": None,
        "failures": 1,
        "next_attempt_in_seconds": 20.0,
        "last_error": "connect failed",
    }


def test_host_of_strips_brackets() -> None:
    assert host_of("[::1]:9090") == "::1"
    assert host_of("mirror.example.org:7400") == "mirror.example.org"
    assert host_of("not an address") == "not an address"


def test_penalty_kinds_distinct() -> None:
    # Kinds that cost the same points must not become aliases of each other.
    assert [penalty.value for penalty in Penalty] == [
        "protocol_violation", "handshake_failed", "flood", "invalid_item", "unsolicited_item", "timeout", "undelivered",
    ]
    assert [penalty.points for penalty in Penalty] == [40, 20, 20, 5, 5, 5, 1]


def test_timeout_scored_as_timeout(caplog: pytest.LogCaptureFixture) -> None:
    peers = table()
    caplog.set_level("INFO", logger="pith_mirror.gossip.peers")
    peers.penalize(KEY_A, None, Penalty.TIMEOUT, "idle timeout", 0.0)

    assert "scored -5 (timeout): idle timeout" in caplog.text
