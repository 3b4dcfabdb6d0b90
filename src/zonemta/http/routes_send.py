"""Message intake over HTTP: ``POST /send`` (Nodemailer JSON) and ``POST /send-raw``
(an RFC 5322 message, streamed into the store)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import request
from werkzeug.exceptions import BadRequest

from zonemta.engine.hooks import HookFailed, run_checks
from zonemta.engine.intake.reception import (
    Envelope,
    IntakeRejected,
    Reception,
    is_header_block,
    split_header_block,
)
from zonemta.http.compose import ComposeError, compose
from zonemta.http.context import ApiContext
from zonemta.http.errors import ApiError
from zonemta.http.rawmail import LineEndings, RawMessageError, parse_head
from zonemta.store import StoreError

log = logging.getLogger(__name__)

INTERFACE = "api"
TRANSTYPE = "HTTP"
#: Largest header block of a /send-raw message (as the SMTP listener's default).
MAX_HEADER = 1024 * 1024
#: Bytes handed to the intake at a time when the whole message is in memory (/send).
FEED_CHUNK = 64 * 1024
#: Longest wait for the next piece of a request body.
BODY_IDLE_TIMEOUT = 60.0


def _submitter() -> tuple[str, str | None]:
    """(client address, authenticated user) from X-Originating-IP / X-Authenticated-User,
    else the HTTP peer. Raises ApiError (400) for an X-Originating-IP that is no IP."""
    user = request.headers.get("X-Authenticated-User") or None
    origin = request.headers.get("X-Originating-IP", "").strip().strip("[]")
    if origin:
        try:
            return str(ipaddress.ip_address(origin)), user
        except ValueError:
            raise ApiError(400, f"X-Originating-IP is not an IP address: {origin!r}") from None
    return str(request.remote_addr or ""), user


class SendRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def register(self, app: Any) -> None:
        app.add_url_rule("/send", "send", self.send, methods=["POST"])
        app.add_url_rule("/send-raw", "send_raw", self.send_raw, methods=["POST"])

    def _publish(self, kind: str, message_id: str, reason: str) -> None:
        self.ctx.intake.report(kind, message_id, interface=INTERFACE, reason=reason)

    def _envelope(self, mail_from: str, recipients: tuple[str, ...], smtputf8: bool) -> Envelope:
        client, user = _submitter()
        return Envelope(
            mail_from=mail_from,
            recipients=recipients,
            interface=INTERFACE,
            client_address=client,
            transtype=TRANSTYPE,
            smtputf8=smtputf8,
            user=user,
        )

    async def _begin(self, envelope: Envelope) -> Reception:
        """Start the reception; ``api`` hooks first (a 5xx refusal is a 400, a 4xx or a
        failed hook a 503, the reply as the error text)."""
        hooks = self.ctx.intake.hooks.api
        if hooks:
            try:
                refusal = await run_checks("api", hooks, envelope)
            except HookFailed as exc:
                refusal = exc.reply
            if refusal is not None:
                raise ApiError(400 if refusal.code >= 500 else 503, str(refusal))
        try:
            return self.ctx.intake.begin(envelope, max_header=MAX_HEADER)
        except IntakeRejected as exc:
            raise ApiError(400, str(exc.reply)) from exc

    async def _commit(self, reception: Reception) -> str:
        try:
            return await reception.commit()
        except IntakeRejected as exc:
            self._publish("message.rejected", reception.id, str(exc.reply))
            raise ApiError(400, str(exc.reply)) from exc
        except StoreError as exc:
            self._publish("message.rejected", reception.id, f"store failed: {exc}")
            log.error("storing %s failed: %s", reception.id, exc)
            raise ApiError(503, "the message could not be stored; try again later") from exc

    async def _drop(self, reception: Reception, reason: str) -> None:
        with trio.CancelScope(shield=True):
            await reception.abort()
        self._publish("message.dropped", reception.id, reason)

    @staticmethod
    def _accepted(message_id: str, envelope: Envelope) -> dict[str, Any]:
        return {
            "id": message_id,
            "from": envelope.mail_from,
            "to": list(envelope.recipients),
            "response": f"Message queued as {message_id}",
        }

    async def send(self) -> Any:
        """Compose the JSON message, store it, answer ``{id, from, to, response}``."""
        if request.mimetype != "application/json":
            raise ApiError(415, "send the message as JSON (Content-Type: application/json)")
        try:
            data = await request.get_json()
        except (BadRequest, UnicodeDecodeError):  # quart decodes the body as UTF-8 first
            raise ApiError(400, "the request body is not valid JSON") from None
        try:
            composed = compose(data, hostname=self.ctx.config.hostname, now=self.ctx.clock())
        except ComposeError as exc:
            raise ApiError(400, str(exc)) from exc
        envelope = self._envelope(composed.mail_from, composed.recipients, composed.smtputf8)
        reception = await self._begin(envelope)
        content = composed.content
        try:
            for offset in range(0, len(content), FEED_CHUNK):
                await reception.feed(content[offset : offset + FEED_CHUNK])
        except BaseException:
            await self._drop(reception, "interrupted")
            raise
        return self._accepted(await self._commit(reception), envelope)

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The request body as it arrives; 408 when the client stalls."""
        body = request.body.__aiter__()
        while True:
            with trio.move_on_after(BODY_IDLE_TIMEOUT) as scope:
                try:
                    chunk: bytes = await body.__anext__()
                except StopAsyncIteration:
                    return
            if scope.cancelled_caught:
                raise ApiError(408, "timed out waiting for the request body")
            yield chunk

    async def _drain(self, chunks: AsyncIterator[bytes], limit: int) -> None:
        """Read (and discard) what the client still sends, up to ``limit`` bytes, so that
        it sees the error reply instead of a reset connection."""
        seen = 0
        with trio.move_on_after(BODY_IDLE_TIMEOUT):
            async for chunk in chunks:
                seen += len(chunk)
                if seen > limit:
                    return

    async def send_raw(self) -> Any:
        """Stream an RFC 5322 message into the store: the header block is read (bounded)
        to find the envelope, the body goes through to the store chunk by chunk."""
        limit = int(self.ctx.config.api.max_send_size)
        declared = request.content_length
        if declared is not None and declared > limit:
            raise ApiError(413, f"the message is larger than {limit} bytes")
        endings = LineEndings()
        head = bytearray()
        reception: Reception | None = None
        received = 0
        chunks = self._chunks()
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > limit:
                    if reception is not None:
                        await self._drop(reception, "too large")
                        reception = None
                    await self._drain(chunks, limit)
                    raise ApiError(413, f"the message is larger than {limit} bytes")
                data = endings.feed(chunk)
                if reception is not None:
                    await reception.feed(data)
                    continue
                head += data
                split = split_header_block(bytes(head))
                if split is None:
                    if len(head) > MAX_HEADER:
                        await self._drain(chunks, limit)
                        raise ApiError(400, f"the header block is larger than {MAX_HEADER} bytes")
                    continue
                reception = await self._start_raw(*split)
                head.clear()
            tail = endings.finish()
            if reception is None:
                if not head and not tail:
                    raise ApiError(400, "the request body is empty")
                reception = await self._start_raw(bytes(head) + tail, b"")
            elif tail:
                await reception.feed(tail)
        except BaseException:
            if reception is not None:
                await self._drop(reception, "interrupted")
            raise
        return self._accepted(await self._commit(reception), reception.envelope)

    async def _start_raw(self, headers: bytes, rest: bytes) -> Reception:
        """Begin the reception once the header block is known and feed what came so far."""
        if not is_header_block(headers):
            raise ApiError(400, "the message does not start with a header block")
        try:
            raw = parse_head(headers)
        except RawMessageError as exc:
            raise ApiError(400, str(exc)) from exc
        smtputf8 = not (raw.mail_from.isascii() and all(r.isascii() for r in raw.recipients))
        reception = await self._begin(self._envelope(raw.mail_from, raw.recipients, smtputf8))
        await reception.feed(raw.headers + b"\r\n" + rest)
        return reception
