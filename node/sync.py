"""Pull anti-entropy: reconciliation sessions over one peer connection.

Either side of a connection may start a session with a ``reconcile``
message of round 0. The side that opened the TCP connection numbers its
sessions 0, 2, 4, ...; the side that accepted it numbers them 1, 3, 5, ...,
so two sessions started at once never share a number or a key
(``Connection.reconcile_key``). Rounds count the messages of one session,
from 0, in both directions: the reply to round r is round r + 1.

Each side runs at most one session it started and one the peer started.
A new session from the peer replaces the peer's earlier one. When a session
ends, each side requests the ids it lacks (``need_ids``) from this peer
through the session's fetcher; the peer does the same, so one session
syncs both sides. A session that times out or whose connection drops is
dropped; the next interval starts a fresh one, which finds the remaining
difference again (resume means redo).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from protocol import Reconciler, ReconcileReceived, WireError
from protocol.reconcile import SessionState

from .peers import Penalty

if TYPE_CHECKING:
    from .session import PeerSession

__all__ = ["ReconcileResult", "Reconciliations"]

logger = logging.getLogger("pith_mirror.gossip.sync")

# Session numbers are 32-bit counters on the wire.
_MAX_SESSION_NUMBER = 2**32 - 1
# Sessions the peer may start per rate window before it counts as a flood.
MAX_PEER_SESSIONS_PER_WINDOW = 8


@dataclass
class ReconcileResult:
    """The outcome of one reconciliation session, for logs and ``/status.json``."""

    session: int
    initiator: bool
    local_ids: int
    have: int
    need: int
    messages_sent: int
    messages_received: int
    bytes_sent: int
    bytes_received: int
    seconds: float
    outcome: str


@dataclass
class _Active:
    number: int
    reconciler: Reconciler
    initiator: bool
    local_ids: int
    started: float = field(default_factory=time.monotonic)
    next_round: int = 0
    finished: trio.Event = field(default_factory=trio.Event)
    outcome: str = "running"


class Reconciliations:
    """The reconciliation sessions of one peer connection."""

    def __init__(self, session: PeerSession) -> None:
        self.session = session
        self._next_number = 0 if session.initiated else 1
        self._ours: _Active | None = None
        self._theirs: _Active | None = None
        self.completed = 0
        self.last_result: ReconcileResult | None = None
        self._started_ours = 0
        self._started_theirs = 0

    @property
    def busy(self) -> bool:
        """Whether a session this side started is running."""
        return self._ours is not None

    async def initiate(self) -> ReconcileResult | None:
        """Run one session as initiator until it ends, times out or the connection drops.

        Returns the result, or None when a session of ours is already
        running or the connection is not ready.
        """
        session = self.session
        if self._ours is not None or not session.ready:
            return None
        number = self._next_number
        if number > _MAX_SESSION_NUMBER:
            return None
        self._next_number += 2

        snapshot = await session.node.snapshot(fresh=self._started_ours == 0)
        self._started_ours += 1
        # The connection may have closed while the snapshot was built.
        if not session.conn.ready:
            return None
        key = session.conn.reconcile_key(number)
        reconciler = await session.node.in_thread(self._reconciler, snapshot.ids, key)
        if self._ours is not None or not session.conn.ready:
            return None
        active = _Active(number, reconciler, True, len(snapshot.ids))
        self._ours = active
        try:
            payload = reconciler.initiate()
            active.next_round = 1
            session.send_control(lambda conn: conn.send_reconcile(number, 0, payload))
            with trio.move_on_after(session.node.settings.session_timeout) as scope:
                await active.finished.wait()
            if scope.cancelled_caught:
                active.outcome = "timed out"
        finally:
            if self._ours is active:
                self._ours = None
            if active.outcome == "running":
                active.outcome = "connection closed"
        return self._finish(active)

    async def on_message(self, event: ReconcileReceived) -> None:
        """Process a ``reconcile`` message from the peer (called by the session's read loop)."""
        session = self.session
        if not session.conn.ready:
            # A later frame of the same chunk broke the protocol; the
            # session is closing.
            return
        ours = event.session % 2 == (0 if session.initiated else 1)
        if ours:
            active = self._ours
            if active is None or active.number != event.session:
                # A reply to a session that already timed out.
                logger.debug("ignored reconcile round %d of finished session %d from %s", event.round, event.session, session.describe())
                return
        else:
            active = self._theirs
            if active is None or active.number != event.session:
                if event.round != 0:
                    logger.debug("ignored reconcile round %d of unknown session %d from %s", event.round, event.session, session.describe())
                    return
                if not session.count("sessions", 1, MAX_PEER_SESSIONS_PER_WINDOW):
                    return
                active = await self._start_responder(event.session)

        if event.round != active.next_round:
            session.violation(Penalty.PROTOCOL_VIOLATION, f"reconcile session {event.session} sent round {event.round}, expected {active.next_round}")
            return
        try:
            reply = await self.session.node.in_thread(active.reconciler.receive, event.payload)
        except WireError as error:
            active.outcome = f"failed: {error}"
            active.finished.set()
            self._drop(active)
            session.violation(Penalty.PROTOCOL_VIOLATION, f"invalid reconcile payload in session {event.session}: {error}")
            return

        if reply is not None:
            round_number = event.round + 1
            active.next_round = event.round + 2
            session.send_control(lambda conn: conn.send_reconcile(active.number, round_number, reply))
        if active.reconciler.state is SessionState.DONE:
            active.outcome = "stopped early: need limit" if active.reconciler.stopped_early else "done"
            active.finished.set()
            self._drop(active)
            if not active.initiator:
                self._finish(active)

    async def _start_responder(self, number: int) -> _Active:
        snapshot = await self.session.node.snapshot(fresh=self._started_theirs == 0)
        self._started_theirs += 1
        key = self.session.conn.reconcile_key(number)
        reconciler = await self.session.node.in_thread(self._reconciler, snapshot.ids, key)
        if self._theirs is not None:
            self._theirs.outcome = "replaced by a newer session"
            self._finish(self._theirs)
        active = _Active(number, reconciler, False, len(snapshot.ids))
        self._theirs = active
        return active

    def _reconciler(self, ids: Any, key: bytes) -> Reconciler:
        settings = self.session.node.settings
        return Reconciler(ids, key, frame_budget=settings.reconcile_frame_budget, need_limit=settings.reconcile_need_limit)

    def _drop(self, active: _Active) -> None:
        if self._theirs is active:
            self._theirs = None

    def _finish(self, active: _Active) -> ReconcileResult:
        reconciler = active.reconciler
        need = reconciler.need_ids
        result = ReconcileResult(
            session=active.number,
            initiator=active.initiator,
            local_ids=active.local_ids,
            have=len(reconciler.have_ids),
            need=len(need),
            messages_sent=reconciler.messages_sent,
            messages_received=reconciler.messages_received,
            bytes_sent=reconciler.bytes_sent,
            bytes_received=reconciler.bytes_received,
            seconds=round(time.monotonic() - active.started, 3),
            outcome=active.outcome,
        )
        self.completed += 1
        self.last_result = result
        self.session.node.record_reconciliation(self.session, result)
        if need:
            # Ids found before a timeout or failure are real differences
            # too, so they are fetched whatever the outcome. Ids beyond the
            # node's fetch backlog are left to a later session.
            room = self.session.node.fetch_room(self.session)
            if room < len(need):
                logger.info(
                    "queued %d of %d ids found in reconciliation %d with %s; the fetch backlog is full and a later session finds the rest",
                    room, len(need), active.number, self.session.describe(),
                )
            self.session.queue_fetch(sorted(need)[:room])
        return result
