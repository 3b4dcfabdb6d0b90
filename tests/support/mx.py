"""A test MX: aiosmtpd (an independent SMTP server implementation) in its own thread,
recording every message it accepts and answering RCPT/DATA as the test scripts it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


@attrs.frozen
class Received:
    mail_from: str
    recipients: tuple[str, ...]
    content: bytes
    peer: str
    time: float


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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


class _Controller(Controller):
    def __init__(self, mx: TestMx, *args: Any, **kwargs: Any) -> None:
        self._mx = mx
        super().__init__(*args, **kwargs)

    def factory(self) -> SMTP:
        return _CountingSMTP(self._mx, self.handler, **self.SMTP_kwargs)


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
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.rcpt_reply = rcpt_reply
        self.rcpt_reply_from = rcpt_reply_from  # (recipient, client address) -> reply or None
        self.data_delay = data_delay  # first recipient -> seconds to hold DATA
        self.rcpt_peers: list[tuple[str, str]] = []  # every RCPT seen, with the client address
        self.active = 0
        self.max_active = 0
        self.connections = 0
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        # While set, DATA is held open and then refused: deliveries stay in flight.
        self.stall_data = threading.Event()
        self.stalled = 0
        self._controller = _Controller(
            self,
            _Handler(self),
            hostname=host,
            port=self.port,
            data_size_limit=None,
            ready_timeout=10,
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
