"""The relay floor: the least CPU a durable relay on trio spends per message on this machine.

``python -m benchmarks.floor_relay --port P --sink-port S`` runs a relay that does only what
storing and forwarding a message must do. It runs in ``--processes`` forked processes that
share the listening socket and nothing else: the friendliest layout for two cores. Each one
does this per message:

- SMTP intake with canned replies (HELO/EHLO, MAIL, RCPT, DATA, QUIT). The MAIL and RCPT
  lines are kept as they came, and the body stays dot-stuffed as it came;
- the message is inserted into the process's own sqlite file with zonemta's durability
  pragmas (WAL, ``synchronous=FULL``, ``temp_store=MEMORY``), group-committed in a worker
  thread, before the 250;
- it is delivered over kept-open connections to the sink, with MAIL, RCPT and DATA
  pipelined;
- its row is deleted once the sink said 250 (group-committed too).

There is no address parsing, no header, no policy, no hook, no retry, no event, no metric
and no log line. The sockets are the project's :class:`DirectSocketStream` and the
processes get zonemta's garbage-collector settings. Run it as the ``--target`` of the
harness, which drives it and Postfix with the same load in the same run::

    python -m benchmarks.floor_relay --port 2600 --sink-port 2601 &
    python -m benchmarks.relay --target 127.0.0.1:2600 --target-pid $! --sink-port 2601 \\
        --injector smtp-source --per-connection 1 --connections 20 --messages 20000 \\
        --size 4096 --compare postfix

Its ratio to Postfix bounds what any relay built this way (trio, sqlite, a stored message
before the 250) can reach on the machine; zonemta, which does much more per message, stays
below it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from benchmarks.floor import BANNER, END_OF_DATA, QUEUED, REPLIES, UNKNOWN
from zonemta.engine.processes.child_entry import tune_gc
from zonemta.transport.direct_stream import DirectSocketStream, accept_loop

RECEIVE_SIZE = 65536
RETRY_PAUSE = 0.1  # seconds before a failed delivery is tried again
SCHEMA = "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, envelope BLOB, body BLOB)"


@attrs.define
class Message:
    envelope: bytes  # the MAIL and RCPT command lines as received
    body: bytes  # dot-stuffed as received, ending with CRLF
    rowid: int = 0

    @property
    def recipients(self) -> int:
        return self.envelope.count(b"\n") - 1


@attrs.define
class Step:
    replies: bytes
    message: Message | None = None
    quit: bool = False


@attrs.define
class IntakeGrammar:
    """Consumes a client's bytes: the replies due and each message as it ends."""

    buffer: bytearray = attrs.field(factory=bytearray)
    envelope: bytearray = attrs.field(factory=bytearray)
    in_data: bool = False

    def step(self) -> Step:
        """Replies up to the next complete message, QUIT, or the end of the buffer."""
        out: list[bytes] = []
        buffer = self.buffer
        while True:
            if self.in_data:
                end = buffer.find(END_OF_DATA)
                if end < 0:
                    return Step(b"".join(out))
                # the body starts after the CRLF put in front of it at DATA
                message = Message(bytes(self.envelope), bytes(buffer[2 : end + 2]))
                del buffer[: end + len(END_OF_DATA)]
                self.envelope.clear()
                self.in_data = False
                return Step(b"".join(out), message)
            end = buffer.find(b"\r\n")
            if end < 0:
                return Step(b"".join(out))
            line = bytes(buffer[: end + 2])
            del buffer[: end + 2]
            verb = line[:4].upper()
            out.append(REPLIES.get(verb, UNKNOWN))
            if verb in (b"MAIL", b"RCPT"):
                self.envelope += line
            elif verb == b"RSET":
                self.envelope.clear()
            elif verb == b"QUIT":
                return Step(b"".join(out), quit=True)
            elif verb == b"DATA":
                buffer[:0] = b"\r\n"  # so that an empty body ends at once: "\r\n.\r\n"
                self.in_data = True


class GroupCommit:
    """The process's sqlite file: inserts and deletes committed together, one batch at a
    time, in a worker thread; the next batch gathers while one commits."""

    def __init__(self, path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(SCHEMA)
        self._conn = conn
        self._inserts: list[tuple[Message, trio.Event]] = []
        self._deletes: list[tuple[int]] = []
        self._work = trio.Event()
        self._committed = trio.Event()  # set (and replaced) after each batch

    async def insert(self, message: Message) -> None:
        """Store ``message`` durably (its ``rowid`` is set then)."""
        done = trio.Event()
        self._inserts.append((message, done))
        self._work.set()
        await done.wait()

    def delete(self, rowid: int) -> None:
        self._deletes.append((rowid,))
        self._work.set()

    async def run(self) -> None:
        while True:
            await self._work.wait()
            self._work = trio.Event()
            inserts, self._inserts = self._inserts, []
            deletes, self._deletes = self._deletes, []
            await trio.to_thread.run_sync(self._commit, inserts, deletes)
            for _, done in inserts:
                done.set()
            committed, self._committed = self._committed, trio.Event()
            committed.set()

    async def next_commit(self) -> None:
        """Wait for the end of the next batch."""
        await self._committed.wait()

    def _commit(self, inserts: list[tuple[Message, trio.Event]], deletes: list[tuple[int]]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        for message, _ in inserts:
            cursor = conn.execute(
                "INSERT INTO messages (envelope, body) VALUES (?, ?)",
                (message.envelope, message.body),
            )
            message.rowid = cursor.lastrowid or 0
        conn.executemany("DELETE FROM messages WHERE id = ?", deletes)
        conn.execute("COMMIT")


async def intake_session(
    stream: DirectSocketStream, store: GroupCommit, outbox: trio.MemorySendChannel[Message]
) -> None:
    """One client: canned replies; each message stored before its 250, then handed on."""
    grammar = IntakeGrammar()
    try:
        await stream.send_all(BANNER)
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            grammar.buffer += data
            out = bytearray()
            while True:
                step = grammar.step()
                out += step.replies
                if step.message is None:
                    break
                await store.insert(step.message)
                outbox.send_nowait(step.message)
                out += QUEUED
            if out:
                await stream.send_all(out)
            if step.quit:
                return
    except trio.BrokenResourceError:
        return
    finally:
        stream.close()


class SinkRefused(Exception):
    """The sink answered something other than the expected positive reply."""


class ReplyReader:
    """Final reply lines from a stream (continuation lines skipped)."""

    def __init__(self, stream: DirectSocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def expect(self, *codes: bytes) -> None:
        for code in codes:
            while True:
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        raise SinkRefused("the sink closed the connection")
                    self.buffer += data
                    continue
                line = bytes(self.buffer[: end + 2])
                del self.buffer[: end + 2]
                if line[3:4] == b"-":
                    continue
                if line[:3] != code:
                    raise SinkRefused(f"expected {code.decode()}, got {line!r}")
                break


async def open_sink(sink_port: int) -> ReplyReader:
    """A connection to the sink, greeted."""
    opened = await trio.open_tcp_stream("127.0.0.1", sink_port)
    reader = ReplyReader(DirectSocketStream(socket.socket(fileno=opened.socket.detach())))
    await reader.expect(b"220")
    await reader.stream.send_all(b"EHLO floor.test\r\n")
    await reader.expect(b"250")
    return reader


async def deliver(
    sink_port: int,
    store: GroupCommit,
    outbox: trio.MemoryReceiveChannel[Message],
    retry: trio.MemorySendChannel[Message],
) -> None:
    """Take stored messages and send them over one kept-open connection to the sink. When
    the connection fails (the sink restarted), the message goes back in line and the next
    attempt opens a new one."""
    reader: ReplyReader | None = None
    async for message in outbox:
        try:
            if reader is None:
                reader = await open_sink(sink_port)
            await reader.stream.send_all(message.envelope + b"DATA\r\n")
            await reader.expect(b"250", *[b"250"] * message.recipients, b"354")
            await reader.stream.send_all(message.body + b".\r\n")
            await reader.expect(b"250")
        except (SinkRefused, trio.BrokenResourceError, OSError):
            if reader is not None:
                reader.stream.close()
                reader = None
            retry.send_nowait(message)
            await trio.sleep(RETRY_PAUSE)
            continue
        store.delete(message.rowid)


async def serve(
    listener: socket.socket, sink_port: int, store: GroupCommit, connections: int
) -> None:
    """One process: the intake on ``listener``, ``store``, ``connections`` senders."""
    outbox, stored = trio.open_memory_channel[Message](math.inf)

    async def session(stream: DirectSocketStream, _client: str) -> None:
        await intake_session(stream, store, outbox)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        for _ in range(connections):
            nursery.start_soon(deliver, sink_port, store, stored.clone(), outbox.clone())
        await accept_loop(listener, session, nursery)


def _child(listener: socket.socket, sink_port: int, db_path: Path, connections: int) -> None:
    signal.signal(signal.SIGTERM, lambda _signum, _frame: os._exit(0))
    tune_gc()
    trio.run(serve, listener, sink_port, GroupCommit(db_path), connections)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor_relay", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--sink-port", type=int, required=True, help="deliver to 127.0.0.1")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=10, help="to the sink, per process")
    parser.add_argument("--workdir", type=Path, default=Path("."), help="for the sqlite files")
    args = parser.parse_args(argv)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(1024)
    children = []
    for index in range(args.processes):
        db_path = args.workdir / f"floor-relay-{index}.sqlite"
        for leftover in args.workdir.glob(f"{db_path.name}*"):
            leftover.unlink()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            _child(listener, args.sink_port, db_path, args.connections)
        children.append(pid)

    def stop(_signum: int, _frame: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
