"""The trio driver of the SMTP client protocol object: one outgoing SMTP connection.

It owns the socket, the source address, per-phase deadlines and TLS (what a host needs is a
:class:`HostTls`, decided by ``tls_policy.py``); the protocol object owns the grammar.
Failures are typed (:class:`DeliveryFailure` with the :class:`Stage` and the remote
:class:`Reply` when there is one); nothing here reads reply text.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterable

import attrs
import trio

from zonemta.transport.smtp import client as smtp
from zonemta.transport.smtp.dotstuff import DotStuffer
from zonemta.transport.smtp.errors import RemoteProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.starttls import TlsUpgradeFailed, start_client_tls
from zonemta.transport.tls_policy import HostTls, TlsPolicy

__all__ = [
    "DeliveryFailure",
    "HostTls",
    "OutboundConnection",
    "Stage",
    "Timeouts",
    "TlsPolicy",
    "Transaction",
]

log = logging.getLogger(__name__)

RECEIVE_SIZE = 16 * 1024
# Pieces of a message smaller than this are joined into one write.
COALESCE_BYTES = 64 * 1024


class Stage(enum.Enum):
    CONNECT = "connect"
    GREETING = "greeting"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    BODY = "body"
    FINAL = "final"


class DeliveryFailure(Exception):
    """An attempt failed at ``stage``. ``reply`` is the remote answer when the failure was
    one; ``temporary`` says whether trying again later can help; ``category`` overrides the
    default category of a failure without a reply (``network``), e.g. ``tls``."""

    def __init__(
        self,
        stage: Stage,
        message: str,
        *,
        reply: Reply | None = None,
        temporary: bool = True,
        category: str | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.reply = reply
        self.temporary = temporary
        self.category = category

    @property
    def response(self) -> str:
        return str(self.reply) if self.reply is not None else str(self)

    @classmethod
    def from_reply(cls, stage: Stage, reply: Reply) -> DeliveryFailure:
        return cls(stage, str(reply), reply=reply, temporary=not reply.is_permanent)


@attrs.frozen
class Timeouts:
    connect: float = 60.0
    greeting: float = 300.0
    command: float = 300.0
    data: float = 600.0


@attrs.frozen
class Transaction:
    mail_from: str
    recipient: str
    size: int
    body_8bit: bool = False
    smtputf8: bool = False


class OutboundConnection:
    """An open SMTP session with a remote server, greeted and EHLO'd (and TLS'd when
    possible). Use :meth:`connect` to make one."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: smtp.SMTPClientConnection,
        *,
        address: str,
        port: int,
        mx: str,
        local_address: str | None,
        timeouts: Timeouts,
    ) -> None:
        self.stream = stream
        self.protocol = protocol
        self.address = address
        self.port = port
        self.mx = mx
        self.local_address = local_address
        self.timeouts = timeouts
        self.extensions = smtp.Extensions()
        self.tls = False
        self.tls_version = ""  # e.g. "TLSv1.3" once TLS is up
        self.tls_cipher = ""  # e.g. "TLS_AES_256_GCM_SHA384"
        self.tls_verified = ""  # "ca", "ca+name", "dane-ee", "dane-ta"; "" = not checked
        self.tls_source = ""  # the policy that set the TLS requirement
        self.messages = 0
        self.broken = False
        self.ehlo_name = ""  # the name this side greeted with (for Received headers)

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
        timeouts: Timeouts = Timeouts(),
    ) -> OutboundConnection:
        """Connect, read the greeting, EHLO (HELO when EHLO is refused) and STARTTLS as
        ``tls`` says: when opportunistic STARTTLS is refused or its handshake fails, the
        session goes on in plaintext (on a new connection after a failed handshake); when
        TLS is required, the attempt fails. Raises :class:`DeliveryFailure`."""
        need = tls if isinstance(tls, HostTls) else HostTls.for_mode(tls)
        connection = await cls._open(address, port, mx, ehlo_name, local_address, timeouts)
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
            await connection._starttls(ehlo_name, need)
        except DeliveryFailure as exc:
            # STARTTLS answered with an error: the session is still in plaintext.
            refusal = exc.reply if exc.stage is Stage.STARTTLS else None
            if refusal is not None and refusal.code != 421 and not need.required:
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
            return await cls._open(address, port, mx, ehlo_name, local_address, timeouts)
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
    ) -> OutboundConnection:
        try:
            with trio.fail_after(timeouts.connect):
                stream = await trio.open_tcp_stream(address, port, local_address=local_address)
        except trio.TooSlowError:
            raise DeliveryFailure(
                Stage.CONNECT, f"connection to {address}:{port} timed out"
            ) from None
        except OSError as exc:
            raise DeliveryFailure(
                Stage.CONNECT, f"connection to {address}:{port} failed: {exc.strerror or exc}"
            ) from exc
        connection = cls(
            stream,
            smtp.SMTPClientConnection(),
            address=address,
            port=port,
            mx=mx,
            local_address=local_address,
            timeouts=timeouts,
        )
        try:
            greeting = await connection._read_reply(Stage.GREETING, timeouts.greeting)
            if not greeting.is_positive:
                raise DeliveryFailure.from_reply(Stage.GREETING, greeting)
            connection.ehlo_name = ehlo_name
            await connection._hello(ehlo_name)
        except BaseException:
            await connection.aclose(polite=False)
            raise
        return connection

    async def _hello(self, ehlo_name: str) -> None:
        reply = await self._command(Stage.EHLO, self.protocol.ehlo(ehlo_name))
        if reply.is_positive:
            self.extensions = smtp.Extensions.from_ehlo(reply)
            return
        reply = await self._command(Stage.EHLO, self.protocol.helo(ehlo_name))
        if not reply.is_positive:
            raise DeliveryFailure.from_reply(Stage.EHLO, reply)
        self.extensions = smtp.Extensions()

    async def _starttls(self, ehlo_name: str, need: HostTls) -> None:
        reply = await self._command(Stage.STARTTLS, self.protocol.starttls())
        if not reply.is_positive:
            raise DeliveryFailure.from_reply(Stage.STARTTLS, reply)
        try:
            self.protocol.tls_started()
        except RemoteProtocolError as exc:
            self.broken = True
            raise DeliveryFailure(Stage.STARTTLS, str(exc)) from exc
        try:
            session = await start_client_tls(
                self.stream, need, host=self.mx, within=self.timeouts.command
            )
        except TlsUpgradeFailed as exc:
            self.broken = True
            raise DeliveryFailure(Stage.STARTTLS, str(exc), category="tls") from exc
        self.stream = session.stream
        self.tls = True
        self.tls_version, self.tls_cipher = session.version, session.cipher
        self.tls_verified = session.verified
        await self._hello(ehlo_name)

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

    async def _send(self, stage: Stage, data: bytes, seconds: float) -> None:
        try:
            with trio.fail_after(seconds):
                await self.stream.send_all(data)
        except trio.TooSlowError:
            self.broken = True
            raise DeliveryFailure(stage, f"timeout sending {stage.value}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = True
            raise DeliveryFailure(stage, f"connection lost during {stage.value}") from exc

    async def _read_reply(self, stage: Stage, seconds: float) -> Reply:
        try:
            with trio.fail_after(seconds):
                while True:
                    reply = self.protocol.next_reply()
                    if reply is not smtp.NEED_DATA:
                        assert isinstance(reply, Reply)
                        return reply
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    self.protocol.receive_data(bytes(data))
        except trio.TooSlowError:
            self.broken = True
            raise DeliveryFailure(stage, f"timeout waiting for the {stage.value} reply") from None
        except RemoteProtocolError as exc:
            self.broken = True
            raise DeliveryFailure(stage, f"bad reply during {stage.value}: {exc}") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = True
            raise DeliveryFailure(stage, f"connection lost during {stage.value}") from exc

    async def _command(self, stage: Stage, data: bytes) -> Reply:
        await self._send(stage, data, self.timeouts.command)
        return await self._read_reply(stage, self.timeouts.command)

    async def send(self, transaction: Transaction, content: AsyncIterable[bytes]) -> Reply:
        """Run one mail transaction for one recipient, streaming ``content`` (CRLF line
        endings, not dot-stuffed). Returns the final 2xx reply or raises
        :class:`DeliveryFailure`. The connection stays usable after a refused transaction
        (it is reset) unless ``broken`` is set."""
        if self.broken:
            raise DeliveryFailure(Stage.MAIL, "connection is not usable")
        plan = smtp.plan_transaction(
            self.extensions,
            size=transaction.size,
            body_8bit=transaction.body_8bit,
            smtputf8=transaction.smtputf8,
        )
        if isinstance(plan, smtp.TransactionRefusal):
            raise DeliveryFailure(Stage.MAIL, str(plan.reply), reply=plan.reply, temporary=False)
        mail = self.protocol.mail(
            transaction.mail_from,
            size=plan.size,
            body_8bit=plan.body_8bit,
            smtputf8=plan.smtputf8,
        )
        rcpt = self.protocol.rcpt(transaction.recipient)
        timeout = self.timeouts.command
        if plan.pipelining:
            await self._send(Stage.MAIL, mail + rcpt + self.protocol.data(), timeout)
            mail_reply = await self._read_reply(Stage.MAIL, timeout)
            rcpt_reply = await self._read_reply(Stage.RCPT, timeout)
            data_reply = await self._read_reply(Stage.DATA, timeout)
        else:
            mail_reply = await self._command(Stage.MAIL, mail)
            if not mail_reply.is_positive:
                await self._reset()
                raise DeliveryFailure.from_reply(Stage.MAIL, mail_reply)
            rcpt_reply = await self._command(Stage.RCPT, rcpt)
            if not rcpt_reply.is_positive:
                await self._reset()
                raise DeliveryFailure.from_reply(Stage.RCPT, rcpt_reply)
            data_reply = await self._command(Stage.DATA, self.protocol.data())
        if not (mail_reply.is_positive and rcpt_reply.is_positive):
            if data_reply.is_intermediate:
                # RFC 2920: the server took DATA although no recipient was accepted;
                # end the empty message at once, it refuses it.
                await self._send(Stage.BODY, b".\r\n", timeout)
                self.protocol.end_data()
                await self._read_reply(Stage.FINAL, timeout)
            await self._reset()
            failed = (
                (Stage.MAIL, mail_reply) if not mail_reply.is_positive else (Stage.RCPT, rcpt_reply)
            )
            raise DeliveryFailure.from_reply(*failed)
        if not data_reply.is_intermediate:
            await self._reset()
            raise DeliveryFailure.from_reply(Stage.DATA, data_reply)
        await self._send_content(content)
        self.protocol.end_data()
        final = await self._read_reply(Stage.FINAL, self.timeouts.data)
        self.messages += 1
        if not final.is_positive:
            raise DeliveryFailure.from_reply(Stage.FINAL, final)
        return final

    async def _send_content(self, content: AsyncIterable[bytes]) -> None:
        stuffer = DotStuffer()
        pending: list[bytes] = []
        pending_size = 0
        # Until the terminator is sent, any failure leaves the session unusable.
        self.broken = True
        try:
            with trio.fail_after(self.timeouts.data):
                async for chunk in content:
                    encoded = stuffer.feed(chunk)
                    pending.append(encoded)
                    pending_size += len(encoded)
                    if pending_size >= COALESCE_BYTES:
                        await self.stream.send_all(b"".join(pending))
                        pending.clear()
                        pending_size = 0
                pending.append(stuffer.finish())
                await self.stream.send_all(b"".join(pending))
        except trio.TooSlowError:
            raise DeliveryFailure(Stage.BODY, "timeout while sending the body") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise DeliveryFailure(Stage.BODY, "connection lost while sending the body") from exc
        self.broken = False

    async def _reset(self) -> None:
        """RSET after a refused transaction; a connection that cannot reset is broken."""
        try:
            reply = await self._command(Stage.MAIL, self.protocol.rset())
        except DeliveryFailure:
            self.broken = True
            return
        if not reply.is_positive:
            self.broken = True

    async def aclose(self, *, polite: bool = True) -> None:
        """QUIT (briefly waiting for 221) and close the socket."""
        if polite and not self.broken:
            with trio.move_on_after(2):
                try:
                    await self.stream.send_all(self.protocol.quit())
                    await self._read_reply(Stage.FINAL, 2)
                except DeliveryFailure:
                    pass
        self.broken = True
        await trio.aclose_forcefully(self.stream)
