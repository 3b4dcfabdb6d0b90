"""A small SMTP server on loopback that records what it accepts, or misbehaves on purpose.

``FaultyMx(fault)`` serves from threads (so it works beside an in-process trio relay and
beside a relay subprocess alike) on a port the kernel picked when it bound: it never closes
a probe socket and hopes the port stays free. Faults:

* ``Fault.NONE``: a plain sink; every accepted message is kept in ``messages``.
* ``Fault.DROP_MID_DATA``: reads part of the message after ``354``, then closes.
* ``Fault.NO_GREETING``: accepts the connection and never says anything.
* ``Fault.TRICKLE``: sends its replies one byte at a time, ``trickle_delay`` apart
  (``trickled`` counts those bytes).
* ``Fault.GARBAGE``: answers the connection with bytes that are not an SMTP reply.
* ``Fault.LONG_LINE``: a greeting line far longer than any reply line may be, no CRLF.
* ``Fault.REFUSE_GREETING``: ``421`` at connect (a busy server), then closes.

``fault_at`` (a command verb such as ``"MAIL"`` or ``"RCPT"``) moves ``GARBAGE`` and
``LONG_LINE`` from the greeting into the session: the server greets and answers normally
until that command, then answers it with the garbage or the long line.

``hold`` (a threading.Event): while it is *clear* the server waits before its greeting, so
deliveries stay in flight or queued until the test sets it. Set by default.
"""

from __future__ import annotations

import enum
import socketserver
import threading

import attrs

__all__ = ["Fault", "FaultyMx", "Sunk", "bind_same_port"]

# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets; this is far beyond it.
LONG_LINE_BYTES = 1_000_000
WAIT_STEP = 0.05  # how often a held connection checks whether the test has stopped the server


class Fault(enum.Enum):
    NONE = "none"
    DROP_MID_DATA = "drop_mid_data"
    NO_GREETING = "no_greeting"
    TRICKLE = "trickle"
    GARBAGE = "garbage"
    LONG_LINE = "long_line"
    REFUSE_GREETING = "refuse_greeting"


#: The faults that ``fault_at`` can move from the greeting to a command's reply.
MID_SESSION = frozenset({Fault.GARBAGE, Fault.LONG_LINE})


@attrs.frozen
class Sunk:
    """One message the sink accepted."""

    mail_from: str
    recipients: tuple[str, ...]
    content: bytes
    peer: str


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        mx = self.server.mx
        with mx.lock:
            mx.connections += 1
        while not mx.hold.wait(WAIT_STEP):
            if mx.stopping.is_set():
                return
        fault = mx.fault
        if mx.fault_at is not None and fault in MID_SESSION:
            self._session(mx)
            return
        if fault is Fault.NO_GREETING:
            mx.stopping.wait()
            return
        if fault is Fault.GARBAGE:
            self._garbage()
            return
        if fault is Fault.LONG_LINE:
            self._long_line(b"220-")
            return
        if fault is Fault.REFUSE_GREETING:
            self.wfile.write(b"421 4.3.2 too busy, come back later\r\n")
            return
        self._session(mx)

    def _garbage(self) -> None:
        """Bytes that are not an SMTP reply; then wait for the client's next line (or EOF)."""
        self.wfile.write(b"\x00\xff garbage \x16\x03\x01 not smtp\r\n")
        self.rfile.readline(4096)

    def _long_line(self, start: bytes) -> None:
        """A reply line far too long, never ended; held until the server stops."""
        self.wfile.write(start + b"x" * LONG_LINE_BYTES)
        self.server.mx.stopping.wait()

    def _reply(self, line: bytes) -> None:
        mx = self.server.mx
        if mx.fault is Fault.TRICKLE:
            for index in range(len(line)):
                if mx.stopping.wait(mx.trickle_delay):
                    raise ConnectionAbortedError("server stopping")
                self.wfile.write(line[index : index + 1])
                self.wfile.flush()
                with mx.lock:
                    mx.trickled += 1
        else:
            self.wfile.write(line)

    def _session(self, mx: FaultyMx) -> None:
        self._reply(b"220 sink.test ESMTP\r\n")
        mail_from = ""
        recipients: list[str] = []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            verb = line[:4].upper()
            fault = mx.fault
            if mx.fault_at is not None and verb == mx.fault_at and fault in MID_SESSION:
                with mx.lock:
                    mx.faulted += 1
                if fault is Fault.GARBAGE:
                    self._garbage()
                else:
                    self._long_line(b"250-")
                return
            if verb in (b"EHLO", b"HELO"):
                self._reply(b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
            elif verb == b"MAIL":
                mail_from = _address(line)
                recipients = []
                self._reply(b"250 2.1.0 OK\r\n")
            elif verb == b"RCPT":
                recipients.append(_address(line))
                self._reply(b"250 2.1.5 OK\r\n")
            elif verb == b"DATA":
                self._reply(b"354 go ahead\r\n")
                if mx.fault is Fault.DROP_MID_DATA:
                    self.rfile.readline(4096)  # the first line of the message, then gone
                    with mx.lock:
                        mx.dropped += 1
                    return
                content = self._read_data()
                if content is None:
                    return
                with mx.lock:
                    mx.messages.append(
                        Sunk(mail_from, tuple(recipients), content, self.client_address[0])
                    )
                self._reply(b"250 2.0.0 OK stored\r\n")
            elif verb in (b"RSET", b"NOOP"):
                self._reply(b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                self._reply(b"221 2.0.0 bye\r\n")
                return
            else:
                self._reply(b"502 5.5.2 not implemented\r\n")

    def _read_data(self) -> bytes | None:
        lines: list[bytes] = []
        while True:
            line = self.rfile.readline()
            if not line:
                return None
            if line == b".\r\n":
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)


def _address(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    start, end = text.find("<"), text.find(">")
    return text[start + 1 : end] if 0 <= start < end else ""


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, mx: FaultyMx, address: tuple[str, int]) -> None:
        self.mx = mx
        super().__init__(address, _Handler)


class FaultyMx:
    """``with FaultyMx(Fault.X) as mx:`` serves on ``mx.host``:``mx.port`` until the block ends.
    ``port`` may be given to serve on the same port as another server on another address."""

    __test__ = False

    def __init__(
        self,
        fault: Fault = Fault.NONE,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        trickle_delay: float = 0.1,
        fault_at: str | None = None,
    ) -> None:
        self.fault = fault
        self.fault_at = fault_at.upper().encode() if fault_at is not None else None
        if self.fault_at is not None and fault not in MID_SESSION:
            raise ValueError(f"{fault} cannot be moved to {fault_at}")
        self.faulted = 0  # commands answered with the fault (``fault_at``)
        self.trickled = 0  # reply bytes sent one at a time (``Fault.TRICKLE``)
        self.trickle_delay = trickle_delay
        self.lock = threading.Lock()
        self.messages: list[Sunk] = []
        self.connections = 0
        self.dropped = 0
        self.hold = threading.Event()
        self.hold.set()
        self.stopping = threading.Event()
        self._server = _Server(self, (host, port))
        self.host: str = self._server.server_address[0]
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyMx:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def received(self) -> list[Sunk]:
        with self.lock:
            return list(self.messages)


def bind_same_port(hosts: tuple[str, ...], faults: tuple[Fault, ...]) -> list[FaultyMx]:
    """One server per host, all on one port (MX hosts share the zone's port): the first binds
    a port the kernel picks, the others bind the same number on their address."""
    for _attempt in range(20):
        first = FaultyMx(faults[0], host=hosts[0])
        servers = [first]
        try:
            for host, fault in zip(hosts[1:], faults[1:], strict=True):
                servers.append(FaultyMx(fault, host=host, port=first.port))
        except OSError:
            for server in servers:
                server._server.server_close()
            continue
        return servers
    raise OSError(f"no port free on all of {hosts}")
