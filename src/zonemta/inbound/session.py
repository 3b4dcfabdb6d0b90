"""One SMTP client session: the sans-IO server object driven over a trio stream.

The session owns timeouts, STARTTLS, AUTH and policy; the protocol object owns the grammar.
AUTH is checked by the plugins' hooks, then the interface's :class:`Authenticator`; a
recipient is accepted only from an authenticated user or a client in ``relay_networks``
(else ``554 5.7.1``). A message goes to the queue only at its end of data, after ``DataEnd``:
a session that ends any other way aborts its reception.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from zonemta.engine.hooks import HookFailed, SessionInfo, run_checks
from zonemta.engine.intake.reception import Envelope, IntakeRejected, Reception
from zonemta.store import StoreError, StoreFull
from zonemta.transport.smtp import server as smtp
from zonemta.transport.smtp.errors import RemoteProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.tls import TlsHandshakeFailed, start_server_tls

if TYPE_CHECKING:
    from zonemta.inbound.listener import SmtpInterfaceService

log = logging.getLogger(__name__)

RECEIVE_SIZE = 64 * 1024
# How long a refused client (421) may take to read its reply.
REFUSAL_TIMEOUT = 5.0

REPLY_IDLE_TIMEOUT = Reply(421, ("timeout exceeded, closing connection",), "4.4.2")
REPLY_SHUTDOWN = Reply(421, ("server shutting down, try again later",), "4.3.2")
REPLY_STORE_FAILED = Reply(451, ("temporary failure storing the message, try again",), "4.3.0")
REPLY_STORE_FULL = Reply(452, ("insufficient system storage, try again later",), "4.3.1")
REPLY_RELAY_DENIED = Reply(554, ("relay access denied",), "5.7.1")
REPLY_AUTH_OK = Reply(235, ("Authentication successful",), "2.7.0")
REPLY_AUTH_FAILED = Reply(535, ("Authentication credentials invalid",), "5.7.8")
REPLY_AUTH_UNAVAILABLE = Reply(454, ("Temporary authentication failure",), "4.7.0")
REPLY_SENDER_OK = Reply(250, ("sender ok",), "2.1.0")
REPLY_RECIPIENT_OK = Reply(250, ("recipient ok",), "2.1.5")


def queued_reply(queue_id: str) -> bytes:
    """The 250 for a queued message, in wire form: what
    ``Reply(250, (f"Message queued as {queue_id}",), "2.0.0").to_bytes()`` is, without a
    Reply per message."""
    return b"250 2.0.0 Message queued as %s\r\n" % queue_id.encode()


class _SessionOver(Exception):
    """The connection cannot go on (a failed STARTTLS handshake); nothing more to send."""


class SmtpSession:
    """One client connection."""

    def __init__(
        self, service: SmtpInterfaceService, stream: trio.abc.Stream, client_address: str
    ) -> None:
        self.service = service
        self.settings = service.settings
        self.stream = stream
        self.protocol = smtp.SMTPServerConnection(service.settings.server)
        self.client_address = client_address
        self.relay_allowed = service.relay_allowed(client_address)
        self.helo = ""
        self.extended = False
        self.user: str | None = None
        self.mail_from: str | None = None
        self.mail_params: dict[str, str | None] = {}
        self.recipients: list[str] = []
        self.reception: Reception | None = None
        self._data_deadline = float("inf")
        self.timer = service.timers.timer()  # the idle and data timeouts
        self._reading = False  # waiting for the client (what a shutdown interrupts)
        self._data_reply: Reply | None = None  # a data hook refused: the answer at DataEnd
        self.hooks = service.intake.hooks
        # trio's clock, read directly (trio.current_time() is two more calls per read).
        self._now = trio.lowlevel.current_clock().current_time
        # The scope inside the timer's that shields a commit (see _end_data).
        self._guard: trio.CancelScope | None = None

    def info(self) -> SessionInfo:
        """This session as plugin hooks see it."""
        return SessionInfo(self.settings.name, self.client_address, self.helo, self.user)

    async def _check(self, name: str, hooks: list[Any], *args: object) -> Reply | None:
        """Run one intake hook list; a failed hook is a 451."""
        try:
            return await run_checks(name, hooks, self.info(), *args)
        except HookFailed as exc:
            return exc.reply

    def interrupt_idle(self) -> None:
        """Shutdown: a session waiting for a command stops waiting (and gets 421)."""
        if self.reception is None and self._reading:
            self.timer.cancel()

    @property
    def transtype(self) -> str:
        """The "with" of the Received header (RFC 3848: ESMTP, ESMTPS, ESMTPA, ESMTPSA)."""
        base = "ESMTP" if self.extended else "SMTP"
        tls = "S" if self.protocol.tls_active else ""
        return base + tls + ("A" if self.user is not None else "")

    async def serve(self) -> None:
        try:
            with self.timer, trio.CancelScope() as self._guard:
                protocol, timer, service = self.protocol, self.timer, self.service
                idle_timeout = self.settings.idle_timeout
                while not protocol.closed:
                    event = protocol.next_event()
                    if event is not smtp.NEED_DATA:
                        await self._dispatch(event)
                        continue
                    # Send what is queued, then read more, within the idle and data
                    # timeouts (the timer cancels this block). Here, not in a coroutine
                    # of its own: this runs several times per message.
                    out = protocol.data_to_send()
                    if out:
                        await self.stream.send_all(out)
                    if service._closing and self.reception is None:
                        self._close_with(REPLY_SHUTDOWN)
                        break
                    idle_deadline = self._now() + idle_timeout
                    data_deadline = self._data_deadline
                    timer.arm_at(idle_deadline if idle_deadline < data_deadline else data_deadline)
                    self._reading = True
                    try:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                    finally:
                        self._reading = False
                    timer.disarm()
                    protocol.receive_data(data if type(data) is bytes else bytes(data))
                await self._flush()
            if self.timer.cancelled_caught:  # timed out, or interrupted by a shutdown
                self._close_with(REPLY_SHUTDOWN if self.service._closing else REPLY_IDLE_TIMEOUT)
                await self._flush()
        except RemoteProtocolError as exc:
            log.info("SMTP protocol error from %s: %s", self.client_address, exc)
            if exc.reply is not None:
                with trio.move_on_after(REFUSAL_TIMEOUT):
                    await self.stream.send_all(exc.reply.to_bytes())
        except _SessionOver:
            pass
        finally:
            if self.reception is not None:
                await self.reception.abort()
                self.reception = None

    async def _flush(self) -> None:
        out = self.protocol.data_to_send()
        if out:
            await self.stream.send_all(out)

    def _close_with(self, reply: Reply) -> None:
        if not self.protocol.closed:
            self.protocol.close_with(reply)

    async def _dispatch(self, event: object) -> None:
        # The cases are about distinct event classes: the order is by frequency (the events
        # of every message first), for fewer failed class checks.
        match event:
            case smtp.DataChunk(data=data):
                if self.reception is not None:
                    await self.reception.feed(data)
            case smtp.DataEnd():
                await self._end_data()
            case smtp.MailFrom(address=address, params=params):
                self._reset_transaction()
                if self.hooks.mail_from:
                    refusal = await self._check("mail_from", self.hooks.mail_from, address, params)
                    if refusal is not None:
                        self.protocol.respond(refusal)
                        return
                self.mail_from = address
                self.mail_params = dict(params)
                self.protocol.respond(REPLY_SENDER_OK)
            case smtp.RcptTo(address=address):
                if self.user is None and not self.relay_allowed:
                    log.info("relay denied: %s -> <%s>", self.client_address, address)
                    self.protocol.respond(REPLY_RELAY_DENIED)
                    return
                if self.hooks.rcpt_to:
                    refusal = await self._check("rcpt_to", self.hooks.rcpt_to, address)
                    if refusal is not None:
                        self.protocol.respond(refusal)
                        return
                self.recipients.append(address)
                self.protocol.respond(REPLY_RECIPIENT_OK)
            case smtp.DataStart():
                self._begin_data()
                if self.hooks.data and self.reception is not None:
                    await self._data_check(self.reception)
            case smtp.Helo(name=name, extended=extended):
                self.helo, self.extended = name, extended
                self._reset_transaction()
            case smtp.Rset():
                await self._abort_data()
                self._reset_transaction()
            case smtp.DataAbort():
                await self._abort_data()
            case smtp.Auth(username=username, password=password):
                await self._authenticate(username, password)
            case smtp.StartTLS():
                await self._start_tls()
            case smtp.ConnectionClosed():
                await self._abort_data()
            case _:
                pass

    async def _data_check(self, reception: Reception) -> None:
        """The ``data`` hooks; a refusal discards the content and answers at its end."""
        refusal = await self._check("data", self.hooks.data, reception.envelope)
        if refusal is not None:
            self._data_reply = refusal
            self.reception = None
            await reception.abort()

    async def _authenticate(self, username: str, password: str) -> None:
        if self.hooks.auth:
            verdict = await self._check("auth", self.hooks.auth, username, password)
            if verdict is not None:  # a hook decided: 2xx is a success
                if verdict.code // 100 == 2:
                    log.info("authenticated %r from %s (plugin)", username, self.client_address)
                    self.user = username
                    if self.settings.auth_throttle is not None:
                        self.settings.auth_throttle.success(self.client_address)
                elif verdict.code >= 500:  # refused credentials: the same delay as ours
                    await self._auth_failure_delay(username)
                self.protocol.respond(verdict)
                return
        authenticator = self.settings.authenticator
        if authenticator is None:  # no users file: AUTH is the plugins' to answer
            log.warning("no plugin answered AUTH for %r from %s", username, self.client_address)
            await self._auth_failure_delay(username)
            self.protocol.respond(REPLY_AUTH_FAILED)
            return
        try:
            valid = await authenticator.authenticate(self.client_address, username, password)
        except Exception:
            log.exception("authenticator failed for %r from %s", username, self.client_address)
            self.protocol.respond(REPLY_AUTH_UNAVAILABLE)
            return
        if valid:
            log.info("authenticated %r from %s", username, self.client_address)
            self.user = username
            self.protocol.respond(REPLY_AUTH_OK)
        else:
            self.protocol.respond(REPLY_AUTH_FAILED)

    async def _auth_failure_delay(self, username: str) -> None:
        """Wait the delay this failure earns (the users-file authenticator waits its own)."""
        throttle = self.settings.auth_throttle
        if throttle is None:
            return
        delay = throttle.failure(self.client_address, trio.current_time())
        log.info(
            "authentication failed for %r from %s (waiting %.1fs)",
            username,
            self.client_address,
            delay,
        )
        await trio.sleep(delay)

    async def _start_tls(self) -> None:
        """Send the 220, run the handshake, reset the session (RFC 3207 4.2).

        Raises ``_SessionOver`` when the handshake fails (the stream is closed then) and
        ``RemoteProtocolError`` for plaintext that came before it.
        """
        await self._flush()
        context = self.settings.tls_context
        assert context is not None  # the server offers STARTTLS only with one
        try:
            self.stream = await start_server_tls(
                self.stream, context, within=self.settings.handshake_timeout
            )
        except TlsHandshakeFailed as exc:
            log.info("STARTTLS from %s: %s", self.client_address, exc)
            raise _SessionOver from exc
        self.protocol.tls_started()
        self.helo, self.extended, self.user = "", False, None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.mail_from = None
        self.mail_params = {}
        self.recipients = []

    def _begin_data(self) -> None:
        assert self.mail_from is not None
        body = (self.mail_params.get("BODY") or "").upper()
        envelope = Envelope(
            mail_from=self.mail_from,
            recipients=tuple(self.recipients),
            interface=self.settings.name,
            client_address=self.client_address,
            helo=self.helo,
            transtype=self.transtype,
            body_8bit=body == "8BITMIME",
            smtputf8="SMTPUTF8" in self.mail_params,
            user=self.user,
        )
        self.reception = self.service.intake.begin(
            envelope, max_header=self.settings.max_header_size
        )
        self._data_deadline = self._now() + self.settings.data_timeout

    def _publish(self, kind: str, reception: Reception, reason: str) -> None:
        """``message.rejected`` (refused at the end of data) or ``message.dropped`` (a
        reception abandoned half-way), as the HTTP API publishes them: for logs and metrics."""
        self.service.intake.report(kind, reception.id, interface=self.settings.name, reason=reason)

    async def _abort_data(self) -> None:
        self._data_deadline = float("inf")
        self._data_reply = None
        if self.reception is not None:
            reception, self.reception = self.reception, None
            await reception.abort()
            self._publish("message.dropped", reception, "reception abandoned")

    async def _end_data(self) -> None:
        self._data_deadline = float("inf")
        reception, self.reception = self.reception, None
        self._reset_transaction()
        if self._data_reply is not None:
            reply, self._data_reply = self._data_reply, None
            self.protocol.respond(reply)
            return
        if reception is None:
            self.protocol.respond(REPLY_STORE_FAILED)
            return
        guard = self._guard
        assert guard is not None
        # The commit must not be interrupted: shield it. The session's guard scope is
        # shielded for its time (two attribute writes instead of a new scope per message).
        guard.shield = True
        try:
            queue_id = await reception.commit()
        except IntakeRejected as exc:
            self._publish("message.rejected", reception, str(exc.reply))
            self.protocol.respond(exc.reply)
            return
        except StoreError as exc:
            log.warning("message from %s not stored: %s", self.client_address, exc)
            self._publish("message.rejected", reception, f"store failed: {exc}")
            full = isinstance(exc, StoreFull)  # RFC 5321 4.5.3.1.10: a retry may succeed
            self.protocol.respond(REPLY_STORE_FULL if full else REPLY_STORE_FAILED)
            return
        finally:
            guard.shield = False
        self.protocol.respond_queued(queued_reply(queue_id))
