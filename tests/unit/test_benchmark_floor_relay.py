"""The relay floor of benchmarks/floor_relay.py: its grammar, its store, and messages relayed
over loopback into the benchmark sink."""

from __future__ import annotations

import socket
import sqlite3
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level package beside src/
    sys.path.insert(0, str(ROOT))

from benchmarks.floor import QUEUED, REPLIES, UNKNOWN  # noqa: E402
from benchmarks.floor_relay import (  # noqa: E402
    GroupCommit,
    IntakeGrammar,
    Message,
    ReplyReader,
    SinkRefused,
    deliver,
    serve,
)
from benchmarks.sink import serve_sink  # noqa: E402
from zonemta.transport.direct_stream import DirectSocketStream  # noqa: E402

ENVELOPE = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"


def test_the_grammar_keeps_the_envelope_and_the_stuffed_body() -> None:
    grammar = IntakeGrammar()
    grammar.buffer += b"HELO a\r\n" + ENVELOPE + b"DATA\r\nSubject: x\r\n\r\n..dot\r\nbo"
    step = grammar.step()
    assert step.replies == REPLIES[b"HELO"] + REPLIES[b"MAIL"] + REPLIES[b"RCPT"] + REPLIES[b"DATA"]
    assert step.message is None and not step.quit
    grammar.buffer += b"dy\r\n.\r"  # the terminator split across reads
    assert grammar.step().message is None
    grammar.buffer += b"\nQUIT\r\n"
    step = grammar.step()
    assert step.message == Message(ENVELOPE, b"Subject: x\r\n\r\n..dot\r\nbody\r\n")
    assert step.message.recipients == 1
    step = grammar.step()
    assert step.replies == REPLIES[b"QUIT"] and step.quit


def test_the_grammar_ends_an_empty_body_forgets_a_reset_envelope_and_refuses_unknowns() -> None:
    grammar = IntakeGrammar()
    grammar.buffer += b"MAIL FROM:<x@y>\r\nRSET\r\n" + ENVELOPE + b"XYZW\r\nDATA\r\n.\r\nNOO"
    step = grammar.step()
    assert (
        step.replies
        == (REPLIES[b"MAIL"] + REPLIES[b"RSET"] + REPLIES[b"MAIL"] + REPLIES[b"RCPT"] + UNKNOWN)
        + REPLIES[b"DATA"]
    )
    assert step.message == Message(ENVELOPE, b"")
    assert grammar.step().replies == b""
    assert grammar.buffer == bytearray(b"NOO")


async def test_the_group_commit_stores_before_answering_and_deletes(tmp_path: Path) -> None:
    store = GroupCommit(tmp_path / "q.sqlite")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        first, second = Message(ENVELOPE, b"one\r\n"), Message(ENVELOPE, b"two\r\n")
        async with trio.open_nursery() as both:
            both.start_soon(store.insert, first)
            both.start_soon(store.insert, second)
        assert {first.rowid, second.rowid} == {1, 2}
        reader = sqlite3.connect(tmp_path / "q.sqlite")  # another connection sees them
        rows = reader.execute("SELECT id, body FROM messages").fetchall()
        assert sorted(rows) == sorted([(first.rowid, b"one\r\n"), (second.rowid, b"two\r\n")])
        store.delete(first.rowid)
        await store.insert(Message(ENVELOPE, b"three\r\n"))  # commits with the delete
        assert reader.execute("SELECT count(*) FROM messages").fetchone() == (2,)
        reader.close()
        nursery.cancel_scope.cancel()


async def test_the_reply_reader_skips_continuations_and_refuses_the_unexpected() -> None:
    ours, theirs = socket.socketpair()
    reader = ReplyReader(DirectSocketStream(ours))
    theirs.sendall(b"250-one\r\n250 two\r\n354 go\r\n451 no\r\n")
    await reader.expect(b"250", b"354")
    with pytest.raises(SinkRefused, match="451"):
        await reader.expect(b"250")
    theirs.close()
    with pytest.raises(SinkRefused, match="closed"):
        await reader.expect(b"250")
    reader.stream.close()


async def test_messages_are_relayed_into_the_sink_and_leave_the_store(tmp_path: Path) -> None:
    arrivals: list[str | None] = []
    all_arrived = trio.Event()

    def arrived(bench_id: str | None, _when: float) -> None:
        arrivals.append(bench_id)
        if len(arrivals) == 3:
            all_arrived.set()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    store = GroupCommit(tmp_path / "floor.sqlite")
    async with trio.open_nursery() as nursery:
        sink_port = await nursery.start(serve_sink, arrived, lambda: None)
        nursery.start_soon(serve, listener, sink_port, store, 2)
        for number in range(3):
            client = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
            await client.send_all(
                b"HELO me\r\nMAIL FROM:<a@b>\r\nRCPT TO:<%d@d>\r\nDATA\r\n" % number
            )
            await client.send_all(b"Subject: hi\r\n\r\n.body\r\n.\r\nQUIT\r\n")
            received = b""
            while chunk := await client.receive_some(4096):
                received += chunk
            assert received.endswith(QUEUED + REPLIES[b"QUIT"])
            await client.aclose()
        with trio.fail_after(10):
            await all_arrived.wait()
            reader = sqlite3.connect(tmp_path / "floor.sqlite")
            while reader.execute("SELECT count(*) FROM messages").fetchone() != (0,):
                await store.next_commit()  # the deletes commit in a batch after the 250s
            reader.close()
        assert sorted(arrivals, key=str) == ["to:0@d", "to:1@d", "to:2@d"]
        nursery.cancel_scope.cancel()
    listener.close()


async def test_a_failed_delivery_puts_the_message_back_in_line(tmp_path: Path) -> None:
    closing = socket.socket()  # a "sink" that hangs up on every connection
    closing.bind(("127.0.0.1", 0))
    closing.listen(8)
    closing.setblocking(False)
    store = GroupCommit(tmp_path / "floor.sqlite")
    outbox, stored = trio.open_memory_channel[Message](1)
    retry, retried = trio.open_memory_channel[Message](1)
    message = Message(ENVELOPE, b"body\r\n", rowid=7)

    async def hang_up() -> None:
        while True:
            await trio.lowlevel.wait_readable(closing)
            closing.accept()[0].close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hang_up)
        await outbox.send(message)
        await outbox.aclose()
        with trio.fail_after(10):
            await deliver(closing.getsockname()[1], store, stored, retry)
        assert retried.receive_nowait() is message
        nursery.cancel_scope.cancel()
    closing.close()
