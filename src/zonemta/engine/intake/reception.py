"""Intake: a message being received becomes a stored message with one delivery per recipient.

The body streams through: the header block (bounded) is kept to be stored beside the
message, the body goes to the store in chunks. The submitter's positive reply is sent only
after :meth:`Reception.commit` returned, i.e. after everything is durably committed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import attrs

from zonemta.dkim.bodyhash import RelaxedBodyHasher
from zonemta.engine.bus import Event, EventBus
from zonemta.engine.hooks import (
    HeaderBlock,
    HookDrop,
    HookFailed,
    Hooks,
    MessageHeaders,
    QueueingMessage,
    RouteDecision,
    run_checks,
)
from zonemta.engine.ids import QueueIdGenerator
from zonemta.engine.intake.routing import Route, Router, strip_routing_fields
from zonemta.headers import HeaderPolicy, HopLimitExceeded
from zonemta.store import (
    BodyWriter,
    FixedRoute,
    MessageMeta,
    MessageRecord,
    NewDelivery,
    StoreError,
)
from zonemta.transport.smtp.reply import Reply

log = logging.getLogger(__name__)

_HEADER_END = b"\r\n\r\n"
# Bodies up to this size are kept in memory after commit until delivered (MessageCache).
SMALL_BODY = 64 * 1024
_FIRST_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
# A line (after the first) that is neither a field nor a continuation line.
_LINE_NOT_IN_HEADER = re.compile(rb"\r\n(?![!-9;-~]+[ \t]*:|[ \t])")


class IntakeRejected(Exception):
    """The message is refused; ``reply`` says why (sent to the submitter as it is)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@attrs.frozen
class Envelope:
    """Who sent what to whom, and how it arrived."""

    mail_from: str
    recipients: tuple[str, ...]
    interface: str
    client_address: str = ""
    helo: str = ""
    transtype: str = "ESMTP"
    body_8bit: bool = False
    smtputf8: bool = False
    user: str | None = None
    zone: str | None = None  # internal submissions (DSNs) name their sending zone


def split_header_block(content: bytes) -> tuple[bytes, bytes] | None:
    """``(headers, rest)`` if ``content`` holds the end of the header block, else None.
    ``headers`` ends with CRLF and excludes the empty line; ``rest`` starts the body."""
    if content.startswith(b"\r\n"):
        return b"", content[2:]
    end = content.find(_HEADER_END)
    if end < 0:
        return None
    return content[: end + 2], content[end + 4 :]


def is_header_block(headers: bytes) -> bool:
    """True when every line looks like a header field or a continuation line (the first
    one a field). Two regex passes over the block, not one match per line."""
    block = headers[:-2] if headers.endswith(b"\r\n") else headers
    return _FIRST_FIELD.match(block) is not None and _LINE_NOT_IN_HEADER.search(block) is None


class Reception:
    """One message on its way in. Feed content chunks (dot-unstuffed, CRLF line endings),
    then :meth:`commit` or :meth:`abort` exactly once."""

    def __init__(self, intake: Intake, envelope: Envelope, message_id: str, max_header: int):
        self._intake = intake
        self.envelope = envelope
        self.id = message_id
        self._max_header = max_header
        self._head = bytearray()
        self._headers: bytes | None = None
        self._body: BodyWriter = intake.store.new_body(message_id)
        self._body_8bit = envelope.body_8bit
        self._failed: StoreError | None = None
        self._done = False
        # The body kept in memory while small, for the delivery engine (only when this
        # intake announces its messages itself).
        self._small: list[bytes] | None = [] if intake.announces else None
        self._small_size = 0
        # DKIM bh=, computed as the body streams in (only when a key may sign it)
        self._bodyhash = RelaxedBodyHasher() if intake.body_hash else None
        self._hook_reply: Reply | None = None  # a body hook failed

    @property
    def failed(self) -> bool:
        return self._failed is not None

    async def _write_body(self, data: bytes) -> None:
        """Every body byte goes through here: to the store, and into the in-memory copy
        kept for small messages (so their delivery needs no store read)."""
        if self._small is not None:
            self._small_size += len(data)
            if self._small_size <= SMALL_BODY:
                self._small.append(data)
            else:
                self._small = None
        if self._bodyhash is not None:
            self._bodyhash.update(data)
        if self._intake.hooks.body and self._hook_reply is None:
            await self._run_body_hooks(data)
        await self._body.write(data)

    async def _run_body_hooks(self, data: bytes) -> None:
        """Body hooks see each chunk read-only; a failure is answered at :meth:`commit`."""
        view = memoryview(data).toreadonly()
        for hook in self._intake.hooks.body:
            try:
                await hook(self.id, view)
            except Exception:
                log.exception("body hook %r failed on %s", hook, self.id)
                self._hook_reply = HookFailed("body", Exception()).reply
                return

    async def feed(self, chunk: bytes) -> None:
        """Take the next content chunk. Store errors are remembered, not raised: the caller
        keeps reading the submitter's data and :meth:`commit` then raises."""
        if self._failed is not None or not chunk:
            return
        if not self._body_8bit and not chunk.isascii():
            self._body_8bit = True
        try:
            if self._headers is None:
                head = self._head
                if head:
                    head += chunk
                    content = bytes(head)
                else:  # the usual first chunk: looked at as it is, not copied twice
                    content = chunk
                split = split_header_block(content)
                if split is None:
                    if len(content) > self._max_header:
                        # No header block end within the limit: it is all body.
                        self._headers = b""
                        await self._write_body(content)
                        head.clear()
                    elif not head:
                        head += chunk
                    return
                headers, rest = split
                head.clear()
                if is_header_block(headers):
                    self._headers = headers
                    if rest:
                        await self._write_body(rest)
                else:
                    self._headers = b""
                    await self._write_body(headers + b"\r\n" + rest)
            else:
                await self._write_body(chunk)
        except StoreError as exc:
            self._failed = exc
            log.warning("storing body of %s failed: %s", self.id, exc)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        await self._body.abort()

    async def commit(self) -> str:
        """Store the message and its deliveries durably; returns the queue id.
        Raises :class:`IntakeRejected` (nothing stored) or :class:`StoreError` (nothing
        stored, answer with a temporary failure)."""
        if self._done:
            raise RuntimeError("reception already finished")
        if self._failed is not None:
            await self.abort()
            raise self._failed
        headers = self._headers
        if headers is None:
            # Everything was header block without an empty line after it.
            head = bytes(self._head)
            if head and not head.endswith(b"\r\n"):
                head += b"\r\n"
            headers = head if is_header_block(head) else b""
            if not headers and head:
                try:
                    await self._write_body(head)
                except StoreError:
                    await self.abort()
                    raise
        policy = self._intake.headers
        if policy is not None:
            try:
                headers = policy.apply(
                    headers, mail_from=self.envelope.mail_from, now=self._intake.clock()
                )
            except HopLimitExceeded as exc:
                await self.abort()
                raise IntakeRejected(exc.reply) from exc
        hooks = self._intake.hooks
        if hooks.headers or hooks.queue or self._hook_reply is not None:
            try:
                headers = await self._plugin_checks(headers)
            except HookDrop as exc:
                await self.abort()
                self._intake.publish_dropped(self, exc.reason)
                return self.id
        self._done = True
        body_hash = self._bodyhash.b64digest() if self._bodyhash is not None else ""
        try:
            return await self._intake._commit(self, headers, self._body, self._body_8bit, body_hash)
        except BaseException:
            await self._body.abort()
            raise

    async def _plugin_checks(self, headers: bytes) -> bytes:
        """The ``headers`` then ``queue`` hooks; returns the (maybe edited) header block.
        Raises IntakeRejected (after aborting) for a rejection or a failed hook, and
        HookDrop for a message to discard."""
        hooks = self._intake.hooks
        try:
            reply = self._hook_reply
            if reply is None and hooks.headers:
                edit = MessageHeaders(self.id, self.envelope, HeaderBlock(headers))
                reply = await run_checks("headers", hooks.headers, edit)
                self.envelope = edit.envelope
                if edit.headers.changed:
                    headers = edit.headers.to_bytes()
            if reply is None and hooks.queue:
                queued = QueueingMessage(self.id, self.envelope, headers, self._body.size)
                reply = await run_checks("queue", hooks.queue, queued, allow_drop=True)
        except HookFailed as exc:
            reply = exc.reply
        except HookDrop:
            raise
        if reply is not None:
            await self.abort()
            raise IntakeRejected(reply)
        return headers


class IntakeStore(Protocol):
    """What the intake needs of a store: the relay's :class:`Store`, or in an intake
    process the link that stores through the relay."""

    def new_body(self, message_id: str) -> BodyWriter: ...

    async def commit_message(
        self, message: MessageRecord, body: BodyWriter, deliveries: Sequence[NewDelivery]
    ) -> None: ...


class Intake:
    """Turns receptions into stored messages and tells the schedulers about new work."""

    def __init__(
        self,
        store: IntakeStore,
        router: Router,
        bus: EventBus,
        *,
        ids: QueueIdGenerator,
        clock: Callable[[], float],
        on_queued: Callable[[Iterable[str]], None] = lambda _zones: None,
        on_stored: Callable[[MessageRecord, bytes | None, int], None] = lambda *_: None,
        headers: HeaderPolicy | None = None,
        hooks: Hooks | None = None,
        announces: bool = True,
        body_hash: bool = True,
    ) -> None:
        self.store = store
        self.router = router
        self.bus = bus
        self.ids = ids
        self.clock = clock
        self.on_queued = on_queued
        self.on_stored = on_stored
        self.headers = headers  # Message-ID/Date when missing, hop limit
        self.hooks = hooks if hooks is not None else Hooks()  # plugins (engine/hooks.py)
        # False in an intake process: the relay announces what it commits for it (with the
        # body it received), so this intake neither announces nor keeps small bodies.
        self.announces = announces
        # Whether to compute the DKIM body hash (``dkim_bh``) of what it receives: only the
        # signer reads it, and a message stored without one is sent unsigned. False only
        # where no key can sign (``[dkim]`` off or without keys).
        self.body_hash = body_hash

    def publish_dropped(self, reception: Reception, reason: str) -> None:
        """A hook dropped the message: accepted, nothing stored."""
        details = {"interface": reception.envelope.interface, "reason": reason}
        self.bus.publish(Event("message.dropped", reception.id, self.clock(), details=details))

    def report(self, kind: str, message_id: str, *, interface: str, reason: str) -> None:
        """Publish ``message.rejected`` or ``message.dropped`` for a reception that did not
        become a stored message (logs and metrics read it)."""
        details = {"interface": interface, "reason": reason}
        self.bus.publish(Event(kind, message_id, self.clock(), details=details))

    def begin(self, envelope: Envelope, *, max_header: int = 1024 * 1024) -> Reception:
        if not envelope.recipients:
            raise IntakeRejected(Reply(554, ("no valid recipients",), "5.5.1"))
        return Reception(self, envelope, self.ids.next_id(), max_header)

    async def _route_hooks(
        self, envelope: Envelope, routes: list[Route], fixed: dict[int, FixedRoute]
    ) -> list[Route]:
        """Run the ``route`` hooks per recipient; fills ``fixed`` (seq → mx / http).
        Raises IntakeRejected for a failed hook or an unknown or disabled zone."""
        changed: list[Route] = []
        for seq, route in enumerate(routes, start=1):
            decision = RouteDecision(route.recipient, route.domain, route.zone)
            for hook in self.hooks.route:
                try:
                    await hook(envelope, decision)
                except Exception as exc:
                    log.exception("route hook %r failed", hook)
                    raise IntakeRejected(HookFailed("route", exc).reply) from exc
            if decision.zone not in self.router.zones:
                log.error("a route hook chose the unknown or disabled zone %r", decision.zone)
                raise IntakeRejected(HookFailed("route", ValueError(decision.zone)).reply)
            if decision.mx or decision.http_url:
                fixed[seq] = FixedRoute(mx=decision.mx or None, http_url=decision.http_url or None)
            changed.append(attrs.evolve(route, zone=decision.zone))
        return changed

    async def _commit(
        self,
        reception: Reception,
        headers: bytes,
        body: BodyWriter,
        body_8bit: bool,
        body_hash: str = "",
    ) -> str:
        envelope = reception.envelope
        now = self.clock()
        routes = self.router.route(
            envelope.recipients,
            zone=envelope.zone,
            interface=envelope.interface,
            mail_from=envelope.mail_from,
            headers=headers,
        )
        headers = strip_routing_fields(headers)
        plugin_routes: dict[int, FixedRoute] = {}
        if self.hooks.route:
            routes = await self._route_hooks(envelope, routes, plugin_routes)
        deliveries = [
            NewDelivery(
                seq=n, recipient=r.recipient, domain=r.domain, zone=r.zone, next_attempt=now
            )
            for n, r in enumerate(routes, start=1)
        ]
        meta = MessageMeta(
            interface=envelope.interface,
            client_address=envelope.client_address,
            helo=envelope.helo,
            transtype=envelope.transtype,
            body_8bit=body_8bit,
            smtputf8=envelope.smtputf8,
            user=envelope.user,
            dkim_bh=body_hash,
            routes=plugin_routes,  # fixed MX / HTTP target per seq (route hooks)
        )
        record = MessageRecord(
            id=reception.id,
            mail_from=envelope.mail_from,
            headers=headers,
            body_size=body.size,
            received_at=now,
            meta=meta,
        )
        await self.store.commit_message(record, body, deliveries)
        if self.announces:
            small = reception._small
            self.announce(
                record,
                b"".join(small) if small is not None else None,
                [r.zone for r in routes],
            )
        return reception.id

    def announce(self, record: MessageRecord, small_body: bytes | None, zones: list[str]) -> None:
        """A committed message (one delivery per entry of ``zones``): hand it to the
        delivery engine (with its body when small), publish ``message.queued`` and wake the
        zones' schedulers. Intake processes' messages are announced here by the relay."""
        self.on_stored(record, small_body, len(zones))
        self.bus.publish(
            Event(
                "message.queued",
                record.id,
                record.received_at,
                details={
                    "from": record.mail_from,
                    "recipients": len(zones),
                    "size": len(record.headers) + 2 + record.body_size,
                    "interface": record.meta.interface,
                },
            )
        )
        self.on_queued(set(zones))
