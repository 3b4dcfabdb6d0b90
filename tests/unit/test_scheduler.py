"""The zone scheduler with a real sqlite store and trio's MockClock: per-domain connection
limits and rates, and a rate-limited domain that does not hold up the others.

The deliverer is a recording stand-in (the scheduler is what is under test here; attempts
over real sockets are covered in tests/e2e)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from zonemta.conf import config_from_dict
from zonemta.engine.bus import EventBus
from zonemta.engine.delivery.machine import DeliveryMachine
from zonemta.engine.delivery.outcome import ReleaseReason
from zonemta.engine.delivery.scheduler import ZoneScheduler
from zonemta.engine.delivery.transmit import ZoneRoute
from zonemta.engine.delivery.zones import DomainPolicy
from zonemta.store import Delivery, MessageRecord, NewDelivery, RowState
from zonemta.store.sqlite import SqliteStore, open_sqlite_store
from zonemta.transport.outbound import TlsPolicy

OWNER = "test"


class RecordingDeliverer:
    """Takes ``hold`` (trio) seconds per attempt (a group of deliveries: one transaction),
    records when each delivery started and each group's recipients, completes them. One
    recipient per transaction unless ``max_recipients`` says more."""

    def __init__(
        self,
        store: SqliteStore,
        *,
        smart_host: str | None,
        hold: float,
        max_recipients: int = 1,
    ) -> None:
        self.store = store
        self.hold = hold
        self.zone = ZoneRoute(
            name="default",
            smart_host=smart_host,
            port=25,
            ipv6=False,
            prefer_ipv6=False,
            tls=TlsPolicy.NONE,
            max_mx_hosts=5,
            connections=10,
            max_recipients=max_recipients,
        )
        self.started: list[tuple[float, str]] = []
        self.groups: list[list[str]] = []  # the recipients of each attempt
        self.expected = 0
        self.all_started = trio.Event()
        self.active: dict[str, int] = {}
        self.max_active: dict[str, int] = {}

    def destination_of(self, row: Delivery) -> str:
        return self.zone.smart_host or row.domain

    async def deliver(self, machines: Sequence[DeliveryMachine]) -> None:
        domain = machines[0].row.domain
        self.groups.append([machine.row.recipient for machine in machines])
        self.started += [(trio.current_time(), machine.row.domain) for machine in machines]
        self.active[domain] = self.active.get(domain, 0) + 1
        self.max_active[domain] = max(self.max_active.get(domain, 0), self.active[domain])
        if len(self.started) >= self.expected:
            self.all_started.set()
        await trio.sleep(self.hold)
        self.active[domain] -= 1
        for machine in machines:
            await self.store.complete(machine.row.key, owner=OWNER)

    async def release(
        self, machine: DeliveryMachine, reason: ReleaseReason, text: str | None = None
    ) -> None:
        await self.store.release(
            machine.row.key, owner=OWNER, next_attempt=0.0, state=RowState.QUEUED
        )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "q") as opened:
        yield opened


async def queue(store: SqliteStore, recipients: list[str]) -> None:
    body = store.new_body("m1")
    await body.write(b"x\r\n")
    deliveries = [
        NewDelivery(n, r, r.rpartition("@")[2], "default", next_attempt=0.0)
        for n, r in enumerate(recipients, start=1)
    ]
    record = MessageRecord("m1", "s@x.test", b"Subject: x\r\n", 3, 0.0)
    await store.commit_message(record, body, deliveries)


async def run_until_done(
    store: SqliteStore, deliverer: RecordingDeliverer, domains: dict[str, Any], count: int
) -> None:
    scheduler = ZoneScheduler(
        deliverer,  # type: ignore[arg-type]
        store=store,
        bus=EventBus(),
        owner=OWNER,
        lease_time=300,
        max_inflight=20,
        domains=DomainPolicy(config_from_dict({"domains": domains})),
        clock=trio.current_time,
    )
    deliverer.expected = count
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        with trio.fail_after(600):
            await deliverer.all_started.wait()
        await scheduler.stop(15)


def jump_when_idle(mock_clock: trio.testing.MockClock) -> None:
    """Jump the clock only after everything has been idle a while in real time, so that
    waiting for sqlite's worker threads never counts as idle."""
    mock_clock.autojump_threshold = 0.1


async def test_domain_rate_spaces_deliveries_and_others_go_on(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, [f"b{n}@busy.test" for n in range(4)] + ["c1@calm.test", "c2@calm.test"])
    deliverer = RecordingDeliverer(store, smart_host="relay.test", hold=0.0)
    await run_until_done(store, deliverer, {"busy.test": {"rate": "2/minute"}}, 6)
    busy = [t for t, d in deliverer.started if d == "busy.test"]
    calm = [t for t, d in deliverer.started if d == "calm.test"]
    assert calm == pytest.approx([0.0, 0.0], abs=1.5)  # not behind busy.test's rate
    assert busy[:2] == pytest.approx([0.0, 0.0], abs=1.5)  # the burst
    assert busy[2] == pytest.approx(30, abs=1.5)  # then one per 30 s
    assert busy[3] == pytest.approx(60, abs=1.5)


async def test_domain_connection_limit_holds_and_others_go_on(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    jump_when_idle(mock_clock)
    await queue(store, [f"b{n}@busy.test" for n in range(6)] + ["c1@calm.test"])
    deliverer = RecordingDeliverer(store, smart_host=None, hold=10.0)
    domains = {"default": {"max_connections": 4}, "busy.test": {"max_connections": 2}}
    await run_until_done(store, deliverer, domains, 7)
    assert deliverer.max_active["busy.test"] == 2
    [(calm_start, _)] = [(t, d) for t, d in deliverer.started if d == "calm.test"]
    assert calm_start == pytest.approx(0, abs=1.5)  # not queued behind busy.test
    busy = sorted(t for t, d in deliverer.started if d == "busy.test")
    assert busy == pytest.approx([0, 0, 10, 10, 20, 20], abs=1.5)
