"""The trio driver of the SMTP server protocol object: one task per client connection.

It owns sockets, TLS, timeouts and policy; the protocol object owns the SMTP grammar. Message
content goes from the socket to :class:`zonemta.engine.intake.reception.Reception` chunk by chunk.

Per connection, in order: the PROXY header when the interface sits behind a load balancer
(so everything after sees the real client address); admission (``max_clients`` and the
per-address limit, 421 when over); the TLS handshake for implicit TLS; then the session.
Policy in the session: AUTH is checked by the interface's :class:`Authenticator`; a recipient
is accepted only from an authenticated user or a client in ``relay_networks`` (else
``554 5.7.1``). A message is handed to the queue only at its end of data, after
``DataEnd``: a session that ends any other way aborts its reception.
"""

from __future__ import annotations

import logging
import socket

import trio

from zonemta.engine.hooks import HookFailed, SessionInfo, run_checks
from zonemta.engine.intake.reception import Intake
from zonemta.inbound.session import (
    RECEIVE_SIZE,
    REFUSAL_TIMEOUT,
    SmtpSession,
)
from zonemta.transport.admission import Admission, ClientCounts
from zonemta.transport.direct_stream import accept_loop, close_stream
from zonemta.transport.interface import (
    LOOPBACK_NETWORKS,
    Authenticator,
    InterfaceSettings,
    Network,
    in_networks,
)
from zonemta.transport.proxy import NEED_DATA, ProxyHeaderParser, ProxyProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.timers import TimerWheel
from zonemta.transport.tls import TlsHandshakeFailed, start_server_tls

__all__ = [
    "LOOPBACK_NETWORKS",
    "Authenticator",
    "InterfaceSettings",
    "Network",
    "PrefixedStream",
    "SmtpInterfaceService",
    "SmtpSession",
    "in_networks",
    "open_interface_sockets",
    "open_reuseport_sockets",
    "read_proxy_header",
]

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096  # per listening socket (the kernel caps it at net.core.somaxconn)
RELAY_ALLOWED_CACHE = 4096  # client addresses whose relay_networks answer is remembered


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
    """Listens on one interface and serves each client in its own task. Clients are
    counted by ``admission`` (by default: here, in :attr:`counts`)."""

    def __init__(
        self, settings: InterfaceSettings, intake: Intake, admission: Admission | None = None
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.counts = ClientCounts(settings)
        self.admission: Admission = admission if admission is not None else self.counts
        self._closing = False
        self._accepting = trio.CancelScope()
        self._sessions_nursery: trio.Nursery | None = None
        self._live: set[SmtpSession] = set()
        self.timers = TimerWheel()  # the sessions' idle and data timeouts
        self._relay_allowed: dict[str, bool] = {}  # client address -> in relay_networks

    def relay_allowed(self, address: str) -> bool:
        """Whether ``address`` is in the interface's ``relay_networks`` (remembered per
        address: a session asks once, and clients come back)."""
        allowed = self._relay_allowed.get(address)
        if allowed is None:
            if len(self._relay_allowed) >= RELAY_ALLOWED_CACHE:
                self._relay_allowed.clear()
            allowed = in_networks(address, self.settings.relay_networks)
            self._relay_allowed[address] = allowed
        return allowed

    @property
    def active(self) -> int:
        return self.counts.active

    @property
    def per_address(self) -> dict[str, int]:
        return self.counts.per_address

    async def run(
        self,
        sockets: list[socket.socket] | None = None,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until :meth:`stop` on the listening ``sockets`` (by default, ones it binds
        on the interface's address); closes them when it stops accepting. Reports the
        bound port through ``task_status``."""
        if sockets is None:
            sockets = open_interface_sockets(self.settings)
        port = sockets[0].getsockname()[1]
        try:
            async with trio.open_nursery() as service:
                await service.start(self.timers.run)
                async with trio.open_nursery() as sessions:
                    self._sessions_nursery = sessions
                    with self._accepting:  # cancelled by stop()
                        async with trio.open_nursery() as accepting:
                            for sock in sockets:
                                accepting.start_soon(accept_loop, sock, self._handle, sessions)
                            task_status.started(port)
                    # No longer accepting; sessions end by themselves (see stop()).
                    _close_sockets(sockets)
                service.cancel_scope.cancel()  # the timer wheel
        finally:
            _close_sockets(sockets)

    async def stop(self, grace: float) -> None:
        """Stop accepting; idle sessions get 421 at once, a session receiving a message
        finishes it first; after ``grace`` seconds the rest are cut off."""
        self._closing = True
        self._accepting.cancel()
        for session in list(self._live):
            session.interrupt_idle()
        if self._sessions_nursery is not None:
            self._sessions_nursery.cancel_scope.deadline = trio.current_time() + grace

    async def _handle(self, stream: trio.abc.Stream, peer: str | None = None) -> None:
        settings = self.settings
        address = peer = _peer(stream) if peer is None else peer
        counted = False
        try:
            if settings.proxy_protocol:
                if not in_networks(peer, settings.proxy_networks):
                    log.warning("%s: %s is not a listed proxy: closed", settings.name, peer)
                    return
                try:
                    with trio.fail_after(settings.handshake_timeout):
                        stream, address = await read_proxy_header(stream, peer)
                except (ProxyProtocolError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                    log.info("%s: bad PROXY header from %s: %s", settings.name, peer, exc)
                    return
            refusal = await self.admission.admit(address)
            if refusal is not None:
                await self._refuse(stream, refusal)
                return
            counted = True
            await self._serve(stream, address)
        finally:
            if counted:
                self.admission.leave(address)
            await close_stream(stream)

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
                    stream, settings.tls_context, within=settings.handshake_timeout
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
            if session.stream is not stream:  # TLS over it
                await close_stream(session.stream)


def open_interface_sockets(settings: InterfaceSettings) -> list[socket.socket]:
    """Bind and listen on the interface's address (port 0: any free port; every address
    the host name has gets the same port)."""
    (sockets,) = _open_sockets(settings, 1, reuse_port=False)
    return sockets


def open_reuseport_sockets(settings: InterfaceSettings, count: int) -> list[list[socket.socket]]:
    """``count`` sets of listening sockets on the interface's address, all on one port with
    ``SO_REUSEPORT``: each intake process gets a set of its own, and the kernel spreads new
    connections over the sets (no process is woken for a connection another one takes).
    Port 0 binds a free port for the first socket and that same port for the others."""
    return _open_sockets(settings, count, reuse_port=True)


def _open_sockets(
    settings: InterfaceSettings, count: int, *, reuse_port: bool
) -> list[list[socket.socket]]:
    infos = socket.getaddrinfo(
        settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    port = settings.port
    sets: list[list[socket.socket]] = [[] for _ in range(count)]
    try:
        for family, kind, proto, _name, address in infos:
            for group in sets:
                sock = socket.socket(family, kind, proto)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                port = sock.getsockname()[1]
                sock.listen(LISTEN_BACKLOG)
    except OSError:
        for group in sets:
            for sock in group:
                sock.close()
        raise
    log.info("SMTP interface %s listening on %s:%s", settings.name, settings.host, port)
    return sets


def _close_sockets(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()


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
