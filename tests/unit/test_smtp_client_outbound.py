"""OutboundConnection, the trio driver of the client session, over an in-memory stream.

The server end is our sans-IO server behind the test policy of ``test_smtp_pair``; time is
trio's MockClock (``autojump_clock``), so deadlines are tested without waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from tests.unit.test_smtp_pair import (
    ACCEPTED,
    BODY,
    FOUR,
    PERM,
    REFUSALS,
    TEMP,
    Delivered,
    ServerPeer,
    accept_all,
    outcomes,
    refusing,
)
from zonemta.transport.outbound import (
    DeliveryFailure,
    Envelope,
    OutboundConnection,
    Stage,
    Timeouts,
    Transaction,
)
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server import Quit, ServerSettings

TIMEOUTS = Timeouts(connect=5, greeting=10, command=10, data=20)


def replies_of(data: bytes) -> list[bytes]:
    """Whole replies (a reply ends with a line whose code is followed by a space)."""
    out, current = [], b""
    for line in data.splitlines(keepends=True):
        current += line
        if line[3:4] != b"-":
            out.append(current)
            current = b""
    return out


async def serve(stream: trio.abc.Stream, peer: ServerPeer, delay: float = 0) -> None:
    """Drive ``peer`` over ``stream``; with ``delay``, every reply comes that much later."""

    async def send(out: bytes) -> None:
        for reply in replies_of(out) if delay else [out]:
            await trio.sleep(delay)
            await stream.send_all(reply)

    try:
        await send(peer.output())
        while not peer.closed:
            peer.receive(bytes(await stream.receive_some(65536)))
            if out := peer.output():
                await send(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client closed first (it waits for 221 only briefly)
    await stream.aclose()


async def content() -> AsyncIterator[bytes]:
    for chunk in BODY:
        yield chunk


async def greeted(nursery: trio.Nursery, peer: ServerPeer, delay: float = 0) -> OutboundConnection:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve, server, peer, delay)
    return await OutboundConnection.greet(
        client, address="192.0.2.1", port=25, mx="mx.test", ehlo_name="relay.test",
        timeouts=TIMEOUTS,
    )  # fmt: skip


async def test_deliver_one_transaction_for_several_recipients() -> None:
    peer = ServerPeer(refusing(REFUSALS))
    async with trio.open_nursery() as nursery:
        connection = await greeted(nursery, peer)
        assert connection.extensions.pipelining and connection.ehlo_name == "relay.test"
        result = await connection.deliver(FOUR, content())
        assert outcomes(result) == [
            ("a@x.test", ACCEPTED, Stage.FINAL, 250),
            ("b@x.test", PERM, Stage.RCPT, 550),
            ("c@x.test", TEMP, Stage.RCPT, 451),
            ("d@x.test", ACCEPTED, Stage.FINAL, 250),
        ]
        assert (connection.messages, connection.broken) == (1, False)
        await connection.aclose()
    assert peer.delivered == [Delivered(FOUR.mail_from, ("a@x.test", "d@x.test"), b"".join(BODY))]
    assert isinstance(peer.events[-2], Quit)


async def test_send_is_the_one_recipient_case() -> None:
    peer = ServerPeer(
        refusing({"b@x.test": Reply(550, ("no such user",), "5.1.1")}),
        settings=ServerSettings("mx.test", 100, max_header_size=0),
    )
    async with trio.open_nursery() as nursery:
        connection = await greeted(nursery, peer)
        reply = await connection.send(Transaction("s@o.test", "a@x.test", 30), content())
        assert reply == Reply(250, ("queued",), "2.0.0")
        with pytest.raises(DeliveryFailure) as refused:
            await connection.send(Transaction("s@o.test", "b@x.test", 30), content())
        assert (refused.value.stage, refused.value.temporary) == (Stage.RCPT, False)
        assert refused.value.response == "550 5.1.1 no such user"
        assert not connection.broken  # reset, still usable
        with pytest.raises(DeliveryFailure) as local:
            await connection.send(Transaction("s@o.test", "a@x.test", 101), content())
        assert (local.value.stage, local.value.temporary) == (Stage.MAIL, False)
        assert local.value.reply is not None and local.value.reply.code == 552
        assert connection.messages == 1
        await connection.aclose()
    assert [d.recipients for d in peer.delivered] == [("a@x.test",)]


async def test_a_421_to_the_first_command_on_a_reused_connection_is_a_lost_connection() -> None:
    peer = ServerPeer()
    async with trio.open_nursery() as nursery:
        connection = await greeted(nursery, peer)
        await connection.send(Transaction("s@o.test", "a@x.test", 30), content())
        peer.policy = refusing({"s@o.test": Reply(421, ("idle too long",), "4.4.2")})
        with pytest.raises(DeliveryFailure) as closed:
            await connection.send(Transaction("s@o.test", "a@x.test", 30), content())
        assert closed.value.reply is None and closed.value.stage is Stage.MAIL
        assert "closed the idle connection: 421 4.4.2 idle too long" in str(closed.value)
        assert connection.broken
        await connection.aclose()


async def test_a_421_on_a_fresh_connection_is_a_reply() -> None:
    peer = ServerPeer(refusing({"s@o.test": Reply(421, ("not now",), "4.7.0")}))
    async with trio.open_nursery() as nursery:
        connection = await greeted(nursery, peer)
        with pytest.raises(DeliveryFailure) as closing:
            await connection.send(Transaction("s@o.test", "a@x.test", 30), content())
        assert closing.value.reply is not None and closing.value.temporary
        assert connection.broken
        await connection.aclose()


async def test_each_reply_gets_its_own_deadline(autojump_clock: trio.testing.MockClock) -> None:
    peer = ServerPeer(accept_all)
    async with trio.open_nursery() as nursery:
        # Every reply takes 80% of the command timeout: six replies for the pipelined group,
        # far beyond one timeout together, each within its own.
        connection = await greeted(nursery, peer, delay=0.8 * TIMEOUTS.command)
        start = trio.current_time()
        result = await connection.deliver(FOUR, content())
        assert result.accepted == FOUR.recipients
        assert trio.current_time() - start > 4 * TIMEOUTS.command
        await connection.aclose()


async def test_timeout_names_the_reply_waited_for(autojump_clock: trio.testing.MockClock) -> None:
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(b"220 mx.test ESMTP\r\n")  # then silence
    with pytest.raises(DeliveryFailure) as timeout:
        await OutboundConnection.greet(
            client, address="192.0.2.1", port=25, mx="mx.test", ehlo_name="relay.test",
            timeouts=TIMEOUTS,
        )  # fmt: skip
    assert (timeout.value.stage, timeout.value.reply) == (Stage.EHLO, None)
    assert str(timeout.value) == "timeout waiting for the ehlo reply"
    assert trio.current_time() == pytest.approx(TIMEOUTS.command)


async def test_greeting_refused() -> None:
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(b"554 5.7.1 no mail from you\r\n")
    with pytest.raises(DeliveryFailure) as refused:
        await OutboundConnection.greet(
            client, address="192.0.2.1", port=25, mx="mx.test", ehlo_name="relay.test"
        )
    assert (refused.value.stage, refused.value.temporary) == (Stage.GREETING, False)


async def test_a_connection_lost_mid_transaction(autojump_clock: trio.testing.MockClock) -> None:
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(b"220 mx.test\r\n")

    async def answer_then_drop() -> None:
        await server.receive_some(1000)  # EHLO
        await server.send_all(b"250-mx.test\r\n250 PIPELINING\r\n")
        await server.receive_some(1000)  # MAIL, RCPT, DATA
        await server.send_all(b"250 ok\r\n")
        await server.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_then_drop)
        connection = await OutboundConnection.greet(
            client, address="192.0.2.1", port=25, mx="mx.test", ehlo_name="relay.test"
        )
        with pytest.raises(DeliveryFailure) as lost:
            await connection.deliver(Envelope("", ("a@x.test",), 1), content())
    assert (lost.value.stage, lost.value.reply) == (Stage.RCPT, None)
    assert "connection closed while waiting for the reply to RCPT" in str(lost.value)
    assert connection.broken
