"""Events the sans-IO SMTP server hands to its driver (h11 style).

Two kinds:

- **informational** events (``Helo``, ``DataStart``, ``DataChunk``, ``DataAbort``, ``Rset``,
  ``Noop``, ``Quit``, ``StartTLS``, ``ConnectionClosed``): the server object has already queued
  whatever reply belongs to them; the driver only acts on them (stores chunks, starts TLS ...).
- **policy** events (``MailFrom``, ``RcptTo``, ``DataEnd``, ``Auth``): the driver decides and
  answers with ``SMTPServerConnection.respond(reply)`` before asking for the next event.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import attrs

from zonemta.transport.smtp.reply import Reply


class NEED_DATA:
    """Sentinel returned by ``next_event()``: feed more bytes with ``receive_data()``.

    Compare with ``is``; it is a class and is never instantiated.
    """

    def __init__(self) -> None:
        raise TypeError("NEED_DATA is a sentinel; compare with `is NEED_DATA`")


class Event:
    """Base of everything ``next_event()`` returns (besides ``NEED_DATA``)."""

    __slots__ = ()


def _frozen_params(value: Mapping[str, str | None]) -> Mapping[str, str | None]:
    return types.MappingProxyType(dict(value))


def _nonempty(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


@attrs.frozen
class Helo(Event):
    """HELO (``extended=False``) or EHLO: the 250 reply is already queued."""

    name: str = attrs.field(validator=_nonempty)
    extended: bool


@attrs.frozen
class MailFrom(Event):
    """POLICY. ``address`` is "" for the null reverse-path ``<>``; parameter names upper-case."""

    address: str
    params: Mapping[str, str | None] = attrs.field(factory=dict, converter=_frozen_params)


@attrs.frozen
class RcptTo(Event):
    """POLICY. A syntactically valid forward-path (source route stripped)."""

    address: str = attrs.field(validator=_nonempty)
    params: Mapping[str, str | None] = attrs.field(factory=dict, converter=_frozen_params)


@attrs.frozen
class DataStart(Event):
    """DATA accepted (at least one recipient): the 354 reply is already queued."""


def _nonempty_bytes(_instance: object, _attribute: object, value: bytes) -> None:
    if not value:
        raise ValueError("a DataChunk carries at least one byte")


@attrs.frozen
class DataChunk(Event):
    """Message content: dot-unstuffed, every line ending CRLF, without the final ``.``."""

    data: bytes = attrs.field(validator=_nonempty_bytes)


@attrs.frozen
class DataAbort(Event):
    """The content broke a limit: discard what was received.

    The server drains the rest of the content silently, queues ``reply`` once the terminator
    arrives and returns to the state where MAIL may start a new transaction. No ``DataEnd``
    follows.
    """

    reply: Reply


@attrs.frozen
class DataEnd(Event):
    """POLICY. The terminator CRLF.CRLF was seen: store the message, then respond()."""


# The events without fields are all equal: the server hands out one of each that comes
# with every message instead of a new one.
DATA_START = DataStart()
DATA_END = DataEnd()


@attrs.frozen
class Rset(Event):
    """RSET: transaction cleared, 250 queued."""


@attrs.frozen
class Noop(Event):
    """NOOP: 250 queued."""


@attrs.frozen
class Quit(Event):
    """QUIT: 221 queued and the connection is closed; send the bytes, then close."""


@attrs.frozen
class StartTLS(Event):
    """STARTTLS: 220 queued. Send it, do the TLS handshake, then call ``tls_started()``."""


@attrs.frozen
class Auth(Event):
    """POLICY. AUTH decoded to credentials: check them, then respond() 235 (success), 535
    (invalid credentials) or 454 (temporary failure). The password is kept out of ``repr``."""

    mechanism: str = attrs.field(validator=_nonempty)
    username: str = attrs.field(validator=_nonempty)
    password: str = attrs.field(repr=False)


@attrs.frozen
class ConnectionClosed(Event):
    """The session is over (EOF, QUIT, ``close_with`` or a fatal error).

    After ``DataStart`` without a ``DataEnd`` or ``DataAbort`` this means the peer went away in
    the middle of the content: the driver discards the partial body.
    """
