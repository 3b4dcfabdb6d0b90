"""The trio driver of the sans-IO SMTP client session: one outgoing SMTP connection.

The session object (:class:`~zonemta.transport.smtp.client_session.SMTPClientSession`) owns
the protocol: greeting, EHLO/HELO, the STARTTLS step, MAIL/RCPT/DATA pipelined or lock-step,
per-recipient outcomes, RSET, QUIT. This driver only moves bytes between it and the socket,
does the TLS handshake when the session asks (what a host needs is a :class:`HostTls`,
decided by ``tls_policy.py``), keeps the deadline of the reply the session waits for, and
decides policy (STARTTLS or not, plaintext after a refusal). Failures are typed
(:class:`DeliveryFailure` with the :class:`Stage` and the remote :class:`Reply` when there is
one; defined with the other values in ``outbound_values.py``); nothing here reads reply
text.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterable

import trio

from zonemta.transport.direct_stream import DirectSocketStream, close_stream
from zonemta.transport.outbound_values import DeliveryFailure, Timeouts, Transaction
from zonemta.transport.smtp import client as smtp
from zonemta.transport.smtp.client_events import (
    ClientEvent,
    Envelope,
    Ready,
    RecipientOutcome,
    RecipientStatus,
    SendBody,
    SessionRefused,
    Stage,
    TlsRefused,
    TransactionDone,
    TransactionResult,
    UpgradeTLS,
    Wait,
)
from zonemta.transport.smtp.client_session import NEED_DATA, SMTPClientSession
from zonemta.transport.smtp.errors import LocalProtocolError, RemoteProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.starttls import TlsUpgradeFailed, start_client_tls
from zonemta.transport.timers import Timer, TimerWheel
from zonemta.transport.tls_policy import HostTls, TlsPolicy

__all__ = [
    "DeliveryFailure",
    "Envelope",
    "HostTls",
    "OutboundConnection",
    "RecipientOutcome",
    "RecipientStatus",
    "Stage",
    "Timeouts",
    "TlsPolicy",
    "Transaction",
    "TransactionResult",
]

log = logging.getLogger(__name__)

RECEIVE_SIZE = 16 * 1024
# Pieces of a message smaller than this are joined into one write.
COALESCE_BYTES = 64 * 1024
# How long QUIT may take when closing politely.
QUIT_SECONDS = 2.0
DEFAULT_TIMEOUTS = Timeouts()
# Connections made without a running wheel: their timers set their own scope deadlines.
NO_WHEEL = TimerWheel()


class OutboundConnection:
    """An open SMTP session with a remote server, greeted and EHLO'd (and TLS'd when
    possible). Use :meth:`connect` to make one.

    ``protocol`` is the session object (a bare command/reply ``SMTPClientConnection`` is
    wrapped in one greeting as ``ehlo_name``); ``protocol`` then names the command/reply
    layer and ``session`` the session object."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: SMTPClientSession | smtp.SMTPClientConnection,
        *,
        address: str,
        port: int,
        mx: str,
        local_address: str | None,
        timeouts: Timeouts,
        ehlo_name: str = "localhost",
        timers: TimerWheel = NO_WHEEL,
    ) -> None:
        if not isinstance(protocol, SMTPClientSession):
            protocol = SMTPClientSession(ehlo_name, connection=protocol)
        self.stream = stream
        self.session = protocol
        self.protocol = protocol.connection
        self.address = address
        self.port = port
        self.mx = mx
        self.local_address = local_address
        self.timeouts = timeouts  # (also sets _seconds)
        self.timers = timers  # runs the deadlines of every wait (timers.py)
        self.extensions = smtp.Extensions()
        self.tls = False
        self.tls_version = ""  # e.g. "TLSv1.3" once TLS is up
        self.tls_cipher = ""  # e.g. "TLS_AES_256_GCM_SHA384"
        self.tls_verified = ""  # "ca", "ca+name", "dane-ee", "dane-ta"; "" = not checked
        self.tls_source = ""  # the policy that set the TLS requirement
        self.messages = 0  # transactions whose content went out
        self.transactions = 0  # transactions started
        self.broken = False
        self.ehlo_name = ""  # the name this side greeted with (for Received headers)
        # What the last wait cut short by a cancellation was (the failure if it was the
        # timer's): a timeout text, or None for "waiting for the reply" (_timed_out).
        self._timeout: str | None = None
        self._timeout_stage = Stage.FINAL

    @property
    def timeouts(self) -> Timeouts:
        return self._timeouts

    @timeouts.setter
    def timeouts(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts
        # The seconds of each wait the session names (None: nothing awaited), looked up
        # after every reply.
        self._seconds: dict[Wait | None, float] = {wait: timeouts.of(wait) for wait in Wait}
        self._seconds[None] = timeouts.of(None)

    @classmethod
    async def connect(
        cls,
        address: str,
        port: int,
        *,
        mx: str,
        ehlo_name: str,
        local_address: str | None = None,
        tls: TlsPolicy | HostTls = TlsPolicy.OPPORTUNISTIC,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        timers: TimerWheel = NO_WHEEL,
    ) -> OutboundConnection:
        """Connect, read the greeting, EHLO (HELO when EHLO is not recognised) and STARTTLS
        as ``tls`` says: when opportunistic STARTTLS is refused or its handshake fails, the
        session goes on in plaintext (on a new connection after a failed handshake); when
        TLS is required, the attempt fails. Raises :class:`DeliveryFailure`."""
        need = tls if isinstance(tls, HostTls) else HostTls.for_mode(tls)
        connection = await cls._open(address, port, mx, ehlo_name, local_address, timeouts, timers)
        connection.tls_source = need.source
        if not need.starttls:
            return connection
        if not connection.extensions.starttls:
            if need.required:
                await connection.aclose()
                raise DeliveryFailure(
                    Stage.STARTTLS,
                    f"{mx} does not offer STARTTLS; TLS is required ({need.source})",
                    category="tls",
                )
            return connection
        try:
            await connection._starttls(need)
        except DeliveryFailure as exc:
            # STARTTLS answered with an error: the session is still in plaintext.
            refusal = exc.reply if exc.stage is Stage.STARTTLS else None
            if refusal is not None and connection.session.usable and not need.required:
                # RFC 3207 4: after a refusal the client may go on without TLS.
                log.info("%s refused STARTTLS (%s); going on without TLS", address, refusal)
                return connection
            await connection.aclose(polite=refusal is not None)
            if refusal is not None and need.required:
                raise DeliveryFailure(
                    Stage.STARTTLS,
                    f"{mx} refused STARTTLS ({refusal}); TLS is required ({need.source})",
                    category="tls",
                ) from exc
            if refusal is not None or need.required or exc.reply is not None:
                raise
            log.info("TLS with %s failed (%s); retrying without TLS", address, exc)
            return await cls._open(address, port, mx, ehlo_name, local_address, timeouts, timers)
        return connection

    @classmethod
    async def _open(
        cls,
        address: str,
        port: int,
        mx: str,
        ehlo_name: str,
        local_address: str | None,
        timeouts: Timeouts,
        timers: TimerWheel,
    ) -> OutboundConnection:
        try:
            with trio.fail_after(timeouts.connect):
                opened = await trio.open_tcp_stream(address, port, local_address=local_address)
            stream = DirectSocketStream(socket.socket(fileno=opened.socket.detach()))
        except trio.TooSlowError:
            raise DeliveryFailure(
                Stage.CONNECT, f"connection to {address}:{port} timed out"
            ) from None
        except OSError as exc:
            raise DeliveryFailure(
                Stage.CONNECT, f"connection to {address}:{port} failed: {exc.strerror or exc}"
            ) from exc
        return await cls.greet(
            stream,
            address=address,
            port=port,
            mx=mx,
            ehlo_name=ehlo_name,
            local_address=local_address,
            timeouts=timeouts,
            timers=timers,
        )

    @classmethod
    async def greet(
        cls,
        stream: trio.abc.Stream,
        *,
        address: str,
        port: int,
        mx: str,
        ehlo_name: str,
        local_address: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        timers: TimerWheel = NO_WHEEL,
    ) -> OutboundConnection:
        """Start a session over an open ``stream``: read the greeting, EHLO (HELO when EHLO
        is not recognised). No STARTTLS (see :meth:`connect`). Raises
        :class:`DeliveryFailure`; the stream is closed then."""
        try:
            session = SMTPClientSession(ehlo_name)
        except LocalProtocolError:
            await close_stream(stream)
            raise
        connection = cls(
            stream,
            session,
            address=address,
            port=port,
            mx=mx,
            local_address=local_address,
            timeouts=timeouts,
            timers=timers,
        )
        connection.ehlo_name = ehlo_name
        try:
            connection._hello(await connection._next_event())
        except BaseException:
            await connection.aclose(polite=False)
            raise
        return connection

    def _hello(self, event: ClientEvent) -> None:
        """Take the session's answer to the greeting or to EHLO after TLS."""
        if isinstance(event, SessionRefused):
            self.broken = True
            raise DeliveryFailure.from_reply(event.stage, event.reply)
        if not isinstance(event, Ready):
            raise LocalProtocolError(f"expected the session to be ready, got {event}")
        self.extensions = event.extensions

    async def _starttls(self, need: HostTls) -> None:
        self.session.start_tls()
        event = await self._next_event()
        if isinstance(event, TlsRefused):
            self.broken = not self.session.usable
            raise DeliveryFailure.from_reply(Stage.STARTTLS, event.reply)
        if not isinstance(event, UpgradeTLS):
            raise LocalProtocolError(f"expected the STARTTLS step, got {event}")
        try:
            session = await start_client_tls(
                self.stream, need, host=self.mx, within=self.timeouts.command
            )
        except TlsUpgradeFailed as exc:
            self.session.tls_failed()
            self.broken = True
            raise DeliveryFailure(Stage.STARTTLS, str(exc), category="tls") from exc
        self.stream = session.stream
        self.tls = True
        self.tls_version, self.tls_cipher = session.version, session.cipher
        self.tls_verified = session.verified
        self.session.tls_started()
        self._hello(await self._next_event())

    @property
    def tls_details(self) -> dict[str, str]:
        """What the delivery event records about this connection's TLS (empty: plaintext)."""
        if not self.tls:
            return {}
        return {
            "tls_version": self.tls_version,
            "tls_cipher": self.tls_cipher,
            "tls_verified": self.tls_verified or "no",
            "tls_policy": self.tls_source,
        }

    async def _next_event(self) -> ClientEvent:
        """Write what the session queued and read until it has an event, under a timer of
        its own (see :meth:`_wait_event`). Raises :class:`DeliveryFailure` (no reply) for a
        timeout, a lost connection or a protocol error; the connection is then ``broken``."""
        timer = self.timers.timer()
        with timer:
            return await self._wait_event(timer)
        raise self._timed_out()

    async def _wait_event(self, timer: Timer) -> ClientEvent:
        """Write what the session queued and read until it has an event. Each reply gets
        the deadline of what the session waits for (``Timeouts.of``), from the moment the
        previous one arrived, on ``timer`` (entered by the caller, which turns its expiry
        into :meth:`_timed_out`). Raises :class:`DeliveryFailure` (no reply) for a lost
        connection or a protocol error; the connection is then ``broken``."""
        session = self.session
        seconds, now = self._seconds, self.timers.now
        seen = -1
        waiting = session.waiting()
        stage = waiting[1] if waiting is not None else Stage.FINAL
        sending = False
        try:
            while True:
                event = session.next_event()
                # What the session waits for changes only with a reply read (the first
                # pass always reads it).
                if session.reply_count != seen:  # a reply came: the next one's deadline
                    seen = session.reply_count
                    waiting = session.waiting()
                    if waiting is None:
                        timer.arm_at(now() + seconds[None])
                    else:
                        stage = waiting[1]
                        timer.arm_at(now() + seconds[waiting[0]])
                out = session.data_to_send()
                if out:
                    sending = True
                    await self.stream.send_all(out)
                    sending = False
                if event is not NEED_DATA:
                    assert isinstance(event, ClientEvent)
                    return event
                data = await self.stream.receive_some(RECEIVE_SIZE)
                session.receive_data(bytes(data))
        except RemoteProtocolError as exc:
            self.broken = True
            stage = session.failed_stage or stage
            raise DeliveryFailure(stage, f"bad reply during {stage.value}: {exc}") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = True
            raise DeliveryFailure(stage, f"connection lost during {stage.value}") from exc
        except trio.Cancelled:  # what a timeout means here, should it be the timer's
            self._timeout = f"timeout sending {stage.value}" if sending else None
            self._timeout_stage = stage
            raise

    def _timed_out(self) -> DeliveryFailure:
        """The failure for the timer that expired during the last wait (recorded by
        :meth:`_wait_event` or :meth:`_stream_content`); the connection is ``broken``."""
        self.broken = True
        stage = self._timeout_stage
        if self._timeout is not None:
            return DeliveryFailure(stage, self._timeout)
        return DeliveryFailure(stage, f"timeout waiting for the {stage.value} reply")

    async def deliver(
        self, envelope: Envelope, content: AsyncIterable[bytes] | tuple[bytes, ...]
    ) -> TransactionResult:
        """Run one mail transaction for every recipient of ``envelope``, streaming
        ``content`` (CRLF line endings, not dot-stuffed; an async iterable, or a tuple of the
        chunks when they are all in memory) when at least one is accepted.

        Returns one :class:`RecipientOutcome` per recipient: accepted, or refused (at MAIL,
        RCPT, DATA or the end of data) with the reply; a message the server cannot take
        (SMTPUTF8, SIZE) is refused at MAIL with a locally made 5xx, nothing sent. Raises
        :class:`DeliveryFailure` without a reply when the connection fails (timeout, lost,
        protocol error), which holds for every recipient alike, and when a reused
        connection's first reply is 421 (the server dropped the idle session: open a new
        one). The connection stays usable after refusals (they are reset) unless
        ``broken`` is set."""
        if self.broken:
            raise DeliveryFailure(Stage.MAIL, "connection is not usable")
        reused = self.transactions > 0
        self.session.start_transaction(envelope)
        self.transactions += 1
        # One timer for the transaction, re-armed for each wait (its expiry is the failure
        # of the wait it cut short).
        timer = self.timers.timer()
        with timer:
            event = await self._wait_event(timer)
            if isinstance(event, SendBody):
                await self._stream_content(content, timer)
                event = await self._wait_event(timer)
            return self._transaction_done(event, reused)
        raise self._timed_out()

    def _transaction_done(self, event: ClientEvent, reused: bool) -> TransactionResult:
        """The result of the transaction the session ended with ``event``."""
        if not isinstance(event, TransactionDone):
            raise LocalProtocolError(f"expected the end of the transaction, got {event}")
        result = event.result
        self.broken = not self.session.usable
        if result.body_sent:
            self.messages += 1
        if reused and result.mail.code == 421:
            self.broken = True
            raise DeliveryFailure(
                Stage.MAIL, f"{self.mx} closed the idle connection: {result.mail}"
            )
        return result

    async def send(self, transaction: Transaction, content: AsyncIterable[bytes]) -> Reply:
        """Run one mail transaction for one recipient (:meth:`deliver`). Returns the final
        2xx reply or raises :class:`DeliveryFailure` (with the refusing reply and its
        stage when the server refused)."""
        envelope = Envelope(
            transaction.mail_from,
            (transaction.recipient,),
            transaction.size,
            body_8bit=transaction.body_8bit,
            smtputf8=transaction.smtputf8,
        )
        (outcome,) = (await self.deliver(envelope, content)).outcomes
        if not outcome.accepted:
            raise DeliveryFailure.from_reply(outcome.stage, outcome.reply)
        return outcome.reply

    async def _stream_content(
        self, content: AsyncIterable[bytes] | tuple[bytes, ...], timer: Timer
    ) -> None:
        """Stream the content through the session (dot-stuffing), coalescing small pieces,
        within ``timeouts.data`` on ``timer`` (entered by the caller)."""
        session = self.session
        pending = 0
        # Until the terminator is sent, any failure leaves the session unusable.
        self.broken = True
        timer.arm(self._timeouts.data)
        try:
            if isinstance(content, tuple):  # in memory (a body of at most 64 KiB): sent at once
                for chunk in content:
                    session.send_body(chunk)
            else:
                async for chunk in content:
                    session.send_body(chunk)
                    pending += len(chunk)
                    if pending >= COALESCE_BYTES:
                        await self.stream.send_all(session.data_to_send())
                        pending = 0
            session.end_body()
            await self.stream.send_all(session.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise DeliveryFailure(Stage.BODY, "connection lost while sending the body") from exc
        except trio.Cancelled:  # what a timeout means here, should it be the timer's
            self._timeout, self._timeout_stage = "timeout while sending the body", Stage.BODY
            raise
        self.broken = False

    async def aclose(self, *, polite: bool = True) -> None:
        """QUIT (briefly waiting for 221) and close the socket."""
        if polite and not self.broken and self.session.usable:
            with trio.move_on_after(QUIT_SECONDS):
                try:
                    self.session.quit()
                    await self._next_event()
                except DeliveryFailure:
                    pass
        self.broken = True
        await close_stream(self.stream)
