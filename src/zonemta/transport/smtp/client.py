"""Sans-IO SMTP client, command/reply layer: formats commands, parses replies.

No sockets, no trio, no clock (CONVENTIONS.md 1). :class:`SMTPClientConnection` counts the
replies it is owed: every command method records one expected reply, so a pipelined group
(MAIL, RCPT..., DATA; RFC 2920) can be written at once and its replies read back in order. A
reply that nobody asked for is a protocol error.

The session logic above it (greeting, EHLO/HELO, STARTTLS, transactions, RSET, QUIT) is the
transaction object :class:`~zonemta.transport.smtp.client_session.SMTPClientSession`, which
drivers use; this layer is its parser and formatter. ``Extensions`` and ``plan_transaction``
live in ``client_plan.py`` and are re-exported here.

Direct use::

    conn = SMTPClientConnection()          # the 220 greeting is already expected
    greeting = read_reply()                # driver loop around next_reply/receive_data
    send(conn.ehlo("mta.example"))
    ext = Extensions.from_ehlo(read_reply())
"""

from __future__ import annotations

import collections
import enum
import re

from zonemta.transport.smtp.client_plan import (
    Extensions,
    RefusalReason,
    TransactionPlan,
    TransactionRefusal,
    plan_transaction,
)
from zonemta.transport.smtp.errors import LocalProtocolError, RemoteProtocolError
from zonemta.transport.smtp.reply import Reply

__all__ = [
    "MAX_REPLY_LINES",
    "MAX_REPLY_LINE_LENGTH",
    "NEED_DATA",
    "Extensions",
    "RefusalReason",
    "SMTPClientConnection",
    "TransactionPlan",
    "TransactionRefusal",
    "check_address",
    "check_hostname",
    "plan_transaction",
]

# RFC 5321 4.5.3.1.5 sets the reply line limit at 512 octets, but real servers exceed it (long
# banners, long EHLO keyword lists), so we accept up to 4096 octets per line, line ending not
# counted, which still bounds what a hostile server can make us buffer.
MAX_REPLY_LINE_LENGTH = 4096
# Lines of one multi-line reply. RFC 5321 sets no limit; EHLO replies have about 15 lines and
# banners rarely 50. Bounds memory at MAX_REPLY_LINES * MAX_REPLY_LINE_LENGTH.
MAX_REPLY_LINES = 512

_CR = 0x0D

# Single-line replies already parsed, by their line (without the line ending): the same few
# ("250 2.0.0 Ok", "354 ...") come back in every transaction, and a Reply is immutable.
# Only lines that parsed without error are kept, so a hit is exactly what parsing would
# give; the cache is emptied when full (replies carrying a queue id never repeat).
_PARSED: dict[bytes, Reply] = {}
PARSED_CACHE_SIZE = 512


class NEED_DATA:
    """Sentinel returned by ``next_reply`` (the class itself) when more bytes are needed."""

    def __init__(self) -> None:
        raise TypeError("NEED_DATA is a sentinel; use the class itself")


class _Command(enum.Enum):
    """What an expected reply answers."""

    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "end of data"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


class SMTPClientConnection:
    """The client side of one SMTP connection, without I/O.

    Parses replies and formats commands. Tracks how many replies are outstanding, so a
    pipelined group (MAIL, RCPT..., DATA) can be sent in one write and the replies read in
    order. The 220 greeting is expected from construction on (see ``expect_greeting``).

    Once ``next_reply`` has raised ``RemoteProtocolError`` the connection is broken and every
    later call raises the same error; the driver should close the socket.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes at the start of _buffer known to contain no LF
        self._lines: list[str] = []  # text of the lines of a multi-line reply read so far
        self._code: int | None = None  # code of that reply
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._expected: collections.deque[_Command] = collections.deque()
        self._last: tuple[_Command, Reply] | None = None  # the reply last returned
        self._smtputf8 = False  # the current transaction's MAIL carried SMTPUTF8
        self._greeting_expected = False
        self.expect_greeting()

    # --- bytes in, replies out -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Replies expected but not yet returned by ``next_reply``."""
        return len(self._expected)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into a returned reply (of unfinished lines)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the peer; ``b""`` means the peer closed (EOF).

        Raises ``LocalProtocolError`` for non-empty data after EOF.
        """
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() called with data after EOF")
            return
        if not data:
            self._eof = True
            return
        self._buffer += data

    def next_reply(self) -> Reply | type[NEED_DATA]:
        """Return the next complete (possibly multi-line) reply, or ``NEED_DATA``.

        Raises ``RemoteProtocolError`` for a malformed line, a line over
        ``MAX_REPLY_LINE_LENGTH``, different codes within one reply, bytes arriving when no
        reply is outstanding (unsolicited), or EOF in the middle of a reply or while a reply is
        outstanding. With nothing outstanding and nothing buffered it returns ``NEED_DATA``.
        """
        if self._error is not None:
            raise self._error
        try:
            buffer = self._buffer
            while True:
                if buffer and not self._expected:
                    raise RemoteProtocolError(f"unsolicited reply data: {bytes(buffer[:80])!r}")
                end = buffer.find(b"\n", self._scanned)
                if end < 0:
                    self._scanned = len(buffer)
                    # One byte of slack: a CR at the end may belong to the line ending.
                    if self._scanned > MAX_REPLY_LINE_LENGTH + 1:
                        raise RemoteProtocolError(
                            f"reply line longer than {MAX_REPLY_LINE_LENGTH} octets"
                        )
                    if self._eof:
                        if buffer or self._lines:
                            raise RemoteProtocolError("connection closed in the middle of a reply")
                        if self._expected:
                            raise RemoteProtocolError(
                                f"connection closed while waiting for the reply to "
                                f"{self._expected[0].value}"
                            )
                    return NEED_DATA
                line_end = end - 1 if end > 0 and buffer[end - 1] == _CR else end
                if line_end > MAX_REPLY_LINE_LENGTH:
                    raise RemoteProtocolError(
                        f"reply line longer than {MAX_REPLY_LINE_LENGTH} octets"
                    )
                line = bytes(buffer[:line_end])
                del buffer[: end + 1]
                self._scanned = 0
                if self._code is None:  # not within a multi-line reply: maybe seen before
                    reply = _PARSED.get(line)
                    if reply is not None:
                        self._last = (self._expected.popleft(), reply)
                        return reply
                reply = self._take_line(line)
                if reply is not None:
                    return reply
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _take_line(self, line: bytes) -> Reply | None:
        """Add one reply line (without its line ending); return the reply it completes."""
        code_bytes, separator = line[:3], line[3:4]
        if len(code_bytes) != 3 or not code_bytes.isdigit() or separator not in (b"", b" ", b"-"):
            raise RemoteProtocolError(f"malformed reply line: {line[:80]!r}")
        code = int(code_bytes)
        if not 200 <= code <= 599:
            raise RemoteProtocolError(f"reply code out of range: {code}")
        if self._code is not None and code != self._code:
            raise RemoteProtocolError(f"reply code changed from {self._code} to {code}")
        if b"\r" in line:
            raise RemoteProtocolError(f"bare CR in reply line: {line[:80]!r}")
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if separator == b"-":
            if len(self._lines) >= MAX_REPLY_LINES:
                raise RemoteProtocolError(f"reply has more than {MAX_REPLY_LINES} lines")
            self._code = code
            return None
        try:
            reply = Reply.from_lines(code, self._lines)
        except ValueError as exc:
            raise RemoteProtocolError(f"unusable reply: {exc}") from exc
        if self._code is None:  # a single-line reply: the next one like it is looked up
            if len(_PARSED) >= PARSED_CACHE_SIZE:
                _PARSED.clear()
            _PARSED[line] = reply
        self._lines = []
        self._code = None
        command = self._expected.popleft()
        self._last = (command, reply)
        return reply

    # --- commands out --------------------------------------------------------------------

    def expect_greeting(self) -> None:
        """Expect the 220 banner. The constructor already calls this.

        Calling it again before the greeting was read is harmless (the greeting is expected
        once, never twice); calling it after the greeting was read raises
        ``LocalProtocolError``.
        """
        if self._greeting_expected:
            if _Command.GREETING in self._expected:
                return
            raise LocalProtocolError("the greeting is expected once, at the start")
        self._greeting_expected = True
        self._expected.append(_Command.GREETING)

    def ehlo(self, name: str) -> bytes:
        """``EHLO name``. Raises ``LocalProtocolError`` for an empty or unsafe name."""
        return self._send(_Command.EHLO, f"EHLO {check_hostname(name)}")

    def helo(self, name: str) -> bytes:
        """``HELO name``. Raises ``LocalProtocolError`` for an empty or unsafe name."""
        return self._send(_Command.HELO, f"HELO {check_hostname(name)}")

    def starttls(self) -> bytes:
        """``STARTTLS``; after its 220 the driver starts TLS and calls ``tls_started``."""
        return self._send(_Command.STARTTLS, "STARTTLS")

    def tls_started(self) -> None:
        """Forget everything from before the TLS handshake (RFC 3207 4.2).

        Raises ``LocalProtocolError`` unless the last reply read was a 220 to STARTTLS with
        nothing else outstanding, and ``RemoteProtocolError`` if bytes arrived after that 220:
        they were sent in the clear before TLS and would be read as if protected (injection,
        CVE-2011-0411 style). The driver must then close the connection.
        """
        last = self._last
        if self._expected or last is None or last[0] is not _Command.STARTTLS:
            raise LocalProtocolError("tls_started() must follow the reply to STARTTLS")
        if last[1].code != 220:
            raise LocalProtocolError(f"STARTTLS was refused: {last[1]}")
        if self._buffer:
            self._error = RemoteProtocolError(
                f"{len(self._buffer)} bytes received after the 220 reply to STARTTLS "
                "(plaintext injection)"
            )
            raise self._error
        self._scanned = 0
        self._lines = []
        self._code = None
        self._last = None
        self._smtputf8 = False

    def mail(
        self,
        sender: str,
        *,
        size: int | None = None,
        body_8bit: bool = False,
        smtputf8: bool = False,
    ) -> bytes:
        """``MAIL FROM:<sender>`` with ``SIZE=n``, ``BODY=8BITMIME`` and ``SMTPUTF8`` as asked.

        ``sender`` may be ``""`` (the null reverse path of a bounce). Non-ASCII addresses need
        ``smtputf8=True``. Raises ``LocalProtocolError`` for an unsafe address or negative size.
        """
        address = check_address(sender, utf8=smtputf8, what="sender")
        parts = [f"MAIL FROM:<{address}>"]
        if size is not None:
            if size < 0:
                raise LocalProtocolError(f"negative message size: {size}")
            parts.append(f"SIZE={size}")
        if body_8bit:
            parts.append("BODY=8BITMIME")
        if smtputf8:
            parts.append("SMTPUTF8")
        self._smtputf8 = smtputf8
        return self._send(_Command.MAIL, " ".join(parts), utf8=smtputf8)

    def rcpt(self, recipient: str) -> bytes:
        """``RCPT TO:<recipient>``. Non-ASCII only after a MAIL with SMTPUTF8.

        Raises ``LocalProtocolError`` for an empty or unsafe address.
        """
        if not recipient:
            raise LocalProtocolError("empty recipient address")
        address = check_address(recipient, utf8=self._smtputf8, what="recipient")
        return self._send(_Command.RCPT, f"RCPT TO:<{address}>", utf8=self._smtputf8)

    def data(self) -> bytes:
        """``DATA``; after its 354 the driver sends the encoded body and calls ``end_data``."""
        return self._send(_Command.DATA, "DATA")

    def end_data(self) -> None:
        """Record that the body and its terminator were sent: expect the final reply.

        Raises ``LocalProtocolError`` unless the last reply read was a 354 to DATA with nothing
        else outstanding.
        """
        last = self._last
        if self._expected or last is None or last[0] is not _Command.DATA:
            raise LocalProtocolError("end_data() must follow the reply to DATA")
        if last[1].code != 354:
            raise LocalProtocolError(f"DATA was refused: {last[1]}")
        self._last = None
        self._smtputf8 = False
        self._expected.append(_Command.END_OF_DATA)

    def rset(self) -> bytes:
        """``RSET``: abandon the current transaction."""
        self._smtputf8 = False
        return self._send(_Command.RSET, "RSET")

    def noop(self) -> bytes:
        """``NOOP`` (keeps an idle reused connection alive, or probes it)."""
        return self._send(_Command.NOOP, "NOOP")

    def quit(self) -> bytes:
        """``QUIT``; a 221 is expected, then the server closes."""
        return self._send(_Command.QUIT, "QUIT")

    def _send(self, command: _Command, line: str, *, utf8: bool = False) -> bytes:
        data = (line + "\r\n").encode("utf-8" if utf8 else "ascii")
        self._expected.append(command)
        return data


def check_hostname(name: str) -> str:
    if not name or not name.isascii() or any(c.isspace() or c == "\0" for c in name):
        raise LocalProtocolError(f"unusable EHLO/HELO name: {name!r}")
    return name


# What could end a MAIL or RCPT command early or break its syntax.
_UNSAFE_IN_ADDRESS = re.compile("[\r\n\x00<>]")


def check_address(address: str, *, utf8: bool, what: str) -> str:
    """Refuse what could end the command early or break its syntax (CR, LF, NUL, <, >), and
    non-ASCII without ``utf8``. Returns ``address``; raises ``LocalProtocolError``."""
    if _UNSAFE_IN_ADDRESS.search(address):
        raise LocalProtocolError(f"unsafe character in {what} address: {address!r}")
    if not utf8 and not address.isascii():
        raise LocalProtocolError(f"non-ASCII {what} address without SMTPUTF8: {address!r}")
    return address
