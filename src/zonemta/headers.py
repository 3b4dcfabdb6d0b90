"""The header block as stored: reading and removing fields, and the hygiene applied at
intake. Shared by the intake, routing, DKIM signing and the bounce notices.

A header block is bytes of ``Name: value`` lines (continuation lines start with a space or
tab), every line ending in CRLF, without the empty line that ends it. Field names are
compared case-insensitively.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses

import attrs

from zonemta.conf.dkim import HeadersConfig
from zonemta.transport.smtp.reply import Reply

__all__ = [
    "HeaderPolicy",
    "HopLimitExceeded",
    "count_fields",
    "field_names",
    "fields",
    "first_value",
    "from_domain",
    "remove_fields",
    "unfolded_fields",
]

_FIELD_START = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)
# A whole field: its name, its value and continuation lines, and the final CRLF.
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r\n[ \t].*)*)\r\n", re.MULTILINE)
_FOLD = re.compile(rb"\r\n(?=[ \t])")


def fields(headers: bytes) -> Iterator[tuple[str, bytes]]:
    """``(lower-case name, raw value)`` for every field in order; the value keeps its folding
    (continuation lines) and its final CRLF stripped."""
    starts = list(_FIELD_START.finditer(headers))
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(headers)
        value = headers[match.end() : end]
        if value.endswith(b"\r\n"):
            value = value[:-2]
        yield match.group(1).decode("ascii").lower(), value


def unfolded_fields(headers: bytes) -> list[tuple[str, str]]:
    """``(lower-case name, unfolded stripped value)`` of every field, in order (values as
    UTF-8, undecodable bytes kept as surrogates)."""
    return [
        (
            match.group(1).decode("ascii").lower(),
            _FOLD.sub(b"", match.group(2)).strip().decode("utf-8", "surrogateescape"),
        )
        for match in _FIELD.finditer(headers)
    ]


def remove_fields(headers: bytes, names: frozenset[str]) -> bytes:
    """The header block without the fields called ``names`` (lower-case; continuation lines
    go with their field); anything that is not a well-formed field is kept."""
    kept: list[bytes] = []
    position = 0
    for match in _FIELD.finditer(headers):
        if match.start() > position:
            kept.append(headers[position : match.start()])
        if match.group(1).decode("ascii").lower() not in names:
            kept.append(match.group(0))
        position = match.end()
    kept.append(headers[position:])
    return b"".join(kept)


def field_names(headers: bytes) -> set[str]:
    """The lower-case names of the fields present."""
    return {match.group(1).decode("ascii").lower() for match in _FIELD_START.finditer(headers)}


def first_value(headers: bytes, name: str) -> str | None:
    """The unfolded, stripped value of the first field called ``name`` (UTF-8, undecodable
    bytes kept as surrogates), or None."""
    wanted = name.lower()
    for found, value in fields(headers):
        if found == wanted:
            text = re.sub(rb"\r\n(?=[ \t])", b"", value).strip()
            return text.decode("utf-8", "surrogateescape")
    return None


def count_fields(headers: bytes, name: str) -> int:
    """How many fields called ``name`` the block has (one regex pass over the block)."""
    pattern = re.compile(rb"^" + re.escape(name.encode("ascii")) + rb"[ \t]*:", re.M | re.I)
    return len(pattern.findall(headers))


def from_domain(headers: bytes) -> str | None:
    """The lower-case domain of the first address in the From field, or None."""
    value = first_value(headers, "from")
    if value is None:
        return None
    for _name, address in getaddresses([value]):
        _, at, domain = address.rpartition("@")
        if at and domain:
            return domain.strip().strip(".").lower() or None
    return None


class HopLimitExceeded(Exception):
    """The message has passed through too many hosts (a mail loop); ``reply`` refuses it."""

    def __init__(self, hops: int, limit: int) -> None:
        self.reply = Reply(
            554,
            (f"Too many Received headers ({hops} > {limit}): mail loop detected",),
            "5.4.6",
        )
        super().__init__(str(self.reply))


@attrs.frozen
class HeaderPolicy:
    """Header hygiene at intake: refuse loops, add ``Message-ID`` and ``Date`` when missing
    (appended to the end of the block, as Postfix's cleanup does)."""

    hostname: str
    max_hops: int = 35
    add_message_id: bool = True
    add_date: bool = True

    @classmethod
    def from_config(cls, config: HeadersConfig, hostname: str) -> HeaderPolicy:
        return cls(hostname, config.max_hops, config.add_message_id, config.add_date)

    def apply(self, headers: bytes, *, mail_from: str, now: float) -> bytes:
        """The header block to store. Raises :class:`HopLimitExceeded`."""
        lowered = headers.lower()
        if lowered.count(b"received") > self.max_hops:  # cheap pre-check, then exact count
            hops = count_fields(headers, "received")
            if hops > self.max_hops:
                raise HopLimitExceeded(hops, self.max_hops)
        added: list[bytes] = []
        if self.add_message_id and not _has_field(lowered, b"message-id"):
            domain = mail_from.rpartition("@")[2] or self.hostname
            added.append(f"Message-ID: <{uuid.uuid4()}@{domain}>\r\n".encode())
        if self.add_date and not _has_field(lowered, b"date"):
            when = format_datetime(datetime.fromtimestamp(now, UTC))
            added.append(f"Date: {when}\r\n".encode())
        if not added:
            return headers
        return headers + b"".join(added)


_COLON_AFTER_NAME = re.compile(rb"[ \t]*:")


def _has_field(lowered: bytes, name: bytes) -> bool:
    if lowered.startswith(name) and _COLON_AFTER_NAME.match(lowered, len(name)):
        return True
    return _field_after_line_break(name).search(lowered) is not None


@functools.cache
def _field_after_line_break(name: bytes) -> re.Pattern[bytes]:
    """The pattern of field ``name`` starting a line after the first (compiled once per
    name: the intake asks about the same two names for every message)."""
    return re.compile(rb"\r\n" + re.escape(name) + rb"[ \t]*:")
