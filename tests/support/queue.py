"""Deliveries put in a store directly (no intake), for unit tests of the scheduler and the
deliverer."""

from __future__ import annotations

from zonemta.store import MessageRecord, NewDelivery
from zonemta.store.sqlite import SqliteStore


async def queue(store: SqliteStore, message_id: str, recipients: list[str]) -> None:
    """One message to ``recipients`` of zone ``default``, due now."""
    body = store.new_body(message_id)
    await body.write(b"x\r\n")
    deliveries = [
        NewDelivery(n, r, r.rpartition("@")[2], "default", next_attempt=0.0)
        for n, r in enumerate(recipients, start=1)
    ]
    record = MessageRecord(message_id, "s@x.test", b"Subject: x\r\n", 3, 0.0)
    await store.commit_message(record, body, deliveries)
