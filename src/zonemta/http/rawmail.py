"""``POST /send-raw`` helpers: line endings made CRLF chunk by chunk, the header block
read once (bounded), the envelope taken from From/Sender/To/Cc/Bcc and Bcc removed."""

from __future__ import annotations

import email.parser
import email.policy
from email.utils import getaddresses

import attrs


class RawMessageError(ValueError):
    """The raw message cannot be sent as it is; ``str()`` says why."""


class LineEndings:
    """Turns LF, CR and CRLF line endings into CRLF, chunk by chunk. Only a CR at the end
    of a chunk is carried over (it may be the first half of a CRLF)."""

    __slots__ = ("_carry", "ends_with_crlf")

    def __init__(self) -> None:
        self._carry = False
        self.ends_with_crlf = True  # nothing emitted yet counts as a line start

    def feed(self, chunk: bytes) -> bytes:
        if self._carry:
            chunk = b"\r" + chunk
            self._carry = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._carry = True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out = chunk.replace(b"\n", b"\r\n")
        if out:
            self.ends_with_crlf = out.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        """What completes the content: the carried CR as CRLF, or a final CRLF."""
        if self._carry:
            self._carry = False
            self.ends_with_crlf = True
            return b"\r\n"
        return b"" if self.ends_with_crlf else b"\r\n"


@attrs.frozen
class RawHead:
    """The parsed header block of a raw message and its envelope."""

    headers: bytes  # without Bcc fields; each line ends in CRLF; no empty line after it
    mail_from: str
    recipients: tuple[str, ...]


def _unfolded_fields(headers: bytes) -> list[list[bytes]]:
    fields: list[list[bytes]] = []
    for line in headers.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def parse_head(headers: bytes) -> RawHead:
    """Envelope from the header block (CRLF lines). The sender is the Sender address if
    there is one, else the first From address; the recipients are To, Cc and Bcc. Raises
    :class:`RawMessageError` when either is missing."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        headers + b"\r\n"
    )

    def addresses(*names: str) -> list[str]:
        values = [str(v) for name in names for v in parsed.get_all(name, [])]
        return [a.strip() for _, a in getaddresses(values) if "@" in a]

    senders = addresses("sender") or addresses("from")
    if not senders:
        raise RawMessageError("the message has no From address")
    recipients = tuple(dict.fromkeys(addresses("to", "cc", "bcc")))
    if not recipients:
        raise RawMessageError("the message has no To, Cc or Bcc address")
    kept = [
        b"\r\n".join(field)
        for field in _unfolded_fields(headers)
        if field[0].split(b":", 1)[0].strip().lower() != b"bcc"
    ]
    return RawHead(b"".join(line + b"\r\n" for line in kept), senders[0], recipients)
