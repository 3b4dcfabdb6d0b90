"""Plugin hooks: the typed hook points of intake and delivery, and their registry.

:class:`Hooks` holds one list of async callables per hook point. The core checks a list
before it builds any argument (``if hooks.rcpt_to: ...``), so with no plugin loaded a hook
point costs one attribute check. Hooks of one point run in plugin ``order``; the first one
that rejects stops the chain.

A hook rejects by raising :class:`HookReject` or (where the table in ``docs/plugins.md``
says so) returning a :class:`~zonemta.transport.smtp.reply.Reply`; that reply reaches the
client unchanged. :class:`HookDrop` accepts a message and discards it. Any other exception
is a bug in the plugin: it is logged and becomes ``451 4.3.0`` at intake or a deferral at
delivery (see :func:`run_checks`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import attrs

from zonemta.engine.bus import Event
from zonemta.store import Delivery, MessageRecord
from zonemta.transport.smtp.reply import Reply

log = logging.getLogger(__name__)

#: What an unexpected exception in an intake hook becomes.
REPLY_HOOK_FAILED = Reply(451, ("temporary local problem, try again later",), "4.3.0")

_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r\n[ \t].*)*)\r\n", re.MULTILINE)


class HookReject(Exception):
    """Raised by a hook to refuse with ``reply`` (sent to the client as it is)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class HookDrop(Exception):
    """Raised by a ``queue`` hook: accept the message but store nothing (``reason`` is
    published as a ``message.dropped`` event)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HookFailed(Exception):
    """A hook raised something unexpected; ``reply`` is the 451 for the client."""

    def __init__(self, hook: str, cause: BaseException) -> None:
        super().__init__(f"hook {hook} failed: {cause!r}")
        self.hook = hook
        self.reply = REPLY_HOOK_FAILED


class HeaderBlock:
    """An editable header block (CRLF lines, no empty line at the end). Field names compare
    case-insensitively; values are given and returned unfolded, as text."""

    def __init__(self, raw: bytes) -> None:
        self._fields: list[tuple[str, bytes]] = [
            (m.group(1).decode("ascii").lower(), m.group(0)) for m in _FIELD.finditer(raw)
        ]
        self.changed = False

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, top to bottom."""
        key = name.lower()
        values = []
        for field_name, raw in self._fields:
            if field_name == key:
                value = raw.split(b":", 1)[1]
                value = re.sub(rb"\r\n(?=[ \t])", b"", value).strip()
                values.append(value.decode("utf-8", "surrogateescape"))
        return values

    def get(self, name: str) -> str | None:
        """The first value of ``name``, or None."""
        values = self.get_all(name)
        return values[0] if values else None

    def add(self, name: str, value: str, *, top: bool = False) -> None:
        """Add a field at the bottom (or the top)."""
        if not re.fullmatch(r"[!-9;-~]+", name) or "\r" in value or "\n" in value:
            raise ValueError(f"not a valid header field: {name!r}: {value!r}")
        raw = f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
        entry = (name.lower(), raw)
        self._fields.insert(0, entry) if top else self._fields.append(entry)
        self.changed = True

    def remove(self, name: str) -> int:
        """Remove every ``name`` field; returns how many were removed."""
        key = name.lower()
        before = len(self._fields)
        self._fields = [f for f in self._fields if f[0] != key]
        removed = before - len(self._fields)
        self.changed = self.changed or bool(removed)
        return removed

    def replace(self, name: str, value: str) -> None:
        """Replace every ``name`` field with one field (at the first one's place, or the
        bottom when there was none)."""
        key = name.lower()
        index = next((i for i, f in enumerate(self._fields) if f[0] == key), None)
        self.remove(name)
        self.add(name, value)
        if index is not None:
            self._fields.insert(index, self._fields.pop())

    def to_bytes(self) -> bytes:
        return b"".join(raw for _, raw in self._fields)


# ------------------------------------------------------------------ what hooks receive


@attrs.frozen
class SessionInfo:
    """An SMTP session as hooks see it."""

    interface: str
    client_address: str
    helo: str = ""
    user: str | None = None


@attrs.define
class MessageHeaders:
    """``headers`` hook: the parsed header block and the envelope; a hook may edit the block
    in place and replace ``envelope`` (an ``attrs.evolve`` of it)."""

    id: str
    envelope: Any  # zonemta.engine.intake.reception.Envelope (import cycle)
    headers: HeaderBlock


@attrs.frozen
class QueueingMessage:
    """``queue`` hook: the message about to be stored."""

    id: str
    envelope: Any  # zonemta.engine.intake.reception.Envelope
    headers: bytes
    body_size: int


@attrs.define
class RouteDecision:
    """``route`` hook, one per recipient: a hook may change ``zone`` (an enabled zone),
    set a fixed ``mx`` (``host`` or ``host:port``) or an ``http_url`` (HTTP delivery).
    ``mx`` and ``http_url`` are kept in the message meta under ``routes`` (by seq)."""

    recipient: str
    domain: str
    zone: str
    mx: str | None = None
    http_url: str | None = None


@attrs.define
class FetchedDelivery:
    """``fetch`` hook: a leased delivery about to be attempted. A hook may set
    ``suppress`` (finished without sending, no DSN), or ``divert`` (deliver through that
    callable instead of SMTP, e.g. the HTTP delivery plugin). ``http_url`` and ``mx`` come
    from the route hook."""

    row: Delivery
    message: MessageRecord
    http_url: str | None = None
    mx: str | None = None
    suppress: bool = False
    divert: Diverter | None = None


@attrs.frozen
class DivertResult:
    """What a diverted delivery came to: ``delivered``, ``bounced`` or ``deferred``."""

    status: str
    response: str

    def __attrs_post_init__(self) -> None:
        if self.status not in ("delivered", "bounced", "deferred"):
            raise ValueError(f"unknown divert status {self.status!r}")


#: Delivers one delivery some other way; the iterator streams the message (the header
#: block as stored, then the body).
Diverter = Callable[[FetchedDelivery, AsyncIterator[bytes]], Awaitable[DivertResult]]


@attrs.define
class ConnectTarget:
    """``connect`` hook: a hook may set ``mx`` (``host`` or ``host:port``, resolved as an
    A/AAAA name; None = the zone's smart host or the domain's MX) and ``local_address``
    (None = the pool's choice)."""

    row: Delivery
    message: MessageRecord
    mx: str | None
    local_address: str | None


@attrs.define
class OutgoingHeaders:
    """``send_headers`` hook: the last edit of the header block before DKIM signs it."""

    row: Delivery
    message: MessageRecord
    headers: HeaderBlock


@attrs.frozen
class DeliveryReport:
    """``delivered``, ``bounce``, ``delayed`` and ``response_error`` hooks."""

    row: Delivery
    message: MessageRecord | None
    response: str
    category: str | None = None
    mx: str | None = None


# --------------------------------------------------------------------------- hook types

CheckResult = Reply | None
ConnectHook = Callable[[SessionInfo], Awaitable[CheckResult]]
AuthHook = Callable[[SessionInfo, str, str], Awaitable[CheckResult]]
MailFromHook = Callable[[SessionInfo, str, Mapping[str, str | None]], Awaitable[CheckResult]]
RcptToHook = Callable[[SessionInfo, str], Awaitable[CheckResult]]
DataHook = Callable[[SessionInfo, Any], Awaitable[CheckResult]]
ApiHook = Callable[[Any], Awaitable[CheckResult]]
HeadersHook = Callable[[MessageHeaders], Awaitable[CheckResult]]
BodyHook = Callable[[str, memoryview], Awaitable[None]]
QueueHook = Callable[[QueueingMessage], Awaitable[CheckResult]]
RouteHook = Callable[[Any, RouteDecision], Awaitable[None]]
FetchHook = Callable[[FetchedDelivery], Awaitable[None]]
OutConnectHook = Callable[[ConnectTarget], Awaitable[None]]
SendHeadersHook = Callable[[OutgoingHeaders], Awaitable[None]]
ReportHook = Callable[[DeliveryReport], Awaitable[None]]
EventHook = Callable[[Event], Awaitable[None]]


@attrs.define
class Hooks:
    """One list per hook point (see ``docs/plugins.md``); empty lists cost nothing."""

    connect: list[ConnectHook] = attrs.field(factory=list)
    auth: list[AuthHook] = attrs.field(factory=list)
    mail_from: list[MailFromHook] = attrs.field(factory=list)
    rcpt_to: list[RcptToHook] = attrs.field(factory=list)
    data: list[DataHook] = attrs.field(factory=list)
    api: list[ApiHook] = attrs.field(factory=list)
    headers: list[HeadersHook] = attrs.field(factory=list)
    body: list[BodyHook] = attrs.field(factory=list)
    queue: list[QueueHook] = attrs.field(factory=list)
    route: list[RouteHook] = attrs.field(factory=list)
    fetch: list[FetchHook] = attrs.field(factory=list)
    before_connect: list[OutConnectHook] = attrs.field(factory=list)
    send_headers: list[SendHeadersHook] = attrs.field(factory=list)
    delivered: list[ReportHook] = attrs.field(factory=list)
    response_error: list[ReportHook] = attrs.field(factory=list)
    bounce: list[ReportHook] = attrs.field(factory=list)
    delayed: list[ReportHook] = attrs.field(factory=list)
    event: list[EventHook] = attrs.field(factory=list)


async def run_checks(
    name: str, hooks: list[Any], *args: Any, allow_drop: bool = False
) -> Reply | None:
    """Run an intake check hook list in order. Returns the first reply a hook returned or
    raised with :class:`HookReject` (None when all passed). Raises :class:`HookDrop` as it
    is when ``allow_drop`` (the ``queue`` hook), and :class:`HookFailed` (451) for any other
    exception, after logging it."""
    for hook in hooks:
        try:
            reply = await hook(*args)
        except HookReject as exc:
            return exc.reply
        except HookDrop:
            if allow_drop:
                raise
            log.error("%s hook %r raised HookDrop, allowed only in queue hooks", name, hook)
            raise HookFailed(name, RuntimeError("HookDrop outside a queue hook")) from None
        except Exception as exc:
            log.exception("%s hook %r failed", name, hook)
            raise HookFailed(name, exc) from exc
        if reply is not None:
            return reply  # type: ignore[no-any-return]
    return None


async def run_notices(name: str, hooks: list[Any], *args: Any) -> None:
    """Run notification hooks (delivered, bounce, delayed, response error, event): an
    exception is logged and the next hook still runs; nothing is returned."""
    for hook in hooks:
        try:
            await hook(*args)
        except Exception:
            log.exception("%s hook %r failed", name, hook)
