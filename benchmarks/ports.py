"""Loopback ports: pick a free one, wait for an SMTP server on one to greet."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close)."""
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
