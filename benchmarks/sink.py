"""A fast SMTP sink for the benchmark: accepts everything, keeps nothing, times each arrival.

The sink answers EHLO (PIPELINING, 8BITMIME, SIZE), MAIL/RCPT/RSET/NOOP (250), DATA (354, then
250 once CRLF.CRLF is seen) and QUIT (221). The message body is never looked at line by line:
the end of DATA is found with ``bytes.find`` on whole chunks, carrying the four bytes that can
straddle a chunk boundary, and the only header picked out is ``X-Bench-Id`` from the first
bytes of the message. A message without one (from Postfix's ``smtp-source``, whose ``-N``
numbers the recipients) is named ``to:ADDRESS`` after its first recipient instead, so that
duplicates still show.

Run as a process (``python -m benchmarks.sink``) it prints, on stdout, one line
``listening PORT`` and then, in batches every few milliseconds, ``a ID T`` per arrival
(``T`` is ``time.monotonic()``, which on Linux is one clock for every process) and ``c`` per
new connection. It exits when its stdin closes (its parent died) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import trio

#: Bytes asked of the socket per read. Large reads keep the per-chunk work negligible.
RECV_SIZE = 256 * 1024
#: How much of a message's start is scanned for the ``X-Bench-Id`` header.
HEADER_SCAN_LIMIT = 64 * 1024
#: A command line longer than this (without CRLF) ends the session (RFC 5321 4.5.3.1.4: 512).
MAX_COMMAND_LINE = 4096
#: End of DATA (RFC 5321 4.1.1.4). The sink never accepts a bare LF.LF.
END_OF_DATA = b"\r\n.\r\n"
BENCH_HEADER = b"x-bench-id:"

ArrivalCallback = Callable[[str | None, float], None]
ConnectionCallback = Callable[[], None]

_EHLO_REPLY = (
    b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 0\r\n250 ENHANCEDSTATUSCODES\r\n"
)


class SinkProtocolError(Exception):
    """The client broke the session (EOF inside DATA, or an over-long command line)."""


def recipient_id(line: bytes) -> str | None:
    """``to:ADDRESS`` for a ``RCPT TO:<ADDRESS>`` command line, None when it names none.

    The address is what stands between ``<`` and ``>`` (or after the colon); whitespace in it
    becomes ``_`` so that the id stays one token of the sink's report lines.
    """
    _, colon, rest = line.partition(b":")
    if not colon:
        return None
    rest = rest.strip()
    if rest.startswith(b"<"):
        end = rest.find(b">")
        rest = rest[1:end] if end >= 0 else rest[1:]
    else:
        rest = rest.split(b" ", 1)[0]
    address = "_".join(rest.decode("ascii", "replace").split())
    return f"to:{address}" if address else None


def find_bench_id(head: bytes) -> str | None:
    """Return the value of the ``X-Bench-Id`` header in a message's first bytes, or None.

    ``head`` is the start of the message as received after DATA. Only the header block (up to
    the first empty line) is searched; the match is case-insensitive and must start a line.
    """
    end = head.find(b"\r\n\r\n")
    block = b"\r\n" + (head if end < 0 else head[:end]) + b"\r\n"
    lowered = block.lower()
    start = lowered.find(b"\r\n" + BENCH_HEADER)
    if start < 0:
        return None
    value_start = start + 2 + len(BENCH_HEADER)
    value_end = block.find(b"\r\n", value_start)
    if value_end < 0:
        return None
    value = block[value_start:value_end].strip()
    return value.decode("ascii", "replace") if value else None


async def _read_data(
    stream: trio.abc.ReceiveStream,
    pending: bytes,
    on_arrival: ArrivalCallback,
    fallback_id: str | None = None,
) -> bytes:
    """Consume one message's DATA from ``pending`` and the stream, up to CRLF.CRLF.

    Calls ``on_arrival(bench_id, time.monotonic())`` when the terminator is seen (the
    ``X-Bench-Id``, else ``fallback_id``) and returns the bytes that followed it (a
    pipelined next command). Raises SinkProtocolError on EOF.
    """
    head = bytearray()
    scanning = True
    tail = b"\r\n"  # DATA's own CRLF: a message that is just ".\r\n" is empty
    data: bytes | bytearray = pending
    while True:
        if data:
            if scanning:
                head += data[: HEADER_SCAN_LIMIT - len(head)]
                if b"\r\n\r\n" in head or len(head) >= HEADER_SCAN_LIMIT:
                    scanning = False
            window = tail + data
            found = window.find(END_OF_DATA)
            if found >= 0:
                on_arrival(find_bench_id(bytes(head)) or fallback_id, time.monotonic())
                return bytes(window[found + len(END_OF_DATA) :])
            tail = window[-4:]
        data = await stream.receive_some(RECV_SIZE)
        if not data:
            raise SinkProtocolError("EOF inside DATA")


async def handle_session(stream: trio.abc.Stream, on_arrival: ArrivalCallback) -> None:
    """Run one SMTP session on ``stream`` until QUIT or EOF; the caller closes the stream.

    Raises SinkProtocolError when the client breaks the session, and trio's stream errors
    when the socket does.
    """
    await stream.send_all(b"220 sink.test ESMTP benchmark sink\r\n")
    buf = b""
    first_recipient: str | None = None
    while True:
        data = await stream.receive_some(RECV_SIZE)
        if not data:
            return
        buf += data
        replies: list[bytes] = []
        while True:
            eol = buf.find(b"\n")
            if eol < 0:
                if len(buf) > MAX_COMMAND_LINE:
                    raise SinkProtocolError("command line too long")
                break
            line = buf[:eol]
            buf = buf[eol + 1 :]
            verb = line[:4].upper()
            if verb == b"DATA":
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                await stream.send_all(b"".join(replies))
                replies = []
                buf = await _read_data(stream, buf, on_arrival, first_recipient)
                first_recipient = None
                replies.append(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"RCPT":
                if first_recipient is None:
                    first_recipient = recipient_id(line.rstrip(b"\r"))
                replies.append(b"250 2.0.0 Ok\r\n")
            elif verb in (b"MAIL", b"RSET"):
                first_recipient = None
                replies.append(b"250 2.0.0 Ok\r\n")
            elif verb == b"NOOP":
                replies.append(b"250 2.0.0 Ok\r\n")
            elif verb == b"EHLO":
                replies.append(_EHLO_REPLY)
            elif verb == b"HELO":
                replies.append(b"250 sink.test\r\n")
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                await stream.send_all(b"".join(replies))
                return
            else:
                replies.append(b"502 5.5.2 Command not recognized\r\n")
        if replies:
            await stream.send_all(b"".join(replies))


async def serve_sink(
    on_arrival: ArrivalCallback,
    on_connection: ConnectionCallback,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and serve sessions until cancelled; reports the bound port.

    Owns its listeners and one task per connection. A session that breaks is closed and
    forgotten (the benchmark counts arrivals, not failures).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def _handler(stream: trio.SocketStream) -> None:
        on_connection()
        async with stream:
            try:
                await handle_session(stream, on_arrival)
            except (SinkProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                return

    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, _handler, listeners)
        task_status.started(int(bound))


class _LineWriter:
    """Batches protocol lines for the parent and writes them to fd 1 every few ms."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def arrival(self, bench_id: str | None, when: float) -> None:
        self.lines.append(f"a {bench_id or '-'} {when:.6f}\n".encode())

    def connection(self) -> None:
        self.lines.append(b"c\n")

    def flush(self) -> None:
        if self.lines:
            out = b"".join(self.lines)
            self.lines = []
            view = memoryview(out)
            while view:
                view = view[os.write(1, view) :]

    async def run(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self.flush()


async def _watch_stdin(cancel: trio.CancelScope) -> None:
    """Cancel the sink when the parent closes our stdin (or dies)."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with stdin:
        while await stdin.receive_some(4096):
            pass
    cancel.cancel()


async def _main_async(host: str, port: int, flush_interval: float) -> None:
    writer = _LineWriter()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve_sink(
                writer.arrival, writer.connection, host=host, port=port, task_status=task_status
            )
        )
        writer.lines.append(f"listening {bound}\n".encode())
        writer.flush()
        nursery.start_soon(writer.run, flush_interval)
        nursery.start_soon(_watch_stdin, nursery.cancel_scope)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.sink``: serve until stdin closes or SIGTERM."""
    parser = argparse.ArgumentParser(description="benchmark SMTP sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--flush-interval", type=float, default=0.02)
    args = parser.parse_args(argv)
    try:
        trio.run(_main_async, args.host, args.port, args.flush_interval)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
