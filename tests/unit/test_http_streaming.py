"""The request body's back-pressure: the reader waits while the route lags behind."""

from __future__ import annotations

import trio

from zonemta.http.streaming import HIGH_WATER, FlowControlledBody


async def test_producer_waits_until_the_consumer_reads() -> None:
    body = FlowControlledBody(None, None)
    body.append(b"x" * HIGH_WATER)
    with trio.move_on_after(0.1) as scope:
        await body.wait_for_room()
    waited = scope.cancelled_caught
    assert waited  # full: the connection stops reading
    chunk = await body.__anext__()
    assert len(chunk) == HIGH_WATER
    with trio.fail_after(1):
        await body.wait_for_room()  # room again


async def test_awaiting_the_whole_body_turns_flow_control_off() -> None:
    body = FlowControlledBody(None, None)
    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            for _ in range(4):
                await body.wait_for_room()
                body.append(b"y" * HIGH_WATER)
            body.set_complete()

        nursery.start_soon(produce)
        with trio.fail_after(2):
            data = await body
    assert data == b"y" * (4 * HIGH_WATER)
