"""A socket stream that calls the kernel first and waits only when it would block.

trio's ``SocketStream`` yields to the scheduler on every send and every receive, also when
the kernel completes the call at once: each call is a full checkpoint. SMTP is request and
reply, so every receive after a send waits anyway, and the extra yields only cost time
(measured: about 24 µs per command round trip on loopback, a fifth of the intake's CPU for a
one-message session). :class:`DirectSocketStream` does the non-blocking call first and
parks the task (``wait_readable`` / ``wait_writable``) only when the kernel says it would
block.

It is still a well-behaved trio stream:

* every call raises ``Cancelled`` first when its scope is cancelled, so a cancelled task
  stops even when none of its calls has to wait;
* after :data:`FAIR_RUN` calls in a row that did not wait, a call yields once anyway, so a
  peer that keeps the socket full cannot hold the event loop;
* OS errors become ``BrokenResourceError`` (``ClosedResourceError`` for a closed socket),
  a second concurrent ``send_all`` raises ``BusyResourceError``.

:func:`accept_loop` accepts from a listening socket the same way, taking every waiting
connection per wake-up. :func:`close_stream` closes a stream without the cancelled
checkpoint of ``trio.aclose_forcefully`` when it is a direct one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

__all__ = ["FAIR_RUN", "DirectSocketStream", "accept_loop", "close_stream"]

# Calls in a row that completed without waiting before one yields to the scheduler.
FAIR_RUN = 16
DEFAULT_RECEIVE_SIZE = 64 * 1024
# accept() errors that mean "this one connection failed": try the next.
_IGNORED_ACCEPT_ERRORS = frozenset(
    getattr(errno, name)
    for name in ("ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN")
    if hasattr(errno, name)
)
# accept() errors that mean "out of descriptors or memory": wait a little, then go on.
_RESOURCE_ACCEPT_ERRORS = frozenset(
    getattr(errno, name)
    for name in ("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS")
    if hasattr(errno, name)
)
ACCEPT_BACKOFF = 0.1  # seconds to wait after running out of descriptors


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket error: {exc}")


class DirectSocketStream(trio.abc.HalfCloseableStream):
    """A connected stdlib socket (made non-blocking) as a trio stream; see the module."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock
        self._run = 0  # calls in a row that completed without waiting
        self._sending = False
        self._shut_wr = False
        self._closed = False

    def _run_is_long(self, waited: bool) -> bool:
        """Count a finished call in ``_run`` (0 after one that waited, else one more): True
        when FAIR_RUN calls in a row did not wait, and the caller should yield once."""
        if waited:
            self._run = 0
            return False
        self._run += 1
        return self._run >= FAIR_RUN

    async def _yield_after_run(self) -> None:
        """FAIR_RUN calls in a row did not wait: yield once."""
        self._run = 0
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        sock = self.socket
        waited = False
        while True:
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            break
        if self._run_is_long(waited):
            await self._yield_after_run()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._shut_wr:
            raise trio.ClosedResourceError("cannot send after sending EOF")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed")
            # Usually the kernel takes it all at once: no memoryview, no _send coroutine.
            sent = 0
            if data:
                try:
                    sent = self.socket.send(data)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise _stream_error(exc) from exc
            waited = sent < len(data) and await self._send(data, sent)
        finally:
            self._sending = False
        if self._run_is_long(waited):
            await self._yield_after_run()

    async def _send(self, data: bytes | bytearray | memoryview, sent: int = 0) -> bool:
        """Send every byte from offset ``sent`` on; True when it had to wait."""
        sock = self.socket
        waited = False
        with memoryview(data) as view:
            total = len(view)
            while sent < total:
                try:
                    sent += sock.send(view[sent:] if sent else view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                    waited = True
                except OSError as exc:
                    raise _stream_error(exc) from exc
        return waited

    def send_nowait(self, data: bytes) -> int:
        """Send what the kernel takes now, without waiting: returns how many bytes of
        ``data`` went (0 when the call would block). Raises like :meth:`send_all`."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._shut_wr or self._closed:
            raise trio.ClosedResourceError("the stream is closed for sending")
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        self._sending = True
        try:
            await trio.lowlevel.wait_writable(self.socket)
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self._shut_wr:
            return
        self._shut_wr = True
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _stream_error(exc) from exc

    def close(self) -> None:
        """Close now (tasks waiting on the socket get ClosedResourceError)."""
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self.socket)
        self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


async def close_stream(stream: trio.abc.AsyncResource) -> None:
    """Close ``stream`` at once: synchronously for a direct stream, else with
    ``trio.aclose_forcefully`` (a TLS stream sends no close_notify then)."""
    if isinstance(stream, DirectSocketStream):
        stream.close()
    else:
        await trio.aclose_forcefully(stream)


async def accept_loop(
    listening: socket.socket,
    handler: Callable[[DirectSocketStream, str], Awaitable[object]],
    nursery: trio.Nursery,
) -> None:
    """Accept connections on ``listening`` (a stdlib listening socket) for ever, starting
    ``handler(stream, client_address)`` in ``nursery`` for each. Takes every connection
    that is waiting before it parks again (yielding every FAIR_RUN). Cancel to stop; the
    caller closes the socket."""
    listening.setblocking(False)
    run = 0
    while True:
        try:
            conn, address = listening.accept()
        except BlockingIOError:
            run = 0
            await trio.lowlevel.wait_readable(listening)
            continue
        except OSError as exc:
            if exc.errno in _IGNORED_ACCEPT_ERRORS:
                continue
            if exc.errno in _RESOURCE_ACCEPT_ERRORS:
                log.error("accept() on %s failed: %s", listening.getsockname(), exc)
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            raise
        client = str(address[0]) if isinstance(address, tuple) else str(address)
        nursery.start_soon(handler, DirectSocketStream(conn), client)
        run += 1
        if run >= FAIR_RUN:
            run = 0
            await trio.lowlevel.checkpoint()
