"""The inbox of an attempt on a delivery process: what a memory channel of math.inf did."""

from __future__ import annotations

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from zonemta.engine.processes.delivery_process import _Inbox, _Lost
from zonemta.engine.processes.frames import Done, More


async def test_frames_come_out_in_order_whether_sent_before_or_while_waiting() -> None:
    inbox = _Inbox()
    got: list[object] = []
    inbox.send_nowait(More(1, 0))
    inbox.send_nowait(More(1, 1))

    async def receiver() -> None:
        for _ in range(4):
            got.append(await inbox.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await wait_all_tasks_blocked()
        assert got == [More(1, 0), More(1, 1)]  # then it waits
        inbox.send_nowait(More(1, 2))
        await wait_all_tasks_blocked()
        assert got[-1] == More(1, 2)
        lost = _Lost()
        inbox.send_nowait(lost)
    assert got == [More(1, 0), More(1, 1), More(1, 2), lost]


async def test_a_cancelled_receive_takes_nothing() -> None:
    inbox = _Inbox()
    with trio.move_on_after(0.01) as waiting:
        await inbox.receive()  # nothing there: waits, then is cancelled
    assert waiting.cancelled_caught
    done = Done(1, (), {})
    inbox.send_nowait(done)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await inbox.receive()  # cancelled before it takes the frame
    assert await inbox.receive() is done


async def test_one_receiver_at_a_time() -> None:
    inbox = _Inbox()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inbox.receive)
        await wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await inbox.receive()
        inbox.send_nowait(More(1, 0))
