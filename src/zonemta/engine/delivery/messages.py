"""Message records (and small bodies) for deliveries, read once per message rather than
once per recipient, and not at all for a message that is delivered soon after it arrived.

The intake hands every committed message over with its body when the body is small; the
entry lives until each of the message's deliveries has had its first outcome (or until
memory pressure evicts it), so the common case — accepted, then delivered within seconds —
costs no store read. Everything else falls back to the store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator

import attrs

from zonemta.store import MessageRecord, Store


@attrs.define
class _Entry:
    record: MessageRecord
    body: bytes | None
    pending: int  # deliveries that have not had an outcome yet (-1: unknown, from the store)

    @property
    def size(self) -> int:
        return len(self.record.headers) + (len(self.body) if self.body is not None else 0)


class MessageCache:
    """A bounded LRU of message records with the bodies of small messages."""

    def __init__(self, store: Store, *, records: int = 4096, body_bytes: int = 64 << 20) -> None:
        self.store = store
        self.max_records = records
        self.max_bytes = body_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0

    def put(self, record: MessageRecord, body: bytes | None, deliveries: int) -> None:
        """A message just committed by the intake, with its body if it was small."""
        self._insert(record.id, _Entry(record, body, deliveries))

    async def get(self, message_id: str) -> MessageRecord | None:
        entry = self._entries.get(message_id)
        if entry is not None:
            self._entries.move_to_end(message_id)
            self.hits += 1
            return entry.record
        self.misses += 1
        record = await self.store.get_message(message_id)
        if record is not None:
            self._insert(message_id, _Entry(record, None, -1))
        return record

    def cached_body(self, message_id: str) -> bytes | None:
        """The body when it is held in memory, else None (read it with :meth:`body`)."""
        entry = self._entries.get(message_id)
        return entry.body if entry is not None else None

    async def body(self, message: MessageRecord) -> AsyncGenerator[bytes, None]:
        entry = self._entries.get(message.id)
        if entry is not None and entry.body is not None:
            yield entry.body
            return
        async for chunk in self.store.read_body(message.id):
            yield chunk

    def attempted(self, message_id: str) -> None:
        """One delivery of the message had an outcome; after the last, drop the body (a
        retry, hours later, reads it from the store)."""
        entry = self._entries.get(message_id)
        if entry is None or entry.pending < 0:
            return
        entry.pending -= 1
        if entry.pending <= 0:
            self._remove(message_id)

    def _insert(self, message_id: str, entry: _Entry) -> None:
        self._remove(message_id)
        self._entries[message_id] = entry
        self._bytes += entry.size
        while self._entries and (
            len(self._entries) > self.max_records or self._bytes > self.max_bytes
        ):
            oldest = next(iter(self._entries))
            self._remove(oldest)

    def _remove(self, message_id: str) -> None:
        entry = self._entries.pop(message_id, None)
        if entry is not None:
            self._bytes -= entry.size
