"""Reads: a small pool of read-only connections and the queries run on them.

WAL lets readers run beside the writer: each query sees the last committed state. Queries
take their arguments first and the connection last (bound with :func:`functools.partial`)
and run in a worker thread through :meth:`ReadPool.run`.
"""

from __future__ import annotations

import json
import queue
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from zonemta.store.errors import StoreError
from zonemta.store.meta import meta_from_document
from zonemta.store.records import (
    BlacklistEntry,
    Delivery,
    MessageRecord,
    SuppressionEntry,
    ZoneCounts,
    normalize_address,
)
from zonemta.store.sqlite.schema import DELIVERY_COLUMNS, connect_reader, row_to_delivery

T = TypeVar("T")


class ReadPool:
    """``size`` read connections; at most ``size`` queries run at once, each on its own
    connection (the limiter hands out as many threads as there are connections)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a read pool needs at least one connection")
        self._size = size
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._limiter = trio.CapacityLimiter(size)
        self._closing = False

    def open(self, db_path: Path) -> None:
        """Open the connections (blocking; worker thread). Raises :class:`sqlite3.Error`."""
        for _ in range(self._size):
            conn = connect_reader(db_path)
            self._all.append(conn)
            self._idle.put(conn)

    def close(self) -> None:
        """Close every connection now (blocking; for a pool no query is using)."""
        for conn in self._all:
            conn.close()
        self._all.clear()

    async def aclose(self) -> None:
        """Wait for running queries to finish, then close every connection. New queries
        fail with StoreError from the start of this call."""
        self._closing = True
        tokens = [object() for _ in range(self._size)]
        for token in tokens:
            await self._limiter.acquire_on_behalf_of(token)
        try:
            await trio.to_thread.run_sync(self.close)
        finally:
            for token in tokens:
                self._limiter.release_on_behalf_of(token)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on an idle connection in a worker thread. Raises :class:`StoreError`
        when the pool is not open or sqlite fails."""
        if self._closing or not self._all:
            raise StoreError("the store is not open")
        try:
            return await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # The limiter guarantees an idle connection for every running thread.
        conn = self._idle.get_nowait()
        try:
            return fn(conn)
        finally:
            self._idle.put(conn)


def get_message(message_id: str, conn: sqlite3.Connection) -> MessageRecord | None:
    row = conn.execute(
        "SELECT mail_from, headers, body_size, received_at, meta FROM messages WHERE id = ?",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    mail_from, headers, body_size, received_at, meta = row
    return MessageRecord(
        id=message_id,
        mail_from=mail_from,
        headers=bytes(headers),
        body_size=body_size,
        received_at=received_at,
        meta=meta_from_document(_json_meta(meta, message_id), message_id=message_id),
    )


def _json_meta(text: str, message_id: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreError(f"stored meta of {message_id} is not JSON: {exc}") from exc


def body_start(
    message_id: str, limit: int, conn: sqlite3.Connection
) -> tuple[int, list[tuple[int, bytes]]] | None:
    """How many chunks the committed body has and its first ``limit`` chunks (one thread
    hop for a small body), or None if the message does not exist."""
    row = conn.execute("SELECT chunk_count FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        return None
    total = int(row[0])
    return total, read_chunks(message_id, 0, min(limit, total), conn) if total else []


def read_chunks(
    message_id: str, start: int, limit: int, conn: sqlite3.Connection
) -> list[tuple[int, bytes]]:
    """Up to ``limit`` chunks from index ``start`` on, in order."""
    return [
        (int(idx), bytes(data))
        for idx, data in conn.execute(
            "SELECT idx, data FROM chunks WHERE message_id = ? AND idx >= ? ORDER BY idx LIMIT ?",
            (message_id, start, limit),
        )
    ]


def deliveries_of(message_id: str, conn: sqlite3.Connection) -> list[Delivery]:
    return [
        row_to_delivery(row)
        for row in conn.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_id = ? ORDER BY seq",
            (message_id,),
        )
    ]


def next_due(zone: str, conn: sqlite3.Connection) -> float | None:
    # For unlocked rows ``due`` is ``next_attempt``, and the (zone, due, state) index
    # answers this without touching the table.
    row = conn.execute(
        "SELECT due FROM deliveries WHERE zone = ? AND state != 'locked' ORDER BY due LIMIT 1",
        (zone,),
    ).fetchone()
    return None if row is None else float(row[0])


def leased_elsewhere(zone: str, owner: str, now: float, conn: sqlite3.Connection) -> dict[str, int]:
    # A leased row's ``due`` is its lease_until: the (zone, due, state) index finds them.
    rows = conn.execute(
        "SELECT domain, COUNT(*) FROM deliveries WHERE zone = ? AND due > ?"
        " AND state = 'locked' AND lease_owner != ? GROUP BY domain",
        (zone, now, owner),
    )
    return {str(domain): int(count) for domain, count in rows}


def zone_counts(now: float, conn: sqlite3.Connection) -> dict[str, ZoneCounts]:
    rows = conn.execute(
        "SELECT zone,"
        " SUM(CASE WHEN state = 'locked' OR due <= ? THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN state != 'locked' AND due > ? THEN 1 ELSE 0 END)"
        " FROM deliveries GROUP BY zone",
        (now, now),
    ).fetchall()
    return {zone: ZoneCounts(active=int(a), deferred=int(d)) for zone, a, d in rows}


def domain_counts(
    now: float, zone: str | None, conn: sqlite3.Connection
) -> dict[tuple[str, str], ZoneCounts]:
    # The (zone, domain, due, state) index covers the query and is in GROUP BY order: one
    # pass over the index, no table rows and no sort.
    where, args = ("WHERE zone = ?", (now, now, zone)) if zone is not None else ("", (now, now))
    rows = conn.execute(
        "SELECT zone, domain,"
        " SUM(CASE WHEN state = 'locked' OR due <= ? THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN state != 'locked' AND due > ? THEN 1 ELSE 0 END)"
        f" FROM deliveries INDEXED BY deliveries_by_domain {where} GROUP BY zone, domain",
        args,
    ).fetchall()
    return {(z, d): ZoneCounts(active=int(a), deferred=int(n)) for z, d, a, n in rows}


def list_deliveries(
    zone: str,
    deferred: bool,
    now: float,
    start: int,
    limit: int,
    descending: bool,
    conn: sqlite3.Connection,
) -> list[Delivery]:
    which = "state != 'locked' AND due > ?" if deferred else "(state = 'locked' OR due <= ?)"
    order = "DESC" if descending else "ASC"
    return [
        row_to_delivery(row)
        for row in conn.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE zone = ? AND {which}"
            f" ORDER BY created {order}, message_id {order}, seq {order} LIMIT ? OFFSET ?",
            (zone, now, limit, start),
        )
    ]


def list_suppressions(conn: sqlite3.Connection) -> list[SuppressionEntry]:
    return [
        SuppressionEntry(id=row[0], created=row[1], address=row[2], domain=row[3])
        for row in conn.execute(
            "SELECT id, created, address, domain FROM suppressions ORDER BY created DESC, id"
        )
    ]


def is_suppressed(recipient: str, conn: sqlite3.Connection) -> bool:
    address = normalize_address(recipient)
    domain = address.rpartition("@")[2]
    row = conn.execute(
        "SELECT 1 FROM suppressions WHERE address = ? OR domain = ? LIMIT 1", (address, domain)
    ).fetchone()
    return row is not None


def list_blacklist(now: float, conn: sqlite3.Connection) -> list[BlacklistEntry]:
    return [
        BlacklistEntry(
            domain=row[0], address=row[1], created=row[2], expires=row[3], response=row[4]
        )
        for row in conn.execute(
            "SELECT domain, address, created, expires, response FROM blacklist"
            " WHERE expires > ? ORDER BY expires, domain, address",
            (now,),
        )
    ]
