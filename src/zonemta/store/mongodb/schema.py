"""The MongoDB queue's collections, indexes, document shapes and conversions.

Collections (in the configured database)
----------------------------------------
``messages``
    One document per stored message; ``_id`` is the queue id (so the id is unique by the
    server's own ``_id`` index). Holds the envelope sender, the header block, ``meta``, the
    body's size, GridFS file id (``body_id``) and chunk count, and the receiving instance.
``deliveries``
    One document per recipient, ``_id`` = ``"<message_id>:<seq>"`` (unique ``(message_id,
    seq)`` as well). ``due`` is when the delivery can next be leased: ``next_attempt`` while
    it waits, ``lease_until`` while it is leased; the ``(zone, due, message_id, seq)`` index
    answers the lease query and :meth:`next_due` with one range scan. While a message is
    being committed its deliveries are *held*: ``due`` is absent (so no query that asks for
    a due time sees them), ``held_due`` keeps it and ``held_by`` names the reception's body.
``bodies.files`` / ``bodies.chunks``
    A GridFS bucket named ``bodies``: standard GridFS documents, readable with any GridFS
    client. The file id encodes the receiving instance (``"<instance>/<message>/<token>"``)
    so that garbage collection can tell whose reception a body belongs to.
``suppressions``
    Suppressed addresses and domains, each unique.
``blacklist``
    Local addresses disabled per recipient domain, ``_id`` = ``"<domain> <address>"``.
``instances``
    One heartbeat document per running instance (``alive_until``, epoch seconds): a body or
    held delivery of a live instance is never collected by another one.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

from pymongo import ASCENDING, DESCENDING, IndexModel

from zonemta.store.meta import meta_from_document
from zonemta.store.records import (
    BlacklistEntry,
    Delivery,
    MessageRecord,
    RowState,
    SuppressionEntry,
)

MESSAGES: Final = "messages"
DELIVERIES: Final = "deliveries"
SUPPRESSIONS: Final = "suppressions"
BLACKLIST: Final = "blacklist"
INSTANCES: Final = "instances"
BUCKET: Final = "bodies"
FILES: Final = f"{BUCKET}.files"
CHUNKS: Final = f"{BUCKET}.chunks"

LOCKED: Final = RowState.LOCKED.value

#: Sort of the lease query: oldest due first, then by message and recipient.
DUE_ORDER: Final = [("due", ASCENDING), ("message_id", ASCENDING), ("seq", ASCENDING)]

INDEXES: Final[dict[str, list[IndexModel]]] = {
    DELIVERIES: [
        IndexModel([("message_id", ASCENDING), ("seq", ASCENDING)], unique=True),
        IndexModel([("zone", ASCENDING), *DUE_ORDER]),
        IndexModel([("lease_owner", ASCENDING)], sparse=True),
        IndexModel([("held_by", ASCENDING)], sparse=True),
        IndexModel([(key, ASCENDING) for key in ("zone", "created", "message_id", "seq")]),
    ],
    MESSAGES: [IndexModel([("body_id", ASCENDING)])],
    BLACKLIST: [IndexModel([("expires", ASCENDING)])],
    # The indexes every GridFS driver creates for a bucket.
    FILES: [IndexModel([("filename", ASCENDING), ("uploadDate", ASCENDING)])],
    CHUNKS: [IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)],
    SUPPRESSIONS: [
        IndexModel([("address", ASCENDING)], unique=True, sparse=True),
        IndexModel([("domain", ASCENDING)], unique=True, sparse=True),
        IndexModel([("created", DESCENDING), ("_id", ASCENDING)]),
    ],
}


def delivery_id(message_id: str, seq: int) -> str:
    """The ``_id`` of a delivery document (unique: ``seq`` has no colon)."""
    return f"{message_id}:{seq}"


def new_body_id(owner: str, message_id: str) -> str:
    """A GridFS file id for one reception of ``message_id`` by instance ``owner``. A second
    reception of the same id gets another file, so it can never touch the first's chunks."""
    return f"{owner}/{message_id}/{secrets.token_hex(6)}"


def body_owner(body_id: object) -> str | None:
    """The instance that received body ``body_id``, or None for ids this store never made."""
    if not isinstance(body_id, str) or body_id.count("/") < 2:
        return None
    return body_id.split("/", 1)[0]


def doc_to_delivery(doc: dict[str, Any]) -> Delivery:
    """A :class:`Delivery` from a (committed) delivery document."""
    attempts = int(doc["attempts"])
    state = RowState(doc["state"])
    lease_owner = doc.get("lease_owner")
    lease_until = doc.get("lease_until")
    first_failure = doc.get("first_failure")
    last_response = doc.get("last_response")
    return Delivery(
        message_id=str(doc["message_id"]),
        seq=int(doc["seq"]),
        recipient=str(doc["recipient"]),
        domain=str(doc["domain"]),
        zone=str(doc["zone"]),
        state=state,
        attempts=attempts,
        created=float(doc["created"]),
        next_attempt=float(doc["next_attempt"]),
        first_failure=None if first_failure is None else float(first_failure),
        last_response=None if last_response is None else str(last_response),
        lease_owner=None if lease_owner is None else str(lease_owner),
        lease_until=None if lease_until is None else float(lease_until),
        delay_notified=bool(doc.get("delay_notified", False)),
    )


def doc_to_message(doc: dict[str, Any]) -> MessageRecord:
    return MessageRecord(
        id=str(doc["_id"]),
        mail_from=str(doc["mail_from"]),
        headers=bytes(doc["headers"]),
        body_size=int(doc["body_size"]),
        received_at=float(doc["received_at"]),
        meta=meta_from_document(doc["meta"], message_id=str(doc["_id"])),
    )


def doc_to_suppression(doc: dict[str, Any]) -> SuppressionEntry:
    return SuppressionEntry(
        id=str(doc["_id"]),
        created=float(doc["created"]),
        address=doc.get("address"),
        domain=doc.get("domain"),
    )


#: Pipeline stages that end a lease without counting an attempt: the state goes back to
#: ``queued`` (never tried) or ``deferred`` (tried before), due at ``next_attempt``.
UNLOCK_STAGES: Final[list[dict[str, Any]]] = [
    {
        "$set": {
            "state": {"$cond": [{"$gt": ["$attempts", 0]}, "deferred", "queued"]},
            "due": "$next_attempt",
        }
    },
    {"$unset": ["lease_owner", "lease_until"]},
]


def doc_to_blacklist(doc: dict[str, Any]) -> BlacklistEntry:
    return BlacklistEntry(
        domain=str(doc["domain"]),
        address=str(doc["address"]),
        created=float(doc["created"]),
        expires=float(doc["expires"]),
        response=str(doc["response"]),
    )
