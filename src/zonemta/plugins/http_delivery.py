"""Built-in plugin ``http-delivery``: deliveries marked for HTTP are POSTed to a URL.

A delivery is marked for HTTP by a ``route`` hook (``RouteDecision.http_url``), by a
``fetch`` hook (``FetchedDelivery.http_url``) or by this plugin's ``zones`` option (every
delivery of those zones goes to ``url``). The message is streamed from the store as a
``multipart/form-data`` upload: the fields ``id``, ``seq``, ``from``, ``to``, ``zone`` and
the file ``message`` (``message/rfc822``, the header block as stored plus the body).
A 2xx answer delivers, a 4xx bounces, anything else (and a network error) defers.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

import attrs
import httpx

from zonemta.engine.hooks import DivertResult, FetchedDelivery
from zonemta.plugins.host import PluginApp


@attrs.frozen
class HttpDeliveryOptions:
    url: str = ""  # where deliveries of `zones` go
    zones: tuple[str, ...] = ()
    timeout: timedelta = timedelta(seconds=30)

    def __attrs_post_init__(self) -> None:
        if self.zones and not self.url.startswith(("http://", "https://")):
            raise ValueError("'zones' needs an http(s) 'url'")


def _field(boundary: str, name: str, value: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
    ).encode()


async def multipart(
    boundary: str, fields: dict[str, str], body: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """The form as a stream: the fields, then the message file chunk by chunk."""
    for name, value in fields.items():
        yield _field(boundary, name, value)
    yield (
        f"--{boundary}\r\nContent-Disposition: form-data; "
        'name="message"; filename="message.eml"\r\nContent-Type: message/rfc822\r\n\r\n'
    ).encode()
    async for chunk in body:
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


class HttpDelivery:
    options = HttpDeliveryOptions

    def __init__(self) -> None:
        self.settings = HttpDeliveryOptions()

    async def init(self, app: PluginApp) -> None:
        self.settings = app.options
        app.hooks.fetch.append(self.on_fetch)

    async def on_fetch(self, fetched: FetchedDelivery) -> None:
        if fetched.http_url is None and fetched.row.zone in self.settings.zones:
            fetched.http_url = self.settings.url
        if fetched.http_url:
            fetched.divert = self.deliver

    async def deliver(self, fetched: FetchedDelivery, body: AsyncIterator[bytes]) -> DivertResult:
        """POST the delivery to ``fetched.http_url``; never raises for HTTP or network
        errors (they are a deferral)."""
        assert fetched.http_url is not None
        row = fetched.row
        boundary = "zonemta-" + secrets.token_hex(12)
        fields = {
            "id": row.message_id,
            "seq": f"{row.seq:03x}",
            "from": fetched.message.mail_from,
            "to": row.recipient,
            "zone": row.zone,
        }
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        try:
            async with httpx.AsyncClient(timeout=self.settings.timeout.total_seconds()) as client:
                response = await client.post(
                    fetched.http_url, content=multipart(boundary, fields, body), headers=headers
                )
        except httpx.HTTPError as exc:
            return DivertResult("deferred", f"HTTP delivery to {fetched.http_url} failed: {exc}")
        text = f"HTTP {response.status_code} {response.reason_phrase} from {fetched.http_url}"
        if 200 <= response.status_code < 300:
            return DivertResult("delivered", text)
        if 400 <= response.status_code < 500:
            return DivertResult("bounced", text)
        return DivertResult("deferred", text)


plugin = HttpDelivery
