"""The bounce webhook: one HTTP POST per bounced delivery, off the delivery path.

Deliveries hand payloads over with :meth:`BounceWebhook.submit_nowait`, which never blocks:
payloads wait in a bounded channel (a full channel drops the new payload and counts it) and
a few worker tasks POST them, retrying a failed POST (network error or a status other than
2xx/3xx) after ``retry_delay * n²`` for the n-th retry, up to ``retries`` times. At
shutdown :meth:`BounceWebhook.finish` lets the workers post what is queued, retries included,
for the shutdown grace period; what is still waiting after it is lost (logged: they are
notifications, not mail).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import trio

from zonemta.conf.bounces import WebhookConfig, WebhookFormat
from zonemta.headers import first_value
from zonemta.statemachine import FailureCategory
from zonemta.store import Delivery, MessageRecord

__all__ = ["BounceWebhook", "WebhookStats", "bounce_payload"]

log = logging.getLogger(__name__)


def bounce_payload(
    row: Delivery,
    message: MessageRecord,
    *,
    response: str,
    category: FailureCategory | None,
    mx: str | None,
    now: float,
) -> dict[str, Any]:
    """The fields ZoneMTA's http-bounce plugin posts (``id``, ``to``, ``seq``,
    ``returnPath``, ``category``, ``time`` in ms, ``response``, ``fbl`` when the message
    has an ``X-FBL`` header), plus ``zone``, ``mx`` and ``messageId``."""
    payload: dict[str, Any] = {
        "id": row.message_id,
        "seq": f"{row.seq:03x}",
        "to": row.recipient,
        "returnPath": message.mail_from,
        "category": (category or FailureCategory.OTHER).value,
        "time": int(now * 1000),
        "response": response,
        "zone": row.zone,
        "mx": mx or "",
        "messageId": first_value(message.headers, "message-id") or "",
    }
    fbl = first_value(message.headers, "x-fbl")
    if fbl:
        payload["fbl"] = fbl
    return payload


@attrs.define
class WebhookStats:
    sent: int = 0  # POSTs answered with 2xx/3xx
    failed: int = 0  # payloads given up after every retry
    retried: int = 0  # failed POSTs that were tried again
    dropped: int = 0  # payloads refused because the queue was full


class BounceWebhook:
    """POSTs bounce payloads to ``config.url``. Start :meth:`run` in a nursery."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] = trio.sleep,
    ) -> None:
        if not config.url:
            raise ValueError("the bounce webhook needs a url")
        self.config = config
        self.stats = WebhookStats()
        self._transport = transport
        self._sleep = sleep
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](config.queue_size)
        self._finished = trio.Event()

    def submit_nowait(self, payload: dict[str, Any]) -> bool:
        """Queue one payload; False (and counted as dropped) when the queue is full."""
        try:
            self._send.send_nowait(payload)
        except trio.ClosedResourceError:  # after finish(): shutting down
            self.stats.dropped += 1
            log.warning("bounce webhook stopped: dropped the bounce of %s", payload.get("id"))
            return False
        except trio.WouldBlock:
            self.stats.dropped += 1
            log.warning(
                "bounce webhook queue full (%d): dropped the bounce of %s.%s",
                self.config.queue_size,
                payload.get("id"),
                payload.get("seq"),
            )
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """POST queued payloads until cancelled, or until :meth:`finish` and the queue is
        empty."""
        timeout = httpx.Timeout(self.config.timeout.total_seconds())
        try:
            async with (
                httpx.AsyncClient(timeout=timeout, transport=self._transport) as client,
                trio.open_nursery() as nursery,
            ):
                for _ in range(self.config.concurrency):
                    nursery.start_soon(self._worker, client)
                task_status.started()
        finally:
            self._finished.set()

    async def finish(self, grace: float) -> None:
        """Accept nothing more; give the queued payloads ``grace`` seconds to be posted."""
        self._send.close()
        with trio.move_on_after(grace):
            await self._finished.wait()
        left = self._receive.statistics().current_buffer_used
        if not self._finished.is_set():
            log.warning("bounce webhook: %d queued bounces not posted at shutdown", left)

    async def _worker(self, client: httpx.AsyncClient) -> None:
        async for payload in self._receive:
            await self._deliver(client, payload)

    async def _deliver(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
        config = self.config
        delay = config.retry_delay.total_seconds()
        for attempt in range(config.retries + 1):
            problem = await self._post(client, payload)
            if problem is None:
                self.stats.sent += 1
                return
            if attempt == config.retries:
                break
            self.stats.retried += 1
            log.info("bounce webhook: %s; retry %d", problem, attempt + 1)
            await self._sleep(delay * (attempt + 1) ** 2)
        self.stats.failed += 1
        log.warning(
            "bounce webhook: gave up on the bounce of %s.%s after %d attempts: %s",
            payload.get("id"),
            payload.get("seq"),
            config.retries + 1,
            problem,
        )

    async def _post(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> str | None:
        """One POST; None on success, else what went wrong."""
        try:
            if self.config.format is WebhookFormat.FORM:
                form = {key: str(value) for key, value in payload.items()}
                answer = await client.post(self.config.url, data=form)
            else:
                answer = await client.post(self.config.url, json=payload)
        except httpx.HTTPError as exc:
            return f"POST {self.config.url} failed: {exc!r}"
        if 200 <= answer.status_code < 400:
            return None
        return f"POST {self.config.url} answered {answer.status_code}"
