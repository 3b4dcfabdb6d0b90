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
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
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


class TestMx:
    """``rcpt_reply(address)`` may return a reply line (e.g. ``"451 4.3.0 later"``) to refuse
    a recipient; None accepts it."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        rcpt_reply: Callable[[str], str | None] | None = None,
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.rcpt_reply = rcpt_reply
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        # While set, DATA is held open and then refused: deliveries stay in flight.
        self.stall_data = threading.Event()
        self.stalled = 0
        self._controller = Controller(
            _Handler(self), hostname=host, port=self.port, data_size_limit=None, ready_timeout=10
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
