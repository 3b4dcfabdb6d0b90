"""An example zonemta plugin that registers every hook point.

Every hook records what it saw in ``calls`` (hook name, data) and, when an option asks for
it, uses the power the hook has. The test suite loads it with
``[plugins.example] module = "examples.example_plugin"``. See ``docs/plugins.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from quart import jsonify

from zonemta.engine.bus import Event
from zonemta.engine.hooks import (
    ConnectTarget,
    DeliveryReport,
    FetchedDelivery,
    HookDrop,
    HookReject,
    MessageHeaders,
    OutgoingHeaders,
    QueueingMessage,
    RouteDecision,
    SessionInfo,
)
from zonemta.plugins import PluginApp
from zonemta.transport.smtp.reply import Reply

NO = Reply(550, ("example plugin says no",), "5.7.1")


@attrs.frozen
class ExampleOptions:
    reject_connect: bool = False
    reject_mail_from: str = ""  # this sender is refused at MAIL FROM
    reject_rcpt: str = ""  # this recipient is refused at RCPT TO (by raising HookReject)
    reject_data_from: str = ""  # this sender is refused at DATA
    reject_api_from: str = ""  # this sender is refused by the api hook
    auth_password: str = ""  # when set, AUTH succeeds with exactly this password
    header: str = ""  # headers hook: adds "X-Example: <header>", sets the envelope user
    drop_subject: str = ""  # queue hook: a message with this Subject is dropped
    reject_subject: str = ""  # queue hook: a message with this Subject is refused
    reroute_domain: str = ""  # route hook: recipients of this domain ...
    reroute_zone: str = ""  # ... go through this zone
    fixed_mx: str = ""  # ... or to this MX (host:port)
    http_url: str = ""  # ... or to this HTTP delivery target
    suppress_recipient: str = ""  # fetch hook: this recipient is suppressed
    connect_domain: str = ""  # before_connect hook: deliveries to this domain ...
    connect_mx: str = ""  # ... connect to this MX (host:port)
    send_header: str = ""  # send_headers hook: adds "X-Example-Send: <send_header>"
    crash: tuple[str, ...] = ()  # hooks that raise RuntimeError on their first call


class ExamplePlugin:
    options = ExampleOptions

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.crashed: set[str] = set()
        self.o = ExampleOptions()

    def seen(self, hook: str, data: Any) -> None:
        self.calls.append((hook, data))
        if hook in self.o.crash and hook not in self.crashed:
            self.crashed.add(hook)
            raise RuntimeError(f"example plugin crashes in {hook}")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    async def init(self, app: PluginApp) -> None:
        self.o = app.options
        h = app.hooks
        h.connect.append(self.on_connect)
        h.auth.append(self.on_auth)
        h.mail_from.append(self.on_mail_from)
        h.rcpt_to.append(self.on_rcpt_to)
        h.data.append(self.on_data)
        h.api.append(self.on_api)
        h.headers.append(self.on_headers)
        h.body.append(self.on_body)
        h.queue.append(self.on_queue)
        h.route.append(self.on_route)
        h.fetch.append(self.on_fetch)
        h.before_connect.append(self.on_before_connect)
        h.send_headers.append(self.on_send_headers)
        h.delivered.append(self.on_delivered)
        h.response_error.append(self.on_response_error)
        h.bounce.append(self.on_bounce)
        h.delayed.append(self.on_delayed)
        h.event.append(self.on_event)

        async def calls_route() -> Any:
            counts: dict[str, int] = {}
            for name in self.names():
                counts[name] = counts.get(name, 0) + 1
            return jsonify({"plugin": app.name, "calls": counts})

        app.add_route("calls", calls_route)

    async def on_connect(self, session: SessionInfo) -> Reply | None:
        self.seen("connect", session)
        return Reply(554, ("no service for you",), "5.7.1") if self.o.reject_connect else None

    async def on_auth(self, session: SessionInfo, username: str, password: str) -> Reply | None:
        self.seen("auth", (session, username))
        if not self.o.auth_password:
            return None
        if password == self.o.auth_password:
            return Reply(235, ("welcome, example user",), "2.7.0")
        return Reply(535, ("example plugin refuses these credentials",), "5.7.8")

    async def on_mail_from(
        self, session: SessionInfo, address: str, params: Mapping[str, str | None]
    ) -> Reply | None:
        self.seen("mail_from", (session, address, dict(params)))
        return NO if address == self.o.reject_mail_from else None

    async def on_rcpt_to(self, session: SessionInfo, address: str) -> Reply | None:
        self.seen("rcpt_to", (session, address))
        if address == self.o.reject_rcpt:
            raise HookReject(Reply(550, ("no mail for this one, says the example",), "5.1.1"))
        return None

    async def on_data(self, session: SessionInfo, envelope: Any) -> Reply | None:
        self.seen("data", (session, envelope))
        return NO if envelope.mail_from == self.o.reject_data_from else None

    async def on_api(self, envelope: Any) -> Reply | None:
        self.seen("api", envelope)
        return NO if envelope.mail_from == self.o.reject_api_from else None

    async def on_headers(self, message: MessageHeaders) -> Reply | None:
        self.seen("headers", (message.id, message.headers.get("Subject")))
        if self.o.header:
            message.headers.add("X-Example", self.o.header)
            message.envelope = attrs.evolve(message.envelope, user="example-user")
        return None

    async def on_body(self, message_id: str, chunk: memoryview) -> None:
        self.seen("body", (message_id, bytes(chunk)))

    async def on_queue(self, message: QueueingMessage) -> Reply | None:
        self.seen("queue", message)
        subject = f"Subject: {self.o.drop_subject}\r\n".encode()
        if self.o.drop_subject and subject in message.headers:
            raise HookDrop("example plugin drops it")
        subject = f"Subject: {self.o.reject_subject}\r\n".encode()
        if self.o.reject_subject and subject in message.headers:
            return Reply(550, ("queue hook refuses this subject",), "5.7.1")
        return None

    async def on_route(self, envelope: Any, route: RouteDecision) -> None:
        self.seen("route", (route.recipient, route.zone))
        if route.domain == self.o.reroute_domain:
            if self.o.reroute_zone:
                route.zone = self.o.reroute_zone
            route.mx = self.o.fixed_mx or None
            route.http_url = self.o.http_url or None

    async def on_fetch(self, fetched: FetchedDelivery) -> None:
        self.seen("fetch", (fetched.row.recipient, fetched.mx, fetched.http_url))
        if fetched.row.recipient == self.o.suppress_recipient:
            fetched.suppress = True

    async def on_before_connect(self, target: ConnectTarget) -> None:
        self.seen("before_connect", (target.row.recipient, target.mx, target.local_address))
        if self.o.connect_mx and target.row.domain == self.o.connect_domain:
            target.mx = self.o.connect_mx

    async def on_send_headers(self, outgoing: OutgoingHeaders) -> None:
        self.seen("send_headers", outgoing.row.recipient)
        if self.o.send_header:
            outgoing.headers.add("X-Example-Send", self.o.send_header)

    async def on_delivered(self, report: DeliveryReport) -> None:
        self.seen("delivered", report)

    async def on_response_error(self, report: DeliveryReport) -> None:
        self.seen("response_error", report)

    async def on_bounce(self, report: DeliveryReport) -> None:
        self.seen("bounce", report)

    async def on_delayed(self, report: DeliveryReport) -> None:
        self.seen("delayed", report)

    async def on_event(self, event: Event) -> None:
        self.seen("event", event)


plugin = ExamplePlugin
