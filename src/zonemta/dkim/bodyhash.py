"""The DKIM body hash (``bh=``, relaxed canonicalisation, sha256) computed while the body
streams in, chunk by chunk, without holding the body.

It mirrors ``dkim.canonicalization.Relaxed.canonicalize_body`` of dkimpy (the verifier the
tests use) byte for byte, including its edge cases: a body that does not end in CRLF gets
one, trailing empty lines are dropped, an empty body (or one of only empty lines)
canonicalises to nothing.

Only boundary state is carried between chunks: the unfinished end of the last line (at most
the run of spaces, tabs and CRs that may still be followed by CRLF) and a count of empty
lines that may turn out to be trailing. Per chunk the work is a few ``bytes`` searches and at
most two C-level regex substitutions over the chunk.
"""

from __future__ import annotations

import base64
import hashlib
import re

__all__ = ["RelaxedBodyHasher", "relaxed_body_hash"]

_CRLF = b"\r\n"
# dkimpy's relaxed body rules: whitespace before a line end goes, then runs collapse.
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP_RUN = re.compile(rb"[\t ]+")
# What must stay unprocessed at the end of an unfinished line: it may still become part of
# trailing whitespace (stripped) or of a CRLF.
_UNSETTLED = b"\t \r"


def _relax_lines(data: bytes) -> bytes:
    """Relaxed canonicalisation of whole lines (``data`` ends with CRLF)."""
    if b" " not in data and b"\t" not in data:
        # No blanks at all (base64 parts, for one): nothing to relax. Two one-byte scans
        # (memchr) instead of the three multi-byte searches below, several times slower.
        return data
    if b" \r\n" in data or b"\t\r\n" in data:
        data = _TRAILING_WSP.sub(_CRLF, data)
    if b"  " in data or b"\t" in data:
        data = _WSP_RUN.sub(b" ", data)
    return data


def _relax_partial(data: bytes) -> bytes:
    """Relaxed canonicalisation of part of a line (no CRLF in it)."""
    if b"  " in data or b"\t" in data:
        data = _WSP_RUN.sub(b" ", data)
    return data


def _split_trailing_crlfs(data: bytes) -> tuple[bytes, int]:
    """``(head, n)`` with ``data == head + CRLF * n`` and ``head`` not ending in CRLF."""
    stripped = data.rstrip(b"\r\n")
    run = len(data) - len(stripped)
    if run % 2 == 0 and data.endswith(_CRLF * (run // 2)):
        return stripped, run // 2
    count = 0  # a bare CR or LF inside the run: count CRLF pairs one by one
    end = len(data)
    while data.endswith(_CRLF, 0, end):
        end -= 2
        count += 1
    return data[:end], count


class RelaxedBodyHasher:
    """Feed body chunks with :meth:`update`, then read :meth:`digest` (raw sha256) or
    :meth:`b64digest` (the ``bh=`` value) once. The body is the message body as sent:
    dot-unstuffed, lines ending in CRLF."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._tail = b""  # unprocessed end of the current (unfinished) line
        self._blank = 0  # CRLFs held back: they are dropped if nothing but CRLFs follows
        self._size = 0
        self._emitted = False  # whether anything but held-back CRLFs was hashed
        self._final: bytes | None = None

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def _emit(self, data: bytes) -> None:
        """Hash ``data`` (canonical, non-empty, not ending in CRLF) after the held CRLFs."""
        if self._blank:
            self._hash.update(_CRLF * self._blank)
            self._blank = 0
        self._hash.update(data)
        self._emitted = True

    def update(self, chunk: bytes) -> None:
        """Take the next piece of the body. Raises RuntimeError after :meth:`digest`."""
        if self._final is not None:
            raise RuntimeError("body hash already finished")
        if not chunk:
            return
        self._size += len(chunk)
        data = self._tail + chunk if self._tail else chunk
        cut = data.rfind(_CRLF)
        if cut >= 0:
            cut += 2
            head, crlfs = _split_trailing_crlfs(_relax_lines(data[:cut]))
            if head:
                self._emit(head)
            self._blank += crlfs
            data = data[cut:]
        # Settle the unfinished line up to its trailing spaces, tabs and CRs.
        keep = len(data.rstrip(_UNSETTLED))
        if keep:
            self._emit(_relax_partial(data[:keep]))
            data = data[keep:]
        # Collapsing whitespace runs early changes nothing (they end up as one space or are
        # stripped before CRLF either way) and keeps a long run of blanks from growing.
        self._tail = _relax_partial(data)

    def digest(self) -> bytes:
        """The sha256 of the canonical body. Idempotent."""
        if self._final is None:
            tail = _relax_partial(self._tail)
            if tail:
                self._emit(tail)
                self._hash.update(_CRLF)
            elif self._emitted:
                self._hash.update(_CRLF)
            self._final = self._hash.digest()
        return self._final

    def b64digest(self) -> str:
        """The ``bh=`` value: base64 of :meth:`digest`."""
        return base64.b64encode(self.digest()).decode("ascii")


def relaxed_body_hash(body: bytes) -> str:
    """The ``bh=`` value of a whole body (for tests and small internal messages)."""
    hasher = RelaxedBodyHasher()
    hasher.update(body)
    return hasher.b64digest()
