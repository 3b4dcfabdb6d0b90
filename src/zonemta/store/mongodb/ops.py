"""Blocking operations on the MongoDB queue, each run in a worker thread by the store.

Each takes its arguments first and the database last, so the store binds them with
:func:`functools.partial`. pymongo errors propagate (the runner turns them into
:class:`StoreError`); ``LeaseLost`` and ``StoreError`` raised here carry our own meaning.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Collection, Sequence
from typing import Any, Final

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from zonemta.store.errors import LeaseLost, StoreError
from zonemta.store.mongodb.client import Db
from zonemta.store.mongodb.schema import (
    CHUNKS,
    DELIVERIES,
    DUE_ORDER,
    FILES,
    LOCKED,
    MESSAGES,
    UNLOCK_STAGES,
    delivery_id,
    doc_to_delivery,
)
from zonemta.store.records import Delivery, DeliveryKey, MessageRecord, NewDelivery, RowState

log = logging.getLogger(__name__)

#: Lease rounds per call: a round leases what it can of the candidates it found; others
#: may have taken some of them meanwhile.
LEASE_ROUNDS: Final = 8

_DUPLICATE_KEY: Final = 11000


def held_by(key: DeliveryKey, owner: str) -> dict[str, Any]:
    """The filter of a delivery leased by ``owner``."""
    return {"_id": delivery_id(key.message_id, key.seq), "state": LOCKED, "lease_owner": owner}


# -- bodies ---------------------------------------------------------------------------------


def _files_fields(message_id: str, owner: str, size: int, chunk_size: int, complete: bool) -> Any:
    return {
        "length": size,
        "chunkSize": chunk_size,
        "uploadDate": datetime.datetime.now(datetime.UTC),
        "filename": message_id,
        "metadata": {"message_id": message_id, "owner": owner, "complete": complete},
    }


def insert_chunk(
    body_id: str, message_id: str, owner: str, n: int, data: bytes, chunk_size: int, db: Db
) -> None:
    """Store chunk ``n`` of a body being received. Before the first chunk, the GridFS files
    document is created (``complete: false``, ``length`` 0 until the commit) so that garbage
    collection finds every body, finished or not, in the files collection."""
    if n == 0:
        db[FILES].insert_one(
            {"_id": body_id, **_files_fields(message_id, owner, 0, chunk_size, False)}
        )
    db[CHUNKS].insert_one({"files_id": body_id, "n": n, "data": data})


def delete_body(body_id: str, db: Db) -> None:
    """Delete a body's chunks, then its files document."""
    db[CHUNKS].delete_many({"files_id": body_id})
    db[FILES].delete_one({"_id": body_id})


def discard_body(body_id: str, db: Db) -> None:
    """Delete a body no message references (an aborted reception). A body a message document
    points at (a commit whose outcome was unclear) is left for the message's fate."""
    if db[MESSAGES].find_one({"body_id": body_id}, {"_id": 1}) is None:
        delete_body(body_id, db)


# -- committing ---------------------------------------------------------------------------


def _held_docs(
    message: MessageRecord, body_id: str, deliveries: Sequence[NewDelivery]
) -> list[dict[str, Any]]:
    return [
        {
            "_id": delivery_id(message.id, d.seq),
            "message_id": message.id,
            "seq": d.seq,
            "recipient": d.recipient,
            "domain": d.domain,
            "zone": d.zone,
            "state": "queued",
            "attempts": 0,
            "created": message.received_at,
            "next_attempt": d.next_attempt,
            "held_due": d.next_attempt,
            "held_by": body_id,
        }
        for d in deliveries
    ]


def _best_effort(what: str, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except PyMongoError as exc:
        log.warning("%s failed (%s); left to orphan collection", what, exc)


def _drop_held(body_id: str, db: Db) -> None:
    db[DELIVERIES].delete_many({"held_by": body_id})


def _drop_message(message_id: str, body_id: str, db: Db) -> None:
    db[MESSAGES].delete_one({"_id": message_id, "body_id": body_id})
    _drop_held(body_id, db)


def release_held(body_id: str, db: Db) -> int:
    """Make the held deliveries of a committed reception visible: ``due`` from
    ``held_due``. Returns how many."""
    result = db[DELIVERIES].update_many(
        {"held_by": body_id},
        [{"$set": {"due": "$held_due"}}, {"$unset": ["held_due", "held_by"]}],
    )
    return int(result.modified_count)


def commit_message(
    message: MessageRecord,
    meta: dict[str, Any],
    owner: str,
    body_id: str,
    chunk_size: int,
    tail: bytes,
    stored_chunks: int,
    deliveries: Sequence[NewDelivery],
    db: Db,
) -> bool:
    """Commit a received message. The writes are ordered so that a crash or failure at any
    point leaves only what orphan collection cleans up:

    1. the body's last chunk and its GridFS files document (complete);
    2. the deliveries, *held* (invisible to every query);
    3. the message document: **the commit point**;
    4. the deliveries released (visible, leasable).

    Returns False if step 4 failed: the message is committed all the same and orphan
    collection releases its deliveries. Raises :class:`StoreError` (or a pymongo error) if
    the message is not committed; what was written is removed as far as the database lets.
    """
    chunk_count = stored_chunks
    if tail:
        db[CHUNKS].insert_one({"files_id": body_id, "n": chunk_count, "data": tail})
        chunk_count += 1
    fields = _files_fields(message.id, owner, message.body_size, chunk_size, True)
    if stored_chunks:
        if db[FILES].update_one({"_id": body_id}, {"$set": fields}).matched_count != 1:
            raise StoreError(f"body of {message.id} vanished before its commit")
    else:
        db[FILES].insert_one({"_id": body_id, **fields})
    try:
        db[DELIVERIES].insert_many(_held_docs(message, body_id, deliveries), ordered=True)
    except BulkWriteError as exc:
        _best_effort(f"dropping held deliveries of {message.id}", _drop_held, body_id, db)
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") == _DUPLICATE_KEY for e in errors):
            raise StoreError(f"queue id {message.id} is already taken") from exc
        raise
    except PyMongoError:
        _best_effort(f"dropping held deliveries of {message.id}", _drop_held, body_id, db)
        raise
    try:
        db[MESSAGES].insert_one(
            {
                "_id": message.id,
                "mail_from": message.mail_from,
                "headers": message.headers,
                "body_size": message.body_size,
                "body_id": body_id,
                "chunk_count": chunk_count,
                "received_at": message.received_at,
                "meta": meta,
                "owner": owner,
            }
        )
    except DuplicateKeyError as exc:
        _best_effort(f"dropping held deliveries of {message.id}", _drop_held, body_id, db)
        raise StoreError(f"queue id {message.id} is already taken") from exc
    except PyMongoError:
        # The insert may have happened all the same: undo both, as far as possible.
        _best_effort(f"undoing the commit of {message.id}", _drop_message, message.id, body_id, db)
        raise
    try:
        release_held(body_id, db)
    except PyMongoError as exc:
        log.warning("deliveries of %s committed but still held (%s)", message.id, exc)
        return False
    return True


# -- leases ---------------------------------------------------------------------------------


def leasable(
    zone: str, now: float, skip_domains: Collection[str], skip_messages: Collection[str] = ()
) -> dict[str, Any]:
    """Deliveries of ``zone`` due at ``now`` and not leased (or whose lease expired)."""
    query: dict[str, Any] = {
        "zone": zone,
        "due": {"$lte": now},
        "$or": [{"state": {"$ne": LOCKED}}, {"lease_until": {"$lt": now}}],
    }
    if skip_domains:
        query["domain"] = {"$nin": sorted(skip_domains)}
    if skip_messages:
        query["message_id"] = {"$nin": sorted(skip_messages)}
    return query


def lease(
    zone: str,
    owner: str,
    now: float,
    lease_until: float,
    limit: int,
    skip_domains: Collection[str],
    skip_messages: Collection[str],
    db: Db,
) -> list[Delivery]:
    """Claim up to ``limit`` due deliveries. Each claim is one ``find_one_and_update`` on a
    candidate found by the (indexed) due-order query, re-checking that it is still leasable:
    instances leasing at the same time never get the same delivery."""
    if limit <= 0:
        return []
    query = leasable(zone, now, skip_domains, skip_messages)
    claim = {
        "$set": {
            "state": LOCKED,
            "lease_owner": owner,
            "lease_until": lease_until,
            "due": lease_until,
        }
    }
    leased: list[Delivery] = []
    for _ in range(LEASE_ROUNDS):
        want = limit - len(leased)
        candidates = [
            doc["_id"] for doc in db[DELIVERIES].find(query, {"_id": 1}, sort=DUE_ORDER, limit=want)
        ]
        if not candidates:
            break
        for candidate in candidates:
            doc = db[DELIVERIES].find_one_and_update(
                {**query, "_id": candidate}, claim, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                leased.append(doc_to_delivery(doc))
        if len(leased) >= limit:
            break
    leased.sort(key=lambda d: (d.next_attempt, d.message_id, d.seq))
    return leased


def renew(keys: Sequence[DeliveryKey], owner: str, lease_until: float, db: Db) -> None:
    """Move the lease expiry of the deliveries ``owner`` still holds."""
    db[DELIVERIES].update_many(
        {
            "_id": {"$in": [delivery_id(k.message_id, k.seq) for k in keys]},
            "state": LOCKED,
            "lease_owner": owner,
        },
        {"$set": {"lease_until": lease_until, "due": lease_until}},
    )


def release(key: DeliveryKey, owner: str, next_attempt: float, state: RowState, db: Db) -> None:
    """Unlock a delivery without counting an attempt, in ``state``; one ``owner`` does not
    hold is left."""
    db[DELIVERIES].update_one(
        held_by(key, owner),
        {
            "$set": {"state": state.value, "next_attempt": next_attempt, "due": next_attempt},
            "$unset": {"lease_owner": "", "lease_until": ""},
        },
    )


def defer(
    key: DeliveryKey,
    owner: str,
    now: float,
    next_attempt: float,
    response: str,
    delay_notified: bool,
    db: Db,
) -> None:
    """Count a failed attempt. Raises :class:`LeaseLost` if ``owner`` does not hold it."""
    fields: dict[str, Any] = {
        "state": "deferred",
        "attempts": {"$add": ["$attempts", 1]},
        "next_attempt": next_attempt,
        "due": next_attempt,
        "last_response": {"$literal": response},
        "first_failure": {"$ifNull": ["$first_failure", now]},
    }
    if delay_notified:  # set once, never cleared
        fields["delay_notified"] = True
    result = db[DELIVERIES].update_one(
        held_by(key, owner),
        [{"$set": fields}, {"$unset": ["lease_owner", "lease_until"]}],
    )
    if result.matched_count != 1:
        raise LeaseLost(f"delivery {key} is not leased by {owner}")


def _remove_message_if_done(message_id: str, db: Db) -> None:
    """Delete the message and its body once no delivery of it remains."""
    if db[DELIVERIES].find_one({"message_id": message_id}, {"_id": 1}) is not None:
        return
    doc = db[MESSAGES].find_one_and_delete({"_id": message_id}, {"body_id": 1})
    if doc is not None:
        delete_body(doc["body_id"], db)


def complete(key: DeliveryKey, owner: str, db: Db) -> None:
    """Remove a finished delivery, and its message and body after the last one. Raises
    :class:`LeaseLost` if ``owner`` does not hold it."""
    if db[DELIVERIES].delete_one(held_by(key, owner)).deleted_count != 1:
        raise LeaseLost(f"delivery {key} is not leased by {owner}")
    _remove_message_if_done(key.message_id, db)


def recover_leases(owner: str, db: Db) -> int:
    """Return every delivery leased by ``owner`` to the queue, due at its ``next_attempt``."""
    result = db[DELIVERIES].update_many({"lease_owner": owner, "state": LOCKED}, UNLOCK_STAGES)
    return int(result.matched_count)


# -- operator actions ---------------------------------------------------------------------


def unleased_of(message_id: str, seq: int | None) -> dict[str, Any]:
    """Committed, unleased deliveries of a message (all, or the one ``seq``)."""
    query: dict[str, Any] = {
        "message_id": message_id,
        "state": {"$ne": LOCKED},
        "held_by": {"$exists": False},
    }
    if seq is not None:
        query["seq"] = seq
    return query


def reschedule(message_id: str, seq: int | None, next_attempt: float, db: Db) -> int:
    result = db[DELIVERIES].update_many(
        unleased_of(message_id, seq), {"$set": {"next_attempt": next_attempt, "due": next_attempt}}
    )
    return int(result.matched_count)


def remove_deliveries(message_id: str, seq: int | None, db: Db) -> int:
    removed = int(db[DELIVERIES].delete_many(unleased_of(message_id, seq)).deleted_count)
    if removed:
        _remove_message_if_done(message_id, db)
    return removed
