"""The load generator: a trio SMTP client offering a bounded load over C connections.

Each connection greets once (EHLO) and then sends several messages, as real senders do:
``MAIL FROM``, ``RCPT TO`` and ``DATA`` go out in one write (RFC 2920 pipelining; DATA is the
last command of the group), then the message, then the client waits for the final reply.
Messages carry ``X-Bench-Id: <n>``; the time each one is accepted (the 250 after the dot) is
handed to a callback. Message ids are taken from one shared counter, so the load is exactly
``messages`` messages whatever the number of connections. Bodies are built once and reused;
a large message is streamed in blocks, never held whole.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator

import attrs
import trio

#: Body lines are 78 characters plus CRLF (RFC 5322 2.1.1 recommends at most 78).
LINE = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefgh\r\n"
#: Block of whole lines that large bodies are streamed in (~1 MiB).
BLOCK = LINE * (1024 * 1024 // len(LINE))
#: Bodies up to this size are built once and sent with the head in one write.
INLINE_LIMIT = 4 * 1024 * 1024
#: Consecutive connection failures of one worker before the run is abandoned.
MAX_CONNECT_FAILURES = 5

AcceptCallback = Callable[[int, float], None]
Connector = Callable[[], Awaitable[trio.abc.Stream]]


class InjectError(Exception):
    """The relay could not be reached, or broke the SMTP dialogue beyond recovery."""


@attrs.frozen
class LoadPlan:
    """What to offer: ``messages`` of about ``size`` bytes over ``connections`` sessions.

    ``per_connection`` messages are sent per SMTP session before it is closed and reopened.
    ``rate`` (messages/s), when set, paces the offered load: message n starts no earlier than
    ``n / rate`` seconds after the start.
    """

    messages: int = attrs.field(validator=attrs.validators.ge(0))
    size: int = attrs.field(validator=attrs.validators.ge(0))
    connections: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    per_connection: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    rate: float | None = None
    sender: str = "bench@sender.test"
    recipient_domain: str = "sink.test"


@attrs.frozen
class InjectStats:
    """What the injector saw: counts and the wall-clock span of the injection."""

    accepted: int
    rejected: int
    failed: int
    sessions: int
    started: float
    finished: float


def message_head(n: int, recipient: str, sender: str) -> bytes:
    """Header block (ending with the empty line) for message ``n``."""
    return (
        f"From: <{sender}>\r\n"
        f"To: <{recipient}>\r\n"
        f"Subject: benchmark message {n}\r\n"
        f"Message-ID: <bench.{n}@sender.test>\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        f"X-Bench-Id: {n}\r\n"
        "\r\n"
    ).encode("ascii")


def iter_body(length: int) -> Iterator[bytes]:
    """Yield exactly ``length`` bytes of CRLF-terminated lines, no line starting with a dot.

    A remainder too short for a line of its own (under 2 bytes) is dropped, so the body may
    be one byte short; every yielded block is whole lines.
    """
    full, rest = divmod(length, len(BLOCK))
    for _ in range(full):
        yield BLOCK
    if rest:
        lines, partial = divmod(rest, len(LINE))
        piece = LINE * lines
        if partial >= 2:
            piece += LINE[: partial - 2] + b"\r\n"
        if piece:
            yield piece


def body_length(size: int, head_length: int) -> int:
    """Body bytes for a message of about ``size`` bytes whose head is ``head_length``."""
    return max(0, size - head_length)


class _ReplyReader:
    """Reads SMTP replies (possibly multi-line) from a stream; returns (code, last line)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = b""

    async def read(self) -> tuple[int, bytes]:
        lines: list[bytes] = []
        while True:
            eol = self._buf.find(b"\n")
            while eol < 0:
                data = await self._stream.receive_some(65536)
                if not data:
                    raise InjectError("connection closed while waiting for a reply")
                self._buf += data
                eol = self._buf.find(b"\n")
            line = self._buf[:eol].rstrip(b"\r")
            self._buf = self._buf[eol + 1 :]
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                try:
                    return int(line[:3]), b"\n".join(lines)
                except ValueError as exc:
                    raise InjectError(f"malformed reply {line!r}") from exc


class _Counter:
    """Hands out message ids 0..total-1 to the workers."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.next = 0

    def take(self) -> int | None:
        if self.next >= self.total:
            return None
        n = self.next
        self.next += 1
        return n


class Injector:
    """Offers a :class:`LoadPlan` to ``host:port`` and reports each acceptance.

    Owns its connections. ``on_accepted(n, time.monotonic())`` is called for each message the
    relay accepted with a 2xx after the dot. ``connect`` replaces the TCP connection to
    ``host:port`` (tests hand in memory streams).
    """

    #: Acceptances name their message (``X-Bench-Id``): latency can be measured.
    tags_messages = True

    def __init__(
        self,
        host: str,
        port: int,
        plan: LoadPlan,
        on_accepted: AcceptCallback,
        connect: Connector | None = None,
    ) -> None:
        self._connect = connect or self._connect_tcp
        self.host = host
        self.port = port
        self.plan = plan
        self.on_accepted = on_accepted
        self.accepted = 0
        self.rejected = 0
        self.failed = 0
        self.sessions = 0
        self._counter = _Counter(plan.messages)
        self._start = 0.0
        self._paced_from = 0.0
        self._inline_bodies: dict[int, bytes] = {}

    def _body_chunks(self, head: bytes) -> Iterator[bytes]:
        length = body_length(self.plan.size, len(head))
        if length <= INLINE_LIMIT:
            body = self._inline_bodies.get(length)
            if body is None:
                body = self._inline_bodies[length] = b"".join(iter_body(length))
            yield body
        else:
            yield from iter_body(length)

    async def _connect_tcp(self) -> trio.abc.Stream:
        """A plain connect: with one new session per message (``per_connection=1``) the
        connection set-up is most of the injector's work, and ``trio.open_tcp_stream``'s
        name resolution and happy-eyeballs machinery is not needed for a loopback address."""
        family = trio.socket.AF_INET6 if ":" in self.host else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        try:
            await sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    @property
    def notes(self) -> list[str]:
        """What the report should say about this injector's run (nothing: it is the default)."""
        return []

    async def run(self) -> InjectStats:
        """Run the whole plan; returns when every message is accepted, rejected or failed.

        Raises InjectError when a worker cannot connect MAX_CONNECT_FAILURES times in a row.
        Callers bound the time with a cancel scope.
        """
        self._start = time.monotonic()
        self._paced_from = trio.current_time()  # trio's clock has its own origin
        workers = min(self.plan.connections, max(1, self.plan.messages))
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(self._worker)
        return InjectStats(
            accepted=self.accepted,
            rejected=self.rejected,
            failed=self.failed,
            sessions=self.sessions,
            started=self._start,
            finished=time.monotonic(),
        )

    async def _worker(self) -> None:
        failures = 0
        n = self._counter.take()
        while n is not None:
            # Paced before connecting: a client connects when it has a message to send.
            await self._pace(n)
            try:
                stream = await self._connect()
            except OSError as exc:
                failures += 1
                if failures >= MAX_CONNECT_FAILURES:
                    raise InjectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
                await trio.sleep(0.1 * failures)
                continue
            failures = 0
            self.sessions += 1
            async with stream:
                # The message in flight (if any) is counted as failed in _session.
                with contextlib.suppress(InjectError, trio.BrokenResourceError, OSError):
                    await self._session(stream, n)
            n = self._counter.take()

    async def _pace(self, n: int) -> None:
        if self.plan.rate:
            await trio.sleep_until(self._paced_from + n / self.plan.rate)

    async def _session(self, stream: trio.abc.Stream, first: int) -> None:
        """One SMTP session: message ``first``, then more from the counter, up to
        ``per_connection`` in all. A session never opens without a message to send."""
        reader = _ReplyReader(stream)
        n: int | None = first
        try:
            code, _ = await reader.read()
            if code != 220:
                raise InjectError(f"greeting {code}")
            await stream.send_all(b"EHLO bench.sender.test\r\n")
            code, text = await reader.read()
            if code != 250:
                raise InjectError(f"EHLO {code}")
        except BaseException:
            self.failed += 1  # message ``first`` was lost with the session
            raise
        size_ok = b"SIZE" in text.upper()
        for index in range(self.plan.per_connection):
            if index:
                n = self._counter.take()
                if n is None:
                    break
                await self._pace(n)
            assert n is not None
            try:
                accepted = await self._transaction(stream, reader, n, size_ok)
            except BaseException:
                self.failed += 1
                raise
            if not accepted:
                await stream.send_all(b"RSET\r\n")
                await reader.read()
        await stream.send_all(b"QUIT\r\n")
        await reader.read()

    async def _transaction(
        self, stream: trio.abc.Stream, reader: _ReplyReader, n: int, size_ok: bool
    ) -> bool:
        recipient = f"user{n}@{self.plan.recipient_domain}"
        head = message_head(n, recipient, self.plan.sender)
        size_param = f" SIZE={max(self.plan.size, len(head))}" if size_ok else ""
        await stream.send_all(
            f"MAIL FROM:<{self.plan.sender}>{size_param}\r\n"
            f"RCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii")
        )
        _mail, _ = await reader.read()
        _rcpt, _ = await reader.read()
        data, _ = await reader.read()
        if data != 354:
            self.rejected += 1
            return False
        chunks = self._body_chunks(head)
        first = next(chunks, b"")
        pending = head + first
        for chunk in chunks:
            await stream.send_all(pending)
            pending = chunk
        await stream.send_all(pending + b".\r\n")
        final, _ = await reader.read()
        if 200 <= final < 300:
            self.accepted += 1
            self.on_accepted(n, time.monotonic())
            return True
        self.rejected += 1
        return False
