"""Schema of the mirror store and the migrations that build it.

``MIGRATIONS[i]`` takes a store from schema version ``i`` to ``i + 1``; a
new file is version 0. ``node.store`` runs every missing step and then
writes the new ``schema_version`` row, all in one transaction, so a store is
never left half migrated. Each step issues its statements one at a time
through ``Connection.execute``, because ``executescript`` would commit the
open transaction first.

Add a step to change the schema; never edit a step that has shipped,
because stores in the field have already run it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION"]

# Written to the SQLite header (PRAGMA application_id) so that tools such as
# file(1) and this module can tell a pith-mirror store from another SQLite
# file. The value is the ASCII bytes "PITH".
APPLICATION_ID = 0x50495448


def _create_data_tables(conn: sqlite3.Connection) -> None:
    """Version 1: records, aliases, events, states, meta and row counters."""
    statements = [
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
        # One row per canonical record. The rowid is the arrival order.
        # record_json is the canonical JSON, so its SHA-256 is canonical_sha256.
        # proven is 1 when the record's state contains a record_created
        # event, whose registry receipt the merge has verified.
        """CREATE TABLE records (
            pith_number TEXT NOT NULL PRIMARY KEY,
            suffix TEXT NOT NULL UNIQUE,
            canonical_sha256 TEXT NOT NULL UNIQUE,
            source_kind TEXT NOT NULL,
            source_id TEXT NOT NULL,
            source_version INTEGER NOT NULL,
            record_json BLOB NOT NULL,
            proven INTEGER NOT NULL DEFAULT 0 CHECK (proven IN (0, 1)),
            received_at INTEGER NOT NULL,
            source TEXT NOT NULL
        )""",
        # Every alias kind has one value per record, because each is derived
        # from the record. lookup_key is the value in lowercase: DOIs are
        # case-insensitive and no two arXiv identifiers differ only in case.
        """CREATE TABLE aliases (
            pith_number TEXT NOT NULL REFERENCES records (pith_number) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            lookup_key TEXT NOT NULL,
            created_at TEXT,
            PRIMARY KEY (pith_number, kind)
        ) WITHOUT ROWID""",
        "CREATE INDEX aliases_by_lookup_key ON aliases (lookup_key, kind)",
        # One row per stored input. seq is the arrival order. An event id is
        # unique within its subject, as the merge groups copies per subject.
        # subject has no foreign key, because an event may arrive before its
        # record (pending = 1 until the record is stored). excluded = 1 marks
        # an event that the current trust configuration finds invalid. It is
        # kept so that a later trust change can bring it back.
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            input_sha256 TEXT NOT NULL UNIQUE,
            event_id TEXT NOT NULL,
            subject TEXT NOT NULL,
            event_type TEXT NOT NULL,
            created_at TEXT NOT NULL,
            signed INTEGER NOT NULL CHECK (signed IN (0, 1)),
            signature_b64 TEXT,
            pending INTEGER NOT NULL CHECK (pending IN (0, 1)),
            excluded INTEGER NOT NULL DEFAULT 0 CHECK (excluded IN (0, 1)),
            received_at INTEGER NOT NULL,
            source TEXT NOT NULL,
            raw_json BLOB NOT NULL,
            UNIQUE (subject, event_id)
        )""",
        "CREATE INDEX events_pending_by_subject ON events (subject) WHERE pending = 1",
        "CREATE INDEX events_pending_by_age ON events (received_at) WHERE pending = 1",
        "CREATE INDEX events_excluded ON events (subject) WHERE excluded = 1",
        # A rowid table, because a state can be hundreds of kilobytes and
        # SQLite stores large rows of WITHOUT ROWID tables inefficiently.
        """CREATE TABLE states (
            pith_number TEXT NOT NULL PRIMARY KEY REFERENCES records (pith_number) ON DELETE CASCADE,
            state_sha256 TEXT NOT NULL,
            state_json BLOB NOT NULL,
            updated_at INTEGER NOT NULL
        )""",
        # Row counts kept by triggers, so that stats() does not scan tables
        # of millions of rows.
        """CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO counters (name, value) VALUES ('records', 0), ('events', 0), ('states', 0), ('pending', 0)",
        """CREATE TRIGGER records_counter_insert AFTER INSERT ON records BEGIN
            UPDATE counters SET value = value + 1 WHERE name = 'records';
        END""",
        """CREATE TRIGGER records_counter_delete AFTER DELETE ON records BEGIN
            UPDATE counters SET value = value - 1 WHERE name = 'records';
        END""",
        """CREATE TRIGGER states_counter_insert AFTER INSERT ON states BEGIN
            UPDATE counters SET value = value + 1 WHERE name = 'states';
        END""",
        """CREATE TRIGGER states_counter_delete AFTER DELETE ON states BEGIN
            UPDATE counters SET value = value - 1 WHERE name = 'states';
        END""",
        """CREATE TRIGGER events_counter_insert AFTER INSERT ON events BEGIN
            UPDATE counters SET value = value + 1 WHERE name = 'events';
            UPDATE counters SET value = value + new.pending WHERE name = 'pending';
        END""",
        """CREATE TRIGGER events_counter_delete AFTER DELETE ON events BEGIN
            UPDATE counters SET value = value - 1 WHERE name = 'events';
            UPDATE counters SET value = value - old.pending WHERE name = 'pending';
        END""",
        """CREATE TRIGGER events_counter_pending AFTER UPDATE OF pending ON events
        WHEN old.pending <> new.pending BEGIN
            UPDATE counters SET value = value + new.pending - old.pending WHERE name = 'pending';
        END""",
    ]
    for statement in statements:
        conn.execute(statement)


def _create_rejections_log(conn: sqlite3.Connection) -> None:
    """Version 2: the bounded log of rejected inputs shown on the status page."""
    conn.execute(
        """CREATE TABLE rejections (
            id INTEGER PRIMARY KEY,
            received_at INTEGER NOT NULL,
            source TEXT NOT NULL,
            input_sha256 TEXT,
            subject TEXT,
            event_id TEXT,
            field TEXT NOT NULL,
            code TEXT NOT NULL,
            reason TEXT NOT NULL
        )"""
    )
    # The log keeps only the newest rows; this counts every rejection.
    conn.execute("INSERT INTO counters (name, value) VALUES ('rejections_total', 0)")


def _index_records_by_source(conn: sqlite3.Connection) -> None:
    """Version 3: find records by their source identifier, for records published without aliases."""
    conn.execute("CREATE INDEX records_by_source ON records (source_kind, lower(source_id))")


def _index_only_looked_up_aliases(conn: sqlite3.Connection) -> None:
    """Version 4: index only the alias kinds that ``resolve`` looks up by value.

    Short Pith numbers are found through the records' suffixes, so half of
    every record's alias rows (``pith_short_8``, ``_12`` and ``_16``) only
    cost index pages at random places on each import.
    """
    conn.execute("DROP INDEX aliases_by_lookup_key")
    conn.execute(
        "CREATE INDEX aliases_by_lookup_key ON aliases (lookup_key, kind) "
        "WHERE kind NOT LIKE 'pith\\_short\\_%' ESCAPE '\\'"
    )


def _count_rows_in_code(conn: sqlite3.Connection) -> None:
    """Version 5: the store keeps the row counts itself; drop the triggers that kept them.

    A statement that fires a trigger keeps a statement journal, a copy of
    every page it changes, and each imported bundle fired eight of them.
    The store now adds each write's row count to ``counters`` in the same
    transaction, once per statement.
    """
    for name in (
        "records_counter_insert",
        "records_counter_delete",
        "states_counter_insert",
        "states_counter_delete",
        "events_counter_insert",
        "events_counter_delete",
        "events_counter_pending",
    ):
        conn.execute(f"DROP TRIGGER {name}")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _create_data_tables,
    _create_rejections_log,
    _index_records_by_source,
    _index_only_looked_up_aliases,
    _count_rows_in_code,
)

SCHEMA_VERSION = len(MIGRATIONS)
