"""Loopback ports: start a server that must be told its port, wait for a 220.

Servers the harness starts that can bind port 0 and say which port they got never need a
port picked for them: zonemta (its ``zonemta ready`` log line), the harness's sink (it
reports the port it bound) and SecantusDB (its ``secantus listening on`` log line). Only a
tool that must be told its port before it binds (Postfix, whose ``master.cf`` names it;
Postfix's ``smtp-sink``, which takes it on its command line) gets one from
:func:`start_on_a_picked_port`, which tries again when another process took the port first.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

LOOPBACK = "127.0.0.1"
#: How many picked ports a server gets before :func:`start_on_a_picked_port` gives up.
PICK_ATTEMPTS = 5

T = TypeVar("T")


class PortInUse(Exception):
    """A server told its port up front could not bind it: another process has it."""


def start_on_a_picked_port(start: Callable[[int], T], *, attempts: int = PICK_ATTEMPTS) -> T:
    """``start(port)`` for a server that must be told its port before it binds, and its result.

    The port is one the kernel handed out a moment before (bound to port 0, read, closed):
    nothing holds it, so another process may bind it before the server does. ``start`` then
    raises :class:`PortInUse` (having cleaned up what it started) and this tries again with
    a newly picked port. Raises :class:`PortInUse` after ``attempts`` such failures; any
    other exception of ``start`` passes through at once.
    """
    failures: list[str] = []
    for _attempt in range(attempts):
        try:
            return start(_picked_port())
        except PortInUse as exc:
            failures.append(str(exc))
    raise PortInUse(f"no picked port could be bound in {attempts} tries: {failures}")


def _picked_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close): only for
    :func:`start_on_a_picked_port`, which copes with losing it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises ValueError when it is not that shape."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def wait_for_greeting(
    host: str, port: int, timeout: float, check: Callable[[], None] | None = None
) -> None:
    """Block until ``host:port`` accepts a connection and greets with 220.

    ``check`` is called between attempts and may raise to abort (e.g. the server process
    exited). Raises TimeoutError when no 220 came within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                greeting = sock.recv(512)
                if greeting.startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
                last = ConnectionError(f"greeting {greeting[:60]!r}")
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not greet with 220 within {timeout} s ({last})")
