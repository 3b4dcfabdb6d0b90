"""The sqlite queue's schema, connection set-up and row conversion.

Tables
------
``messages``
    One row per stored message: envelope sender, header block (BLOB), metadata (JSON text),
    body size and the number of body chunks (so readers can tell a complete body from one
    that vanished under them).
``chunks``
    The body, as ``(message_id, idx, data)`` rows. A chunk whose message row does not exist
    yet belongs to a body that is being received (or was abandoned: see ``remove_orphans``).
``suspensions``
    Operators' holds and automatic backoffs (:class:`~zonemta.store.base.Suspension`).
``counters``
    Named counters shared by instances (warm-up caps), each with an expiry.
``deliveries``
    One row per recipient. ``due`` is the moment the row can next be leased: ``next_attempt``
    while the row is queued or deferred, ``lease_until`` while it is locked. Indexing
    ``(zone, due, state)`` makes the lease query one range scan over rows that are actually
    leasable, without stepping over the (possibly many) rows that are in flight.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final, Literal

from zonemta.store.records import Delivery, RowState

DB_FILENAME: Final = "queue.sqlite3"

#: Seconds a connection waits for a lock held by another connection before failing.
BUSY_TIMEOUT_SECONDS: Final = 10.0

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    mail_from TEXT NOT NULL,
    headers BLOB NOT NULL,
    body_size INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    received_at REAL NOT NULL,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    message_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (message_id, idx)
);
CREATE TABLE IF NOT EXISTS deliveries (
    message_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    recipient TEXT NOT NULL,
    domain TEXT NOT NULL,
    zone TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'deferred', 'locked')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    next_attempt REAL NOT NULL,
    due REAL NOT NULL,
    first_failure REAL,
    last_response TEXT,
    lease_owner TEXT,
    lease_until REAL,
    delay_notified INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, seq)
);
CREATE INDEX IF NOT EXISTS deliveries_by_due ON deliveries (zone, due, state);
CREATE INDEX IF NOT EXISTS deliveries_by_owner ON deliveries (lease_owner)
    WHERE lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_by_created ON deliveries (zone, created, message_id, seq);
CREATE INDEX IF NOT EXISTS deliveries_by_domain ON deliveries (zone, domain, due, state);
CREATE TABLE IF NOT EXISTS suppressions (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    address TEXT UNIQUE,
    domain TEXT UNIQUE,
    CHECK ((address IS NULL) != (domain IS NULL))
);
CREATE TABLE IF NOT EXISTS blacklist (
    domain TEXT NOT NULL,
    address TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    response TEXT NOT NULL,
    PRIMARY KEY (domain, address)
);
CREATE TABLE IF NOT EXISTS suspensions (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    zone TEXT,
    domain TEXT,
    source TEXT,
    message_id TEXT,
    until REAL,
    reason TEXT NOT NULL,
    who TEXT NOT NULL,
    rule TEXT,
    response TEXT,
    max_connections INTEGER
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires REAL NOT NULL
);
"""

#: The columns :func:`row_to_delivery` expects, in order.
DELIVERY_COLUMNS: Final = (
    "message_id, seq, recipient, domain, zone, state, attempts, created, next_attempt, "
    "first_failure, last_response, lease_owner, lease_until, delay_notified"
)

#: The state a row returns to when its lease ends without an attempt counted.
UNLOCKED_STATE_SQL: Final = "CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END"

Durability = Literal["full", "normal"]

_SYNCHRONOUS: Final[dict[str, str]] = {"full": "FULL", "normal": "NORMAL"}


def _connect(db_path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; the writer issues BEGIN IMMEDIATE itself
    # and readers run each statement in its own snapshot. check_same_thread=False: connections
    # are used from trio's worker threads, one call at a time.
    return sqlite3.connect(
        db_path,
        timeout=BUSY_TIMEOUT_SECONDS,
        isolation_level=None,
        check_same_thread=False,
    )


def connect_writer(db_path: Path, durability: Durability) -> sqlite3.Connection:
    """Open the writing connection: WAL, the requested fsync policy, schema created.

    Blocking; call it from a worker thread. Raises :class:`sqlite3.Error`.
    """
    conn = _connect(db_path)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not enable WAL on {db_path} (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
        # Each op of a group commit runs in its own savepoint, so sqlite keeps a statement
        # journal of the pages the op changes; on disk it spills to a temporary file after
        # 64 KiB and costs about 15 writes per message. In memory it costs a page copy. (The
        # WAL is untouched: durability is the same.)
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.executescript(SCHEMA)
        _add_missing_columns(conn)
    except BaseException:
        conn.close()
        raise
    return conn


# Columns added after the first release: (table, column, definition). A queue written by an
# older zonemta gets them at open.
_ADDED_COLUMNS: Final = (
    ("deliveries", "delay_notified", "INTEGER NOT NULL DEFAULT 0"),
    ("suspensions", "max_connections", "INTEGER"),
)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, column, definition in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def connect_reader(db_path: Path) -> sqlite3.Connection:
    """Open a read-only connection on an existing WAL database. Blocking; raises
    :class:`sqlite3.Error`."""
    conn = _connect(db_path)
    conn.execute("PRAGMA query_only=ON")
    return conn


#: RowState by stored value: a dict lookup instead of calling the Enum (two Python calls).
_ROW_STATE_BY_VALUE: dict[object, RowState] = {state.value: state for state in RowState}


def row_to_delivery(row: tuple[Any, ...]) -> Delivery:
    """Build a :class:`Delivery` from a row selected with :data:`DELIVERY_COLUMNS`."""
    (
        message_id,
        seq,
        recipient,
        domain,
        zone,
        state,
        attempts,
        created,
        next_attempt,
        first_failure,
        last_response,
        lease_owner,
        lease_until,
        delay_notified,
    ) = row
    row_state = _ROW_STATE_BY_VALUE.get(state)
    if row_state is None:
        row_state = RowState(state)  # raises ValueError, as it did for every row
    return Delivery(
        message_id=str(message_id),
        seq=int(seq),
        recipient=str(recipient),
        domain=str(domain),
        zone=str(zone),
        state=row_state,
        attempts=int(attempts),
        created=float(created),
        next_attempt=float(next_attempt),
        first_failure=None if first_failure is None else float(first_failure),
        last_response=None if last_response is None else str(last_response),
        lease_owner=None if lease_owner is None else str(lease_owner),
        lease_until=None if lease_until is None else float(lease_until),
        delay_notified=bool(delay_notified),
    )
