"""The sans-IO SMTP client session: the transaction object a driver moves bytes for.

:class:`SMTPClientSession` owns the client side of one SMTP connection: the greeting, EHLO
with the HELO fallback, the STARTTLS step and the EHLO after it, transactions of one or more
recipients (MAIL, RCPT..., DATA pipelined when the server offers PIPELINING, RFC 2920, and
lock-step otherwise), dot-stuffing of the content, RSET after a refused transaction, QUIT.
No sockets, no trio, no clock (CONVENTIONS.md 1); replies are parsed by the command/reply
layer :class:`~zonemta.transport.smtp.client.SMTPClientConnection` underneath.

A driver loop::

    session = SMTPClientSession("relay.example")      # the greeting is awaited
    while True:
        event = session.next_event()
        send(session.data_to_send())                  # always flush before reading
        if event is NEED_DATA:
            session.receive_data(receive())           # b"" on EOF; deadline: session.wait
        elif isinstance(event, Ready):
            session.start_transaction(envelope)       # or start_tls(), or quit()
        elif isinstance(event, UpgradeTLS):
            handshake(); session.tls_started()
        elif isinstance(event, SendBody):
            for chunk in content: session.send_body(chunk); send(session.data_to_send())
            session.end_body()
        elif isinstance(event, TransactionDone):
            use(event.result)                         # one outcome per recipient
        ...                                           # SessionRefused, TlsRefused, Closed

The driver owns I/O, TLS, deadlines and policy (whether to STARTTLS, what a refusal means).
Every state change is one row of ``client_states.TRANSITIONS``.

Errors: ``RemoteProtocolError`` when the server breaks the protocol (malformed, over-long or
unsolicited replies, a reply cut by EOF or EOF while a reply is due, bytes injected after the
220 to STARTTLS, a 2xx to STARTTLS other than 220); the session is then closed and raises it
again on every call of ``next_event``. ``LocalProtocolError`` when the driver misuses it (a
method in the wrong state, an unsafe address or name, content with a bare CR or LF).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from zonemta.transport.smtp.client import NEED_DATA, SMTPClientConnection, check_hostname
from zonemta.transport.smtp.client_events import (
    ClientEvent,
    Closed,
    Envelope,
    Ready,
    SendBody,
    SessionRefused,
    Stage,
    TlsRefused,
    TransactionDone,
    TransactionResult,
    UpgradeTLS,
    Wait,
)
from zonemta.transport.smtp.client_plan import Extensions
from zonemta.transport.smtp.client_states import (
    TRANSACTION_WAITS,
    TRANSITIONS,
    WAITS,
    ClientState,
    ClientTrigger,
    transition,
)
from zonemta.transport.smtp.client_transaction import CLOSING, TransactionProgress
from zonemta.transport.smtp.dotstuff import DotStuffer
from zonemta.transport.smtp.errors import LocalProtocolError, RemoteProtocolError
from zonemta.transport.smtp.reply import Reply

__all__ = ["NEED_DATA", "SMTPClientSession"]

# RFC 5321 3.2 / 4.1.4: "command not recognized" (500) or "not implemented" (502) to EHLO
# means an old server; the client falls back to HELO. Other refusals end the session.
HELO_FALLBACK_CODES = frozenset({500, 502})

S = ClientState
T = ClientTrigger


class SMTPClientSession:
    """The client side of one SMTP session. See the module docstring for the driver's side.

    ``ehlo_name`` is the name this side greets with (``LocalProtocolError`` when unusable);
    ``connection`` the command/reply layer to use (a fresh one by default).
    """

    def __init__(self, ehlo_name: str, *, connection: SMTPClientConnection | None = None) -> None:
        self._name = check_hostname(ehlo_name)
        self._conn = connection if connection is not None else SMTPClientConnection()
        self._state = S.GREETING
        self._out: list[bytes] = []
        self._events: collections.deque[ClientEvent] = collections.deque()
        self._extensions = Extensions()
        self._tls = False
        self._tx: TransactionProgress | None = None
        self._stuffer: DotStuffer | None = None
        # Replies read so far: a driver starts a new reply deadline when it changes.
        self.reply_count = 0
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._failed_at: Stage | None = None
        self._closed = Closed()

    # --- what the driver reads -----------------------------------------------------------

    @property
    def connection(self) -> SMTPClientConnection:
        """The command/reply layer underneath."""
        return self._conn

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def extensions(self) -> Extensions:
        """What the last EHLO reply offered (nothing after HELO)."""
        return self._extensions

    @property
    def tls_active(self) -> bool:
        """True after ``tls_started()``."""
        return self._tls

    @property
    def usable(self) -> bool:
        """Idle and open: a transaction, STARTTLS or QUIT may start."""
        return self._state is S.READY

    @property
    def closed(self) -> bool:
        return self._state is S.CLOSED

    @property
    def stage(self) -> Stage | None:
        """The step the session waits on (the reply due, or BODY while the driver sends the
        content); None when idle, closed or waiting for the TLS handshake."""
        waits = self.waiting()
        return waits[1] if waits is not None else None

    @property
    def failed_stage(self) -> Stage | None:
        """The stage whose reply broke the protocol, once ``next_event`` raised."""
        return self._failed_at

    @property
    def wait(self) -> Wait | None:
        """The RFC 5321 4.5.3.2 timeout that applies now; None when nothing is awaited."""
        waits = self.waiting()
        return waits[0] if waits is not None else None

    def waiting(self) -> tuple[Wait, Stage] | None:
        """``(wait, stage)`` in one call (what a driver reads after each reply); None when
        nothing is awaited."""
        if self._state is S.TRANSACTION and self._tx is not None and self._tx.due:
            stage = self._tx.due[0]
            return TRANSACTION_WAITS[stage], stage
        return WAITS.get(self._state)

    # --- bytes -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the server; ``b""`` is EOF. Dropped once the session is closed.

        Raises ``LocalProtocolError`` for data after EOF.
        """
        if self._state is S.CLOSED:
            return
        if not data:
            self._eof = True
        self._conn.receive_data(data)

    def data_to_send(self) -> bytes:
        """The bytes queued so far (commands, content), in order; empty when none."""
        queued = self._out
        if not queued:
            return b""
        out = queued[0]
        if len(queued) > 1 or type(out) is not bytes:
            out = b"".join(queued)
        queued.clear()
        return out

    def next_event(self) -> ClientEvent | type[NEED_DATA]:
        """Parse what was received up to the next event, queueing commands on the way.

        ``NEED_DATA`` when a reply is due (or, when idle, nothing happened). Raises
        ``LocalProtocolError`` while the driver owes ``tls_started()`` or ``end_body()``,
        ``RemoteProtocolError`` as the module docstring says.
        """
        if self._error is not None:
            raise self._error
        if self._events:
            return self._events.popleft()
        state = self._state
        if state is S.CLOSED:
            return self._closed
        if state in (S.TLS_HANDSHAKE, S.BODY):
            owed = "tls_started()" if state is S.TLS_HANDSHAKE else "end_body()"
            raise LocalProtocolError(f"call {owed} before asking for the next event")
        if state is S.READY and self._eof and not self._conn.buffered:
            self._move(T.CLOSE)
            return self._closed
        try:
            while True:
                reply = self._conn.next_reply()
                if not isinstance(reply, Reply):
                    return NEED_DATA
                self.reply_count += 1
                event = _ON_REPLY[self._state](self, reply)
                if event is not None:
                    return event
        except RemoteProtocolError as exc:
            if self._state is S.QUIT:  # whatever ends a QUIT, the session is over
                self._move(T.CLOSE)
                return self._closed
            self._error = exc
            self._failed_at = self.stage
            self._move(T.BROKEN)
            raise

    # --- what the driver asks for --------------------------------------------------------

    def start_tls(self) -> None:
        """Send STARTTLS (RFC 3207). Raises ``LocalProtocolError`` unless idle, in plaintext,
        with STARTTLS offered."""
        if self._tls or not self._extensions.starttls:
            raise LocalProtocolError("STARTTLS is not offered here (or TLS is already on)")
        self._move(T.START_TLS)
        self._out.append(self._conn.starttls())

    def tls_started(self) -> None:
        """The handshake after ``UpgradeTLS`` succeeded: forget the plaintext session and send
        EHLO again (RFC 3207 4.2). Raises ``LocalProtocolError`` in another state and
        ``RemoteProtocolError`` when bytes were received since the 220 (injection)."""
        transition(self._state, T.TLS_STARTED)
        if self._conn.buffered:
            self._error = RemoteProtocolError(
                f"{self._conn.buffered} bytes received after the 220 reply to STARTTLS "
                "(plaintext injection)"
            )
            self._failed_at = Stage.STARTTLS
            self._move(T.BROKEN)
            raise self._error
        self._tls = True
        self._extensions = Extensions()
        self._move(T.TLS_STARTED)
        self._out.append(self._conn.ehlo(self._name))

    def tls_failed(self) -> None:
        """The handshake after ``UpgradeTLS`` failed: the session is closed."""
        self._move(T.TLS_FAILED)

    def start_transaction(self, envelope: Envelope) -> None:
        """Start MAIL, RCPT for every recipient and DATA, pipelined when offered.

        A message this server cannot take (SMTPUTF8 missing, over its SIZE) is refused
        without sending anything: the next event is a ``TransactionDone`` whose outcomes carry
        the locally made 5xx at stage MAIL. Raises ``LocalProtocolError`` unless idle, or for
        an unsafe address (nothing is queued then).
        """
        transition(self._state, T.BEGIN)
        begun = TransactionProgress.begin(envelope, self._extensions, self._conn)
        if isinstance(begun, TransactionResult):
            self._move(T.LOCAL_REFUSAL)
            self._events.append(TransactionDone(begun))
            return
        self._tx = begun
        self._move(T.BEGIN)
        self._out += begun.start()

    def send_body(self, chunk: bytes) -> None:
        """Queue one chunk of content (CRLF line endings, not dot-stuffed) after ``SendBody``.

        Raises ``LocalProtocolError`` in another state or for a bare CR or LF.
        """
        stuffer = self._stuffer
        if self._state is not S.BODY or stuffer is None:
            raise LocalProtocolError(f"send_body() in state {self._state.name}")
        stuffed = stuffer.feed(chunk)
        if stuffed:
            self._out.append(stuffed)

    def end_body(self) -> None:
        """Queue the end of the content (CRLF if missing, then ``.`` CRLF) and await the reply.

        Raises ``LocalProtocolError`` in another state or when the content ended in a CR.
        """
        stuffer = self._stuffer
        if self._state is not S.BODY or stuffer is None:
            raise LocalProtocolError(f"end_body() in state {self._state.name}")
        self._out.append(stuffer.finish())
        self._stuffer = None
        self._conn.end_data()
        self._move(T.BODY_DONE)

    def quit(self) -> None:
        """Send QUIT; the next event is ``Closed`` (with the 221, or None at EOF). Raises
        ``LocalProtocolError`` unless idle."""
        self._move(T.QUIT)
        self._out.append(self._conn.quit())

    # --- replies, per state --------------------------------------------------------------

    def _move(self, trigger: ClientTrigger) -> None:
        state = TRANSITIONS.get((self._state, trigger))
        self._state = state if state is not None else transition(self._state, trigger)
        if self._state is S.CLOSED:
            self._tx = None
            self._stuffer = None

    def _close_with(self, trigger: ClientTrigger, reply: Reply | None) -> None:
        self._closed = Closed(reply)
        self._move(trigger)

    def _on_greeting(self, reply: Reply) -> ClientEvent | None:
        if not reply.is_positive:
            self._close_with(T.REFUSED, reply)
            return SessionRefused(Stage.GREETING, reply)
        self._move(T.GREETED)
        self._out.append(self._conn.ehlo(self._name))
        return None

    def _on_ehlo(self, reply: Reply) -> ClientEvent | None:
        if reply.is_positive:
            self._extensions = Extensions.from_ehlo(reply)
            self._move(T.HELLO_DONE)
            return Ready(reply, self._extensions, extended=True, tls=self._tls)
        if reply.code in HELO_FALLBACK_CODES:
            self._move(T.EHLO_UNKNOWN)
            self._out.append(self._conn.helo(self._name))
            return None
        self._close_with(T.REFUSED, reply)
        return SessionRefused(Stage.EHLO, reply)

    def _on_helo(self, reply: Reply) -> ClientEvent | None:
        if reply.is_positive:
            self._extensions = Extensions()
            self._move(T.HELLO_DONE)
            return Ready(reply, self._extensions, extended=False, tls=self._tls)
        self._close_with(T.REFUSED, reply)
        return SessionRefused(Stage.EHLO, reply)

    def _on_starttls(self, reply: Reply) -> ClientEvent | None:
        if reply.code == 220:
            self._conn.tls_started()  # RemoteProtocolError: bytes after the 220 (injection)
            self._move(T.TLS_GO)
            return UpgradeTLS()
        if reply.is_positive:
            raise RemoteProtocolError(f"STARTTLS answered with {reply}, not 220")
        if reply.code == CLOSING:
            self._close_with(T.CLOSE, reply)
        else:
            self._move(T.TLS_REFUSED)
        return TlsRefused(reply)

    def _on_transaction(self, reply: Reply) -> ClientEvent | None:
        tx = self._tx
        if tx is None:
            tx = self._transaction()  # raises
        trigger = tx.on_reply(reply, self._out)
        if trigger is T.CLOSE:
            return self._done(T.CLOSE, reply)
        if trigger is T.ABANDON:
            self._abandon()
        elif trigger is T.DISCARD:
            # RFC 2920 3.1: DATA was taken although nobody was: end the empty content.
            self._out.append(b".\r\n")
            self._conn.end_data()
            self._move(T.DISCARD)
        elif trigger is T.GO_AHEAD:
            self._stuffer = DotStuffer()
            self._move(T.GO_AHEAD)
            return SendBody()
        else:
            self._move(trigger)
        return None

    def _on_end_of_data(self, reply: Reply) -> ClientEvent | None:
        self._transaction().final = reply
        if reply.code == CLOSING:
            return self._done(T.CLOSE, reply)
        return self._done(T.FINISHED, None)

    def _on_discard(self, reply: Reply) -> ClientEvent | None:
        if reply.code == CLOSING:
            self._transaction().closing = (Stage.FINAL, reply)
            return self._done(T.CLOSE, reply)
        self._abandon()
        return None

    def _on_rset(self, reply: Reply) -> ClientEvent | None:
        if reply.is_positive:
            return self._done(T.RESET_DONE, None)
        return self._done(T.CLOSE if reply.code == CLOSING else T.RESET_FAILED, reply)

    def _on_quit(self, reply: Reply) -> ClientEvent | None:
        self._close_with(T.CLOSE, reply)
        return self._closed

    # --- transaction helpers -------------------------------------------------------------

    def _transaction(self) -> TransactionProgress:
        if self._tx is None:
            raise LocalProtocolError(f"no transaction in state {self._state.name}")
        return self._tx

    def _abandon(self) -> None:
        """A transaction refused before its content: RSET, and report after its reply."""
        self._move(T.ABANDON)
        self._out.append(self._conn.rset())

    def _done(self, trigger: ClientTrigger, closing: Reply | None) -> ClientEvent:
        result = self._transaction().result()
        if closing is not None:
            self._closed = Closed(closing)
        self._move(trigger)
        self._tx = None
        return TransactionDone(result)


_Handler = Callable[[SMTPClientSession, Reply], ClientEvent | None]


def _unexpected(session: SMTPClientSession, reply: Reply) -> ClientEvent | None:
    raise RemoteProtocolError(f"unsolicited reply in state {session.state.name}: {reply}")


_ON_REPLY: dict[ClientState, _Handler] = {
    S.GREETING: SMTPClientSession._on_greeting,
    S.EHLO: SMTPClientSession._on_ehlo,
    S.HELO: SMTPClientSession._on_helo,
    S.READY: _unexpected,
    S.STARTTLS: SMTPClientSession._on_starttls,
    S.TLS_HANDSHAKE: _unexpected,
    S.TRANSACTION: SMTPClientSession._on_transaction,
    S.BODY: _unexpected,
    S.END_OF_DATA: SMTPClientSession._on_end_of_data,
    S.DISCARD: SMTPClientSession._on_discard,
    S.RSET: SMTPClientSession._on_rset,
    S.QUIT: SMTPClientSession._on_quit,
    S.CLOSED: _unexpected,
}
