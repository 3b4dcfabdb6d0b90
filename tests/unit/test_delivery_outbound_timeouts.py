"""Timeouts inside one transaction of an OutboundConnection (``deliver``).

One timer serves the whole transaction, re-armed for each wait; when it expires, the
failure names the wait it cut short, exactly as a timer per wait would: the reply waited
for, the command being sent, or the body. A cancellation that is not the timer's goes
through untouched. Time is trio's MockClock (``autojump_clock``); the server is scripted
over a lockstep stream pair, so a server that stops reading blocks the client's sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from zonemta.transport.outbound import (
    DeliveryFailure,
    Envelope,
    OutboundConnection,
    Stage,
    Timeouts,
)

TIMEOUTS = Timeouts(connect=5, greeting=10, command=10, data=20)
ENVELOPE = Envelope("s@o.test", ("a@x.test",), 100)
EHLO_REPLY = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


class Script:
    """The server's end: reads lines, answers what the scenario says."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    async def greet(self) -> None:
        await self.stream.send_all(b"220 mx.test ESMTP\r\n")
        assert (await self.line()).startswith(b"EHLO")
        await self.stream.send_all(EHLO_REPLY)

    async def read_envelope(self) -> None:
        for verb in (b"MAIL", b"RCPT", b"DATA"):
            assert (await self.line()).startswith(verb)

    async def read_forever(self) -> None:
        while await self.stream.receive_some(65536):
            pass


async def connected(nursery: trio.Nursery, scenario: object) -> OutboundConnection:
    client, server = trio.testing.lockstep_stream_pair()
    script = Script(server)

    async def serve() -> None:
        await script.greet()
        await scenario(script)  # type: ignore[operator]

    nursery.start_soon(serve)
    return await OutboundConnection.greet(
        client, address="192.0.2.1", port=25, mx="mx.test", ehlo_name="relay.test",
        timeouts=TIMEOUTS,
    )  # fmt: skip


async def content() -> AsyncIterator[bytes]:
    yield b"Subject: t\r\n\r\nhello\r\n"


async def stalled_content() -> AsyncIterator[bytes]:
    yield b"Subject: t\r\n\r\n"
    await trio.sleep_forever()
    yield b"never\r\n"


async def failure_of(scenario: object, body: AsyncIterator[bytes]) -> tuple[DeliveryFailure, float]:
    """The failure of one transaction against ``scenario``, and how long it took."""
    async with trio.open_nursery() as nursery:
        connection = await connected(nursery, scenario)
        start = trio.current_time()
        with pytest.raises(DeliveryFailure) as failed:
            await connection.deliver(ENVELOPE, body)
        took = trio.current_time() - start
        assert connection.broken and failed.value.reply is None
        nursery.cancel_scope.cancel()
    return failed.value, took


async def test_a_silent_server_times_out_waiting_for_the_mail_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def silent(script: Script) -> None:
        await script.read_envelope()
        await script.read_forever()

    failure, took = await failure_of(silent, content())
    assert (failure.stage, str(failure)) == (Stage.MAIL, "timeout waiting for the mail reply")
    assert took == pytest.approx(TIMEOUTS.command)


async def test_a_server_that_stops_reading_times_out_the_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def deaf(script: Script) -> None:
        await trio.sleep_forever()

    failure, took = await failure_of(deaf, content())
    assert (failure.stage, str(failure)) == (Stage.MAIL, "timeout sending mail")
    assert took == pytest.approx(TIMEOUTS.command)


async def test_a_stalled_body_times_out_after_the_data_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def takes_data(script: Script) -> None:
        await script.read_envelope()
        await script.stream.send_all(b"250 ok\r\n250 ok\r\n")
        await trio.sleep(5)  # the 354 comes late: the body's deadline starts after it
        await script.stream.send_all(b"354 go on\r\n")
        await script.read_forever()

    failure, took = await failure_of(takes_data, stalled_content())
    assert (failure.stage, str(failure)) == (Stage.BODY, "timeout while sending the body")
    assert took == pytest.approx(5 + TIMEOUTS.data)


async def test_a_missing_final_reply_times_out_after_the_data_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def no_final_reply(script: Script) -> None:
        await script.read_envelope()
        await script.stream.send_all(b"250 ok\r\n250 ok\r\n354 go on\r\n")
        while await script.line() != b".":
            pass
        await script.read_forever()

    failure, took = await failure_of(no_final_reply, content())
    assert (failure.stage, str(failure)) == (Stage.FINAL, "timeout waiting for the final reply")
    assert took == pytest.approx(TIMEOUTS.data)


async def test_a_transaction_longer_than_any_one_timeout_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(script: Script) -> None:
        await script.read_envelope()
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go on\r\n"):
            await trio.sleep(0.9 * TIMEOUTS.command)
            await script.stream.send_all(reply)
        while await script.line() != b".":
            pass
        await trio.sleep(0.9 * TIMEOUTS.data)
        await script.stream.send_all(b"250 queued\r\n")
        await script.read_forever()

    async with trio.open_nursery() as nursery:
        connection = await connected(nursery, slow)
        result = await connection.deliver(ENVELOPE, content())
        assert result.accepted == ENVELOPE.recipients and not connection.broken
        nursery.cancel_scope.cancel()


async def test_a_cancellation_that_is_not_the_timer_goes_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def silent(script: Script) -> None:
        await script.read_envelope()
        await script.read_forever()

    async with trio.open_nursery() as nursery:
        connection = await connected(nursery, silent)
        with trio.move_on_after(TIMEOUTS.command / 2) as outer:
            await connection.deliver(ENVELOPE, content())
        assert outer.cancelled_caught
        nursery.cancel_scope.cancel()
