"""The sqlite side of suspensions (the ``suspensions`` table), the credit of held time, and
the shared counters (``counters``).

The write functions take the writing connection last (they run in the group-commit
writer); :func:`list_suspensions` runs on a read connection.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Final

from zonemta.store.records import Suspension

_COLUMNS: Final = (
    "id, created, zone, domain, source, message_id, until, reason, who, rule, response,"
    " max_connections"
)


def _entry(row: tuple[Any, ...]) -> Suspension:
    (
        entry_id,
        created,
        zone,
        domain,
        source,
        message_id,
        until,
        reason,
        who,
        rule,
        response,
        max_connections,
    ) = row
    return Suspension(
        id=entry_id,
        created=created,
        zone=zone,
        domain=domain,
        source=source,
        message_id=message_id,
        until=until,
        reason=reason,
        who=who,
        rule=rule,
        response=response,
        max_connections=max_connections,
    )


def add_suspension(entry: Suspension, conn: sqlite3.Connection) -> None:
    conn.execute(
        f"INSERT INTO suspensions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry.id,
            entry.created,
            entry.zone,
            entry.domain,
            entry.source,
            entry.message_id,
            entry.until,
            entry.reason,
            entry.who,
            entry.rule,
            entry.response,
            entry.max_connections,
        ),
    )


def list_suspensions(now: float, conn: sqlite3.Connection) -> list[Suspension]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM suspensions WHERE until IS NULL OR until > ? ORDER BY created, id",
        (now,),
    )
    return [_entry(row) for row in rows]


def _credit(entry: Suspension, now: float, conn: sqlite3.Connection) -> None:
    """Move ``created`` of the deliveries ``entry`` held forward by the time it held them."""
    seconds = entry.held_seconds(now)
    if entry.source is not None or entry.max_connections is not None or seconds <= 0:
        return
    if entry.message_id is not None:
        where, params = "message_id = ?", [entry.message_id]
    else:
        clauses, params = [], []
        for column, value in (("zone", entry.zone), ("domain", entry.domain)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = " AND ".join(clauses)
    conn.execute(f"UPDATE deliveries SET created = created + ? WHERE {where}", (seconds, *params))


def remove_suspension(entry_id: str, now: float, conn: sqlite3.Connection) -> Suspension | None:
    row = conn.execute(
        f"DELETE FROM suspensions WHERE id = ? RETURNING {_COLUMNS}", (entry_id,)
    ).fetchone()
    if row is None:
        return None
    entry = _entry(row)
    _credit(entry, now, conn)
    return entry


def expire_suspensions(now: float, conn: sqlite3.Connection) -> list[Suspension]:
    rows = conn.execute(
        f"DELETE FROM suspensions WHERE until IS NOT NULL AND until <= ? RETURNING {_COLUMNS}",
        (now,),
    ).fetchall()
    entries = [_entry(row) for row in rows]
    for entry in entries:
        _credit(entry, now, conn)
    return entries


def credit_held_time(
    zone: str | None, domains: tuple[str, ...], seconds: float, conn: sqlite3.Connection
) -> None:
    if not domains or seconds <= 0:
        return
    where = f"domain IN ({', '.join('?' * len(domains))})"
    params: list[object] = [seconds, *domains]
    if zone is not None:
        where += " AND zone = ?"
        params.append(zone)
    conn.execute(f"UPDATE deliveries SET created = created + ? WHERE {where}", params)


def add_to_counter(name: str, amount: int, expires: float, conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "INSERT INTO counters (name, value, expires) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value,"
        " expires = MAX(expires, excluded.expires) RETURNING value",
        (name, amount, expires),
    ).fetchone()
    return int(row[0])


def get_counters(names: tuple[str, ...], conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute(
        "SELECT name, value FROM counters WHERE name IN (SELECT value FROM json_each(?))",
        (json.dumps(list(names)),),
    )
    return {str(name): int(value) for name, value in rows}


def purge_counters(now: float, conn: sqlite3.Connection) -> int:
    return conn.execute("DELETE FROM counters WHERE expires <= ?", (now,)).rowcount
