"""One scheduler per zone: leases due deliveries and runs their attempts.

The rows of one lease that belong to one message and go to one destination (the recipient
domain, or the zone's smart host) form a group, at most ``max_recipients`` rows: one attempt,
one connection, one SMTP transaction with a recipient per row (as Postfix sends). A group
counts once against its destination's connection limit (it is one connection); a domain's
``rate`` counts recipients, one token per row, as it did when every row was sent alone.

Leasing is bounded by how many attempts the zone can usefully have in flight; recipient
domains that are at their connection limit are skipped in the lease query, so a busy
domain never holds up the zone's other domains. New mail wakes the scheduler at once;
otherwise it sleeps until the next delivery is due (or a poll interval, for work that
another instance released).

Suspensions (:mod:`zonemta.engine.delivery.suspensions`) are obeyed here: a held zone (or one whose
every source address is suspended) leases nothing, held domains and messages are left out of
the lease query, and the scheduler wakes when a suspension is added, removed or expires.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import trio

from zonemta.engine.bus import EventBus
from zonemta.engine.delivery.attempt import Deliverer
from zonemta.engine.delivery.machine import DeliveryMachine
from zonemta.engine.delivery.outcome import ReleaseReason
from zonemta.engine.delivery.shared_connections import SharedConnections
from zonemta.engine.delivery.shared_rate import SharedRates
from zonemta.engine.delivery.suspensions import Suspensions
from zonemta.engine.delivery.warmup import WarmupCaps
from zonemta.engine.delivery.zones import DomainPolicy
from zonemta.statemachine import Trigger
from zonemta.store import Delivery, DeliveryKey, Store, StoreError

log = logging.getLogger(__name__)

POLL_INTERVAL = 5.0
STORE_ERROR_BACKOFF = 1.0


class ZoneScheduler:
    def __init__(
        self,
        deliverer: Deliverer,
        *,
        store: Store,
        bus: EventBus,
        owner: str,
        lease_time: float,
        max_inflight: int,
        domains: DomainPolicy,
        clock: Callable[[], float],
        suspensions: Suspensions | None = None,
        warmup: WarmupCaps | None = None,
        shared_rates: SharedRates | None = None,
        shared_connections: SharedConnections | None = None,
    ) -> None:
        self.deliverer = deliverer
        self.shared_rates = shared_rates  # rates across instances on one MongoDB
        # max_connections across instances on one MongoDB (MX zones only)
        self.shared_connections = None if deliverer.zone.smart_host else shared_connections
        self.suspensions = suspensions
        self.warmup = warmup
        self.zone = deliverer.zone.name
        self.store = store
        self.bus = bus
        self.owner = owner
        self.lease_time = lease_time
        self.max_inflight = max_inflight
        self.domains = domains
        self.connections = deliverer.zone.connections
        self.max_recipients = deliverer.zone.max_recipients  # rows per transaction
        self.clock = clock
        self.poll_interval = POLL_INTERVAL  # for work other instances release or add
        self.inflight: dict[DeliveryKey, DeliveryMachine] = {}
        self._destinations: dict[str, int] = {}
        self._destination_limits: dict[str, trio.CapacityLimiter] = {}
        self._sending: dict[str, int] = {}  # destination -> attempts past its limiter
        self._cooling: dict[str, float] = {}  # destination -> trio time it may lease again
        self._rated: set[str] = set()  # recipient domains with a rate, seen in flight
        self._changed = trio.Event()
        self._busy = trio.Event()  # set while attempts are in flight (lease renewal runs)
        self._stopping = False
        self._drained = trio.Event()
        self._cancel = trio.CancelScope()

    def wake(self) -> None:
        """New or released work may be due."""
        self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew_leases)
                task_status.started()
                await self._lease_loop(nursery)
                await self._drained.wait()
                nursery.cancel_scope.cancel()

    async def stop(self, grace: float) -> None:
        """Lease nothing more; give running attempts ``grace`` seconds, then cancel them
        (they release their leases)."""
        self._stopping = True
        self.wake()
        if not self.inflight:
            self._drained.set()
        with trio.move_on_after(grace):
            await self._drained.wait()
        self._cancel.cancel()

    def destination_use(self, destination: str) -> int:
        """Attempts to ``destination`` in flight in this zone now (here: each a connection,
        one transaction of one or more recipients; and the deliveries leased by the other
        instances sharing the store, counted one each: an over-count when they group)."""
        return self._destinations.get(destination, 0) + self.used_elsewhere(destination)

    def used_elsewhere(self, destination: str) -> int:
        """Deliveries to ``destination`` the other instances sharing the store hold leased
        in this zone (as of the last read)."""
        if self.shared_connections is None:
            return 0
        return self.shared_connections.elsewhere(self.zone, self.domains.members(destination))

    def destination_of(self, row: Delivery) -> str:
        """What ``row``'s connection limit is counted under: the smart host, or the
        recipient domain's site (``[domains."*.provider"]``, once learned) or domain."""
        if self.deliverer.zone.smart_host:
            return self.deliverer.destination_of(row)
        return self.domains.site_of(row.domain)

    def destination_limit(self, row: Delivery) -> int:
        """How many attempts (connections) to ``row``'s destination this zone runs at once."""
        return self._limit(self.destination_of(row))

    def _limit(self, domain: str) -> int:
        """Deliveries to ``domain`` (or site) at once in this zone: its setting, or less
        while a slowing entry (operator's or backoff's) says so."""
        limit = min(self.domains.settings(domain).max_connections, self.connections)
        slow = self.suspensions.slowed(self.zone, domain) if self.suspensions else None
        if slow is not None and slow.max_connections is not None:
            limit = min(limit, slow.max_connections)
        return limit

    def zone_held(self) -> str | None:
        """Why the whole zone leases nothing now (a suspension), or None."""
        if self.suspensions is not None:
            entry = self.suspensions.zone_hold(self.zone)
            if entry is not None:
                return f"suspension {entry.id}"
        held = set(self.suspensions.held_sources()) if self.suspensions is not None else set()
        capped = self.warmup.capped() if self.warmup is not None else frozenset()
        if not held and not capped:
            return None
        sources = self.deliverer.sender.sources.addresses
        if sources and all(address in held for address in sources):
            return "every source address of the zone is suspended"
        if capped and sources and all(a in held or a in capped for a in sources):
            return "every source address of the zone has used its warm-up cap today"
        return None

    def _skip_messages(self) -> list[str]:
        return list(self.suspensions.held_messages()) if self.suspensions else []

    def _skip_domains(self) -> list[str]:
        """Recipient domains not to lease now: held, at their connection limit (MX zones)
        or waiting for their rate."""
        held = self.suspensions.held_domains(self.zone) if self.suspensions else {}
        skip = [domain for key in held for domain in self.domains.members(key)]
        if not self.deliverer.zone.smart_host:
            for key, count in self._destinations.items():
                if count >= self._limit(key):
                    skip += self.domains.members(key)
        if self.shared_connections is not None:
            now = trio.current_time()
            for key, until in list(self._cooling.items()):
                if until > now:
                    skip += self.domains.members(key)
                else:
                    del self._cooling[key]
            for domain in self.shared_connections.domains_elsewhere(self.zone):
                key = self.domains.site_of(domain)
                if self.destination_use(key) >= self._limit(key):
                    skip += self.domains.members(key)
        for key in list(self._rated):
            if self.rate_slot(key) is not None:
                skip += self.domains.members(key)
            elif key not in self._destinations:
                self._rated.discard(key)
        return skip

    def rate_slot(self, key: str) -> float | None:
        """When (trio time) the domain or site ``key`` may next be sent to, if later than
        now: its own bucket, or the window its rate has used up across instances."""
        slot = self.domains.rate_limited(key)
        shared = self.shared_rates.blocked_until(key) if self.shared_rates else None
        if shared is not None:
            shared_slot = trio.current_time() + (shared - self.clock())
            slot = shared_slot if slot is None else max(slot, shared_slot)
        return slot

    def _next_rate_slot(self) -> float | None:
        """The soonest trio time a rate-limited domain may send again."""
        times = [t for d in self._rated if (t := self.rate_slot(d)) is not None]
        return min(times) if times else None

    async def _lease_loop(self, nursery: trio.Nursery) -> None:
        while not self._stopping:
            self._changed = trio.Event()
            free = self.max_inflight - len(self.inflight)
            if free > 0 and self.zone_held() is not None:
                wait = self.poll_interval
                if self.warmup is not None and self.warmup.ramps:
                    wait = min(wait, max(self.warmup.next_day() - self.clock(), 0.0))
                with trio.move_on_after(wait):
                    await self._changed.wait()
                continue
            if free > 0:
                if self.shared_connections is not None:
                    await self.shared_connections.refresh(self.zone)
                now = self.clock()
                try:
                    rows = await self.store.lease(
                        self.zone,
                        owner=self.owner,
                        now=now,
                        lease_until=now + self.lease_time,
                        limit=free,
                        skip_domains=self._skip_domains(),
                        skip_messages=self._skip_messages(),
                    )
                except StoreError as exc:
                    log.error("leasing in zone %s failed: %s", self.zone, exc)
                    await trio.sleep(STORE_ERROR_BACKOFF)
                    continue
                if rows:
                    for group in self.group(rows):
                        self._start(nursery, group)
                    continue
            await self._wait_for_work(free > 0)

    async def _wait_for_work(self, could_lease: bool) -> None:
        timeout = self.poll_interval
        if could_lease:
            try:
                due = await self.store.next_due(self.zone)
            except StoreError:
                due = None
            if due is not None:
                timeout = min(timeout, max(due - self.clock(), 0.0))
        if timeout <= 0 and (self._skip_domains() or self._skip_messages()):
            # Due work exists only for domains at their limit (or held): wait for a slot.
            timeout = self.poll_interval
        if timeout <= 0:
            return
        slot = self._next_rate_slot()
        if self._cooling:
            cooled = min(self._cooling.values())
            slot = cooled if slot is None else min(slot, cooled)
        if slot is not None:
            timeout = min(timeout, max(slot - trio.current_time(), 0.0))
        with trio.move_on_after(timeout):
            await self._changed.wait()

    def group(self, rows: Sequence[Delivery]) -> list[list[Delivery]]:
        """``rows`` (one lease) in transactions, in lease order: the rows of one message to
        one destination — the recipient domain (one MX lookup, one MTA-STS/DANE policy, one
        blacklist) or the zone's smart host — at most ``max_recipients`` in each."""
        groups: list[list[Delivery]] = []
        filling: dict[tuple[str, str], list[Delivery]] = {}
        smart_host = bool(self.deliverer.zone.smart_host)
        for row in rows:
            key = (row.message_id, "" if smart_host else row.domain)
            group = filling.get(key)
            if group is None or len(group) >= self.max_recipients:
                group = filling[key] = []
                groups.append(group)
            group.append(row)
        return groups

    def _start(self, nursery: trio.Nursery, rows: Sequence[Delivery]) -> None:
        machines = []
        for row in rows:
            machine = DeliveryMachine(row, self.bus, self.clock)
            machine.fire(Trigger.LEASE)
            self.inflight[row.key] = machine
            machines.append(machine)
            rate_key = self.domains.site_of(row.domain)
            if self.domains.bucket(rate_key) is not None:
                self._rated.add(rate_key)
        self._busy.set()
        destination = self.destination_of(rows[0])  # one connection: counted once
        self._destinations[destination] = self._destinations.get(destination, 0) + 1
        nursery.start_soon(self._run_attempt, machines, destination)

    def _move(self, old: str, new: str) -> None:
        """Count an attempt under ``new`` instead of ``old`` (its site was learned)."""
        self._destinations[new] = self._destinations.get(new, 0) + 1
        self._forget(old)

    def _forget(self, destination: str) -> None:
        left = self._destinations[destination] - 1
        if left:
            self._destinations[destination] = left
        else:
            del self._destinations[destination]
            self._destination_limits.pop(destination, None)

    async def _run_attempt(self, machines: list[DeliveryMachine], destination: str) -> None:
        started = False
        waiting = list(machines)  # leased, neither given back nor handed to the deliverer
        domain = machines[0].row.domain
        try:
            if not self.deliverer.zone.smart_host and self.domains.needs_site(domain):
                site = await self.domains.learn_site(domain)
                if site != destination:
                    self._move(destination, site)
                    destination = site
            await self._take_rates(waiting)
            if not waiting:
                return
            limiter = (
                contextlib.nullcontext()
                if self.deliverer.zone.smart_host
                else (self._destination_limiter(destination))
            )
            async with limiter:
                if self._over_shared_limit(destination):
                    # The other instances use the limit: give it back without an attempt
                    # and stay away a random moment (so that two do not keep colliding).
                    cool = SharedConnections.cool_down()
                    self._cooling[destination] = trio.current_time() + cool
                    while waiting:
                        await self.deliverer.release(
                            waiting.pop(0), ReleaseReason.SHARED_CONNECTIONS
                        )
                    return
                started = True
                self._sending[destination] = self._sending.get(destination, 0) + 1
                try:
                    await self.deliverer.deliver(waiting)
                finally:
                    left = self._sending[destination] - 1
                    if left:
                        self._sending[destination] = left
                    else:
                        del self._sending[destination]
        except trio.Cancelled:
            if not started:  # deliver() releases its own leases when cancelled
                with trio.CancelScope(shield=True):
                    for machine in waiting:
                        await self.deliverer.release(machine, ReleaseReason.SHUTDOWN)
            raise
        finally:
            for machine in machines:
                del self.inflight[machine.row.key]
            if not self.inflight:
                self._busy = trio.Event()
            self._forget(destination)
            if self._stopping and not self.inflight:
                self._drained.set()
            self.wake()

    async def _take_rates(self, waiting: list[DeliveryMachine]) -> None:
        """A token of its domain's (or site's) rate for each delivery: rates count
        recipients. The lease is renewed meanwhile; no connection is held. A delivery whose
        rate is used up across instances is given back without an attempt (no token used)
        and leaves ``waiting``, as do the group's later ones to the same domain."""
        used_up: set[str] = set()
        for machine in list(waiting):
            rate_key = self.domains.site_of(machine.row.domain)
            bucket = self.domains.bucket(rate_key)
            if bucket is None:
                continue
            self._rated.add(rate_key)
            if rate_key not in used_up:
                await bucket.take()
                if self.shared_rates is None or await self.shared_rates.claim(
                    rate_key, bucket.rate
                ):
                    continue
                bucket.give_back()  # used up across instances: wait
                used_up.add(rate_key)
            waiting.remove(machine)
            await self.deliverer.release(machine, ReleaseReason.SHARED_RATE)

    def _over_shared_limit(self, destination: str) -> bool:
        """Whether one more attempt to ``destination`` here would take its deliveries here
        and at the other instances past its limit."""
        elsewhere = self.used_elsewhere(destination)
        return bool(elsewhere) and (
            self._sending.get(destination, 0) + 1 + elsewhere > self._limit(destination)
        )

    def _destination_limiter(self, destination: str) -> trio.CapacityLimiter:
        limiter = self._destination_limits.get(destination)
        if limiter is None:
            limiter = trio.CapacityLimiter(self._limit(destination))
            self._destination_limits[destination] = limiter
        else:
            limiter.total_tokens = self._limit(destination)  # a slowing entry may have come
        return limiter

    async def _renew_leases(self) -> None:
        while True:
            await self._busy.wait()  # an idle zone does not wake up for nothing
            await trio.sleep(self.lease_time / 3)
            keys = list(self.inflight)
            if not keys:
                continue
            try:
                await self.store.renew(
                    keys, owner=self.owner, lease_until=self.clock() + self.lease_time
                )
            except StoreError as exc:
                log.error("renewing leases in zone %s failed: %s", self.zone, exc)
