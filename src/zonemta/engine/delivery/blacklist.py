"""Local addresses blacklisted by recipient domains, each for a limited time.

A delivery whose reply is classified as "the sending IP is blacklisted" disables that local
address for that recipient domain for ``[blacklist] ttl``; later attempts to the domain pick
another address of the pool. The entries are kept in the store (so they survive a restart
and are shared by instances on one database) and in memory for the delivery path; they
expire by themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import attrs
import trio

from zonemta.store import BlacklistEntry, Store, StoreError

log = logging.getLogger(__name__)


@attrs.frozen
class _Key:
    domain: str
    address: str


class Blacklist:
    def __init__(
        self,
        store: Store,
        *,
        ttl: float,
        clock: Callable[[], float],
        refresh_interval: float = 30.0,
        held_sources: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self.refresh_interval = refresh_interval
        self._entries: dict[_Key, BlacklistEntry] = {}
        self.held_sources = held_sources  # suspended source addresses (every domain)

    def disabled_for(self, domain: str) -> frozenset[str]:
        """Local addresses currently blacklisted by ``domain`` (or suspended)."""
        held = frozenset(self.held_sources()) if self.held_sources is not None else frozenset()
        if not self._entries:
            return held
        now = self.clock()
        return held | frozenset(
            key.address
            for key, entry in self._entries.items()
            if key.domain == domain and entry.expires > now
        )

    def entries(self) -> list[BlacklistEntry]:
        """Unexpired entries, soonest expiry first."""
        now = self.clock()
        return sorted(
            (e for e in self._entries.values() if e.expires > now), key=lambda e: e.expires
        )

    async def add(self, domain: str, address: str, response: str) -> BlacklistEntry:
        """Disable ``address`` for ``domain`` for the configured time."""
        now = self.clock()
        entry = BlacklistEntry(
            domain=domain, address=address, created=now, expires=now + self.ttl, response=response
        )
        self._entries[_Key(domain, address)] = entry
        log.warning(
            "local address %s blacklisted by %s until %.0f: %s",
            address,
            domain,
            entry.expires,
            response,
        )
        try:
            await self.store.put_blacklist(entry)
        except StoreError as exc:
            log.error("storing the blacklist entry for %s/%s failed: %s", domain, address, exc)
        return entry

    async def reload(self) -> None:
        """Replace the memory copy with the store's unexpired entries. Raises StoreError."""
        now = self.clock()
        entries = await self.store.list_blacklist(now)
        self._entries = {_Key(e.domain, e.address): e for e in entries}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load at start; reload and purge expired entries periodically."""
        await self.reload()
        task_status.started()
        while True:
            await trio.sleep(self.refresh_interval)
            try:
                await self.store.purge_blacklist(self.clock())
                await self.reload()
            except StoreError as exc:
                log.warning("refreshing the blacklist failed: %s", exc)
