"""The zone pool wakes one waiting checkout per connection or token given back: the first
waiter for that destination, else the first waiter; a waiter that leaves after being woken
passes the wake-up on, so nobody is left waiting beside something free."""

from __future__ import annotations

import trio
import trio.testing

from tests.unit.test_connections import connection
from zonemta.engine.delivery.connections import Slot, ZoneConnections


async def test_a_checkin_wakes_only_the_first_waiter_for_its_destination() -> None:
    pool = ZoneConnections(2, idle_ttl=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        a = await pool.checkout(("", "a.test"))
        b = await pool.checkout(("", "b.test"))
        a.connection, b.connection = connection(), connection()
        got: list[tuple[str, Slot]] = []

        async def waiter(name: str, destination: str) -> None:
            slot = await pool.checkout(("", destination))
            got.append((name, slot))

        for name, destination in [("b1", "b.test"), ("a1", "a.test"), ("a2", "a.test")]:
            nursery.start_soon(waiter, name, destination)
            await trio.testing.wait_all_tasks_blocked()
        assert len(pool._waiting) == 3
        pool.checkin(a)  # a.test's first waiter, not b1 (first in line, another destination)
        await trio.testing.wait_all_tasks_blocked()
        assert [(name, slot) for name, slot in got] == [("a1", a)]
        assert list(pool._waiting.values()) == [("", "b.test"), ("", "a.test")]
        pool.checkin(b)
        await trio.testing.wait_all_tasks_blocked()
        assert [name for name, _ in got] == ["a1", "b1"] and got[1][1] is b
        # A connection to a destination nobody waits for: the first waiter closes it for room.
        got[0][1].key = ("", "c.test")
        pool.checkin(got[0][1])
        await trio.testing.wait_all_tasks_blocked()
        assert [name for name, _ in got] == ["a1", "b1", "a2"]
        assert got[2][1].connection is None and pool.open_connections == 2
        assert pool._waiting == {}
        nursery.cancel_scope.cancel()


async def test_a_waiter_cancelled_after_its_wake_up_passes_it_on() -> None:
    pool = ZoneConnections(1, idle_ttl=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        first = await pool.checkout(("", "dest"))
        first.connection = connection()
        got: list[Slot] = []
        scopes: list[trio.CancelScope] = []

        async def waiter() -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                got.append(await pool.checkout(("", "dest")))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        scopes[0].cancel()  # the first waiter leaves ...
        pool.checkin(first)  # ... as the connection it would have got comes back
        await trio.testing.wait_all_tasks_blocked()
        assert got == [first]  # the second waiter got it
        assert pool._waiting == {}
        nursery.cancel_scope.cancel()


async def test_a_token_given_back_wakes_one_waiter() -> None:
    pool = ZoneConnections(1, idle_ttl=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        first = await pool.checkout(("", "a.test"))
        first.connection = connection()
        got: list[Slot] = []

        async def waiter(destination: str) -> None:
            got.append(await pool.checkout(("", destination)))

        nursery.start_soon(waiter, "b.test")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "c.test")
        await trio.testing.wait_all_tasks_blocked()
        first.connection.broken = True
        pool.checkin(first)  # not kept: its token goes back
        await trio.testing.wait_all_tasks_blocked()
        assert [slot.key for slot in got] == [("", "b.test")]
        assert list(pool._waiting.values()) == [("", "c.test")]
        nursery.cancel_scope.cancel()
