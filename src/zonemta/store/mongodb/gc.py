"""Garbage collection of the MongoDB queue by reachability, never by age.

A body is garbage when no message references it **and** nobody is receiving it: bodies
received by this process are alive while their writer is registered; those of another
instance while that instance's heartbeat (``instances.alive_until``) is current. The file
id names the receiving instance (see :func:`~zonemta.store.mongodb.schema.new_body_id`).
An instance that died leaves its receptions to the others once its heartbeat has run out,
and cleans them itself as soon as it starts again with the same ``instance_id``.

Heartbeats are wall-clock times written by each instance and read by the others, so the
instances' clocks must agree to within ``ALIVE_SECONDS - HEARTBEAT_SECONDS`` (NTP does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypeVar

from zonemta.store.mongodb import ops
from zonemta.store.mongodb.client import Db
from zonemta.store.mongodb.schema import (
    DELIVERIES,
    FILES,
    INSTANCES,
    MESSAGES,
    body_owner,
)

T = TypeVar("T")

#: Documents examined per reference check.
BATCH: Final = 500

#: How long an instance counts as alive after its last heartbeat, and how often the store
#: beats (see :meth:`MongoStore.run`).
ALIVE_SECONDS: Final = 60.0
HEARTBEAT_SECONDS: Final = 15.0


def heartbeat(owner: str, db: Db) -> None:
    """Record that ``owner`` is alive (and receiving) for the next :data:`ALIVE_SECONDS`."""
    db[INSTANCES].update_one(
        {"_id": owner}, {"$set": {"alive_until": time.time() + ALIVE_SECONDS}}, upsert=True
    )


def sign_off(owner: str, db: Db) -> None:
    """``owner`` stopped: nothing of it is being received any more."""
    db[INSTANCES].delete_one({"_id": owner})


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def liveness(owner: str, receiving: set[str], db: Db) -> Callable[[object], bool]:
    """A test "is this body (file id) being received right now?". ``receiving`` is read at
    the moment of each test, so a reception that starts while the collector runs is safe."""
    alive = {doc["_id"] for doc in db[INSTANCES].find({"alive_until": {"$gt": time.time()}})}

    def is_live(body_id: object) -> bool:
        who = body_owner(body_id)
        if who is None:
            return True  # not a file this store made: never touched
        if who == owner:
            return body_id in receiving
        return who in alive

    return is_live


def collect(owner: str, receiving: set[str], db: Db) -> int:
    """Remove what no delivery or message references and nobody is receiving; release the
    held deliveries of messages whose commit stopped after its commit point. Returns how
    many messages and bodies were removed."""
    is_live = liveness(owner, receiving, db)
    removed = 0

    # 1. Held deliveries of receptions that are over: a committed message gets them
    #    released, an uncommitted one loses them.
    for body_id in db[DELIVERIES].distinct("held_by", {"held_by": {"$exists": True}}):
        if is_live(body_id):
            continue
        if db[MESSAGES].find_one({"body_id": body_id}, {"_id": 1}) is not None:
            ops.release_held(body_id, db)
        else:
            db[DELIVERIES].delete_many({"held_by": body_id})

    # 2. Messages without deliveries (their last one ended but the message was not
    #    removed, or a commit was undone half-way), with their bodies.
    messages = db[MESSAGES].find({}, {"_id": 1, "body_id": 1}, batch_size=BATCH)
    for batch in _batches(messages, BATCH):
        ids = [doc["_id"] for doc in batch]
        referenced = set(db[DELIVERIES].distinct("message_id", {"message_id": {"$in": ids}}))
        for doc in batch:
            if doc["_id"] in referenced:
                continue
            gone = db[MESSAGES].delete_one({"_id": doc["_id"], "body_id": doc["body_id"]})
            if gone.deleted_count:
                ops.delete_body(doc["body_id"], db)
                removed += 1

    # 3. Bodies no message references: aborted or crashed receptions. The liveness test
    #    comes first: a body whose reception ends meanwhile is either referenced by then
    #    (committed) or garbage (aborted).
    files = db[FILES].find({}, {"_id": 1}, batch_size=BATCH)
    for batch in _batches(files, BATCH):
        candidates: list[Any] = [doc["_id"] for doc in batch if not is_live(doc["_id"])]
        if not candidates:
            continue
        referenced = set(db[MESSAGES].distinct("body_id", {"body_id": {"$in": candidates}}))
        for body_id in candidates:
            if body_id not in referenced:
                ops.delete_body(body_id, db)
                removed += 1
    return removed
