"""Write ops: blocking functions the group-commit writer runs in its transaction.

Each takes its arguments first and the writing connection last, so the store binds them
with :func:`functools.partial` and hands the writer a one-argument callable. Each runs in
its own savepoint: raising (``LeaseLost``, ``StoreError``, ``sqlite3.Error``) rolls back that
op alone.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Collection, Sequence

from zonemta.store.errors import LeaseLost, StoreError
from zonemta.store.records import (
    BlacklistEntry,
    Delivery,
    DeliveryKey,
    MessageRecord,
    NewDelivery,
    RowState,
    SuppressionEntry,
)
from zonemta.store.sqlite.schema import DELIVERY_COLUMNS, UNLOCKED_STATE_SQL, row_to_delivery

#: The order lease() returns rows in (a C key function: no Python call per row).
_LEASE_ORDER = operator.attrgetter("next_attempt", "message_id", "seq")

_HELD = "message_id = ? AND seq = ? AND state = 'locked' AND lease_owner = ?"


def insert_chunk(message_id: str, idx: int, data: bytes, conn: sqlite3.Connection) -> None:
    """Store one body chunk (an orphan until its message row is committed)."""
    conn.execute(
        "INSERT INTO chunks (message_id, idx, data) VALUES (?, ?, ?)", (message_id, idx, data)
    )


def commit_message(
    message: MessageRecord,
    meta_json: str,
    tail: bytes,
    stored_chunks: int,
    deliveries: Sequence[NewDelivery],
    conn: sqlite3.Connection,
) -> None:
    """Write the body's last chunk, the message row and its delivery rows. Raises
    :class:`StoreError` if chunks handed over earlier are missing (one failed)."""
    chunk_count = stored_chunks
    if tail:
        insert_chunk(message.id, chunk_count, tail, conn)
        chunk_count += 1
    (found,) = conn.execute(
        "SELECT COUNT(*) FROM chunks WHERE message_id = ?", (message.id,)
    ).fetchone()
    if found != chunk_count:
        raise StoreError(
            f"body of {message.id} is incomplete: {found} of {chunk_count} chunks stored"
        )
    conn.execute(
        "INSERT INTO messages (id, mail_from, headers, body_size, chunk_count, received_at, meta)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            message.id,
            message.mail_from,
            message.headers,
            message.body_size,
            chunk_count,
            message.received_at,
            meta_json,
        ),
    )
    conn.executemany(
        "INSERT INTO deliveries (message_id, seq, recipient, domain, zone, state, attempts,"
        " created, next_attempt, due) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
        [
            (
                message.id,
                d.seq,
                d.recipient,
                d.domain,
                d.zone,
                message.received_at,
                d.next_attempt,
                d.next_attempt,
            )
            for d in deliveries
        ],
    )


def discard_body(message_id: str, conn: sqlite3.Connection) -> None:
    """Delete the chunks of a body whose message was never committed. A committed message's
    chunks are left alone (a commit that was cancelled after it ran still stands)."""
    conn.execute(
        "DELETE FROM chunks WHERE message_id = ?"
        " AND NOT EXISTS (SELECT 1 FROM messages WHERE id = ?)",
        (message_id, message_id),
    )


def lease(
    zone: str,
    owner: str,
    now: float,
    lease_until: float,
    limit: int,
    skip_domains: Collection[str],
    skip_messages: Collection[str],
    conn: sqlite3.Connection,
) -> list[Delivery]:
    """Lock up to ``limit`` due rows of ``zone`` for ``owner``, oldest due first."""
    if limit <= 0:
        return []
    skip = json.dumps(sorted(skip_domains)) if skip_domains else "[]"
    held = json.dumps(sorted(skip_messages)) if skip_messages else "[]"
    rows = conn.execute(
        f"UPDATE deliveries SET state = 'locked', lease_owner = ?, lease_until = ?, due = ?"
        f" WHERE rowid IN ("
        f"  SELECT rowid FROM deliveries"
        f"  WHERE zone = ? AND due <= ? AND (state != 'locked' OR lease_until < ?)"
        f"   AND domain NOT IN (SELECT value FROM json_each(?))"
        f"   AND message_id NOT IN (SELECT value FROM json_each(?))"
        f"  ORDER BY due LIMIT ?)"
        f" RETURNING {DELIVERY_COLUMNS}",
        (owner, lease_until, lease_until, zone, now, now, skip, held, limit),
    ).fetchall()
    leased = [row_to_delivery(row) for row in rows]
    leased.sort(key=_LEASE_ORDER)
    return leased


def renew(
    keys: Sequence[DeliveryKey], owner: str, lease_until: float, conn: sqlite3.Connection
) -> None:
    """Move the lease expiry of the rows ``owner`` still holds."""
    conn.executemany(
        f"UPDATE deliveries SET lease_until = ?, due = ? WHERE {_HELD}",
        [(lease_until, lease_until, k.message_id, k.seq, owner) for k in keys],
    )


def release(
    key: DeliveryKey, owner: str, next_attempt: float, state: RowState, conn: sqlite3.Connection
) -> None:
    """Unlock a row without counting an attempt, in ``state``; a row ``owner`` does not
    hold is left as it is (whoever holds it now decides its fate)."""
    conn.execute(
        f"UPDATE deliveries SET state = ?, lease_owner = NULL,"
        f" lease_until = NULL, next_attempt = ?, due = ? WHERE {_HELD}",
        (state.value, next_attempt, next_attempt, key.message_id, key.seq, owner),
    )


def _key_params(key: DeliveryKey, owner: str) -> tuple[str, int, str]:
    """The parameters of :data:`_HELD`."""
    return (key.message_id, key.seq, owner)


def defer(
    key: DeliveryKey,
    owner: str,
    now: float,
    next_attempt: float,
    response: str,
    delay_notified: bool,
    conn: sqlite3.Connection,
) -> None:
    """Count a failed attempt. Raises :class:`LeaseLost` if ``owner`` does not hold the row."""
    cur = conn.execute(
        f"UPDATE deliveries SET state = 'deferred', attempts = attempts + 1,"
        f" lease_owner = NULL, lease_until = NULL, next_attempt = ?, due = ?,"
        f" last_response = ?, first_failure = COALESCE(first_failure, ?),"
        f" delay_notified = MAX(delay_notified, ?) WHERE {_HELD}",
        (next_attempt, next_attempt, response, now, int(delay_notified), *_key_params(key, owner)),
    )
    if cur.rowcount != 1:
        raise LeaseLost(f"delivery {key} is not leased by {owner}")


def complete(key: DeliveryKey, owner: str, conn: sqlite3.Connection) -> bool:
    """Remove a finished row, and its message and body if it was the last one. Raises
    :class:`LeaseLost` if ``owner`` does not hold the row. True when a large body's chunks
    remain to be deleted in slices (:func:`delete_chunk_slice`)."""
    message_id = key.message_id
    cur = conn.execute(f"DELETE FROM deliveries WHERE {_HELD}", (message_id, key.seq, owner))
    if cur.rowcount != 1:
        raise LeaseLost(f"delivery {key} is not leased by {owner}")
    # The message row goes with its last delivery, in one statement that says how many
    # chunks the body has (the common case: a message of one recipient).
    deleted = conn.execute(_DELETE_LAST_MESSAGE, (message_id, message_id)).fetchall()
    if deleted:
        return _delete_chunks(message_id, deleted[0][0], conn)
    remaining = conn.execute(
        "SELECT 1 FROM deliveries WHERE message_id = ? LIMIT 1", (message_id,)
    ).fetchone()
    return remaining is None and _delete_message(message_id, conn)


#: Deletes the message row when no delivery of it is left; returns its chunk_count.
_DELETE_LAST_MESSAGE = (
    "DELETE FROM messages WHERE id = ?"
    " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?)"
    " RETURNING chunk_count"
)


def recover_leases(owner: str, conn: sqlite3.Connection) -> int:
    """Unlock every row leased by ``owner``, due at its old ``next_attempt``."""
    cur = conn.execute(
        f"UPDATE deliveries SET state = {UNLOCKED_STATE_SQL}, lease_owner = NULL,"
        f" lease_until = NULL, due = next_attempt"
        f" WHERE lease_owner = ? AND state = 'locked'",
        (owner,),
    )
    return cur.rowcount


def remove_orphans(live_bodies: frozenset[str], conn: sqlite3.Connection) -> int:
    """Delete messages without deliveries, and chunks without a message unless their body
    is still being written or being deleted in slices (``live_bodies``). Returns how many
    message ids were cleaned."""
    orphan_messages = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM messages AS m"
            " WHERE NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.message_id = m.id)"
        )
    ]
    for message_id in orphan_messages:
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
    orphan_bodies = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT message_id FROM chunks AS c"
            " WHERE NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.id = c.message_id)"
        )
        if row[0] not in live_bodies
    ]
    conn.executemany("DELETE FROM chunks WHERE message_id = ?", [(m,) for m in orphan_bodies])
    return len({*orphan_messages, *orphan_bodies})


def _matching(message_id: str, seq: int | None) -> tuple[str, tuple[object, ...]]:
    if seq is None:
        return "message_id = ? AND state != 'locked'", (message_id,)
    return "message_id = ? AND seq = ? AND state != 'locked'", (message_id, seq)


def reschedule(
    message_id: str, seq: int | None, next_attempt: float, conn: sqlite3.Connection
) -> int:
    """Make unleased deliveries due at ``next_attempt``; returns how many."""
    where, args = _matching(message_id, seq)
    cur = conn.execute(
        f"UPDATE deliveries SET next_attempt = ?, due = ? WHERE {where}",
        (next_attempt, next_attempt, *args),
    )
    return cur.rowcount


def remove_deliveries(
    message_id: str, seq: int | None, conn: sqlite3.Connection
) -> tuple[int, bool]:
    """Delete unleased deliveries, and the message with the last one; returns how many, and
    whether a large body's chunks remain to be deleted in slices."""
    where, args = _matching(message_id, seq)
    cur = conn.execute(f"DELETE FROM deliveries WHERE {where}", args)
    removed = cur.rowcount
    reap = False
    if removed:
        remaining = conn.execute(
            "SELECT 1 FROM deliveries WHERE message_id = ? LIMIT 1", (message_id,)
        ).fetchone()
        if remaining is None:
            reap = _delete_message(message_id, conn)
    return removed, reap


def add_suppression(
    entry_id: str,
    address: str | None,
    domain: str | None,
    now: float,
    conn: sqlite3.Connection,
) -> SuppressionEntry:
    """Insert an entry unless the same address/domain exists; returns the stored entry."""
    conn.execute(
        "INSERT OR IGNORE INTO suppressions (id, created, address, domain) VALUES (?, ?, ?, ?)",
        (entry_id, now, address, domain),
    )
    column, value = ("address", address) if address is not None else ("domain", domain)
    row = conn.execute(
        f"SELECT id, created, address, domain FROM suppressions WHERE {column} = ?", (value,)
    ).fetchone()
    return SuppressionEntry(id=row[0], created=row[1], address=row[2], domain=row[3])


def remove_suppression(entry_id: str, conn: sqlite3.Connection) -> bool:
    cur = conn.execute("DELETE FROM suppressions WHERE id = ?", (entry_id,))
    return cur.rowcount > 0


def put_blacklist(entry: BlacklistEntry, conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO blacklist (domain, address, created, expires, response)"
        " VALUES (?, ?, ?, ?, ?)",
        (entry.domain, entry.address, entry.created, entry.expires, entry.response),
    )


def purge_blacklist(now: float, conn: sqlite3.Connection) -> int:
    return conn.execute("DELETE FROM blacklist WHERE expires <= ?", (now,)).rowcount


#: Chunk rows deleted per writer operation. Freeing a large body's pages takes sqlite a
#: while (it walks every overflow page); in slices, other writes are not held up behind it.
CHUNK_SLICE = 16


def _delete_message(message_id: str, conn: sqlite3.Connection) -> bool:
    """Delete the message and its body; a body of more than :data:`CHUNK_SLICE` chunks
    loses only its first slice here. Returns True when chunks remain (they are orphans
    now, invisible to readers, and :func:`delete_chunk_slice` takes them in turns)."""
    row = conn.execute("SELECT chunk_count FROM messages WHERE id = ?", (message_id,)).fetchone()
    conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
    return _delete_chunks(message_id, None if row is None else row[0], conn)


def _delete_chunks(message_id: str, chunk_count: int | None, conn: sqlite3.Connection) -> bool:
    """The body part of :func:`_delete_message`, once the message row is gone
    (``chunk_count``: the row's, None when there was no row)."""
    if chunk_count is not None and chunk_count <= CHUNK_SLICE:
        conn.execute("DELETE FROM chunks WHERE message_id = ?", (message_id,))
        return False
    return delete_chunk_slice(message_id, CHUNK_SLICE, conn) == CHUNK_SLICE


def delete_chunk_slice(message_id: str, limit: int, conn: sqlite3.Connection) -> int:
    """Delete up to ``limit`` chunk rows of ``message_id``; returns how many."""
    cur = conn.execute(
        "DELETE FROM chunks WHERE message_id = ? AND idx IN"
        " (SELECT idx FROM chunks WHERE message_id = ? ORDER BY idx LIMIT ?)",
        (message_id, message_id, limit),
    )
    return cur.rowcount
