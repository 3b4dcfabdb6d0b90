"""The zone scheduler groups leased rows into transactions: the recipients of one message to
one destination (the recipient domain, or the zone's smart host) go in one attempt, at most
``max_recipients``; a group counts once against its domain's connection limit and takes one
rate token per recipient; a held domain's rows stay out.

With a real sqlite store and trio's MockClock; the deliverer is the recording stand-in of
test_scheduler.py (transactions over real sockets are covered in tests/e2e)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.support.queue import queue
from tests.unit.test_scheduler import OWNER, RecordingDeliverer, jump_when_idle
from zonemta.conf import config_from_dict
from zonemta.engine.bus import EventBus
from zonemta.engine.delivery.scheduler import ZoneScheduler
from zonemta.engine.delivery.suspensions import Suspensions
from zonemta.engine.delivery.zones import DomainPolicy
from zonemta.store import Delivery, RowState
from zonemta.store.sqlite import SqliteStore, open_sqlite_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "q") as opened:
        yield opened


def scheduler_for(
    store: SqliteStore,
    deliverer: RecordingDeliverer,
    domains: dict[str, Any] | None = None,
    suspensions: Suspensions | None = None,
    bus: EventBus | None = None,
) -> ZoneScheduler:
    return ZoneScheduler(
        deliverer,  # type: ignore[arg-type]
        store=store,
        bus=bus or EventBus(),
        owner=OWNER,
        lease_time=300,
        max_inflight=40,
        domains=DomainPolicy(config_from_dict({"domains": domains or {}})),
        clock=trio.current_time,
        suspensions=suspensions,
    )


async def run_until_started(
    scheduler: ZoneScheduler, deliverer: RecordingDeliverer, count: int
) -> None:
    deliverer.expected = count
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        with trio.fail_after(3600):
            await deliverer.all_started.wait()
        await scheduler.stop(60)


def recipients(domain: str, count: int) -> list[str]:
    return [f"r{n}@{domain}" for n in range(count)]


async def test_one_transaction_per_message_and_recipient_domain(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, "m1", recipients("a.test", 5) + recipients("b.test", 2))
    await queue(store, "m2", recipients("a.test", 2))
    deliverer = RecordingDeliverer(store, smart_host=None, hold=0.0, max_recipients=50)
    await run_until_started(scheduler_for(store, deliverer), deliverer, 9)
    assert sorted(deliverer.groups) == [
        recipients("a.test", 2),  # m2: another message, another transaction
        recipients("a.test", 5),
        recipients("b.test", 2),
    ]
    assert await store.deliveries_of("m1") == []  # every row had its own outcome


async def test_a_smart_host_zone_groups_every_recipient_of_a_message(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, "m1", recipients("a.test", 2) + recipients("b.test", 2))
    deliverer = RecordingDeliverer(store, smart_host="relay.test", hold=0.0, max_recipients=50)
    await run_until_started(scheduler_for(store, deliverer), deliverer, 4)
    assert deliverer.groups == [recipients("a.test", 2) + recipients("b.test", 2)]


async def test_max_recipients_caps_a_transaction(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, "m1", recipients("a.test", 5))
    deliverer = RecordingDeliverer(store, smart_host=None, hold=0.0, max_recipients=2)
    await run_until_started(scheduler_for(store, deliverer), deliverer, 5)
    assert sorted(map(len, deliverer.groups)) == [1, 2, 2]
    assert sorted(r for group in deliverer.groups for r in group) == recipients("a.test", 5)


async def test_grouping_keeps_lease_order_and_starts_a_new_group_when_full(
    store: SqliteStore,
) -> None:
    deliverer = RecordingDeliverer(store, smart_host=None, hold=0.0, max_recipients=2)
    scheduler = scheduler_for(store, deliverer)

    def row(message: str, seq: int, domain: str) -> Delivery:
        return Delivery(
            message, seq, f"r{seq}@{domain}", domain, "default", RowState.LOCKED, 0, 0, 0
        )

    rows = [row("m1", 1, "a"), row("m2", 1, "a"), row("m1", 2, "a"), row("m1", 3, "a")]
    rows += [row("m1", 4, "b")]
    assert [[(r.message_id, r.seq) for r in g] for g in scheduler.group(rows)] == [
        [("m1", 1), ("m1", 2)],
        [("m2", 1)],
        [("m1", 3)],
        [("m1", 4)],
    ]


async def test_a_group_is_one_connection_against_the_domain_limit(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    for message in ("m1", "m2", "m3"):
        await queue(store, message, recipients("a.test", 3))
    deliverer = RecordingDeliverer(store, smart_host=None, hold=10.0, max_recipients=50)
    domains = {"a.test": {"max_connections": 2}}
    await run_until_started(scheduler_for(store, deliverer, domains), deliverer, 9)
    assert [len(group) for group in deliverer.groups] == [3, 3, 3]
    assert deliverer.max_active["a.test"] == 2  # transactions at once, not recipients
    starts = sorted({t for t, _ in deliverer.started})
    assert starts == pytest.approx([0, 10], abs=1.5)


async def test_a_domain_rate_counts_recipients(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, "m1", recipients("busy.test", 4))
    deliverer = RecordingDeliverer(store, smart_host=None, hold=0.0, max_recipients=50)
    domains = {"busy.test": {"rate": "2/minute"}}
    await run_until_started(scheduler_for(store, deliverer, domains), deliverer, 4)
    # One transaction, sent once its four recipients had their tokens: the burst of two,
    # then one per 30 s.
    assert deliverer.groups == [recipients("busy.test", 4)]
    assert [t for t, _ in deliverer.started] == pytest.approx([60] * 4, abs=1.5)


async def test_a_held_domain_s_rows_stay_out_of_the_transaction(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, "m1", recipients("held.test", 2) + recipients("free.test", 3))
    bus = EventBus()
    suspensions = Suspensions(store, bus=bus, clock=trio.current_time)
    deliverer = HeldAware(store, smart_host="relay.test", hold=0.0, max_recipients=50)
    scheduler = scheduler_for(store, deliverer, suspensions=suspensions, bus=bus)
    suspensions.on_change(scheduler.wake)
    async with trio.open_nursery() as nursery:
        await nursery.start(suspensions.run)
        await suspensions.add(domain="held.test", until=120.0)
        await run_until_started(scheduler, deliverer, 5)
        nursery.cancel_scope.cancel()
    # The smart host takes every domain of the message in one transaction, but the held
    # domain's rows were not leased with the others: they went alone once it expired.
    assert deliverer.groups == [recipients("free.test", 3), recipients("held.test", 2)]
    started = {domain: t for t, domain in deliverer.started}
    assert started["free.test"] == pytest.approx(0, abs=1.5)
    assert started["held.test"] == pytest.approx(120, abs=1.5)


class HeldAware(RecordingDeliverer):
    """The recording deliverer with the pool the scheduler asks about (one OS address)."""

    class sender:  # stands in for the Sender's attribute
        class sources:
            addresses = frozenset({""})
