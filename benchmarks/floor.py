"""The floor: the least CPU a trio process spends per SMTP session on this machine.

``python -m benchmarks.floor`` runs a responder that answers every command with a canned
reply and throws each message away (no parsing beyond lines, no store, no delivery), on the
project's own :class:`~zonemta.transport.direct_stream.DirectSocketStream`, and drives it
with Postfix's ``smtp-source`` in the load shape of issue 13 (a new session per message, 20
at a time, 4 KB). It reports sessions per second and CPU milliseconds per session of the
responder and of smtp-source.

What that says: the responder's CPU is what the sockets, the kernel and trio's scheduler
cost for one session; everything zonemta's intake spends above it is its own Python code.
Run it beside ``python -m benchmarks.relay --injector smtp-source --per-connection 1``.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import trio

from benchmarks.smtp_source import SourceRun, command, find_smtp_source
from zonemta.transport.direct_stream import DirectSocketStream, accept_loop

BANNER = b"220 floor.test ESMTP\r\n"
REPLIES: dict[bytes, bytes] = {
    b"EHLO": b"250-floor.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
    b"HELO": b"250 floor.test\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
}
UNKNOWN = b"502 5.5.2 Error: command not recognized\r\n"
QUEUED = b"250 2.0.0 Ok: queued\r\n"
END_OF_DATA = b"\r\n.\r\n"


def answer(buffer: bytearray, in_data: bool) -> tuple[bytes, bool, bool]:
    """Consume what ``buffer`` holds: the replies due, whether DATA is still open, and whether
    the client said QUIT. What is left in ``buffer`` is an incomplete line or body."""
    out: list[bytes] = []
    while True:
        if in_data:
            end = buffer.find(END_OF_DATA)
            if end < 0:
                # keep the tail that might start the terminator
                del buffer[: max(0, len(buffer) - len(END_OF_DATA) + 1)]
                return b"".join(out), True, False
            del buffer[: end + len(END_OF_DATA)]
            out.append(QUEUED)
            in_data = False
            continue
        end = buffer.find(b"\r\n")
        if end < 0:
            return b"".join(out), False, False
        verb = bytes(buffer[:4]).upper()
        del buffer[: end + 2]
        out.append(REPLIES.get(verb, UNKNOWN))
        if verb == b"QUIT":
            return b"".join(out), False, True
        if verb == b"DATA":
            buffer[:0] = b"\r\n"  # an empty body ends at once: "\r\n.\r\n"
            in_data = True


async def serve_session(stream: DirectSocketStream, _client: str = "") -> None:
    """One session: banner, canned replies, close after QUIT or EOF."""
    buffer = bytearray()
    in_data = False
    try:
        await stream.send_all(BANNER)
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
            replies, in_data, quit_ = answer(buffer, in_data)
            if replies:
                await stream.send_all(replies)
            if quit_:
                return
    except trio.BrokenResourceError:
        return
    finally:
        stream.close()


async def serve(listener: socket.socket) -> None:
    """Accept on ``listener`` as zonemta's listener does (:func:`accept_loop`), for ever."""
    async with trio.open_nursery() as nursery:
        await accept_loop(listener, serve_session, nursery)


def _child(listener: socket.socket, report: int) -> None:
    def stop(_signum: int, _frame: object) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        os.write(report, f"{usage.ru_utime + usage.ru_stime}\n".encode())
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    trio.run(serve, listener)


def measure(processes: int, messages: int, sessions: int, size: int) -> dict[str, float]:
    """Run the responder in ``processes`` forked processes sharing one listening socket,
    load it with smtp-source and return the figures."""
    executable = find_smtp_source()
    if executable is None:
        raise SystemExit("smtp-source is missing: run benchmarks/install-postfix.sh")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    read_end, write_end = os.pipe()
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            os.close(read_end)
            _child(listener, write_end)
        children.append(pid)
    os.close(write_end)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        # the harness's smtp-source command line for a new session per message
        run = SourceRun(sessions, messages, keep_open=False, recipient="user@sink.test")
        argv = command(executable, "127.0.0.1", port, run, size=size, sender="bench@sender.test")
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        for pid in children:
            os.waitpid(pid, 0)
    with os.fdopen(read_end) as reports:
        responder_cpu = sum(float(line) for line in reports.read().split())
    source_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "processes": processes,
        "messages": messages,
        "sessions_per_s": messages / elapsed,
        "responder_cpu_ms_per_session": 1000 * responder_cpu / messages,
        "smtp_source_cpu_ms_per_session": 1000 * source_cpu / messages,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions (20)")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    for processes in args.processes:
        figures = measure(processes, args.messages, args.sessions, args.size)
        print(
            f"responder processes={processes}: {figures['sessions_per_s']:.0f} sessions/s, "
            f"responder {figures['responder_cpu_ms_per_session']:.3f} ms CPU/session, "
            f"smtp-source {figures['smtp_source_cpu_ms_per_session']:.3f} ms CPU/session"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
