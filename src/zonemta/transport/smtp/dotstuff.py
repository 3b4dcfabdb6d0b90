"""Encoding message content for the DATA phase: dot-stuffing and the end-of-data terminator.

RFC 5321 4.5.2: a line that begins with "." is sent with one more "." in front, and the data
ends with CRLF "." CRLF. The work is done on whole chunks with ``bytes`` methods; the only
state carried across chunks is where the last emitted byte left us (start of a line, after a
CR, or in the middle of a line).

The content must already use CRLF line endings. A bare CR or bare LF is refused with
``LocalProtocolError`` rather than passed on: a lenient receiver could take ``LF . CRLF`` for
the end of data, which is how SMTP smuggling (2023) works, so it must never reach the wire.
"""

from __future__ import annotations

import enum

from zonemta.transport.smtp.errors import LocalProtocolError

_CR = 0x0D
_LF = 0x0A
_DOT = 0x2E


class _Boundary(enum.Enum):
    """Where the bytes emitted so far left off."""

    LINE_START = enum.auto()  # nothing emitted yet, or the last two bytes were CRLF
    AFTER_CR = enum.auto()  # the last byte was a CR whose LF is still to come
    MID_LINE = enum.auto()  # anything else
    FINISHED = enum.auto()  # finish() was called


class DotStuffer:
    """Encodes message content for DATA, chunk by chunk.

    Owns only the boundary state between chunks. ``feed`` returns the stuffed bytes of one
    chunk; ``finish`` returns what completes the data: a CRLF when the content did not end with
    one, then the terminator ``.\\r\\n``. Empty content encodes as just ``.\\r\\n`` (the CRLF of
    the DATA command line precedes it on the wire). One instance encodes one message.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = _Boundary.LINE_START

    def feed(self, chunk: bytes) -> bytes:
        """Dot-stuff one chunk of CRLF content and return the bytes to send.

        Raises ``LocalProtocolError`` for a bare CR or LF in the content (also across chunk
        boundaries) and when called after ``finish``.
        """
        state = self._state
        if state is _Boundary.FINISHED:
            raise LocalProtocolError("DotStuffer.feed() called after finish()")
        if not chunk:
            return b""
        first = chunk[0]
        if state is _Boundary.AFTER_CR and first != _LF:
            raise LocalProtocolError("bare CR in message content")
        pairs = chunk.count(b"\r\n")
        joined_lf = 1 if state is _Boundary.AFTER_CR else 0
        trailing_cr = 1 if chunk[-1] == _CR else 0
        if chunk.count(b"\n") != pairs + joined_lf:
            raise LocalProtocolError("bare LF in message content")
        if chunk.count(b"\r") != pairs + trailing_cr:
            raise LocalProtocolError("bare CR in message content")

        out = chunk.replace(b"\r\n.", b"\r\n..")
        if state is _Boundary.LINE_START:
            if first == _DOT:
                out = b"." + out
        elif state is _Boundary.AFTER_CR and chunk[1:2] == b".":
            # The chunk starts with the LF that ends the previous line; a dot follows it.
            out = b"\n." + out[1:]

        last = chunk[-1]
        if last == _LF:  # validated above: always the LF of a CRLF pair
            self._state = _Boundary.LINE_START
        elif last == _CR:
            self._state = _Boundary.AFTER_CR
        else:
            self._state = _Boundary.MID_LINE
        return out

    def finish(self) -> bytes:
        """Return the end of the data: CRLF if the content lacked a final one, then ``.\\r\\n``.

        Raises ``LocalProtocolError`` when the content ended in a bare CR or when called twice.
        """
        state = self._state
        if state is _Boundary.FINISHED:
            raise LocalProtocolError("DotStuffer.finish() called twice")
        if state is _Boundary.AFTER_CR:
            raise LocalProtocolError("bare CR at the end of message content")
        self._state = _Boundary.FINISHED
        if state is _Boundary.MID_LINE:
            return b"\r\n.\r\n"
        return b".\r\n"
