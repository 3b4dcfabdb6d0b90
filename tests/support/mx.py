"""A test MX: aiosmtpd (an independent SMTP server implementation) in its own thread,
recording every message it accepts and answering RCPT/DATA as the test scripts it.

Given ``tls`` (a server context, e.g. from :func:`tls_context`), it offers STARTTLS and
records for each message whether it came over TLS; without it (the default) it offers none.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

if TYPE_CHECKING:
    import trustme


@attrs.frozen
class Received:
    mail_from: str
    recipients: tuple[str, ...]
    content: bytes
    peer: str
    time: float
    tls: bool = False  # came over STARTTLS


def tls_context(
    certificate: trustme.LeafCert, *, with_chain_root: trustme.CA | None = None
) -> ssl.SSLContext:
    """A server context presenting ``certificate`` (and, with ``with_chain_root``, that CA's
    own certificate at the end of the chain, as DANE-TA servers must)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if with_chain_root is None:
        certificate.configure_cert(context)
        return context
    with tempfile.TemporaryDirectory() as folder:
        chain, key = Path(folder, "chain.pem"), Path(folder, "key.pem")
        pems = [blob.bytes() for blob in certificate.cert_chain_pems]
        chain.write_bytes(b"".join([*pems, with_chain_root.cert_pem.bytes()]))
        key.write_bytes(certificate.private_key_pem.bytes())
        context.load_cert_chain(chain, key)
    return context


def broken_tls_context(certificate: trustme.LeafCert) -> ssl.SSLContext:
    """A server context no client can agree with (TLS 1.2 only, with PSK ciphers and no
    PSK): STARTTLS is offered but every handshake fails."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("PSK")
    return context


class _Handler:
    def __init__(self, mx: TestMx) -> None:
        self.mx = mx

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.mx.rcpt_reply(address) if self.mx.rcpt_reply else None
        if reply is None and self.mx.rcpt_reply_from is not None:
            reply = self.mx.rcpt_reply_from(address, session.peer[0])
        with self.mx.lock:
            self.mx.rcpt_peers.append((address, session.peer[0]))
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.mx.data_delay:
            await asyncio.sleep(self.mx.data_delay(envelope.rcpt_tos[0]))
        if self.mx.stall_data.is_set():
            with self.mx.lock:
                self.mx.stalled += 1
            while self.mx.stall_data.is_set():  # noqa: ASYNC110 - set from the test's thread
                await asyncio.sleep(0.05)
            return "451 4.3.0 stalled transaction dropped"
        message = Received(
            mail_from=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            content=bytes(envelope.original_content or envelope.content),
            peer=session.peer[0],
            time=time.time(),
            tls=session.ssl is not None,
        )
        with self.mx.lock:
            self.mx.messages.append(message)
        return "250 2.0.0 OK stored"


class _CountingSMTP(SMTP):
    """aiosmtpd's server, counting the connections open at once."""

    def __init__(self, mx: TestMx, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mx = mx

    def connection_made(self, transport: Any) -> None:
        with self._mx.lock:
            self._mx.active += 1
            self._mx.max_active = max(self._mx.max_active, self._mx.active)
            self._mx.connections += 1
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        with self._mx.lock:
            self._mx.active -= 1
        super().connection_lost(exc)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._mx.starttls_reply:  # offered, then refused
            await self.push(self._mx.starttls_reply)
            return
        await super().smtp_STARTTLS(arg)


class MxController(Controller):
    def __init__(self, mx: TestMx, *args: Any, **kwargs: Any) -> None:
        self._mx = mx
        super().__init__(*args, **kwargs)

    def factory(self) -> SMTP:
        return _CountingSMTP(self._mx, self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        """Bind port 0 (the system picks a free port) the first time, that same port when
        started again; the MX learns its port from the bound socket, never by probing."""

        async def bind() -> asyncio.AbstractServer:
            server = await self.loop.create_server(
                self._factory_invoker, host=self.hostname, port=self.port, ssl=self.ssl_context
            )
            self.port = self._mx.port = server.sockets[0].getsockname()[1]
            return server

        return bind()


class TestMx:
    """``rcpt_reply(address)`` (or ``rcpt_reply_from(address, client_address)``) may return a
    reply line (e.g. ``"451 4.3.0 later"``) to refuse a recipient; None accepts it.
    ``max_active`` is the most connections that were open at once."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        rcpt_reply: Callable[[str], str | None] | None = None,
        rcpt_reply_from: Callable[[str, str], str | None] | None = None,
        data_delay: Callable[[str], float] | None = None,
        tls: ssl.SSLContext | None = None,
        starttls_reply: str = "",
    ) -> None:
        self.host = host
        self.port = 0  # known once started (bound by the controller)
        self.rcpt_reply = rcpt_reply
        self.rcpt_reply_from = rcpt_reply_from  # (recipient, client address) -> reply or None
        self.data_delay = data_delay  # first recipient -> seconds to hold DATA
        self.starttls_reply = starttls_reply  # with ``tls``: refuse STARTTLS with this reply
        self.rcpt_peers: list[tuple[str, str]] = []  # every RCPT seen, with the client address
        self.active = 0
        self.max_active = 0
        self.connections = 0
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        # While set, DATA is held open and then refused: deliveries stay in flight.
        self.stall_data = threading.Event()
        self.stalled = 0
        self._controller = MxController(
            self,
            _Handler(self),
            hostname=host,
            port=self.port,
            data_size_limit=None,
            ready_timeout=10,
            tls_context=tls,
        )

    def start(self) -> TestMx:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> TestMx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def for_recipient(self, address: str) -> list[Received]:
        return [m for m in self.received() if address in m.recipients]
