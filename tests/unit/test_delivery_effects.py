"""The effect applier: it does what the transition table's row says and nothing else (the
store is told the row's state; a blacklist effect acts only on a blacklist reply)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from zonemta.engine.bus import EventBus
from zonemta.engine.delivery.effects import EffectApplier
from zonemta.engine.delivery.machine import DeliveryMachine
from zonemta.engine.delivery.messages import MessageCache
from zonemta.engine.delivery.outcome import Outcome
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.statemachine import DeliveryState, FailureCategory, Trigger, release_trigger
from zonemta.store import MessageRecord, NewDelivery, RowState
from zonemta.store.sqlite import SqliteStore, open_sqlite_store

OWNER = "test-owner"


class RecordingBlacklist:
    def __init__(self) -> None:
        self.added: list[tuple[str, str, str]] = []

    async def add(self, domain: str, address: str, response: str) -> None:
        self.added.append((domain, address, response))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "q") as opened:
        body = opened.new_body("m1")
        await body.write(b"x\r\n")
        record = MessageRecord("m1", "s@x.test", b"Subject: x\r\n", 3, 0.0)
        await opened.commit_message(
            record, body, [NewDelivery(1, "a@x.test", "x.test", "default", next_attempt=0.0)]
        )
        yield opened


def applier(store: SqliteStore, blacklist: RecordingBlacklist | None = None) -> EffectApplier:
    return EffectApplier(
        store=store,
        owner=OWNER,
        messages=MessageCache(store),
        retry=RetryPolicy.from_config([timedelta(minutes=5)], timedelta(days=1)),
        clock=lambda: 10.0,
        blacklist=blacklist,  # type: ignore[arg-type]
    )


async def lease(store: SqliteStore, now: float) -> DeliveryMachine:
    [row] = await store.lease("default", owner=OWNER, now=now, lease_until=now + 300, limit=1)
    machine = DeliveryMachine(row, EventBus(), lambda: now)
    machine.fire(Trigger.LEASE)
    return machine


@pytest.mark.parametrize("tried", [False, True])
async def test_a_release_stores_the_state_the_row_waited_in(
    store: SqliteStore, tried: bool
) -> None:
    effects = applier(store)
    if tried:  # one attempt counted: the row waits deferred
        machine = await lease(store, 0.0)
        row = machine.advance(Trigger.TRANSIENT_FAILURE)
        await effects.apply(machine, row, Outcome(Trigger.TRANSIENT_FAILURE, "451 later"))
    machine = await lease(store, 1000.0)
    assert machine.row.attempts == int(tried)
    waiting = DeliveryState.DEFERRED if tried else DeliveryState.QUEUED
    row = machine.advance(release_trigger(machine.row.attempts))
    assert row.target is waiting
    await effects.apply(machine, row, Outcome(row.trigger, "held"))
    [stored] = await store.deliveries_of("m1")
    assert (stored.state, stored.attempts, stored.lease_owner) == (
        RowState(waiting.value),
        int(tried),
        None,
    )
    # The next lease starts the machine in the state the row waited in.
    again = DeliveryMachine(stored, EventBus(), lambda: 0.0)
    assert again.state is waiting


@pytest.mark.parametrize(
    ("on_the_wire", "category", "blacklisted"),
    [
        (True, FailureCategory.BLACKLIST, True),
        (True, FailureCategory.GREYLIST, False),
        (False, FailureCategory.BLACKLIST, False),  # our own finding, not a remote reply
    ],
)
async def test_only_a_blacklist_reply_blacklists_the_source(
    store: SqliteStore, on_the_wire: bool, category: FailureCategory, blacklisted: bool
) -> None:
    blacklist = RecordingBlacklist()
    machine = await lease(store, 0.0)
    machine.local_address = "10.0.0.1"
    if on_the_wire:
        machine.fire(Trigger.RESOLVE)
    outcome = Outcome(Trigger.PERMANENT_FAILURE, "554 listed", category)
    row = machine.advance(outcome.trigger)
    await applier(store, blacklist).apply(machine, row, outcome)
    assert blacklist.added == ([("x.test", "10.0.0.1", "554 listed")] if blacklisted else [])
    assert await store.deliveries_of("m1") == []  # bounced: the row is removed
