"""The Deliverer with a group of leased rows (one message, one destination): per-row checks
settle some rows and leave them out of the transaction, the others go to the sender
together, and every row gets its own outcome, event and store write. A real sqlite store;
the sender is a stand-in that records the groups it is given."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from zonemta.engine.bounces.suppression import SuppressionList
from zonemta.engine.bus import Event, EventBus
from zonemta.engine.delivery.attempt import Deliverer
from zonemta.engine.delivery.machine import DeliveryMachine, MachineBase
from zonemta.engine.delivery.messages import MessageCache
from zonemta.engine.delivery.outcome import Outcome
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.delivery.suspensions import Suspensions
from zonemta.engine.delivery.transmit import ZoneRoute
from zonemta.statemachine import Trigger
from zonemta.store import MessageRecord, NewDelivery, RowState
from zonemta.store.sqlite import SqliteStore, open_sqlite_store
from zonemta.transport.outbound import TlsPolicy

OWNER = "test"


class GroupSender:
    """Accepts the first recipient, defers the others (so outcomes differ per row)."""

    def __init__(self) -> None:
        self.zone = ZoneRoute("default", None, 25, False, False, TlsPolicy.NONE, 5)
        self.groups: list[list[str]] = []

    async def transmit(
        self, machines: Sequence[MachineBase], message: MessageRecord, body: Any
    ) -> list[Outcome]:
        self.groups.append([m.row.recipient for m in machines])
        for machine in machines:
            for step in (Trigger.RESOLVE, Trigger.RESOLVED, Trigger.CONNECTED):
                machine.fire(step)
        _first, *rest = machines
        return [Outcome(Trigger.ACCEPTED, "250 ok")] + [
            Outcome(Trigger.TRANSIENT_FAILURE, f"450 busy {m.row.recipient}") for m in rest
        ]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "q") as opened:
        yield opened


async def test_checked_rows_leave_the_group_and_each_row_has_its_outcome(
    store: SqliteStore,
) -> None:
    recipients = ["a@held.test", "b@x.test", "gone@x.test", "c@x.test"]
    body = store.new_body("m1")
    await body.write(b"x\r\n")
    deliveries = [
        NewDelivery(n, r, r.rpartition("@")[2], "default", next_attempt=0.0)
        for n, r in enumerate(recipients, start=1)
    ]
    record = MessageRecord("m1", "s@x.test", b"Subject: x\r\n", 3, 0.0)
    await store.commit_message(record, body, deliveries)
    bus = EventBus()
    events: list[Event] = []
    bus.add_listener(events.append)
    suppressions = SuppressionList(store)
    await suppressions.add(address="gone@x.test", now=0.0)
    suspensions = Suspensions(store, bus=bus, clock=trio.current_time)
    await suspensions.add(domain="held.test", until=1e9)
    sender = GroupSender()
    deliverer = Deliverer(
        sender=sender,  # type: ignore[arg-type]
        store=store,
        messages=MessageCache(store),
        bus=bus,
        retry=RetryPolicy((60.0,), 1e9),
        suppressions=suppressions,
        owner=OWNER,
        clock=trio.current_time,
        suspensions=suspensions,
    )
    rows = await store.lease("default", owner=OWNER, now=0.0, lease_until=1e9, limit=10)
    machines = [DeliveryMachine(row, bus, trio.current_time) for row in rows]
    for machine in machines:
        machine.fire(Trigger.LEASE)
    await deliverer.deliver(machines)
    assert sender.groups == [["b@x.test", "c@x.test"]]
    final = {e.recipient: (e.to_state, e.response) for e in events if e.type == "delivery"}
    held_state, held_reason = final.pop("a@held.test")
    assert held_state == "queued" and "held by suspension" in (held_reason or "")
    releases = [e.details for e in events if e.details and "release" in e.details]
    assert releases == [{"trigger": "release", "release": "suspended"}]  # only the release's
    assert final == {
        "b@x.test": ("delivered", "250 ok"),
        "gone@x.test": ("bounced", "recipient is on the suppression list"),
        "c@x.test": ("deferred", "450 busy c@x.test"),
    }
    left = {d.recipient: d.state for d in await store.deliveries_of("m1")}
    assert left == {"a@held.test": RowState.QUEUED, "c@x.test": RowState.DEFERRED}
