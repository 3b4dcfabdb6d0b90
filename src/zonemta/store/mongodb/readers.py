"""Blocking reads of the MongoDB queue (run in worker threads by the store) and the small
suppression-list writes. Held deliveries (a commit in progress) are never listed."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError

from zonemta.store.errors import StoreError
from zonemta.store.mongodb.client import Db
from zonemta.store.mongodb.schema import (
    BLACKLIST,
    CHUNKS,
    DELIVERIES,
    LOCKED,
    MESSAGES,
    SUPPRESSIONS,
    doc_to_blacklist,
    doc_to_delivery,
    doc_to_message,
    doc_to_suppression,
)
from zonemta.store.records import (
    BlacklistEntry,
    Delivery,
    MessageRecord,
    SuppressionEntry,
    ZoneCounts,
    normalize_address,
)

_MESSAGE_FIELDS = {"mail_from": 1, "headers": 1, "body_size": 1, "received_at": 1, "meta": 1}


def get_message(message_id: str, db: Db) -> MessageRecord | None:
    doc = db[MESSAGES].find_one({"_id": message_id}, _MESSAGE_FIELDS)
    return None if doc is None else doc_to_message(doc)


def body_start(
    message_id: str, limit: int, db: Db
) -> tuple[str, int, list[tuple[int, bytes]]] | None:
    """The body's file id, its chunk count and its first ``limit`` chunks (one thread hop
    for a small body), or None if the message does not exist."""
    doc = db[MESSAGES].find_one({"_id": message_id}, {"body_id": 1, "chunk_count": 1})
    if doc is None:
        return None
    body_id, total = str(doc["body_id"]), int(doc["chunk_count"])
    return body_id, total, read_chunks(body_id, 0, min(limit, total), db) if total else []


def read_chunks(body_id: str, start: int, limit: int, db: Db) -> list[tuple[int, bytes]]:
    """Up to ``limit`` GridFS chunks of ``body_id`` from index ``start`` on, in order."""
    cursor = db[CHUNKS].find(
        {"files_id": body_id, "n": {"$gte": start}},
        {"_id": 0, "n": 1, "data": 1},
        sort=[("n", ASCENDING)],
        limit=limit,
    )
    return [(int(doc["n"]), bytes(doc["data"])) for doc in cursor]


def deliveries_of(message_id: str, db: Db) -> list[Delivery]:
    cursor = db[DELIVERIES].find(
        {"message_id": message_id, "held_by": {"$exists": False}}, sort=[("seq", ASCENDING)]
    )
    return [doc_to_delivery(doc) for doc in cursor]


def next_due(zone: str, db: Db) -> float | None:
    # Unleased deliveries have due == next_attempt; held ones have no due at all.
    doc = db[DELIVERIES].find_one(
        {"zone": zone, "due": {"$exists": True}, "state": {"$ne": LOCKED}},
        {"due": 1},
        sort=[("due", ASCENDING)],
    )
    return None if doc is None else float(doc["due"])


def leased_elsewhere(zone: str, owner: str, now: float, db: Db) -> dict[str, int]:
    # A leased delivery's ``due`` is its lease_until; there are no more than the instances
    # have in flight, so they are counted here rather than by an aggregation.
    query = {"zone": zone, "due": {"$gt": now}, "state": LOCKED, "lease_owner": {"$ne": owner}}
    counts: dict[str, int] = {}
    for doc in db[DELIVERIES].find(query, {"domain": 1}):
        counts[doc["domain"]] = counts.get(doc["domain"], 0) + 1
    return counts


def zone_counts(now: float, db: Db) -> dict[str, ZoneCounts]:
    locked = {"$eq": ["$state", LOCKED]}
    cursor = db[DELIVERIES].aggregate(
        [
            {"$match": {"due": {"$exists": True}}},
            {
                "$group": {
                    "_id": "$zone",
                    "active": {
                        "$sum": {"$cond": [{"$or": [locked, {"$lte": ["$due", now]}]}, 1, 0]}
                    },
                    "total": {"$sum": 1},
                }
            },
        ]
    )
    return {
        str(doc["_id"]): ZoneCounts(
            active=int(doc["active"]), deferred=int(doc["total"]) - int(doc["active"])
        )
        for doc in cursor
    }


def domain_counts(now: float, zone: str | None, db: Db) -> dict[tuple[str, str], ZoneCounts]:
    # One aggregation: held deliveries (no ``due``) are not pending yet; a zone is matched
    # through the (zone, due, ...) index.
    match: dict[str, Any] = {"due": {"$exists": True}}
    if zone is not None:
        match["zone"] = zone
    locked = {"$eq": ["$state", LOCKED]}
    cursor = db[DELIVERIES].aggregate(
        [
            {"$match": match},
            {
                "$group": {
                    "_id": {"zone": "$zone", "domain": "$domain"},
                    "active": {
                        "$sum": {"$cond": [{"$or": [locked, {"$lte": ["$due", now]}]}, 1, 0]}
                    },
                    "total": {"$sum": 1},
                }
            },
        ]
    )
    return {
        (str(doc["_id"]["zone"]), str(doc["_id"]["domain"])): ZoneCounts(
            active=int(doc["active"]), deferred=int(doc["total"]) - int(doc["active"])
        )
        for doc in cursor
    }


def list_deliveries(
    zone: str, deferred: bool, now: float, start: int, limit: int, descending: bool, db: Db
) -> list[Delivery]:
    if limit == 0:
        return []
    which: dict[str, Any] = (
        {"state": {"$ne": LOCKED}, "due": {"$gt": now}}
        if deferred
        else {"$or": [{"state": LOCKED}, {"due": {"$lte": now}}]}
    )
    direction = DESCENDING if descending else ASCENDING
    cursor = db[DELIVERIES].find(
        {"zone": zone, **which},
        sort=[("created", direction), ("message_id", direction), ("seq", direction)],
        skip=start,
        limit=limit,
    )
    return [doc_to_delivery(doc) for doc in cursor]


# -- suppression list -----------------------------------------------------------------------


def add_suppression(
    entry_id: str, address: str | None, domain: str | None, now: float, db: Db
) -> SuppressionEntry:
    """Insert an entry unless the same address/domain exists; returns the stored entry."""
    field, value = ("address", address) if address is not None else ("domain", domain)
    for _ in range(3):  # the existing entry may be removed between the two calls
        try:
            db[SUPPRESSIONS].insert_one({"_id": entry_id, "created": now, field: value})
        except DuplicateKeyError:
            doc = db[SUPPRESSIONS].find_one({field: value})
            if doc is not None:
                return doc_to_suppression(doc)
        else:
            return SuppressionEntry(id=entry_id, created=now, address=address, domain=domain)
    raise StoreError(f"suppression of {value!r} keeps changing; try again")


def remove_suppression(entry_id: str, db: Db) -> bool:
    return int(db[SUPPRESSIONS].delete_one({"_id": entry_id}).deleted_count) > 0


def list_suppressions(db: Db) -> list[SuppressionEntry]:
    cursor = db[SUPPRESSIONS].find({}, sort=[("created", DESCENDING), ("_id", ASCENDING)])
    return [doc_to_suppression(doc) for doc in cursor]


def is_suppressed(recipient: str, db: Db) -> bool:
    address = normalize_address(recipient)
    domain = address.rpartition("@")[2]
    query = {"$or": [{"address": address}, {"domain": domain}]}
    return db[SUPPRESSIONS].find_one(query, {"_id": 1}) is not None


# -- blacklist ----------------------------------------------------------------------------------


def put_blacklist(entry: BlacklistEntry, db: Db) -> None:
    db[BLACKLIST].replace_one(
        {"_id": f"{entry.domain} {entry.address}"},
        {
            "domain": entry.domain,
            "address": entry.address,
            "created": entry.created,
            "expires": entry.expires,
            "response": entry.response,
        },
        upsert=True,
    )


def list_blacklist(now: float, db: Db) -> list[BlacklistEntry]:
    cursor = db[BLACKLIST].find(
        {"expires": {"$gt": now}}, sort=[("expires", ASCENDING), ("_id", ASCENDING)]
    )
    return [doc_to_blacklist(doc) for doc in cursor]


def purge_blacklist(now: float, db: Db) -> int:
    return int(db[BLACKLIST].delete_many({"expires": {"$lte": now}}).deleted_count)
