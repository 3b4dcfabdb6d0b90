"""Message records for deliveries, read once per message rather than once per recipient."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator

from zonemta.store import MessageRecord, Store


class MessageCache:
    """A bounded LRU of stored message records (headers and metadata, never bodies)."""

    def __init__(self, store: Store, *, size: int = 2048) -> None:
        self.store = store
        self.size = size
        self._records: OrderedDict[str, MessageRecord] = OrderedDict()

    async def get(self, message_id: str) -> MessageRecord | None:
        record = self._records.get(message_id)
        if record is not None:
            self._records.move_to_end(message_id)
            return record
        record = await self.store.get_message(message_id)
        if record is not None:
            self._records[message_id] = record
            if len(self._records) > self.size:
                self._records.popitem(last=False)
        return record

    def body(self, message: MessageRecord) -> AsyncIterator[bytes]:
        return self.store.read_body(message.id)
