"""The suppression list, held in memory for the delivery hot path.

The store is the truth; this copy is loaded at start, updated by the operations that go
through it (the HTTP API), and reloaded periodically so that entries added by another
instance sharing the store are seen within ``refresh_interval``.
"""

from __future__ import annotations

import logging

import trio

from zonemta.store import Store, StoreError, SuppressionEntry
from zonemta.store.records import normalize_address

log = logging.getLogger(__name__)


class SuppressionList:
    def __init__(self, store: Store, *, refresh_interval: float = 30.0) -> None:
        self.store = store
        self.refresh_interval = refresh_interval
        self._addresses: frozenset[str] = frozenset()
        self._domains: frozenset[str] = frozenset()

    def is_suppressed(self, recipient: str) -> bool:
        if not (self._addresses or self._domains):
            return False
        address = normalize_address(recipient)
        return address in self._addresses or address.rpartition("@")[2] in self._domains

    async def reload(self) -> None:
        """Replace the in-memory copy with the store's list. Raises StoreError."""
        entries = await self.store.list_suppressions()
        self._addresses = frozenset(e.address for e in entries if e.address is not None)
        self._domains = frozenset(e.domain for e in entries if e.domain is not None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.reload()
        task_status.started()
        while True:
            await trio.sleep(self.refresh_interval)
            try:
                await self.reload()
            except StoreError as exc:
                log.warning("reloading the suppression list failed: %s", exc)

    async def add(
        self, *, address: str | None = None, domain: str | None = None, now: float
    ) -> SuppressionEntry:
        entry = await self.store.add_suppression(address=address, domain=domain, now=now)
        if entry.address is not None:
            self._addresses = self._addresses | {entry.address}
        if entry.domain is not None:
            self._domains = self._domains | {entry.domain}
        return entry

    async def remove(self, entry_id: str) -> bool:
        removed = await self.store.remove_suppression(entry_id)
        if removed:
            await self.reload()
        return removed
