"""The trio driver of the SMTP server protocol object: one task per client connection.

It owns sockets, TLS, timeouts and policy; the protocol object owns the SMTP grammar. Message
content goes from the socket to :class:`zonemta.engine.intake.Reception` chunk by chunk.

Per connection, in order: the PROXY header when the interface sits behind a load balancer
(so everything after sees the real client address); admission (``max_clients`` and the
per-address limit, 421 when over); the TLS handshake for implicit TLS; then the session.
Policy in the session: AUTH is checked by the interface's :class:`Authenticator`; a recipient
is accepted only from an authenticated user or a client in ``relay_networks`` (else
``554 5.7.1``). A message is handed to the queue only at its end of data, after
``DataEnd``: a session that ends any other way aborts its reception.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from functools import partial
from typing import Any, Protocol

import attrs
import trio

from zonemta.engine.hooks import HookFailed, SessionInfo, run_checks
from zonemta.engine.intake import Envelope, Intake, IntakeRejected, Reception
from zonemta.store import StoreError
from zonemta.transport.proxy import NEED_DATA, ProxyHeaderParser, ProxyProtocolError
from zonemta.transport.smtp import server as smtp
from zonemta.transport.smtp.errors import RemoteProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.tls import TlsHandshakeFailed, start_server_tls

log = logging.getLogger(__name__)

RECEIVE_SIZE = 64 * 1024
# How long a refused client (421) may take to read its reply.
REFUSAL_TIMEOUT = 5.0

REPLY_IDLE_TIMEOUT = Reply(421, ("timeout exceeded, closing connection",), "4.4.2")
REPLY_SHUTDOWN = Reply(421, ("server shutting down, try again later",), "4.3.2")
REPLY_TOO_MANY = Reply(421, ("too many connections, try again later",), "4.7.0")
REPLY_TOO_MANY_FROM_ADDRESS = Reply(
    421, ("too many connections from your address, try again later",), "4.7.0"
)
REPLY_STORE_FAILED = Reply(451, ("temporary failure storing the message, try again",), "4.3.0")
REPLY_RELAY_DENIED = Reply(554, ("relay access denied",), "5.7.1")
REPLY_AUTH_OK = Reply(235, ("Authentication successful",), "2.7.0")
REPLY_AUTH_FAILED = Reply(535, ("Authentication credentials invalid",), "5.7.8")
REPLY_AUTH_UNAVAILABLE = Reply(454, ("Temporary authentication failure",), "4.7.0")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class Authenticator(Protocol):
    """Checks AUTH credentials (implemented by :mod:`zonemta.engine.auth`)."""

    async def authenticate(self, client_address: str, username: str, password: str) -> bool:
        """True for valid credentials; a failure may take a while (throttling)."""
        ...


def in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    """True when the IP literal ``address`` lies in one of ``networks`` (IPv4-mapped IPv6
    addresses count as IPv4). False for anything that is not an IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


@attrs.frozen
class InterfaceSettings:
    """What one SMTP interface needs at run time (built from the config by the app).

    ``tls_context`` serves both STARTTLS (``server.starttls_available``) and implicit TLS
    (``server.implicit_tls``). ``max_clients_per_address`` (0 = no limit) does not apply to
    clients inside ``relay_networks``. With ``proxy_protocol`` every connection must start
    with a PROXY header and come from ``proxy_networks``.
    """

    name: str
    host: str
    port: int
    server: smtp.ServerSettings
    idle_timeout: float
    data_timeout: float
    max_clients: int
    max_header_size: int
    tls_context: ssl.SSLContext | None = None
    relay_networks: tuple[Network, ...] = LOOPBACK_NETWORKS
    max_clients_per_address: int = 0
    proxy_protocol: bool = False
    proxy_networks: tuple[Network, ...] = LOOPBACK_NETWORKS
    authenticator: Authenticator | None = None

    def __attrs_post_init__(self) -> None:
        tls_needed = self.server.starttls_available or self.server.implicit_tls
        if tls_needed and self.tls_context is None:
            raise ValueError(f"interface {self.name}: STARTTLS or implicit TLS needs a context")


class PrefixedStream(trio.abc.Stream):
    """``stream`` with ``prefix`` handed out first: bytes read past a PROXY header."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_proxy_header(stream: trio.abc.Stream, peer: str) -> tuple[trio.abc.Stream, str]:
    """Read the PROXY header; returns the stream to go on with and the client address (the
    header's source, or ``peer`` when it carries none). Raises ``ProxyProtocolError`` and
    the stream's errors; the caller bounds the time."""
    parser = ProxyHeaderParser()
    while True:
        header = parser.next_event()
        if header is not NEED_DATA:
            break
        parser.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
    assert not isinstance(header, type)
    address = header.source[0] if header.source is not None else peer
    rest = parser.trailing_data
    return (PrefixedStream(stream, rest) if rest else stream), address


class SmtpInterfaceService:
    """Listens on one interface and serves each client in its own task."""

    def __init__(self, settings: InterfaceSettings, intake: Intake) -> None:
        self.settings = settings
        self.intake = intake
        self.active = 0
        self.per_address: dict[str, int] = {}
        self._closing = False
        self._accepting = trio.CancelScope()
        self._sessions_nursery: trio.Nursery | None = None
        self._live: set[SmtpSession] = set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop`. Reports the bound port through ``task_status``."""
        listeners = await trio.open_tcp_listeners(self.settings.port, host=self.settings.host)
        port = listeners[0].socket.getsockname()[1]
        log.info(
            "SMTP interface %s listening on %s:%s", self.settings.name, self.settings.host, port
        )
        async with trio.open_nursery() as sessions:
            self._sessions_nursery = sessions
            with self._accepting:
                await sessions.start(
                    partial(trio.serve_listeners, self._handle, listeners, handler_nursery=sessions)
                )
                task_status.started(port)
                await trio.sleep_forever()
            # No longer accepting; sessions end by themselves (see stop()).

    async def stop(self, grace: float) -> None:
        """Stop accepting; idle sessions get 421 at once, a session receiving a message
        finishes it first; after ``grace`` seconds the rest are cut off."""
        self._closing = True
        self._accepting.cancel()
        for session in list(self._live):
            session.interrupt_idle()
        if self._sessions_nursery is not None:
            self._sessions_nursery.cancel_scope.deadline = trio.current_time() + grace

    async def _handle(self, stream: trio.abc.Stream) -> None:
        settings = self.settings
        address = peer = _peer(stream)
        counted = False
        try:
            if settings.proxy_protocol:
                if not in_networks(peer, settings.proxy_networks):
                    log.warning("%s: %s is not a listed proxy: closed", settings.name, peer)
                    return
                try:
                    with trio.fail_after(settings.idle_timeout):
                        stream, address = await read_proxy_header(stream, peer)
                except (ProxyProtocolError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                    log.info("%s: bad PROXY header from %s: %s", settings.name, peer, exc)
                    return
            refusal = self._admit(address)
            if refusal is not None:
                await self._refuse(stream, refusal)
                return
            counted = True
            await self._serve(stream, address)
        finally:
            if counted:
                self.active -= 1
                left = self.per_address[address] - 1
                if left:
                    self.per_address[address] = left
                else:
                    del self.per_address[address]
            await trio.aclose_forcefully(stream)

    def _admit(self, address: str) -> Reply | None:
        """Count the connection in, or say why it is refused."""
        settings = self.settings
        if self.active >= settings.max_clients:
            return REPLY_TOO_MANY
        limit = settings.max_clients_per_address
        if (
            limit
            and self.per_address.get(address, 0) >= limit
            and not in_networks(address, settings.relay_networks)
        ):
            return REPLY_TOO_MANY_FROM_ADDRESS
        self.active += 1
        self.per_address[address] = self.per_address.get(address, 0) + 1
        return None

    async def _refuse(self, stream: trio.abc.Stream, reply: Reply) -> None:
        log.info("%s: connection refused: %s", self.settings.name, reply)
        with trio.move_on_after(REFUSAL_TIMEOUT):
            if self.settings.server.implicit_tls:
                assert self.settings.tls_context is not None
                try:
                    stream = await start_server_tls(
                        stream, self.settings.tls_context, within=REFUSAL_TIMEOUT
                    )
                except TlsHandshakeFailed:
                    return
            try:
                await stream.send_all(reply.to_bytes())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream, address: str) -> None:
        settings = self.settings
        if settings.server.implicit_tls:
            assert settings.tls_context is not None
            try:
                stream = await start_server_tls(
                    stream, settings.tls_context, within=settings.idle_timeout
                )
            except TlsHandshakeFailed as exc:
                log.info("%s: %s from %s", settings.name, exc, address)
                return
        if self.intake.hooks.connect:
            refusal = await _connect_check(settings.name, address, self.intake)
            if refusal is not None:
                with trio.move_on_after(REFUSAL_TIMEOUT):
                    await stream.send_all(refusal.to_bytes())
                return
        session = SmtpSession(self, stream, address)
        self._live.add(session)
        try:
            await session.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("SMTP session on %s failed", settings.name)
        finally:
            self._live.discard(session)
            await trio.aclose_forcefully(session.stream)


def _peer(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return ""
    try:
        address = sock.getpeername()
    except OSError:
        return ""
    return str(address[0]) if isinstance(address, tuple) else str(address)


async def _connect_check(interface: str, address: str, intake: Intake) -> Reply | None:
    """The ``connect`` hooks' verdict on a new client (a 451 when a hook failed)."""
    try:
        return await run_checks("connect", intake.hooks.connect, SessionInfo(interface, address))
    except HookFailed as exc:
        return exc.reply


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
        self.relay_allowed = in_networks(client_address, self.settings.relay_networks)
        self.helo = ""
        self.extended = False
        self.user: str | None = None
        self.mail_from: str | None = None
        self.mail_params: dict[str, str | None] = {}
        self.recipients: list[str] = []
        self.reception: Reception | None = None
        self._data_deadline = float("inf")
        self._read_scope: trio.CancelScope | None = None
        self._data_reply: Reply | None = None  # a data hook refused: the answer at DataEnd
        self.hooks = service.intake.hooks

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
        if self.reception is None and self._read_scope is not None:
            self._read_scope.cancel()

    @property
    def transtype(self) -> str:
        """The "with" of the Received header (RFC 3848: ESMTP, ESMTPS, ESMTPA, ESMTPSA)."""
        base = "ESMTP" if self.extended else "SMTP"
        tls = "S" if self.protocol.tls_active else ""
        return base + tls + ("A" if self.user is not None else "")

    async def serve(self) -> None:
        try:
            while not self.protocol.closed:
                event = self.protocol.next_event()
                if event is smtp.NEED_DATA:
                    if not await self._receive():
                        break
                    continue
                await self._dispatch(event)
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

    async def _receive(self) -> bool:
        """Send what is queued, then read more. False when the session is over."""
        await self._flush()
        if self.service._closing and self.reception is None:
            self._close_with(REPLY_SHUTDOWN)
            await self._flush()
            return False
        deadline = trio.current_time() + self.settings.idle_timeout
        deadline = min(deadline, self._data_deadline)
        with trio.CancelScope(deadline=deadline) as scope:
            self._read_scope = scope
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self.protocol.receive_data(bytes(data))
            return True
        self._read_scope = None
        self._close_with(REPLY_SHUTDOWN if self.service._closing else REPLY_IDLE_TIMEOUT)
        await self._flush()
        return False

    def _close_with(self, reply: Reply) -> None:
        if not self.protocol.closed:
            self.protocol.close_with(reply)

    async def _dispatch(self, event: object) -> None:
        match event:
            case smtp.Helo(name=name, extended=extended):
                self.helo, self.extended = name, extended
                self._reset_transaction()
            case smtp.MailFrom(address=address, params=params):
                self._reset_transaction()
                if self.hooks.mail_from:
                    refusal = await self._check("mail_from", self.hooks.mail_from, address, params)
                    if refusal is not None:
                        self.protocol.respond(refusal)
                        return
                self.mail_from = address
                self.mail_params = dict(params)
                self.protocol.respond(Reply(250, ("sender ok",), "2.1.0"))
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
                self.protocol.respond(Reply(250, ("recipient ok",), "2.1.5"))
            case smtp.Auth(username=username, password=password):
                await self._authenticate(username, password)
            case smtp.StartTLS():
                await self._start_tls()
            case smtp.DataStart():
                self._begin_data()
                if self.hooks.data and self.reception is not None:
                    await self._data_check(self.reception)
            case smtp.DataChunk(data=data):
                if self.reception is not None:
                    await self.reception.feed(data)
            case smtp.DataAbort():
                await self._abort_data()
            case smtp.DataEnd():
                await self._end_data()
            case smtp.Rset():
                await self._abort_data()
                self._reset_transaction()
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
                self.protocol.respond(verdict)
                return
        authenticator = self.settings.authenticator
        if authenticator is None:  # no users file: AUTH is the plugins' to answer
            log.warning("no plugin answered AUTH for %r from %s", username, self.client_address)
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
                self.stream, context, within=self.settings.idle_timeout
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
        self._data_deadline = trio.current_time() + self.settings.data_timeout

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
        try:
            with trio.CancelScope(shield=True):
                queue_id = await reception.commit()
        except IntakeRejected as exc:
            self._publish("message.rejected", reception, str(exc.reply))
            self.protocol.respond(exc.reply)
            return
        except StoreError as exc:
            log.warning("message from %s not stored: %s", self.client_address, exc)
            self._publish("message.rejected", reception, f"store failed: {exc}")
            self.protocol.respond(REPLY_STORE_FAILED)
            return
        self.protocol.respond(Reply(250, (f"Message queued as {queue_id}",), "2.0.0"))
