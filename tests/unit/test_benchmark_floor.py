"""The floor responder of benchmarks/floor.py: its replies, and one session over loopback."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level package beside src/
    sys.path.insert(0, str(ROOT))

from benchmarks.floor import QUEUED, REPLIES, UNKNOWN, answer, serve  # noqa: E402


def test_answer_replies_per_command_and_waits_for_the_end_of_data() -> None:
    buffer = bytearray(
        b"HELO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: x\r\n\r\nbo"
    )
    replies, in_data, quit_ = answer(buffer, False)
    assert replies == REPLIES[b"HELO"] + REPLIES[b"MAIL"] + REPLIES[b"RCPT"] + REPLIES[b"DATA"]
    assert in_data and not quit_
    buffer += b"dy\r\n.\r"  # the terminator split across reads
    assert answer(buffer, True) == (b"", True, False)
    buffer += b"\nQUIT\r\n"
    assert answer(buffer, True) == (QUEUED + REPLIES[b"QUIT"], False, True)


def test_answer_ends_an_empty_body_and_refuses_unknown_verbs() -> None:
    buffer = bytearray(b"DATA\r\n.\r\nXYZW\r\nNOO")
    assert answer(buffer, False) == (REPLIES[b"DATA"] + QUEUED + UNKNOWN, False, False)
    assert buffer == bytearray(b"NOO")


async def test_a_session_over_loopback() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, listener)
        client = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
        received = b""
        await client.send_all(b"EHLO me\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
        await client.send_all(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        while chunk := await client.receive_some(4096):
            received += chunk
        assert received.startswith(b"220 ")
        assert received.endswith(QUEUED + REPLIES[b"QUIT"])
        await client.aclose()
        nursery.cancel_scope.cancel()
    listener.close()
