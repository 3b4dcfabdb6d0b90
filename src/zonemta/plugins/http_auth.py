"""Built-in plugin ``http-auth``: SMTP AUTH checked against an HTTP endpoint.

On AUTH, ``GET <url>?transport=SMTP`` with the client's credentials as HTTP Basic auth:
a 2xx answer is ``235 2.7.0``, any other answer ``535 5.7.8``; a network error is
``454 4.7.0`` (try later). As the reference's http-auth plugin. The interface still needs
``authentication = true`` (and a ``users_file``, which may be empty: this plugin decides
first and always answers).
"""

from __future__ import annotations

from datetime import timedelta

import attrs
import httpx

from zonemta.engine.hooks import SessionInfo
from zonemta.plugins.host import PluginApp
from zonemta.transport.smtp.reply import Reply

REPLY_OK = Reply(235, ("Authentication successful",), "2.7.0")
REPLY_FAILED = Reply(535, ("Authentication failed",), "5.7.8")
REPLY_UNAVAILABLE = Reply(454, ("Temporary authentication failure",), "4.7.0")


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"'url' must be an http(s) URL, got {value!r}")
    return value


@attrs.frozen
class HttpAuthOptions:
    url: str = attrs.field(converter=_url)
    interfaces: tuple[str, ...] = ()  # empty: every interface
    timeout: timedelta = timedelta(seconds=10)


class HttpAuth:
    options = HttpAuthOptions

    async def init(self, app: PluginApp) -> None:
        self.settings: HttpAuthOptions = app.options
        app.hooks.auth.append(self.on_auth)

    async def on_auth(self, session: SessionInfo, username: str, password: str) -> Reply | None:
        if self.settings.interfaces and session.interface not in self.settings.interfaces:
            return None
        try:
            async with httpx.AsyncClient(timeout=self.settings.timeout.total_seconds()) as client:
                response = await client.get(
                    self.settings.url,
                    params={"transport": "SMTP"},
                    auth=httpx.BasicAuth(username, password),
                )
        except httpx.HTTPError:
            return REPLY_UNAVAILABLE
        return REPLY_OK if response.is_success else REPLY_FAILED


plugin = HttpAuth
