"""Warm-up ramps of new source addresses (``[[pools.<name>]] warmup``).

Each address with a ramp may send its day's cap of deliveries (UTC days counted from the
ramp's start). The count is a counter in the store named by address and day, so instances
sharing a MongoDB count together; each instance adds its own attempts at once and reads the
others' every ``refresh_interval`` seconds. An address that has used its cap is left out of
every pool for the rest of the day, as a blacklisted one is: its deliveries go from the
pool's other addresses, and a zone whose every address is capped (or suspended) waits for
the next day. Attempts already under way when the cap is reached still go, so a day's
count may pass the cap by the attempts in flight from that address (at most the zone's
connections) and, with several instances, by what the others sent since the last refresh.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from zonemta.conf import Config
from zonemta.conf.zones import Warmup
from zonemta.store import Store, StoreError

log = logging.getLogger(__name__)

DAY = 86400.0
REFRESH_INTERVAL = 10.0


class WarmupCaps:
    def __init__(
        self,
        store: Store,
        ramps: dict[str, Warmup],
        *,
        clock: Callable[[], float],
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        self.store = store
        self.ramps = ramps
        self.clock = clock
        self.refresh_interval = refresh_interval
        self._counts: dict[str, int] = {}  # counter name -> deliveries counted
        # The address each attempt (its task) has counted itself against: not capped for it.
        self._reserved: dict[trio.lowlevel.Task, str] = {}
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def from_config(cls, config: Config, store: Store, clock: Callable[[], float]) -> WarmupCaps:
        ramps = {
            entry.address: entry.warmup
            for entries in config.pools.values()
            for entry in entries
            if entry.warmup is not None
        }
        return cls(store, ramps, clock=clock)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when an address may have become usable again (a new day)."""
        self._listeners.append(listener)

    def _day(self, address: str, now: float) -> int:
        return math.floor((now - self.ramps[address].start_epoch) / DAY)

    def _counter(self, address: str, now: float) -> str:
        return f"warmup:{address}:{math.floor(now / DAY)}"

    def cap(self, address: str) -> int | None:
        """Today's cap of ``address`` (None: no ramp, or the ramp is over)."""
        ramp = self.ramps.get(address)
        return None if ramp is None else ramp.cap(self._day(address, self.clock()))

    def used(self, address: str) -> int:
        """Deliveries counted for ``address`` today."""
        return self._counts.get(self._counter(address, self.clock()), 0)

    def capped(self) -> frozenset[str]:
        """Addresses that have used today's cap (for the calling attempt, apart from the
        address it has counted itself against)."""
        if not self.ramps:
            return frozenset()
        mine = self._reserved.get(trio.lowlevel.current_task()) if self._reserved else None
        return frozenset(
            a
            for a in self.ramps
            if (cap := self.cap(a)) is not None and self.used(a) >= cap and a != mine
        )

    def figures(self) -> list[tuple[str, int | None, int]]:
        """``(address, today's cap or None, used today)`` of every ramped address."""
        return [(a, self.cap(a), self.used(a)) for a in sorted(self.ramps)]

    def next_day(self) -> float:
        """When the next UTC day begins (the caps renew)."""
        return (math.floor(self.clock() / DAY) + 1) * DAY

    async def record(self, address: str, count: int = 1) -> None:
        """Count the calling attempt's ``count`` deliveries (the recipients of one
        transaction) against ``address`` (nothing without a ramp); until :meth:`done`, the
        address is not capped for this attempt. A store failure is logged; the memory count
        goes on."""
        if address not in self.ramps:
            return
        self._reserved[trio.lowlevel.current_task()] = address
        now = self.clock()
        name = self._counter(address, now)
        self._counts[name] = self._counts.get(name, 0) + count
        try:
            total = await self.store.add_to_counter(name, count, expires=now + 2 * DAY)
        except StoreError as exc:
            log.error("counting the warm-up of %s failed: %s", address, exc)
            return
        self._counts[name] = max(self._counts.get(name, 0), total)
        cap = self.cap(address)
        if cap is not None and total - count < cap <= total:
            log.info("source address %s used its warm-up cap of %d for today", address, cap)

    def done(self) -> None:
        """The calling attempt has chosen its address (its outcome is known)."""
        if self._reserved:
            self._reserved.pop(trio.lowlevel.current_task(), None)

    async def reload(self) -> None:
        """Read today's counts of every ramped address (other instances' included)."""
        now = self.clock()
        names = [self._counter(a, now) for a in self.ramps]
        found = await self.store.get_counters(names)
        self._counts = {name: max(found.get(name, 0), self._counts.get(name, 0)) for name in names}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load today's counts; reload them every ``refresh_interval`` seconds and when a
        new day begins (then wake whoever waits for an address)."""
        if self.ramps:
            await self.reload()
        task_status.started()
        if not self.ramps:
            return
        while True:
            day_ends = self.next_day()
            await trio.sleep(max(min(self.refresh_interval, day_ends - self.clock()), 0.0))
            try:
                if self.clock() >= day_ends:
                    await self.store.purge_counters(self.clock())
                await self.reload()
            except StoreError as exc:
                log.warning("refreshing the warm-up counts failed: %s", exc)
            if self.clock() >= day_ends:
                for listener in self._listeners:
                    listener()
