"""Holds on deliveries: operators' suspensions and automatic backoffs, shared by instances.

The entries live in the store (so they survive a restart and every instance on one MongoDB
obeys them) and in memory for the schedulers, which read them on every lease: a held zone
leases nothing, held domains and messages are left out of the lease query, and a suspended
source address is taken out of every pool (like a blacklisted one). The memory copy is
reloaded every ``refresh_interval`` seconds (entries made by other instances) and at once
for changes made here. Expired entries are removed by whichever instance sees them first;
the store credits the time each entry held to its deliveries' ``created``, so a hold does
not use up ``max_queue_time`` (and, as nothing is attempted, no retry either).

Every change is published as a ``suspension.added`` or ``suspension.removed`` event.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Collection, Iterable

import trio

from zonemta.engine.bus import Event, EventBus
from zonemta.store import Delivery, Store, StoreError, Suspension

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 10.0


def suspension_details(entry: Suspension) -> dict[str, object]:
    """The entry's fields that are set, apart from id/created/zone (for events and JSON)."""
    fields = {
        "domain": entry.domain,
        "source": entry.source,
        "message_id": entry.message_id,
        "until": entry.until,
        "reason": entry.reason,
        "who": entry.who,
        "rule": entry.rule,
        "response": entry.response,
        "max_connections": entry.max_connections,
    }
    return {name: value for name, value in fields.items() if value not in (None, "")}


class Suspensions:
    def __init__(
        self,
        store: Store,
        *,
        bus: EventBus,
        clock: Callable[[], float],
        refresh_interval: float = REFRESH_INTERVAL,
        site_of: Callable[[str], str] = str,
        members: Callable[[str], Collection[str]] = lambda key: (key,),
    ) -> None:
        self.store = store
        # A recipient domain's site once learned (``DomainPolicy.site_of``): an entry on a
        # site (``*.provider.example`` or ``mx:<hosts>``) holds every domain at it.
        self.site_of = site_of
        self.members = members  # a site's known domains (``DomainPolicy.members``)
        self.bus = bus
        self.clock = clock
        self.refresh_interval = refresh_interval
        self._entries: dict[str, Suspension] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the set of entries may have changed (schedulers wake)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def _active(self) -> Iterable[Suspension]:
        now = self.clock()
        return (e for e in self._entries.values() if e.until is None or e.until > now)

    def entries(self) -> list[Suspension]:
        """Unexpired entries, oldest first."""
        return sorted(self._active(), key=lambda e: (e.created, e.id))

    def get(self, entry_id: str) -> Suspension | None:
        return self._entries.get(entry_id)

    def zone_hold(self, zone: str) -> Suspension | None:
        """The entry that holds all of ``zone``, if one does."""
        for entry in self._active():
            if entry.zone == zone and entry.domain is None:
                return entry
        return None

    def held_domains(self, zone: str) -> dict[str, Suspension]:
        """Recipient domains and sites held in ``zone`` (in it alone, or in every zone)."""
        return {
            e.domain: e
            for e in self._active()
            if e.domain is not None
            and e.max_connections is None
            and (e.zone is None or e.zone == zone)
        }

    def slowed(self, zone: str, domain: str) -> Suspension | None:
        """The entry that slows ``domain`` (or its site) in ``zone`` the most, if any."""
        keys = {domain, self.site_of(domain)}
        found = [
            e
            for e in self._active()
            if e.max_connections is not None
            and e.domain in keys
            and (e.zone is None or e.zone == zone)
        ]
        return min(found, key=lambda e: e.max_connections or 0) if found else None

    def held_messages(self) -> dict[str, Suspension]:
        return {e.message_id: e for e in self._active() if e.message_id is not None}

    def held_sources(self) -> dict[str, Suspension]:
        """Local addresses taken out of every pool."""
        if not self._entries:  # the usual case, asked for every attempt
            return {}
        return {e.source: e for e in self._active() if e.source is not None}

    def holding(self, row: Delivery) -> Suspension | None:
        """The entry that holds delivery ``row`` (its domain, its domain's site, its zone or
        its message), if one does."""
        if not self._entries:  # the usual case, asked for every delivery
            return None
        site = self.site_of(row.domain)
        for entry in self._active():
            if entry.holds(row.zone, row.domain, row.message_id) or (
                site != row.domain and entry.holds(row.zone, site, row.message_id)
            ):
                return entry
        return None

    def next_expiry(self) -> float | None:
        """The soonest ``until`` among the entries (epoch seconds)."""
        times = [e.until for e in self._active() if e.until is not None]
        return min(times) if times else None

    async def add(
        self,
        *,
        zone: str | None = None,
        domain: str | None = None,
        source: str | None = None,
        message_id: str | None = None,
        until: float | None = None,
        reason: str = "",
        who: str = "",
        rule: str | None = None,
        response: str | None = None,
        max_connections: int | None = None,
    ) -> Suspension:
        """Store a new entry and obey it at once. Raises ValueError for a bad scope,
        StoreError when it cannot be stored (then nothing changed)."""
        entry = Suspension(
            id=secrets.token_hex(8),
            created=self.clock(),
            zone=zone,
            domain=domain.lower() if domain is not None else None,
            source=source,
            message_id=message_id,
            until=until,
            reason=reason,
            who=who,
            rule=rule,
            response=response,
            max_connections=max_connections,
        )
        await self.store.add_suspension(entry)
        self._entries[entry.id] = entry
        log.warning("suspension %s added: %s", entry.id, describe(entry))
        self._publish("suspension.added", entry)
        self._changed()
        return entry

    async def remove(self, entry_id: str) -> Suspension | None:
        """Remove an entry (resume what it held); None when there is no such entry."""
        now = self.clock()
        entry = await self.store.remove_suspension(entry_id, now=now)
        self._entries.pop(entry_id, None)
        if entry is not None:
            await self._credit_site(entry, now)
            log.warning("suspension %s removed: %s", entry.id, describe(entry))
            self._publish("suspension.removed", entry)
            self._changed()
        return entry

    async def _credit_site(self, entry: Suspension, now: float) -> None:
        """The store credited the entry's own scope; a site's member domains (as far as
        this instance has learned them) get the same credit. Raises StoreError."""
        if entry.domain is None or entry.max_connections is not None:
            return
        others = set(self.members(entry.domain)) - {entry.domain}
        if others:
            await self.store.credit_held_time(
                zone=entry.zone, domains=sorted(others), seconds=entry.held_seconds(now)
            )

    def _publish(self, kind: str, entry: Suspension) -> None:
        self.bus.publish(
            Event(kind, entry.id, self.clock(), zone=entry.zone, details=suspension_details(entry))
        )

    async def reload(self) -> None:
        """Remove expired entries, then replace the memory copy with the store's entries.
        Raises StoreError."""
        now = self.clock()
        for entry in await self.store.expire_suspensions(now):
            await self._credit_site(entry, now)
            log.info("suspension %s expired: %s", entry.id, describe(entry))
            self._publish("suspension.removed", entry)
        entries = await self.store.list_suspensions(self.clock())
        before = set(self._entries)
        self._entries = {e.id: e for e in entries}
        if before != set(self._entries):
            self._changed()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load at start; reload every ``refresh_interval`` seconds, and when an entry
        expires."""
        await self.reload()
        task_status.started()
        while True:
            wait = self.refresh_interval
            expiry = self.next_expiry()
            if expiry is not None:
                wait = min(wait, max(expiry - self.clock(), 0.0))
            await trio.sleep(wait)
            try:
                await self.reload()
            except StoreError as exc:
                log.warning("refreshing the suspensions failed: %s", exc)


def describe(entry: Suspension) -> str:
    """A short text of what the entry holds and why (for logs and the "why" answer)."""
    if entry.message_id is not None:
        scope = f"message {entry.message_id}"
    elif entry.source is not None:
        scope = f"source address {entry.source}"
    elif entry.domain is not None:
        scope = f"domain {entry.domain}" + (f" in zone {entry.zone}" if entry.zone else "")
    else:
        scope = f"zone {entry.zone}"
    parts = [scope]
    if entry.max_connections is not None:
        parts[0] += f" slowed to {entry.max_connections} at once"
    if entry.rule is not None:
        parts.append(f"backoff rule {entry.rule!r} on {entry.response!r}")
    elif entry.who:
        parts.append(f"by {entry.who}")
    if entry.reason:
        parts.append(entry.reason)
    return "; ".join(parts)
