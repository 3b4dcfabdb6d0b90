"""The MongoDB side of suspensions (collection ``suspensions``, ``_id`` = the entry's id),
the credit of held time, and the shared counters (``counters``, ``_id`` = the name).
Blocking; the store runs them in worker threads."""

from __future__ import annotations

from typing import Any, Final

from pymongo import ASCENDING, ReturnDocument

from zonemta.store.mongodb.client import Db
from zonemta.store.mongodb.schema import DELIVERIES
from zonemta.store.records import Suspension

SUSPENSIONS: Final = "suspensions"
COUNTERS: Final = "counters"

_FIELDS: Final = (
    "created",
    "zone",
    "domain",
    "source",
    "message_id",
    "until",
    "reason",
    "who",
    "rule",
    "response",
    "max_connections",
)


def _doc(entry: Suspension) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": entry.id}
    doc.update((name, getattr(entry, name)) for name in _FIELDS)
    return doc


def _entry(doc: dict[str, Any]) -> Suspension:
    fields: dict[str, Any] = {name: doc.get(name) for name in _FIELDS}
    return Suspension(id=str(doc["_id"]), **fields)


def add_suspension(entry: Suspension, db: Db) -> None:
    db[SUSPENSIONS].insert_one(_doc(entry))


def list_suspensions(now: float, db: Db) -> list[Suspension]:
    query = {"$or": [{"until": None}, {"until": {"$gt": now}}]}
    cursor = db[SUSPENSIONS].find(query, sort=[("created", ASCENDING), ("_id", ASCENDING)])
    return [_entry(doc) for doc in cursor]


def _credit(entry: Suspension, now: float, db: Db) -> None:
    """Move ``created`` of the deliveries ``entry`` held forward by the time it held them."""
    seconds = entry.held_seconds(now)
    if entry.source is not None or entry.max_connections is not None or seconds <= 0:
        return
    if entry.message_id is not None:
        query: dict[str, Any] = {"message_id": entry.message_id}
    else:
        query = {
            name: value
            for name, value in (("zone", entry.zone), ("domain", entry.domain))
            if value is not None
        }
    db[DELIVERIES].update_many(query, {"$inc": {"created": seconds}})


def remove_suspension(entry_id: str, now: float, db: Db) -> Suspension | None:
    doc = db[SUSPENSIONS].find_one_and_delete({"_id": entry_id})
    if doc is None:
        return None
    entry = _entry(doc)
    _credit(entry, now, db)
    return entry


def expire_suspensions(now: float, db: Db) -> list[Suspension]:
    """Each expired entry is deleted with ``find_one_and_delete``: of instances expiring at
    the same time, only the one whose delete took it credits its time."""
    removed = []
    for doc in db[SUSPENSIONS].find({"until": {"$ne": None, "$lte": now}}, {"_id": 1}):
        taken = db[SUSPENSIONS].find_one_and_delete({"_id": doc["_id"]})
        if taken is not None:
            entry = _entry(taken)
            _credit(entry, now, db)
            removed.append(entry)
    return removed


def credit_held_time(zone: str | None, domains: tuple[str, ...], seconds: float, db: Db) -> None:
    if not domains or seconds <= 0:
        return
    query: dict[str, Any] = {"domain": {"$in": list(domains)}}
    if zone is not None:
        query["zone"] = zone
    db[DELIVERIES].update_many(query, {"$inc": {"created": seconds}})


def add_to_counter(name: str, amount: int, expires: float, db: Db) -> int:
    doc = db[COUNTERS].find_one_and_update(
        {"_id": name},
        {"$inc": {"value": amount}, "$max": {"expires": expires}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert doc is not None  # upsert=True always returns the document
    return int(doc["value"])


def get_counters(names: tuple[str, ...], db: Db) -> dict[str, int]:
    return {
        str(doc["_id"]): int(doc["value"])
        for doc in db[COUNTERS].find({"_id": {"$in": list(names)}})
    }


def purge_counters(now: float, db: Db) -> int:
    return int(db[COUNTERS].delete_many({"expires": {"$lte": now}}).deleted_count)
