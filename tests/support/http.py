"""A test HTTP server on loopback: hypercorn serving a tiny ASGI app that records every
request and answers with scripted statuses (webhook sinks, HTTP delivery targets, auth
endpoints)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve


@attrs.frozen
class HttpRequest:
    path: str  # with the query string, if any
    headers: dict[bytes, bytes]
    body: bytes
    status: int  # what the server answered

    @property
    def content_type(self) -> str:
        return self.headers.get(b"content-type", b"").decode()


class HttpRecorder:
    """Records requests (``requests``, and the ``receive`` channel to wait on them) and
    answers with the next of ``statuses`` (200 when they run out), or with ``decide(request)``
    when that is set."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[HttpRequest] = []
        self.decide: Callable[[HttpRequest], int] | None = None
        self._send, self.receive = trio.open_memory_channel[HttpRequest](1000)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        query = scope["query_string"].decode()
        path = scope["path"] + (f"?{query}" if query else "")
        headers = dict(scope["headers"])
        status = self.statuses.pop(0) if self.statuses else 200
        if self.decide is not None:
            status = self.decide(HttpRequest(path, headers, body, status))
        request = HttpRequest(path, headers, body, status)
        self.requests.append(request)
        self._send.send_nowait(request)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def http_server(statuses: list[int]) -> AsyncIterator[tuple[HttpRecorder, str]]:
    """A running recorder and its base URL (``http://127.0.0.1:PORT``)."""
    app = HttpRecorder(statuses)
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app,  # type: ignore[arg-type]
                config,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        try:
            yield app, binds[0]
        finally:
            stop.set()
