"""Suspensions with a real sqlite store and trio's MockClock: the entry model, expiry (with
its event and the credit of held time), and a zone scheduler that holds a suspended domain
until the suspension expires while the other domains go on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from tests.unit.test_scheduler import OWNER, RecordingDeliverer, jump_when_idle, queue
from zonemta.conf import config_from_dict
from zonemta.engine.bus import EventBus
from zonemta.engine.delivery.scheduler import ZoneScheduler
from zonemta.engine.delivery.suspensions import Suspensions, describe
from zonemta.engine.delivery.zones import DomainPolicy
from zonemta.store import Suspension
from zonemta.store.sqlite import SqliteStore, open_sqlite_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "q") as opened:
        yield opened


def test_a_suspension_has_exactly_one_kind_of_scope() -> None:
    with pytest.raises(ValueError, match="needs"):
        Suspension("s", 1.0)
    with pytest.raises(ValueError, match="no other scope"):
        Suspension("s", 1.0, zone="z", message_id="m")
    with pytest.raises(ValueError, match="no other scope"):
        Suspension("s", 1.0, domain="x.test", source="127.0.0.2")
    with pytest.raises(ValueError, match="lower-case"):
        Suspension("s", 1.0, domain="X.test")
    in_zone = Suspension("s", 1.0, zone="z", domain="x.test", who="ops", reason="outage")
    assert in_zone.holds("z", "x.test", "m") and not in_zone.holds("w", "x.test", "m")
    assert Suspension("s", 1.0, domain="x.test").holds("w", "x.test", "m")
    assert not Suspension("s", 1.0, source="127.0.0.2").holds("z", "x.test", "m")
    assert describe(in_zone) == "domain x.test in zone z; by ops; outage"
    assert Suspension("s", 10.0, zone="z", until=25.0).held_seconds(100.0) == 15.0


async def test_an_expiring_suspension_goes_with_an_event_and_credits_its_time(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, ["a@held.test", "b@free.test"])
    bus = EventBus()
    events = bus.subscribe()
    suspensions = Suspensions(store, bus=bus, clock=trio.current_time)
    changes: list[float] = []
    suspensions.on_change(lambda: changes.append(trio.current_time()))
    async with trio.open_nursery() as nursery:
        await nursery.start(suspensions.run)
        entry = await suspensions.add(domain="Held.test", until=100.0, who="ops")
        assert entry.domain == "held.test"
        assert list(suspensions.held_domains("default")) == ["held.test"]
        await trio.sleep(150)
        assert suspensions.entries() == [] and await store.list_suspensions(0.0) == []
        nursery.cancel_scope.cancel()
    assert changes == [0.0, pytest.approx(100.0, abs=1.5)]
    kinds = [events.receive.receive_nowait().type for _ in range(2)]
    assert kinds == ["suspension.added", "suspension.removed"]
    created = {d.domain: d.created for d in await store.deliveries_of("m1")}
    assert created == {"held.test": 100.0, "free.test": 0.0}  # held for 100 s


async def test_a_site_entry_holds_and_credits_the_sites_domains(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, ["a@a.test", "b@b.test", "c@c.test"])
    sites = {"a.test": "*.p.test", "b.test": "*.p.test"}
    suspensions = Suspensions(
        store,
        bus=EventBus(),
        clock=trio.current_time,
        site_of=lambda domain: sites.get(domain, domain),
        members=lambda key: {key, *(d for d, site in sites.items() if site == key)},
    )
    entry = await suspensions.add(zone="default", domain="*.p.test", who="backoff")
    rows = {d.domain: d for d in await store.deliveries_of("m1")}
    assert suspensions.holding(rows["a.test"]) == entry
    assert suspensions.holding(rows["b.test"]) == entry
    assert suspensions.holding(rows["c.test"]) is None
    await trio.sleep(40)
    await suspensions.remove(entry.id)
    created = {d.domain: d.created for d in await store.deliveries_of("m1")}
    assert created == {"a.test": 40.0, "b.test": 40.0, "c.test": 0.0}


class SourcelessDeliverer(RecordingDeliverer):
    """The recording deliverer with the pool the scheduler asks about (one OS address)."""

    sender = SimpleNamespace(sources=SimpleNamespace(addresses=frozenset({""})))


async def test_the_scheduler_holds_a_suspended_domain_until_expiry(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, ["a@held.test", "b@free.test", "c@free.test"])
    bus = EventBus()
    suspensions = Suspensions(store, bus=bus, clock=trio.current_time)
    deliverer = SourcelessDeliverer(store, smart_host=None, hold=0.0)
    deliverer.expected = 3
    scheduler = ZoneScheduler(
        deliverer,  # type: ignore[arg-type]
        store=store,
        bus=bus,
        owner=OWNER,
        lease_time=300,
        max_inflight=20,
        domains=DomainPolicy(config_from_dict({})),
        clock=trio.current_time,
        suspensions=suspensions,
    )
    suspensions.on_change(scheduler.wake)
    async with trio.open_nursery() as nursery:
        await nursery.start(suspensions.run)
        await suspensions.add(domain="held.test", until=120.0)
        await nursery.start(scheduler.run)
        with trio.fail_after(3600):
            await deliverer.all_started.wait()
        await scheduler.stop(15)
        nursery.cancel_scope.cancel()
    started = {domain: t for t, domain in deliverer.started}
    assert started["free.test"] == pytest.approx(0, abs=1.5)
    assert started["held.test"] == pytest.approx(120, abs=1.5)


async def test_holding_and_held_sources_with_no_entries_and_with_some(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    # Without entries both answer at once (None, {}); with entries they look.
    jump_when_idle(mock_clock)
    await queue(store, ["a@a.test"])
    suspensions = Suspensions(store, bus=EventBus(), clock=trio.current_time)
    (row,) = await store.deliveries_of("m1")
    assert suspensions.holding(row) is None
    assert suspensions.held_sources() == {}
    source = await suspensions.add(source="127.0.0.2", who="ops")
    held = await suspensions.add(domain="a.test", who="ops")
    assert suspensions.held_sources() == {"127.0.0.2": source}
    assert suspensions.holding(row) == held
    await suspensions.remove(held.id)
    await suspensions.remove(source.id)
    assert suspensions.holding(row) is None
    assert suspensions.held_sources() == {}
