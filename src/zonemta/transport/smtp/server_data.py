"""The DATA decoder: raw SMTP content bytes in, unstuffed CRLF-normalised content out.

Rules (RFC 5321 4.5.2, and what the 2023 SMTP smuggling reports taught):

- End of data is only ever CRLF "." CRLF on the raw stream. The CRLF ending the DATA command
  line counts as the first CRLF, so an empty message is ``DATA\\r\\n.\\r\\n``. ``\\n.\\n``,
  ``\\n.\\r\\n``, ``\\r.\\n`` and ``\\r\\n.\\n`` do not end the data.
- Line endings are normalised: CRLF stays, a bare LF and a bare CR each become CRLF.
- A line begins after any line ending (CRLF, bare LF or bare CR); a dot at the start of a line
  is a stuffing dot and is removed. So a smuggling vector such as ``\\r\\n.\\n`` becomes an
  empty line in the content, never an end of data.
- The final CRLF before the terminating dot is part of the content.

The decoder works on whole chunks with ``bytes.find``/``count``/``replace`` and holds back at
most two raw bytes between chunks (a CR that may start a CRLF, or a line-start ``.``/``.\\r``
that may start the terminator).
"""

from __future__ import annotations

import enum

import attrs

from zonemta.transport.smtp import server_replies as replies
from zonemta.transport.smtp.reply import Reply

_TERMINATOR = b"\r\n.\r\n"
_BLANK_LINE = b"\r\n\r\n"


class _Ctx(enum.Enum):
    """What precedes the next raw byte."""

    MID_LINE = 0
    LINE_START = 1  # after a bare LF or bare CR
    AFTER_CRLF = 2  # after a raw CRLF (or at the start of data after DATA\r\n)


@attrs.frozen
class DecodeResult:
    """What one ``feed()`` produced.

    ``content``: decoded content (empty while draining or when only boundary bytes arrived).
    ``finished``: the terminator was seen. ``rest``: raw bytes after the terminator (the next
    commands). ``abort``: set on the one feed where a limit was first exceeded.
    """

    content: bytes
    finished: bool
    rest: bytes
    abort: Reply | None


def normalise_and_unstuff(segment: bytes) -> bytes:
    """CRLF-normalise ``segment`` and remove the dot at the start of every line inside it.

    The first byte of ``segment`` must not be a line-start dot (the caller handles it) and the
    segment must not end inside a CRLF.
    """
    crlf = segment.count(b"\r\n")
    if segment.count(b"\n") != crlf or segment.count(b"\r") != crlf:
        segment = segment.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    # replace() hands back the same object when there is nothing to replace: no copy then.
    return segment.replace(b"\r\n.", b"\r\n")


class DataDecoder:
    """Decodes one message's content; owns the boundary bytes and the size accounting.

    ``max_size`` bounds the content (after unstuffing), ``max_header_size`` the header block
    (content up to the first empty line); 0 disables either. ``after_crlf`` tells whether the
    DATA command line ended in CRLF (then ``.CRLF`` at once is an empty message).
    """

    def __init__(self, max_size: int, max_header_size: int, *, after_crlf: bool = True) -> None:
        self._max_size = max_size
        self._max_header_size = max_header_size
        self._ctx = _Ctx.AFTER_CRLF if after_crlf else _Ctx.LINE_START
        self._tail = b""
        self._size = 0
        self._in_headers = max_header_size > 0
        # The virtual line ending before the content, so a first empty line is found too.
        self._header_tail = b"\r\n"
        self.abort_reply: Reply | None = None
        self.finished = False

    @property
    def size(self) -> int:
        """Content bytes decoded so far (stops counting once aborted)."""
        return self._size

    def feed(self, data: bytes) -> DecodeResult:
        """Decode the next raw bytes (non-empty). Raises nothing for any input."""
        if self.finished:
            return DecodeResult(b"", True, data, None)
        draining = self.abort_reply is not None
        content, finished, rest = self._scan(data, decode=not draining)
        self.finished = finished
        if draining or not content:
            return DecodeResult(b"", finished, rest, None)
        abort = self._check_limits(content)
        if abort is not None:
            self.abort_reply = abort
            return DecodeResult(b"", finished, rest, abort)
        return DecodeResult(content, finished, rest, None)

    def _scan(self, data: bytes, *, decode: bool) -> tuple[bytes, bool, bytes]:
        buf = self._tail + data if self._tail else data
        self._tail = b""
        size = len(buf)
        pos = 0
        ctx = self._ctx
        if ctx is not _Ctx.MID_LINE and buf.startswith(b"."):
            if ctx is _Ctx.AFTER_CRLF:
                if buf.startswith(b".\r\n"):
                    return b"", True, buf[3:]
                if buf in (b".", b".\r"):
                    self._tail = buf
                    return b"", False, b""
            pos = 1  # a stuffing dot
            ctx = _Ctx.MID_LINE
        end = buf.find(_TERMINATOR, pos)
        if end >= 0:
            segment = buf[pos : end + 2]
            return (normalise_and_unstuff(segment) if decode else b""), True, buf[end + 5 :]
        cut = size
        if buf.endswith(b"\r"):
            cut = size - 2 if buf.endswith(b"\r\n.\r") and size - 4 >= pos else size - 1
        elif buf.endswith(b"\r\n.") and size - 3 >= pos:
            cut = size - 1
        if cut > pos:
            if buf[cut - 1] == 0x0A:
                crlf = cut >= 2 and buf[cut - 2] == 0x0D
                ctx = _Ctx.AFTER_CRLF if crlf else _Ctx.LINE_START
            else:
                ctx = _Ctx.MID_LINE
        self._ctx = ctx
        self._tail = buf[cut:]
        if not decode or cut <= pos:
            return b"", False, b""
        return normalise_and_unstuff(buf[pos:cut]), False, b""

    def _check_limits(self, content: bytes) -> Reply | None:
        if self._in_headers:
            window = self._header_tail + content
            blank = window.find(_BLANK_LINE)
            if blank >= 0:
                self._in_headers = False
                header_size = self._size - len(self._header_tail) + blank + 2
                if header_size > self._max_header_size:
                    return replies.HEADER_TOO_LARGE
            elif self._size + len(content) > self._max_header_size:
                return replies.HEADER_TOO_LARGE
            else:
                self._header_tail = window[-3:]
        self._size += len(content)
        if self._max_size and self._size > self._max_size:
            return replies.SIZE_EXCEEDED
        return None
