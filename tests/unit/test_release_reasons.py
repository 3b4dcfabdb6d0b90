"""A lease given back without an attempt carries why: each of the five reasons, through the
code that releases (the Deliverer; the zone scheduler for the shared limits and a shutdown
before the attempt), reaches the ``release`` detail of the delivery event and the ``reason``
label of ``zonemta_deliveries_released_total``. A real sqlite store, bus and metrics; the
sender is a stand-in (an attempt that does go to it never ends)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.support.queue import queue
from zonemta.conf import config_from_dict
from zonemta.conf.zones import Warmup
from zonemta.engine.bounces.suppression import SuppressionList
from zonemta.engine.bus import Event, EventBus
from zonemta.engine.delivery.attempt import RELEASED_AT_SHUTDOWN, WARMUP_USED, Deliverer
from zonemta.engine.delivery.machine import DeliveryMachine, MachineBase
from zonemta.engine.delivery.messages import MessageCache
from zonemta.engine.delivery.outcome import Outcome, ReleaseReason
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.delivery.scheduler import ZoneScheduler
from zonemta.engine.delivery.shared_connections import (
    SHARED_CONNECTIONS_USED,
    SharedConnections,
)
from zonemta.engine.delivery.shared_rate import SHARED_RATE_USED, SharedRates
from zonemta.engine.delivery.suspensions import Suspensions
from zonemta.engine.delivery.transmit import ZoneRoute
from zonemta.engine.delivery.warmup import WarmupCaps
from zonemta.engine.delivery.zones import DomainPolicy
from zonemta.http.metrics import Metrics
from zonemta.statemachine import Trigger
from zonemta.store import Delivery, MessageRecord, RowState
from zonemta.store.sqlite import SqliteStore, open_sqlite_store
from zonemta.transport.outbound import TlsPolicy

OWNER = "test"
NOW = 1_700_000_000.0  # the engine clock (fixed: rate windows and warm-up days stay put)
ADDRESS = "192.0.2.1"


class StalledSender:
    """Chooses no source address; an attempt given to it waits until cancelled."""

    def __init__(self) -> None:
        self.zone = ZoneRoute(
            name="default",
            smart_host=None,
            port=25,
            ipv6=False,
            prefer_ipv6=False,
            tls=TlsPolicy.NONE,
            max_mx_hosts=5,
            max_recipients=1,
        )
        self.transmitting = trio.Event()

    def destination_of(self, row: Delivery) -> str:
        return row.domain

    def source_for(self, rows: Sequence[Delivery]) -> None:
        return None

    async def transmit(
        self, machines: Sequence[MachineBase], message: MessageRecord, body: Any
    ) -> list[Outcome]:
        self.transmitting.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class Relay:
    """A Deliverer for zone ``default`` on ``store``, its bus counted by the metrics."""

    def __init__(self, store: SqliteStore, **deliverer: Any) -> None:
        self.store = store
        self.bus = EventBus()
        self.metrics = Metrics(zones=["default"], pools={})
        self.bus.add_listener(self.metrics.on_event)
        self.releases: list[Event] = []
        self.released = trio.Event()
        self.bus.add_listener(self._on_event)
        self.sender = StalledSender()
        self.deliverer = Deliverer(
            sender=self.sender,  # type: ignore[arg-type]
            store=store,
            messages=MessageCache(store),
            bus=self.bus,
            retry=RetryPolicy((60.0,), 1e12),
            suppressions=SuppressionList(store),
            owner=OWNER,
            clock=lambda: NOW,
            **deliverer,
        )

    def _on_event(self, event: Event) -> None:
        if event.type == "delivery" and (event.details or {}).get("trigger") == "release":
            self.releases.append(event)
            self.released.set()

    async def lease(self) -> list[DeliveryMachine]:
        rows = await self.store.lease(
            "default", owner=OWNER, now=NOW, lease_until=NOW + 300, limit=10
        )
        machines = [DeliveryMachine(row, self.bus, lambda: NOW) for row in rows]
        for machine in machines:
            machine.fire(Trigger.LEASE)
        return machines

    def scheduler(self, domains: dict[str, Any], **shared: Any) -> ZoneScheduler:
        return ZoneScheduler(
            self.deliverer,
            store=self.store,
            bus=self.bus,
            owner=OWNER,
            lease_time=300,
            max_inflight=20,
            domains=DomainPolicy(config_from_dict({"domains": domains})),
            clock=lambda: NOW,
            **shared,
        )

    def counted(self) -> dict[str, float]:
        """The released counter by reason (those counted at all)."""
        samples = {
            reason: self.metrics.registry.get_sample_value(
                "zonemta_deliveries_released_total", {"zone": "default", "reason": reason}
            )
            for reason in [*ReleaseReason, "other"]
        }
        return {reason: value for reason, value in samples.items() if value}

    def assert_released(self, reason: ReleaseReason, response: str, count: int = 1) -> None:
        assert [(e.to_state, e.response) for e in self.releases] == [("queued", response)] * count
        assert [e.details for e in self.releases] == [
            {"trigger": "release", "release": reason.value}
        ] * count
        assert [e.to_json()["release"] for e in self.releases] == [reason.value] * count
        assert self.counted() == {reason.value: count}


async def run_until_released(relay: Relay, scheduler: ZoneScheduler) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        with trio.fail_after(30):
            await relay.released.wait()
        await scheduler.stop(0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "q") as opened:
        yield opened


async def test_a_suspension_put_in_force_after_the_lease(store: SqliteStore) -> None:
    await queue(store, "m1", ["a@held.test"])
    relay = Relay(store)
    suspensions = Suspensions(store, bus=relay.bus, clock=lambda: NOW)
    relay.deliverer.suspensions = suspensions
    machines = await relay.lease()
    entry = await suspensions.add(domain="held.test", until=NOW + 3600)
    await relay.deliverer.deliver(machines)
    (event,) = relay.releases
    assert (event.response or "").startswith(f"held by suspension {entry.id}: ")
    assert event.details == {"trigger": "release", "release": "suspended"}
    assert relay.counted() == {"suspended": 1}
    assert [d.state for d in await store.deliveries_of("m1")] == [RowState.QUEUED]


async def test_every_address_at_its_warmup_cap(store: SqliteStore) -> None:
    await queue(store, "m1", ["a@x.test"])
    warmup = WarmupCaps(
        store, {ADDRESS: Warmup(start="2999-01-01", schedule=(1,))}, clock=lambda: NOW
    )
    await warmup.record(ADDRESS)  # today's cap of 1, used
    warmup.done()
    assert warmup.capped() == {ADDRESS}
    relay = Relay(store, warmup=warmup)
    await relay.deliverer.deliver(await relay.lease())
    relay.assert_released(ReleaseReason.WARMUP, WARMUP_USED)
    assert not relay.sender.transmitting.is_set()


async def test_an_attempt_cancelled_at_shutdown(store: SqliteStore) -> None:
    await queue(store, "m1", ["a@x.test", "b@x.test"])
    relay = Relay(store)
    machines = await relay.lease()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.deliverer.deliver, machines)
        await relay.sender.transmitting.wait()
        nursery.cancel_scope.cancel()
    relay.assert_released(ReleaseReason.SHUTDOWN, RELEASED_AT_SHUTDOWN, count=2)


async def test_shutdown_before_the_attempt_began(store: SqliteStore) -> None:
    """The scheduler gives back what waits for its domain's rate when it is stopped."""
    await queue(store, "m1", ["a@x.test"])
    relay = Relay(store)
    scheduler = relay.scheduler({"x.test": {"rate": "1/hour"}})
    bucket = scheduler.domains.bucket("x.test")
    assert bucket is not None
    await bucket.take()  # the hour's one token is gone: the delivery will wait
    leased = trio.Event()
    relay.bus.add_listener(lambda e: leased.set() if e.to_state == "locked" else None)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        with trio.fail_after(30):
            await leased.wait()
        await trio.testing.wait_all_tasks_blocked()
        await scheduler.stop(0)
    relay.assert_released(ReleaseReason.SHUTDOWN, RELEASED_AT_SHUTDOWN)
    assert not relay.sender.transmitting.is_set()


async def test_a_rate_used_up_by_the_instances_sharing_the_store(store: SqliteStore) -> None:
    await queue(store, "m1", ["a@x.test"])
    relay = Relay(store)
    domains = {"x.test": {"rate": "2/minute"}}
    scheduler = relay.scheduler(domains, shared_rates=SharedRates(store, clock=lambda: NOW))
    rate = DomainPolicy(config_from_dict({"domains": domains})).settings("x.test").rate
    assert rate is not None
    other = SharedRates(store, clock=lambda: NOW)  # another instance used the window
    assert [await other.claim("x.test", rate) for _ in range(3)] == [True, True, False]
    await run_until_released(relay, scheduler)
    relay.assert_released(ReleaseReason.SHARED_RATE, SHARED_RATE_USED)
    assert not relay.sender.transmitting.is_set()


class LateSight(SharedConnections):
    """The other instances' leases, unseen by the lease query (as when another instance
    leases right after this one read them): only the attempt's check counts them."""

    def domains_elsewhere(self, zone: str) -> list[str]:
        return []


async def test_connections_used_by_the_instances_sharing_the_store(store: SqliteStore) -> None:
    await queue(store, "m1", ["a@x.test"])
    await queue(store, "m2", ["b@x.test"])
    taken = await store.lease("default", owner="other", now=NOW, lease_until=NOW + 300, limit=1)
    assert len(taken) == 1  # another instance holds one delivery to x.test
    relay = Relay(store)
    shared = LateSight(store, owner=OWNER, clock=lambda: NOW)
    scheduler = relay.scheduler({"x.test": {"max_connections": 1}}, shared_connections=shared)
    await run_until_released(relay, scheduler)
    relay.assert_released(ReleaseReason.SHARED_CONNECTIONS, SHARED_CONNECTIONS_USED)
    assert not relay.sender.transmitting.is_set()
