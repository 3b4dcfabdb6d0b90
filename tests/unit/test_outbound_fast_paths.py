"""The delivery process's per-message shortcuts give exactly what the long way gives.

* single-line replies the client parsed once are looked up (``client._PARSED``): the same
  Reply, the same errors, as parsing with the cache empty;
* ``Reply.__str__`` is computed once per reply;
* the Received date is formatted once per second;
* ``data_to_send`` hands a single queued piece over without joining;
* a body already in memory (``BodyBytes``) goes out as a tuple, without async iteration: the
  same bytes on the wire as the async iterable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_connections import connection
from tests.unit.test_smtp_client_outbound import greeted
from tests.unit.test_smtp_pair import BODY, FOUR, Delivered, ServerPeer, accept_all
from zonemta.engine.delivery import received
from zonemta.engine.delivery.transmit import BodyBytes
from zonemta.transport.outbound import Timeouts
from zonemta.transport.smtp import client as client_module
from zonemta.transport.smtp.client import NEED_DATA, SMTPClientConnection
from zonemta.transport.smtp.client_events import Wait
from zonemta.transport.smtp.client_session import SMTPClientSession
from zonemta.transport.smtp.errors import RemoteProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.timers import TimerWheel

# Lines a server might send, well formed or not.
reply_lines = st.one_of(
    st.tuples(
        st.sampled_from([b"250", b"354", b"421", b"550", b"199", b"600", b"25x", b"2500"]),
        st.sampled_from([b" ", b"-", b"", b"x"]),
        st.sampled_from([b"", b"2.0.0 ", b"5.1.1 ", b"4.0.0", b"2.1.5\t"]),
        st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    ).map(b"".join),
    st.binary(max_size=30),
)


def parse(lines: list[bytes], expected: int) -> list[Reply | str]:
    """The replies (or the error text) of ``lines`` on a fresh connection."""
    conn = SMTPClientConnection()
    out: list[Reply | str] = []
    for _ in range(expected - 1):
        conn.noop()
    for line in lines:
        if b"\n" in line:
            line = line.replace(b"\n", b"")
        conn.receive_data(line + b"\r\n")
        try:
            while (reply := conn.next_reply()) is not NEED_DATA:
                assert isinstance(reply, Reply)
                out.append(reply)
        except RemoteProtocolError as exc:
            out.append(f"error: {exc}")
            return out
        if len(out) >= expected:
            return out
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(reply_lines, min_size=1, max_size=6))
def test_a_reply_looked_up_is_the_reply_parsed(lines: list[bytes]) -> None:
    client_module._PARSED.clear()
    cold = parse(lines, len(lines))
    warm = parse(lines, len(lines))  # every single-line reply of the first pass is known
    client_module._PARSED.clear()
    assert warm == cold
    assert [str(r) for r in warm] == [str(r) for r in cold]


def test_the_cache_holds_single_line_replies_only_and_is_bounded() -> None:
    client_module._PARSED.clear()
    assert parse([b"250-first", b"250 2.0.0 last"], 1) == [Reply(250, ("first", "2.0.0 last"))]
    assert client_module._PARSED == {}  # the last line of a multi-line reply is not one
    assert parse([b"250 2.0.0 Ok"], 1) == [Reply(250, ("Ok",), "2.0.0")]
    assert list(client_module._PARSED) == [b"250 2.0.0 Ok"]
    for n in range(client_module.PARSED_CACHE_SIZE + 5):
        parse([b"250 queued as %d" % n], 1)
    assert len(client_module._PARSED) <= client_module.PARSED_CACHE_SIZE
    # A line that a multi-line reply continues is parsed as part of it, not looked up.
    parse([b"250 2.0.0 Ok"], 1)
    assert parse([b"250-x", b"250 2.0.0 Ok"], 1) == [Reply(250, ("x", "2.0.0 Ok"))]
    # A known line after a different code within a multi-line reply is still an error.
    assert parse([b"354-x", b"250 2.0.0 Ok"], 1) == ["error: reply code changed from 354 to 250"]
    client_module._PARSED.clear()


@given(
    st.integers(200, 599),
    st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n")), min_size=1),
    st.sampled_from([None, "2.0.0", "5.1.1"]),
)
def test_str_of_a_reply_is_computed_once_and_right(
    code: int, lines: list[str], enhanced: str | None
) -> None:
    reply = Reply(code, tuple(lines), enhanced)
    text = " ".join(line.strip() for line in lines).strip()
    expected = " ".join([str(code)] + ([enhanced] if enhanced else []) + ([text] if text else []))
    assert str(reply) == expected
    assert str(reply) is str(reply)
    assert reply == Reply(code, tuple(lines), enhanced)
    assert hash(reply) == hash(Reply(code, tuple(lines), enhanced))


@given(st.lists(st.floats(min_value=0, max_value=4e9), min_size=1, max_size=8))
def test_the_received_date_is_format_datetime(stamps: list[float]) -> None:
    # Near-equal timestamps first, so that the per-second memory is used.
    for stamp in sorted(stamps + [s + 0.25 for s in stamps] + [int(s) + 0.9999996 for s in stamps]):
        assert received._date(stamp) == format_datetime(datetime.fromtimestamp(stamp, UTC))


@pytest.mark.parametrize("stamp", [1.0, 1.5, 1.999999, 1.9999995, 1.99999951, 1.9999999, 2.0])
def test_the_received_date_at_the_edges_of_a_second(stamp: float) -> None:
    received._date(1.25)
    assert received._date(stamp) == format_datetime(datetime.fromtimestamp(stamp, UTC))


def test_data_to_send_returns_bytes() -> None:
    session = SMTPClientSession("relay.test")
    assert session.data_to_send() == b""
    session._out.append(bytearray(b"abc"))
    out = session.data_to_send()
    assert out == b"abc" and type(out) is bytes
    session._out += [b"a", b"b"]
    assert session.data_to_send() == b"ab"
    assert session.data_to_send() == b""


async def test_a_body_in_memory_goes_out_as_the_async_one_does() -> None:
    body = b"".join(BODY)
    sent: list[list[Delivered]] = []
    for content_of in (
        lambda: BodyBytes(body)(),  # the async iterator of the same source
        lambda: (BODY[0], b"".join(BODY[1:])),
        lambda: (body,),
    ):
        peer = ServerPeer(accept_all)
        async with trio.open_nursery() as nursery:
            connection = await greeted(nursery, peer)
            result = await connection.deliver(FOUR, content_of())
            assert result.accepted == FOUR.recipients
            await connection.aclose()
        sent.append(peer.delivered)
    assert sent[0] == sent[1] == sent[2] == [Delivered(FOUR.mail_from, FOUR.recipients, body)]


async def test_body_bytes_is_a_body_source() -> None:
    async def chunks(source: BodyBytes) -> list[bytes]:
        iterator: AsyncIterator[bytes] = source()
        return [chunk async for chunk in iterator]

    assert await chunks(BodyBytes(b"abc\r\n")) == [b"abc\r\n"]
    assert await chunks(BodyBytes(b"")) == []


def test_the_seconds_of_each_wait_follow_the_timeouts() -> None:
    conn = connection()
    for timeouts in (Timeouts(), Timeouts(connect=1, greeting=2, command=3, data=4)):
        conn.timeouts = timeouts
        assert conn.timeouts is timeouts
        for wait in [*Wait, None]:
            assert conn._seconds[wait] == timeouts.of(wait)


async def test_the_wheel_tells_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    wheel = TimerWheel()
    assert wheel.now() == trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(wheel.run)
        await trio.sleep(5)
        assert wheel.now() == trio.current_time() and wheel.now is not trio.current_time
        nursery.cancel_scope.cancel()
    assert wheel.now is trio.current_time
