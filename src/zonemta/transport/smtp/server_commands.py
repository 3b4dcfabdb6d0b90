"""The command handlers of the sans-IO SMTP server: what each verb does once it may run.

:class:`CommandHandlers` is the part of
:class:`~zonemta.transport.smtp.server.SMTPServerConnection` that, for a command line whose
verb the state table allowed (``server_states.sequence_refusal``), checks the argument,
queues the reply, moves the session state and returns the event for the driver (or None).
It owns no state of its own: the session state, the output queue and the state moves belong
to ``SMTPServerConnection``, which inherits these handlers. ``HANDLERS`` maps each
:class:`~zonemta.transport.smtp.server_states.Verb` to its handler.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from zonemta.transport.smtp import server_replies as replies
from zonemta.transport.smtp.errors import RemoteProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server_auth import Challenge, Credentials, SaslExchange
from zonemta.transport.smtp.server_data import DataDecoder
from zonemta.transport.smtp.server_events import (
    DATA_START,
    Auth,
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
from zonemta.transport.smtp.server_settings import ServerSettings
from zonemta.transport.smtp.server_states import Trigger, Verb

__all__ = ["HANDLERS", "CommandHandlers"]


class CommandHandlers:
    """The verb handlers (``_on_<verb>``) and the SASL start of ``SMTPServerConnection``."""

    # Session state, set up and owned by SMTPServerConnection.
    _settings: ServerSettings
    _inbox: deque[bytes]
    _line_buf: bytearray
    _out: list[bytes]
    _pending: Event | None
    _pending_utf8: bool
    _smtputf8: bool
    _recipients: int
    _tls_active: bool
    _authenticated: bool
    _sasl: SaslExchange | None
    _decoder: DataDecoder | None

    # State changes and output, implemented by SMTPServerConnection.
    _reply: Callable[[Reply], None]
    _move: Callable[[Trigger], None]
    _close: Callable[[], None]
    _end_transaction: Callable[[], None]

    def _on_helo(self, arg: str, _crlf: bool) -> Event | None:
        if not arg:
            self._reply(replies.HELO_SYNTAX)
            return None
        self._end_transaction()
        self._move(Trigger.HELLO)
        self._out.append(self._settings.helo_reply)
        return Helo(arg, extended=False)

    def _on_ehlo(self, arg: str, _crlf: bool) -> Event | None:
        if not arg:
            self._reply(replies.EHLO_SYNTAX)
            return None
        self._end_transaction()
        self._move(Trigger.HELLO)
        self._out.append(
            self._settings.ehlo_reply(tls_active=self._tls_active, auth_offered=self._auth_offered)
        )
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
        return DATA_START

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


Handler = Callable[[CommandHandlers, str, bool], Event | None]
HANDLERS: dict[Verb, Handler] = {
    Verb.HELO: CommandHandlers._on_helo,
    Verb.EHLO: CommandHandlers._on_ehlo,
    Verb.MAIL: CommandHandlers._on_mail,
    Verb.RCPT: CommandHandlers._on_rcpt,
    Verb.DATA: CommandHandlers._on_data,
    Verb.RSET: CommandHandlers._on_rset,
    Verb.NOOP: CommandHandlers._on_noop,
    Verb.QUIT: CommandHandlers._on_quit,
    Verb.VRFY: CommandHandlers._on_vrfy,
    Verb.HELP: CommandHandlers._on_help,
    Verb.STARTTLS: CommandHandlers._on_starttls,
    Verb.AUTH: CommandHandlers._on_auth,
}
