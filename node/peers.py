"""The peer table: known gossip addresses, dial backoff, peer scores and bans.

Addresses come from three sources:

* ``seed``: the operator's configured peers (``--peer``). They are dialled
  as configured, without the dial policy, because the operator chose them,
  and they never leave the table.
* ``hint``: the ``gossip`` address of a signed mirror hint in a merged
  state. At most ``max_per_signer`` entries come from one signing key, so
  one key cannot fill the table.
* ``peer_exchange``: addresses a connected peer sent in a ``peers``
  message, and ``advertised``: the ``listen`` address of a peer's hello.

Every address that is not a seed passes ``DialPolicy.check_peer`` before it
enters the table, so a rejected one causes no DNS lookup and no connection.
A host name that passes still has its resolved addresses checked with
``check_resolved`` before the node connects (``node.gossip``).

Scores belong to node keys, and to remote hosts for misbehaviour before a
handshake names a key. Each penalty subtracts points; a score below
``ban_threshold`` bans the key or host for ``ban_seconds``. Scores drift
back towards 0 at ``recovery_per_hour`` points per hour, so an honest peer
that once sent something odd is not banned for ever.

All times are ``trio.current_time()`` values passed in by the caller; the
table itself reads no clock.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .dialpolicy import DialPolicy, split_host_port
from .ratelimit import RateLimitedLog

__all__ = [
    "Ban",
    "PeerEntry",
    "PeerLimits",
    "PeerSource",
    "PeerState",
    "PeerTable",
    "Penalty",
]

logger = logging.getLogger("pith_mirror.gossip.peers")


class PeerSource(enum.StrEnum):
    """The origin of an address in the table."""

    SEED = "seed"
    HINT = "hint"
    PEER_EXCHANGE = "peer_exchange"
    ADVERTISED = "advertised"


class PeerState(enum.StrEnum):
    """The dial state of an address."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    SELF = "self"


class Penalty(enum.Enum):
    """Kinds of misbehaviour; ``points`` is what each costs.

    The values are the names, because kinds that cost the same points must
    stay distinct members (an Enum makes members with equal values aliases).
    """

    PROTOCOL_VIOLATION = "protocol_violation"
    HANDSHAKE_FAILED = "handshake_failed"
    FLOOD = "flood"
    INVALID_ITEM = "invalid_item"
    UNSOLICITED_ITEM = "unsolicited_item"
    TIMEOUT = "timeout"
    UNDELIVERED = "undelivered"

    @property
    def points(self) -> int:
        return _PENALTY_POINTS[self]


_PENALTY_POINTS = {
    Penalty.PROTOCOL_VIOLATION: 40,
    Penalty.HANDSHAKE_FAILED: 20,
    Penalty.FLOOD: 20,
    Penalty.INVALID_ITEM: 5,
    Penalty.UNSOLICITED_ITEM: 5,
    Penalty.TIMEOUT: 5,
    Penalty.UNDELIVERED: 1,
}


@dataclass(frozen=True)
class PeerLimits:
    """Bounds and timings of the peer table.

    Attributes:
        max_known: addresses kept; seeds count too.
        max_per_signer: hint-derived addresses kept per signing key.
        backoff_base: seconds before the first redial after a failure; the
            delay doubles with each failure, times a random factor from
            0.5 to 1.
        backoff_max: the maximum delay after failures, in seconds.
        mismatch_backoff: seconds before redialling a peer whose merge
            profile differs from ours.
        ban_threshold: a score below this bans the key or host.
        ban_seconds: how long a ban lasts.
        recovery_per_hour: points a negative score regains per hour.
        max_scores: keys and hosts whose scores are kept; the oldest
            unbanned ones are dropped first.
        known_window: seconds after its last session during which an
            address keeps the short redial delay of ``PeerTable.known_redial_max``.
    """

    max_known: int = 1_000
    max_per_signer: int = 4
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    mismatch_backoff: float = 6 * 3600.0
    ban_threshold: float = -100.0
    ban_seconds: float = 3600.0
    recovery_per_hour: float = 50.0
    max_scores: int = 4_096
    known_window: float = 24 * 3600.0


@dataclass
class PeerEntry:
    """One address in the table.

    Attributes:
        address: ``HOST:PORT`` as it is dialled.
        source: where the address came from.
        signer: for a hint, the public key hex of the hint's signer.
        node_key: the key the peer proved in its last handshake.
        state: what the node is doing with the address.
        failures: dial or session failures since the last good session.
        next_attempt: the earliest time of the next dial.
        last_error: why the last dial or session ended, for operators.
    """

    address: str
    source: PeerSource
    signer: str | None = None
    node_key: bytes | None = None
    state: PeerState = PeerState.IDLE
    failures: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    added_at: float = 0.0
    last_connected: float | None = None

    def as_json(self, now: float) -> dict[str, Any]:
        """Return the entry for ``/peers.json``."""
        return {
            "address": self.address,
            "source": str(self.source),
            "state": str(self.state),
            "node_key": self.node_key.hex() if self.node_key else None,
            "signer": self.signer,
            "failures": self.failures,
            "next_attempt_in_seconds": round(max(0.0, self.next_attempt - now), 3),
            "last_error": self.last_error,
        }


@dataclass
class _Score:
    points: float = 0.0
    updated: float = 0.0
    banned_until: float | None = None
    ban_reason: str | None = None
    penalties: int = 0


@dataclass(frozen=True)
class Ban:
    """An active ban of a node key (``key:<hex>``) or remote host (``host:<address>``)."""

    subject: str
    until: float
    reason: str


@dataclass
class PeerTable:
    """The bounded table of known addresses, with scores and bans; see the module docstring."""

    policy: DialPolicy
    limits: PeerLimits = field(default_factory=PeerLimits)
    rng: random.Random = field(default_factory=random.Random)
    entries: dict[str, PeerEntry] = field(default_factory=dict)
    # Our own gossip addresses, never dialled.
    own_addresses: set[str] = field(default_factory=set)
    # The maximum redial delay of an address that had a session within
    # limits.known_window. The gossip node sets its anti-entropy interval, so
    # a healed partition costs at most about one interval.
    known_redial_max: float | None = None
    _scores: OrderedDict[str, _Score] = field(default_factory=OrderedDict)
    # Rejected addresses come from untrusted input, so their log lines are
    # rate limited, per table.
    _rejected_log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(logger))

    # --- adding addresses ----------------------------------------------------

    def add_seed(self, address: str, now: float) -> PeerEntry:
        """Add a configured peer; it is dialled without the dial policy."""
        entry = self.entries.get(address)
        if entry is None:
            entry = PeerEntry(address, PeerSource.SEED, added_at=now)
            self.entries[address] = entry
        else:
            entry.source = PeerSource.SEED
        return entry

    def add_candidate(self, address: str, source: PeerSource, now: float, *, signer: str | None = None, reporter: str = "") -> PeerEntry | None:
        """Add an address from a hint, a peer or a hello after the dial policy accepts it.

        Args:
            address: ``HOST:PORT`` from untrusted input.
            source: ``HINT``, ``PEER_EXCHANGE`` or ``ADVERTISED``.
            now: the current time.
            signer: for a hint, its signer's public key hex.
            reporter: who named the address, for the log.

        Returns:
            The entry, new or already known, or None when the address was
            rejected; the reason is logged (rate limited).
        """
        known = self.entries.get(address)
        if known is not None:
            if source is PeerSource.HINT and signer is not None and known.source in (PeerSource.PEER_EXCHANGE, PeerSource.ADVERTISED):
                # A signed hint is better provenance than a peer's word, so the
                # entry records it, within the same per-signer cap as new entries.
                from_signer = sum(1 for entry in self.entries.values() if entry.source is PeerSource.HINT and entry.signer == signer)
                if from_signer < self.limits.max_per_signer:
                    known.source = PeerSource.HINT
                    known.signer = signer
                    logger.info("peer address %s is also named by %s", address, reporter or "a signed hint")
            return known
        if address in self.own_addresses:
            return None

        decision = self.policy.check_peer(address)
        if not decision.allowed:
            self._rejected_log.log(
                logging.INFO, "ignored peer address %r from %s %s: %s (%s)", address, source, reporter, decision.reason, decision.code
            )
            return None
        if source is PeerSource.HINT and signer is not None:
            from_signer = sum(1 for entry in self.entries.values() if entry.source is PeerSource.HINT and entry.signer == signer)
            if from_signer >= self.limits.max_per_signer:
                self._rejected_log.log(
                    logging.INFO, "ignored peer address %r from a hint of %s: that key already named %d addresses (the limit)",
                    address, signer, from_signer,
                )
                return None
        if len(self.entries) >= self.limits.max_known and not self._evict_one():
            self._rejected_log.log(logging.INFO, "ignored peer address %r from %s %s: the peer table is full", address, source, reporter)
            return None

        entry = PeerEntry(address, source, signer=signer, added_at=now)
        self.entries[address] = entry
        logger.info("added peer address %s from %s %s", address, source, reporter)
        return entry

    def _evict_one(self) -> bool:
        """Drop the idle, non-seed entry with the most failures; return whether one was dropped."""
        candidates = [
            entry
            for entry in self.entries.values()
            if entry.source is not PeerSource.SEED and entry.state in (PeerState.IDLE, PeerState.BACKOFF, PeerState.SELF)
        ]
        if not candidates:
            return False
        worst = max(candidates, key=lambda entry: (entry.failures, -entry.added_at))
        if worst.failures == 0:
            return False
        del self.entries[worst.address]
        return True

    # --- dialling ------------------------------------------------------------

    def due(self, now: float, connected_keys: set[bytes], limit: int) -> list[PeerEntry]:
        """Return up to ``limit`` entries to dial now: seeds first, then fewest failures."""
        if limit <= 0:
            return []
        ready = [
            entry
            for entry in self.entries.values()
            if entry.state in (PeerState.IDLE, PeerState.BACKOFF)
            and entry.next_attempt <= now
            and not (entry.node_key is not None and (entry.node_key in connected_keys or self.banned(entry.node_key, None, now)))
        ]
        ready.sort(key=lambda entry: (entry.source is not PeerSource.SEED, entry.failures, entry.added_at))
        return ready[:limit]

    def dialling(self, entry: PeerEntry) -> None:
        """Mark an entry as being dialled."""
        entry.state = PeerState.CONNECTING

    def connected(self, entry: PeerEntry, node_key: bytes, now: float) -> None:
        """Mark an entry as connected to ``node_key``."""
        entry.state = PeerState.CONNECTED
        entry.node_key = node_key
        entry.last_connected = now
        entry.last_error = None

    def failed(self, entry: PeerEntry, now: float, error: str, *, delay: float | None = None) -> float:
        """Record a failed dial or a session that ended badly; return the delay before the next dial.

        Args:
            delay: a fixed delay, such as ``limits.mismatch_backoff``;
                otherwise exponential backoff applies.
        """
        if entry.state is PeerState.CONNECTED:
            entry.last_connected = now
        entry.failures += 1
        entry.last_error = error
        if delay is None:
            base = min(self.limits.backoff_max, self.limits.backoff_base * 2 ** min(entry.failures - 1, 30))
            recent = entry.last_connected is not None and now - entry.last_connected < self.limits.known_window
            if recent and self.known_redial_max is not None:
                base = min(base, self.known_redial_max)
            delay = base * (0.5 + 0.5 * self.rng.random())
        entry.state = PeerState.BACKOFF
        entry.next_attempt = now + delay
        return delay

    def disconnected(self, entry: PeerEntry, now: float, reason: str) -> None:
        """Record the clean end of a session: the address may be dialled again after the base delay."""
        entry.failures = 0
        entry.last_error = reason
        entry.state = PeerState.BACKOFF
        entry.next_attempt = now + self.limits.backoff_base

    def mark_self(self, entry: PeerEntry) -> None:
        """Record that an address reaches this node itself; it is never dialled again."""
        entry.state = PeerState.SELF
        entry.last_error = "this address reaches this node itself"
        self.own_addresses.add(entry.address)

    # --- scores and bans -----------------------------------------------------

    def _score(self, subject: str, now: float) -> _Score:
        score = self._scores.get(subject)
        if score is None:
            score = _Score(updated=now)
            self._scores[subject] = score
            self._trim_scores(now)
        else:
            self._scores.move_to_end(subject)
            if score.points < 0:
                recovered = self.limits.recovery_per_hour * max(0.0, now - score.updated) / 3600.0
                score.points = min(0.0, score.points + recovered)
            score.updated = now
        return score

    def _trim_scores(self, now: float) -> None:
        while len(self._scores) > self.limits.max_scores:
            for subject, score in self._scores.items():
                if score.banned_until is None or score.banned_until <= now:
                    del self._scores[subject]
                    break
            else:
                # Every kept score is an active ban; drop the oldest one.
                self._scores.popitem(last=False)

    def penalize(self, node_key: bytes | None, host: str | None, penalty: Penalty, reason: str, now: float, times: int = 1) -> Ban | None:
        """Lower the score of a peer's key (or its host when no key is known) by ``times`` penalties; return a new ban, if any.

        The reason and the resulting score are logged; a ban is logged at
        WARNING.
        """
        subject = f"key:{node_key.hex()}" if node_key is not None else f"host:{host}"
        score = self._score(subject, now)
        score.points -= penalty.points * times
        score.penalties += times
        logger.info("peer %s scored %d (%s): %s; score now %.0f", subject, -penalty.points * times, penalty.value, reason, score.points)
        if score.points >= self.limits.ban_threshold or (score.banned_until is not None and score.banned_until > now):
            return None
        score.banned_until = now + self.limits.ban_seconds
        score.ban_reason = reason
        logger.warning("banned peer %s for %.0f s: score %.0f is below %.0f; last reason: %s",
                       subject, self.limits.ban_seconds, score.points, self.limits.ban_threshold, reason)
        return Ban(subject, score.banned_until, reason)

    def reward(self, node_key: bytes, points: float, now: float) -> None:
        """Raise a key's score for useful items, up to 100."""
        score = self._score(f"key:{node_key.hex()}", now)
        score.points = min(100.0, score.points + points)

    def score_of(self, node_key: bytes | None, host: str | None, now: float) -> float:
        """Return the current score of a key, or of a host when ``node_key`` is None."""
        subject = f"key:{node_key.hex()}" if node_key is not None else f"host:{host}"
        if subject not in self._scores:
            return 0.0
        return self._score(subject, now).points

    def banned(self, node_key: bytes | None, host: str | None, now: float) -> Ban | None:
        """Return the active ban of the key or the host, or None."""
        subjects = []
        if node_key is not None:
            subjects.append(f"key:{node_key.hex()}")
        if host is not None:
            subjects.append(f"host:{host}")
        for subject in subjects:
            score = self._scores.get(subject)
            if score is not None and score.banned_until is not None and score.banned_until > now:
                return Ban(subject, score.banned_until, score.ban_reason or "")
        return None

    def bans(self, now: float) -> list[Ban]:
        """Return every active ban."""
        return [
            Ban(subject, score.banned_until, score.ban_reason or "")
            for subject, score in self._scores.items()
            if score.banned_until is not None and score.banned_until > now
        ]

    def scores_json(self, now: float) -> list[dict[str, Any]]:
        """Return every kept score for ``/peers.json``."""
        rows = []
        for subject in list(self._scores):
            score = self._score(subject, now)
            banned = score.banned_until is not None and score.banned_until > now
            rows.append(
                {
                    "peer": subject,
                    "score": round(score.points, 2),
                    "penalties": score.penalties,
                    "banned_for_seconds": round(score.banned_until - now, 3) if banned and score.banned_until else None,
                    "ban_reason": score.ban_reason if banned else None,
                }
            )
        return rows


def host_of(address: str) -> str:
    """Return the host of ``HOST:PORT`` (IPv6 without brackets), or the text itself when it is not one."""
    try:
        return split_host_port(address)[0]
    except ValueError:
        return address
