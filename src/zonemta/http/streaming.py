"""Request bodies with back-pressure.

Quart reads the whole request body as fast as the client sends it and keeps whatever the
route has not consumed yet in memory. For ``/send-raw`` that would put a large message in
memory when the store is slower than the network, so the connection class here stops
reading from the server (and hypercorn from the socket) while more than
:data:`HIGH_WATER` bytes wait in the body buffer. A route that awaits the whole body at
once (``await request.get_json()``) switches the limit off; its size is then bounded by
Quart's ``MAX_CONTENT_LENGTH``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable
from quart import Request
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest

#: Bytes of an unread request body held in memory before reading pauses.
HIGH_WATER = 256 * 1024


class FlowControlledBody(TrioBody):
    """A request body whose producer waits (:meth:`wait_for_room`) while the consumer
    lags by :data:`HIGH_WATER` bytes or more."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None):
        super().__init__(expected_content_length, max_content_length)
        self._whole = False
        self._room = trio.Event()
        self._room.set()

    def append(self, data: bytes) -> None:
        super().append(data)
        if self._blocked() and self._room.is_set():
            self._room = trio.Event()

    def set_complete(self) -> None:
        super().set_complete()
        self._room.set()

    async def __anext__(self) -> bytes:
        data: bytes = await super().__anext__()
        self._room.set()
        return data

    def __await__(self) -> Generator[Any, None, Any]:
        # The whole body is wanted at once: nothing consumes it piecewise.
        self._whole = True
        self._room.set()
        return super().__await__()

    def _blocked(self) -> bool:
        return not self._whole and self._must_raise is None and len(self._data) >= HIGH_WATER

    async def wait_for_room(self) -> None:
        """Return once the buffer is below :data:`HIGH_WATER` (or flow control is off)."""
        while self._blocked():
            await self._room.wait()


class ApiRequest(TrioRequest):
    body_class = FlowControlledBody


class FlowControlledConnection(TrioASGIHTTPConnection):
    """Quart-trio's HTTP connection, reading the body only while there is room for it."""

    async def handle_messages(  # type: ignore[override]  # as quart-trio's own
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        body = request.body
        while True:
            if isinstance(body, FlowControlledBody):
                await body.wait_for_room()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()
