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

EOF in the middle of DATA yields ``ConnectionClosed`` without a ``DataAbort``: the driver knows
a body was in progress (it saw ``DataStart`` and no ``DataEnd``/``DataAbort``) and discards it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs

from zonemta.transport.smtp import server_replies as replies
from zonemta.transport.smtp.errors import LocalProtocolError, RemoteProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server_auth import MECHANISMS, Challenge, Credentials, SaslExchange
from zonemta.transport.smtp.server_data import DataDecoder
from zonemta.transport.smtp.server_events import (
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
from zonemta.transport.smtp.server_parse import Refusal, parse_mail_from, parse_rcpt_to
from zonemta.transport.smtp.server_states import (
    NOT_IMPLEMENTED_VERBS,
    SessionState,
    Trigger,
    Verb,
    sequence_refusal,
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

# RFC 5321 4.5.3.1.4: a server must accept command lines of at least 512 octets incl. CRLF.
MIN_LINE_LENGTH = 512
# RFC 5321 4.5.3.1.8: at least 100 recipients per transaction must be accepted.
MIN_RECIPIENTS = 100


def _positive(minimum: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    def check(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value}")

    return check


def _hostname(_instance: object, _attribute: object, value: str) -> None:
    if not value or any(c in value for c in " \r\n"):
        raise ValueError(f"hostname must be one non-empty word: {value!r}")


@attrs.frozen
class ServerSettings:
    """What one SMTP server session advertises and enforces. 0 disables a size limit.

    ``implicit_tls``: the session runs inside TLS from the start (port 465 style).
    ``auth_available``: AUTH PLAIN and LOGIN are offered, once TLS is active unless
    ``allow_insecure_auth``. ``max_errors``: after this many error replies (4xx/5xx, not
    counting 452 for too many recipients) without an accepted message the session gets
    421 and is closed; 0 disables the cap.
    """

    hostname: str = attrs.field(validator=_hostname)
    max_size: int = attrs.field(validator=_positive(0))
    max_recipients: int = attrs.field(default=1000, validator=_positive(1))
    max_line_length: int = attrs.field(default=2048, validator=_positive(MIN_LINE_LENGTH))
    max_header_size: int = attrs.field(default=1024 * 1024, validator=_positive(0))
    starttls_available: bool = False
    banner: str = "ESMTP zonemta"
    implicit_tls: bool = False
    auth_available: bool = False
    allow_insecure_auth: bool = False
    max_errors: int = attrs.field(default=0, validator=_positive(0))


_TOO_LONG = object()  # marker from _read_line: an over-long line was discarded


class SMTPServerConnection:
    """One SMTP server session. See the module docstring for the driver's side."""

    def __init__(self, settings: ServerSettings) -> None:
        """Queue the 220 greeting; the session waits for HELO/EHLO."""
        self._settings = settings
        self._state = SessionState.CONNECTED
        self._inbox: deque[bytes] = deque()
        self._line_buf = bytearray()
        self._scanned = 0  # bytes of _line_buf already searched for LF
        self._discarding = False  # inside an over-long command line
        self._eof = False
        self._out: list[bytes] = [
            Reply(220, (f"{settings.hostname} {settings.banner}".strip(),)).to_bytes()
        ]
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

    @property
    def closed(self) -> bool:
        """True after QUIT, ``close_with``, EOF or a fatal peer error."""
        return self._state is SessionState.CLOSED

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
        if reply.is_intermediate:
            raise LocalProtocolError(f"a policy answer cannot be intermediate: {reply}")
        self._pending = None
        self._reply(reply)
        if isinstance(pending, MailFrom):
            if reply.is_positive:
                self._smtputf8 = self._pending_utf8
            self._move(Trigger.MAIL_ACCEPTED if reply.is_positive else Trigger.MAIL_REFUSED)
        elif isinstance(pending, RcptTo):
            self._recipients += reply.is_positive
            self._move(Trigger.RCPT_ACCEPTED if reply.is_positive else Trigger.RCPT_REFUSED)
        elif isinstance(pending, Auth):
            self._authenticated = reply.is_positive
            self._move(Trigger.AUTH_DONE)
        else:
            if reply.is_positive:
                self._errors = 0  # the cap counts errors "without delivering mail"
            self._end_transaction()
            self._move(Trigger.DATA_DONE)
        if reply.code == 421:
            self._move(Trigger.CLOSE)

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
        self._state = transition(self._state, trigger)

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
        try:
            verb = Verb(name)
        except ValueError:
            refusal = (
                replies.NOT_IMPLEMENTED
                if name in NOT_IMPLEMENTED_VERBS
                else replies.UNKNOWN_COMMAND
            )
            self._reply(refusal)
            return None
        refused = sequence_refusal(self._state, verb)
        if refused is not None:
            self._reply(refused)
            return None
        return _HANDLERS[verb](self, arg.strip(" "), crlf)

    def _reply(self, reply: Reply) -> None:
        """Queue ``reply``, counting it towards the error cap when it is an error."""
        self._out.append(reply.to_bytes())
        if reply.code >= 400 and reply not in _NOT_ERRORS:
            self._errors += 1

    def _on_helo(self, arg: str, _crlf: bool) -> Event | None:
        if not arg:
            self._reply(replies.HELO_SYNTAX)
            return None
        self._end_transaction()
        self._move(Trigger.HELLO)
        self._reply(Reply(250, (self._settings.hostname,)))
        return Helo(arg, extended=False)

    def _on_ehlo(self, arg: str, _crlf: bool) -> Event | None:
        if not arg:
            self._reply(replies.EHLO_SYNTAX)
            return None
        self._end_transaction()
        self._move(Trigger.HELLO)
        settings = self._settings
        lines = [settings.hostname, "PIPELINING"]
        lines.append(f"SIZE {settings.max_size}" if settings.max_size else "SIZE")
        lines += ["8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if settings.starttls_available and not self._tls_active:
            lines.append("STARTTLS")
        if self._auth_offered:
            lines.append(" ".join(("AUTH", *MECHANISMS)))
        lines.append("HELP")
        self._reply(Reply(250, tuple(lines)))
        return Helo(arg, extended=True)

    def _on_mail(self, arg: str, _crlf: bool) -> Event | None:
        try:
            address, params = parse_mail_from(arg, max_size=self._settings.max_size)
        except Refusal as refusal:
            self._reply(refusal.reply)
            return None
        self._pending_utf8 = "SMTPUTF8" in params
        self._pending = event = MailFrom(address, params)
        return event

    def _on_rcpt(self, arg: str, _crlf: bool) -> Event | None:
        try:
            address, params = parse_rcpt_to(arg, utf8=self._smtputf8)
        except Refusal as refusal:
            self._reply(refusal.reply)
            return None
        if self._recipients >= self._settings.max_recipients:
            self._reply(replies.TOO_MANY_RECIPIENTS)
            return None
        self._pending = event = RcptTo(address, params)
        return event

    def _on_data(self, arg: str, crlf: bool) -> Event | None:
        if arg:
            self._reply(replies.NO_PARAMETERS)
            return None
        settings = self._settings
        self._decoder = DataDecoder(settings.max_size, settings.max_header_size, after_crlf=crlf)
        self._move(Trigger.DATA)
        self._reply(replies.START_DATA)
        return DataStart()

    def _on_rset(self, arg: str, _crlf: bool) -> Event | None:
        if arg:
            self._reply(replies.NO_PARAMETERS)
            return None
        self._end_transaction()
        self._move(Trigger.RSET)
        self._reply(replies.OK)
        return Rset()

    def _on_noop(self, _arg: str, _crlf: bool) -> Event | None:
        self._reply(replies.OK)
        return Noop()

    def _on_quit(self, _arg: str, _crlf: bool) -> Event | None:
        self._reply(replies.BYE)
        self._close()
        return Quit()

    def _on_vrfy(self, arg: str, _crlf: bool) -> Event | None:
        self._reply(replies.VRFY_CANNOT if arg else replies.VRFY_SYNTAX)
        return None

    def _on_help(self, _arg: str, _crlf: bool) -> Event | None:
        self._reply(replies.HELP)
        return None

    def _on_starttls(self, arg: str, _crlf: bool) -> Event | None:
        if arg:
            self._reply(replies.NO_PARAMETERS)
            return None
        if not self._settings.starttls_available:
            self._reply(replies.TLS_NOT_AVAILABLE)
            return None
        if self._tls_active:
            self._reply(replies.TLS_ALREADY_ACTIVE)
            return None
        if self._inbox or self._line_buf:
            # RFC 3207 5 / CVE-2011-0411: plaintext pipelined after STARTTLS is an injection.
            self._close()
            raise RemoteProtocolError("command pipelined after STARTTLS", replies.TLS_INJECTION)
        self._move(Trigger.STARTTLS)
        self._reply(replies.READY_FOR_TLS)
        return StartTLS()

    @property
    def _auth_offered(self) -> bool:
        settings = self._settings
        return settings.auth_available and (self._tls_active or settings.allow_insecure_auth)

    def _on_auth(self, arg: str, _crlf: bool) -> Event | None:
        if not self._settings.auth_available:
            refusal = replies.AUTH_NOT_AVAILABLE
        elif self._authenticated:
            refusal = replies.AUTH_ALREADY
        elif not self._auth_offered:
            refusal = replies.AUTH_NEEDS_TLS
        else:
            exchange = SaslExchange()
            try:
                return self._sasl_result(exchange, exchange.start(arg))
            except Refusal as refused:
                refusal = refused.reply
        self._reply(refusal)
        return None

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

    def _sasl_result(self, exchange: SaslExchange, result: Challenge | Credentials) -> Event | None:
        """Queue the next challenge, or hand out the credentials as the Auth policy event."""
        if isinstance(result, Challenge):
            self._sasl = exchange
            self._move(Trigger.AUTH)
            self._out.append(result.to_bytes())
            return None
        self._sasl = None
        self._pending = event = Auth(result.mechanism.value, result.username, result.password)
        return event

    def _data_event(self) -> Event | type[NEED_DATA] | None:
        decoder = self._decoder
        assert decoder is not None
        if decoder.finished:
            if decoder.abort_reply is not None:
                self._reply(decoder.abort_reply)
                self._end_transaction()
                self._move(Trigger.DATA_DONE)
                return None
            self._pending = event = DataEnd()
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


_Handler = Callable[[SMTPServerConnection, str, bool], Event | None]
_HANDLERS: dict[Verb, _Handler] = {
    Verb.HELO: SMTPServerConnection._on_helo,
    Verb.EHLO: SMTPServerConnection._on_ehlo,
    Verb.MAIL: SMTPServerConnection._on_mail,
    Verb.RCPT: SMTPServerConnection._on_rcpt,
    Verb.DATA: SMTPServerConnection._on_data,
    Verb.RSET: SMTPServerConnection._on_rset,
    Verb.NOOP: SMTPServerConnection._on_noop,
    Verb.QUIT: SMTPServerConnection._on_quit,
    Verb.VRFY: SMTPServerConnection._on_vrfy,
    Verb.HELP: SMTPServerConnection._on_help,
    Verb.STARTTLS: SMTPServerConnection._on_starttls,
    Verb.AUTH: SMTPServerConnection._on_auth,
}

# Replies that are not the client's errors: a full transaction (RFC 5321 4.5.3.1.10 tells
# clients to send the rest in a new one) and the server closing by itself.
_NOT_ERRORS = frozenset({replies.TOO_MANY_RECIPIENTS, replies.TOO_MANY_ERRORS})


def _strip_eol(line: bytes) -> str:
    """A SASL response line without its line ending; non-ASCII is left to fail base64."""
    return line.rstrip(b"\r\n").decode("ascii", "replace")
