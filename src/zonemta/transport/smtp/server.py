"""The sans-IO SMTP server protocol object: bytes in, events out, replies queued (h11 style).

A driver loop looks like::

    conn = SMTPServerConnection(settings)
    send(conn.data_to_send())                       # the 220 greeting
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send())               # flush replies before waiting for input
            conn.receive_data(receive())            # b"" on EOF
        elif isinstance(event, (MailFrom, RcptTo, DataEnd, Auth)):
            conn.respond(decide(event))             # policy
        elif isinstance(event, StartTLS):
            send(conn.data_to_send()); handshake(); conn.tls_started()
        elif isinstance(event, ConnectionClosed):
            send(conn.data_to_send()); break
        ...                                          # DataChunk: store; DataAbort: discard

The object owns the SMTP grammar, sequencing, limits and every automatic reply; the driver
owns I/O, TLS, timeouts and policy. Nothing here blocks, sleeps or reads a clock.

This module owns the session: its state, the input buffer and command-line reading, the
reply queue and error cap, the policy answers (``respond``), and the DATA and AUTH reading
loops. What each command verb does is in ``server_commands`` (inherited), the settings in
``server_settings``, the events in ``server_events``; this module re-exports the names a
driver needs.

EOF in the middle of DATA yields ``ConnectionClosed`` without a ``DataAbort``: the driver knows
a body was in progress (it saw ``DataStart`` and no ``DataEnd``/``DataAbort``) and discards it.
"""

from __future__ import annotations

from collections import deque

from zonemta.transport.smtp import server_replies as replies
from zonemta.transport.smtp.errors import LocalProtocolError, RemoteProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server_auth import SaslExchange
from zonemta.transport.smtp.server_commands import HANDLERS, CommandHandlers
from zonemta.transport.smtp.server_data import DataDecoder
from zonemta.transport.smtp.server_events import (
    DATA_END,
    NEED_DATA,
    Auth,
    ConnectionClosed,
    DataAbort,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    Helo,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Rset,
    StartTLS,
)
from zonemta.transport.smtp.server_parse import Refusal
from zonemta.transport.smtp.server_settings import ServerSettings
from zonemta.transport.smtp.server_states import (
    NOT_IMPLEMENTED_VERBS,
    SEQUENCE_REFUSALS,
    TRANSITIONS,
    VERBS,
    SessionState,
    Trigger,
    transition,
)

__all__ = [
    "NEED_DATA",
    "Auth",
    "ConnectionClosed",
    "DataAbort",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "Event",
    "Helo",
    "MailFrom",
    "Noop",
    "Quit",
    "RcptTo",
    "Rset",
    "SMTPServerConnection",
    "ServerSettings",
    "SessionState",
    "StartTLS",
]


_TOO_LONG = object()  # marker from _read_line: an over-long line was discarded


class SMTPServerConnection(CommandHandlers):
    """One SMTP server session. See the module docstring for the driver's side."""

    def __init__(self, settings: ServerSettings) -> None:
        """Queue the 220 greeting; the session waits for HELO/EHLO."""
        self._settings = settings
        self._state = SessionState.CONNECTED
        self.closed = False  # after QUIT, close_with, EOF or a fatal peer error (see _move)
        self._inbox: deque[bytes] = deque()
        self._line_buf = bytearray()
        self._scanned = 0  # bytes of _line_buf already searched for LF
        self._discarding = False  # inside an over-long command line
        self._eof = False
        self._out: list[bytes] = [settings.greeting]
        self._pending: Event | None = None
        self._pending_utf8 = False
        self._smtputf8 = False
        self._recipients = 0
        self._tls_active = settings.implicit_tls
        self._authenticated = False
        self._sasl: SaslExchange | None = None
        self._errors = 0
        self._decoder: DataDecoder | None = None

    # ------------------------------------------------------------------ public surface

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def tls_active(self) -> bool:
        """True inside TLS: implicit TLS, or after ``tls_started()``."""
        return self._tls_active

    @property
    def authenticated(self) -> bool:
        """True after an ``Auth`` event was answered 235 (until STARTTLS resets the session)."""
        return self._authenticated

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means EOF. Bytes after close are dropped.

        Raises ``LocalProtocolError`` for data after EOF was already given.
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        if self._state is not SessionState.CLOSED:
            self._inbox.append(bytes(data))

    def data_to_send(self) -> bytes:
        """Drain the replies queued so far, in order."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | type[NEED_DATA]:
        """Parse buffered input up to the next event, queueing automatic replies on the way.

        Raises ``LocalProtocolError`` while a policy event is unanswered or while STARTTLS
        waits for ``tls_started()``; ``RemoteProtocolError`` (fatal, the session is closed, its
        ``reply`` not queued) for plaintext pipelined after STARTTLS. When the session reached
        its error cap, queues 421 and closes.
        """
        if self._pending is not None:
            raise LocalProtocolError(
                f"respond() to {type(self._pending).__name__} before asking for the next event"
            )
        while True:
            state = self._state
            if state is SessionState.CLOSED:
                return ConnectionClosed()
            if state is SessionState.STARTTLS:
                raise LocalProtocolError("call tls_started() after the STARTTLS handshake")
            if self._settings.max_errors and self._errors >= self._settings.max_errors:
                self.close_with(replies.TOO_MANY_ERRORS)
                continue
            if state is SessionState.DATA:
                event = self._data_event()
            elif state is SessionState.AUTH:
                event = self._auth_event()
            elif not self._inbox and not self._line_buf:  # no command line to read
                return self._closed_by_eof() if self._eof else NEED_DATA
            else:
                event = self._command_event()
            if event is not None:
                return event

    def respond(self, reply: Reply) -> None:
        """Answer the pending policy event (MailFrom, RcptTo, DataEnd or Auth) with ``reply``.

        A 2xx accepts (MAIL starts the transaction, RCPT adds a recipient, Auth marks the
        session authenticated); anything else refuses. After DataEnd the transaction is reset
        whatever the reply. A 421 also closes the session. Raises ``LocalProtocolError`` when
        nothing is pending or for a 3xx reply.
        """
        pending = self._pending
        if pending is None:
            raise LocalProtocolError("respond() without a pending policy event")
        code = reply.code
        if 300 <= code < 400:
            raise LocalProtocolError(f"a policy answer cannot be intermediate: {reply}")
        self._pending = None
        self._reply(reply)
        positive = 200 <= code < 300
        if isinstance(pending, MailFrom):
            if positive:
                self._smtputf8 = self._pending_utf8
            self._move(Trigger.MAIL_ACCEPTED if positive else Trigger.MAIL_REFUSED)
        elif isinstance(pending, RcptTo):
            self._recipients += positive
            self._move(Trigger.RCPT_ACCEPTED if positive else Trigger.RCPT_REFUSED)
        elif isinstance(pending, Auth):
            self._authenticated = positive
            self._move(Trigger.AUTH_DONE)
        else:
            self._data_done(positive)
        if code == 421:
            self._move(Trigger.CLOSE)

    def respond_queued(self, wire: bytes) -> None:
        """Accept the pending DataEnd with a one-line 250 reply given in wire form (``250 ``,
        the text, CRLF): what ``respond`` does with a 250, for a reply that differs for every
        message (no :class:`Reply` built for it). Raises ``LocalProtocolError`` when no
        DataEnd is pending or for anything but such a line."""
        if type(self._pending) is not DataEnd:
            raise LocalProtocolError("respond_queued() without a pending DataEnd")
        if not wire.startswith(b"250 ") or wire.find(b"\n") != len(wire) - 1 or wire[-2] != 13:
            raise LocalProtocolError(f"not a one-line 250 reply: {wire!r}")
        self._pending = None
        self._out.append(wire)
        self._data_done(True)

    def _data_done(self, accepted: bool) -> None:
        """The answer to DataEnd is queued: the transaction is over."""
        if accepted:
            self._errors = 0  # the cap counts errors "without delivering mail"
        self._end_transaction()
        self._move(Trigger.DATA_DONE)

    def close_with(self, reply: Reply) -> None:
        """Queue ``reply`` (e.g. 421 on timeout or shutdown) and close the session.

        Drops any pending policy event and buffered input. Does nothing when already closed.
        """
        if self._state is SessionState.CLOSED:
            return
        self._out.append(reply.to_bytes())
        self._close()

    def tls_started(self) -> None:
        """The driver finished the STARTTLS handshake: back to CONNECTED, EHLO required.

        Raises ``LocalProtocolError`` when no STARTTLS was pending, ``RemoteProtocolError``
        (fatal) when plaintext arrived between STARTTLS and the handshake.
        """
        if self._state is not SessionState.STARTTLS:
            raise LocalProtocolError(f"tls_started() in state {self._state.name}")
        if self._inbox or self._line_buf:
            self._close()
            raise RemoteProtocolError("plaintext received after STARTTLS", replies.TLS_INJECTION)
        self._tls_active = True
        self._authenticated = False  # RFC 3207 4.2: forget everything from before TLS
        self._end_transaction()
        self._move(Trigger.TLS_STARTED)

    # ------------------------------------------------------------------ internals

    def _move(self, trigger: Trigger) -> None:
        state = TRANSITIONS.get((self._state, trigger))
        if state is None:
            state = transition(self._state, trigger)
        self._state = state
        self.closed = state is SessionState.CLOSED

    def _close(self) -> None:
        self._pending = None
        self._sasl = None
        self._inbox.clear()
        self._line_buf.clear()
        self._decoder = None
        self._move(Trigger.CLOSE)

    def _end_transaction(self) -> None:
        self._smtputf8 = False
        self._recipients = 0
        self._decoder = None

    def _closed_by_eof(self) -> Event:
        self._close()
        return ConnectionClosed()

    def _read_line(self) -> bytes | object | None:
        """The next command line with its line ending, ``_TOO_LONG``, or None (need bytes)."""
        limit = self._settings.max_line_length
        buf = self._line_buf
        inbox = self._inbox
        if not buf and inbox and not self._discarding:
            # The usual case: the next chunk received is one whole command line.
            chunk = inbox[0]
            if chunk.find(b"\n") == len(chunk) - 1:
                inbox.popleft()
                return chunk if len(chunk) <= limit else _TOO_LONG
        while True:
            newline = buf.find(b"\n", self._scanned)
            if newline >= 0:
                line = bytes(buf[: newline + 1])
                del buf[: newline + 1]
                self._scanned = 0
                if self._discarding or len(line) > limit:
                    self._discarding = False
                    return _TOO_LONG
                return line
            if self._discarding or len(buf) >= limit:
                # Even with its LF this line is over the limit: drop it as it comes.
                self._discarding = True
                buf.clear()
            self._scanned = len(buf)
            if not self._inbox:
                return None
            buf += self._inbox.popleft()

    def _command_event(self) -> Event | type[NEED_DATA] | None:
        line = self._read_line()
        if line is None:
            return self._closed_by_eof() if self._eof else NEED_DATA
        if line is _TOO_LONG:
            self._reply(replies.LINE_TOO_LONG)
            return None
        assert isinstance(line, bytes)
        crlf = line.endswith(b"\r\n")
        try:
            text = line[: -2 if crlf else -1].decode("utf-8")
        except UnicodeDecodeError:
            self._reply(replies.BAD_UTF8)
            return None
        word, _, arg = text.partition(" ")
        name = word.upper() if word.isascii() else ""
        verb = VERBS.get(name)
        if verb is None:
            refusal = (
                replies.NOT_IMPLEMENTED
                if name in NOT_IMPLEMENTED_VERBS
                else replies.UNKNOWN_COMMAND
            )
            self._reply(refusal)
            return None
        refused = SEQUENCE_REFUSALS[self._state][verb]  # sequence_refusal(), inlined
        if refused is not None:
            self._reply(refused)
            return None
        return HANDLERS[verb](self, arg.strip(" "), crlf)

    def _reply(self, reply: Reply) -> None:
        """Queue ``reply``, counting it towards the error cap when it is an error."""
        self._out.append(reply.to_bytes())
        if reply.code >= 400 and reply not in _NOT_ERRORS:
            self._errors += 1

    def _auth_event(self) -> Event | type[NEED_DATA] | None:
        exchange = self._sasl
        assert exchange is not None
        line = self._read_line()
        if line is None:
            return self._closed_by_eof() if self._eof else NEED_DATA
        try:
            if line is _TOO_LONG:
                raise Refusal(replies.AUTH_LINE_TOO_LONG)
            assert isinstance(line, bytes)
            return self._sasl_result(exchange, exchange.step(_strip_eol(line)))
        except Refusal as refused:
            self._sasl = None
            self._reply(refused.reply)
            self._move(Trigger.AUTH_DONE)
            return None

    def _data_event(self) -> Event | type[NEED_DATA] | None:
        decoder = self._decoder
        assert decoder is not None
        if decoder.finished:
            if decoder.abort_reply is not None:
                self._reply(decoder.abort_reply)
                self._end_transaction()
                self._move(Trigger.DATA_DONE)
                return None
            self._pending = event = DATA_END
            return event
        while True:
            if self._line_buf:
                chunk = bytes(self._line_buf)
                self._line_buf.clear()
                self._scanned = 0
            elif self._inbox:
                chunk = self._inbox.popleft()
            else:
                return self._closed_by_eof() if self._eof else NEED_DATA
            result = decoder.feed(chunk)
            if result.rest:
                self._inbox.appendleft(result.rest)
            if result.abort is not None:
                return DataAbort(result.abort)
            if result.content:
                return DataChunk(result.content)
            if result.finished:
                return None


# Replies that are not the client's errors: a full transaction (RFC 5321 4.5.3.1.10 tells
# clients to send the rest in a new one) and the server closing by itself.
_NOT_ERRORS = frozenset({replies.TOO_MANY_RECIPIENTS, replies.TOO_MANY_ERRORS})


def _strip_eol(line: bytes) -> str:
    """A SASL response line without its line ending; non-ASCII is left to fail base64."""
    return line.rstrip(b"\r\n").decode("ascii", "replace")
