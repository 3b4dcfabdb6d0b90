"""The in-process event bus: every delivery transition and message event goes through it.

Publishing is synchronous and cheap when nobody listens: an event object is built, handed
to each subscriber's bounded memory channel with ``send_nowait``; a subscriber that is too
slow is dropped (its channel closed) instead of slowing delivery down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from zonemta.pickling import pickle_by_fields

log = logging.getLogger(__name__)


@pickle_by_fields
@attrs.frozen
class Event:
    """One thing that happened. ``type`` is ``delivery`` for state transitions and
    ``message.<what>`` for message events (``message.queued``, ``message.rejected``)."""

    type: str
    id: str
    time: float
    seq: int | None = None
    zone: str | None = None
    recipient: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    mx: str | None = None
    local_address: str | None = None
    response: str | None = None
    category: str | None = None
    details: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict without the fields that are unknown (None)."""
        data = attrs.asdict(self, recurse=False)
        details = data.pop("details") or {}
        out = {key: value for key, value in data.items() if value is not None}
        out.update(details)
        return out


Listener = Callable[[Event], None]


class Subscription:
    """A channel of events for one consumer; iterate ``receive`` to read them. It closes
    when the subscriber falls ``buffer`` events behind (``overflowed`` is then True)."""

    def __init__(self, bus: EventBus, buffer: int, accept: Callable[[Event], bool]) -> None:
        self._bus = bus
        self._accept = accept
        self._send, self.receive = trio.open_memory_channel[Event](buffer)
        self.overflowed = False

    def _offer(self, event: Event) -> None:
        if not self._accept(event):
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.overflowed = True
            self.close()
        except trio.ClosedResourceError:
            self.close()

    def close(self) -> None:
        self._bus._unsubscribe(self)
        self._send.close()


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._subscriptions: list[Subscription] = []

    @property
    def has_subscribers(self) -> bool:
        return bool(self._listeners or self._subscriptions)

    def add_listener(self, listener: Listener) -> None:
        """A synchronous callback run for every event (logging, metrics). It must not block
        and must not raise; an exception is logged and swallowed."""
        self._listeners.append(listener)

    def subscribe(
        self, *, buffer: int = 1000, accept: Callable[[Event], bool] = lambda _e: True
    ) -> Subscription:
        subscription = Subscription(self, buffer if buffer > 0 else math.inf, accept)  # type: ignore[arg-type]
        self._subscriptions.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def publish(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event.type)
        for subscription in list(self._subscriptions):
            subscription._offer(event)
