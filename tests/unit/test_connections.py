"""The zone connection pool: limits, reuse, and waiters woken when a connection frees up."""

from __future__ import annotations

import trio
import trio.testing

from zonemta.conf.rates import parse_rate
from zonemta.engine.delivery.connections import ZoneConnections
from zonemta.transport.outbound import OutboundConnection, Timeouts
from zonemta.transport.smtp.client import SMTPClientConnection


def connection() -> OutboundConnection:
    stream, _peer = trio.testing.memory_stream_pair()
    return OutboundConnection(
        stream,
        SMTPClientConnection(),
        address="127.0.0.1",
        port=25,
        mx="mx.test",
        local_address=None,
        timeouts=Timeouts(),
    )


async def test_a_waiter_gets_the_connection_as_soon_as_it_is_checked_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = ZoneConnections(1, idle_ttl=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        first = await pool.checkout(("", "dest"))
        first.connection = connection()
        got = []

        async def waiter() -> None:
            slot = await pool.checkout(("", "dest"))
            got.append((trio.current_time(), slot))

        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert got == []  # the zone is full
        start = trio.current_time()
        pool.checkin(first)
        await trio.testing.wait_all_tasks_blocked()
        [(when, slot)] = got
        assert when == start  # no idle-timeout wait
        assert slot is first and slot.reused
        assert pool.reuses == 1
        assert pool.open_connections == 1
        nursery.cancel_scope.cancel()


async def test_a_waiter_for_another_destination_closes_an_idle_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = ZoneConnections(1, idle_ttl=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        first = await pool.checkout(("", "a.test"))
        first.connection = connection()
        got = []

        async def waiter() -> None:
            got.append(await pool.checkout(("", "b.test")))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        pool.checkin(first)
        await trio.testing.wait_all_tasks_blocked()
        [slot] = got
        assert trio.current_time() == start
        assert slot.key == ("", "b.test") and slot.connection is None
        assert first.connection is None  # closed to make room
        assert pool.open_connections == 1
        nursery.cancel_scope.cancel()


async def test_idle_connections_expire(autojump_clock: trio.testing.MockClock) -> None:
    pool = ZoneConnections(2, idle_ttl=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        slot = await pool.checkout(("", "a.test"))
        slot.connection = connection()
        pool.checkin(slot)
        assert pool.open_connections == 1
        await trio.sleep(16)
        assert pool.open_connections == 0
        fresh = await pool.checkout(("", "a.test"))
        assert fresh.connection is None and not fresh.reused
        nursery.cancel_scope.cancel()


async def test_broken_connections_are_not_kept(autojump_clock: trio.testing.MockClock) -> None:
    pool = ZoneConnections(2)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        slot = await pool.checkout(("", "a.test"))
        slot.connection = connection()
        slot.connection.broken = True
        pool.checkin(slot)
        assert pool.open_connections == 0
        nursery.cancel_scope.cancel()


async def test_a_zone_throttle_paces_each_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = ZoneConnections(2, throttle=parse_rate("10 messages/minute"))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        start = trio.current_time()
        sent: list[float] = []
        for _ in range(3):  # one connection, reused: 6 s between its messages
            slot = await pool.checkout(("", "a.test"))
            if slot.connection is None:
                slot.connection = connection()
            assert slot.throttle is not None
            await slot.throttle.wait()
            sent.append(trio.current_time() - start)
            pool.checkin(slot)
        other = await pool.checkout(("", "b.test"))  # a second connection has its own pace
        assert other.throttle is not None
        await other.throttle.wait()
        assert trio.current_time() - start == sent[-1]
        nursery.cancel_scope.cancel()
    assert sent == [0, 6, 12]
