"""``/events``: every bus event as a JSON message on a websocket, filtered per subscriber.

Each subscriber has a bounded channel on the bus. A subscriber that cannot keep up (its
channel overflows, or one message cannot be written within :data:`SEND_TIMEOUT`) is
disconnected with close code 1013 instead of slowing delivery down. An idle stream gets a
``heartbeat`` message every ``[api] heartbeat``. At shutdown every stream is closed with 1001.

A browser cannot set ``Authorization`` on a websocket, so the token may also come as a
subprotocol: the client offers :data:`EVENTS_SUBPROTOCOL` and
``zonemta.bearer.<token as unpadded base64url>``; the server answers with
:data:`EVENTS_SUBPROTOCOL` (never echoing the token).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio
from quart import websocket

from zonemta.engine.bus import Event, EventBus, Subscription
from zonemta.http.metrics import Metrics

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 1013  # "try again later": the subscriber fell behind
CLOSE_GOING_AWAY = 1001  # the server is shutting down
#: Longest time one message may take to be written before the subscriber counts as stuck.
SEND_TIMEOUT = 30.0
#: Longest time spent trying to deliver the close frame.
CLOSE_TIMEOUT = 5.0
#: The subprotocol a browser offers (with a bearer one) and the server then selects.
EVENTS_SUBPROTOCOL = "zonemta.events"
#: Prefix of the subprotocol that carries the token, base64url-encoded without padding.
BEARER_SUBPROTOCOL = "zonemta.bearer."


def subprotocol_authorization(protocols: list[str]) -> str | None:
    """The token offered as a ``zonemta.bearer.<base64url>`` subprotocol, as an
    ``Authorization`` header value (``Bearer <token>``); None when none is offered or it
    does not decode."""
    for protocol in protocols:
        if not protocol.startswith(BEARER_SUBPROTOCOL):
            continue
        encoded = protocol[len(BEARER_SUBPROTOCOL) :]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            return "Bearer " + raw.decode("utf-8")
        except (binascii.Error, ValueError):
            return None
    return None


@attrs.frozen
class EventFilter:
    """Which events a subscriber wants; an empty set means any. A ``types`` entry without
    a dot also matches its sub-types (``message`` matches ``message.queued``)."""

    zones: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    @classmethod
    def from_args(cls, args: Any) -> EventFilter:
        def values(name: str) -> frozenset[str]:
            found: set[str] = set()
            for raw in args.getlist(name):
                found.update(part.strip() for part in raw.split(",") if part.strip())
            return frozenset(found)

        return cls(values("zone"), values("id"), values("type"))

    def __call__(self, event: Event) -> bool:
        if self.ids and event.id not in self.ids:
            return False
        if self.zones and event.zone not in self.zones:
            return False
        if self.types:
            return event.type in self.types or event.type.split(".", 1)[0] in self.types
        return True

    def to_json(self) -> dict[str, list[str]]:
        return {"zone": sorted(self.zones), "id": sorted(self.ids), "type": sorted(self.types)}


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, default=str, separators=(",", ":"))


class EventStream:
    """The websocket handler and the set of open streams (closed at shutdown)."""

    def __init__(
        self,
        bus: EventBus,
        *,
        buffer: int,
        heartbeat: float,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.bus = bus
        self.buffer = buffer
        self.heartbeat = heartbeat
        self.metrics = metrics
        self.clock = clock
        self._streams: set[trio.CancelScope] = set()
        self._closing = False

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def register(self, app: Any) -> None:
        app.add_websocket("/events", "events", self.handle)

    def close_all(self) -> None:
        """Shutdown: every open stream is closed with 1001; new ones are refused."""
        self._closing = True
        for scope in list(self._streams):
            scope.cancel()

    async def handle(self) -> None:
        wanted = EventFilter.from_args(websocket.args)
        offered = EVENTS_SUBPROTOCOL in websocket.requested_subprotocols
        await websocket.accept(subprotocol=EVENTS_SUBPROTOCOL if offered else None)
        if self._closing:
            await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
            return
        peer = websocket.remote_addr
        reported = False

        def accept(event: Event) -> bool:
            # Called by the bus just before it offers the event: a full channel here means
            # this event overflows it and the bus closes the subscription. Reported at
            # once, while the handler may still be blocked writing to the slow client.
            nonlocal reported
            if not wanted(event):
                return False
            used = subscription.receive.statistics().current_buffer_used
            if not reported and used >= self.buffer:
                reported = True
                self._report_slow(peer, f"fell more than {self.buffer} events behind")
            return True

        subscription = self.bus.subscribe(buffer=self.buffer, accept=accept)
        try:
            hello = {
                "type": "subscribed",
                "time": self.clock(),
                "filter": wanted.to_json(),
                "heartbeat": self.heartbeat,
            }
            await websocket.send(_dumps(hello))
            code, reason = await self._pump(subscription)
        finally:
            subscription.close()
        if code == CLOSE_TOO_SLOW and not reported:
            self._report_slow(peer, reason)
        with trio.move_on_after(CLOSE_TIMEOUT):
            await websocket.close(code, reason)

    def _report_slow(self, peer: str | None, why: str) -> None:
        self.metrics.subscribers_dropped.inc()
        log.warning("/events subscriber %s disconnected: %s", peer, why)

    async def _pump(self, subscription: Subscription) -> tuple[int, str]:
        """Forward events until the subscriber falls behind or shutdown; returns the close
        code and reason."""
        too_slow = (CLOSE_TOO_SLOW, f"too slow: fell more than {self.buffer} events behind")
        with trio.CancelScope() as stream:
            self._streams.add(stream)
            try:
                while True:
                    ended = False
                    event: Event | None = None
                    with trio.move_on_after(self.heartbeat):
                        try:
                            event = await subscription.receive.receive()
                        except trio.EndOfChannel:
                            ended = True
                    if ended or subscription.overflowed:
                        return too_slow
                    payload = (
                        event.to_json()
                        if event is not None
                        else {"type": "heartbeat", "time": self.clock()}
                    )
                    with trio.move_on_after(SEND_TIMEOUT) as sending:
                        await websocket.send(_dumps(payload))
                    if sending.cancelled_caught:
                        return CLOSE_TOO_SLOW, "too slow: a message could not be written in time"
            finally:
                self._streams.discard(stream)
        return CLOSE_GOING_AWAY, "server shutting down"
