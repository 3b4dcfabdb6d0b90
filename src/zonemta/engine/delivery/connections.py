"""Open outgoing SMTP connections of one zone: never more than the zone's ``connections``.

A connection holds one token of the zone's :class:`trio.CapacityLimiter` from the moment it
is opened until it is closed, whether it is carrying a message or waiting idle for the next
one to the same destination. When the zone is full and an idle connection to some other
destination exists, that idle connection is closed to make room.

A checkout that must wait is woken alone, in order, when something it may use comes back:
the first waiter for the destination of a connection checked in (else the first waiter,
who may close it to make room), the first waiter when a token is given back. Waking every
waiter for each connection checked in cost each message a wake-up of every other waiting
attempt, all but one of which went back to sleep.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import attrs
import trio

from zonemta.conf.rates import Rate
from zonemta.engine.delivery.ratelimit import Throttle
from zonemta.transport.direct_stream import DirectSocketStream
from zonemta.transport.outbound import OutboundConnection
from zonemta.transport.timers import TimerWheel

log = logging.getLogger(__name__)

# Where a connection goes and where from: (local address, destination). The destination is
# the smart host "host:port" or the recipient domain.
PoolKey = tuple[str, str]


@attrs.define(eq=False)
class Slot:
    """The right to one open connection of the zone, with the connection once opened."""

    key: PoolKey
    connection: OutboundConnection | None = None
    reused: bool = False
    throttle: Throttle | None = None  # the zone's per-connection pace


@attrs.frozen
class _Idle:
    slot: Slot
    since: float


class ZoneConnections:
    def __init__(
        self,
        limit: int,
        *,
        idle_ttl: float = 10.0,
        max_messages: int = 100,
        throttle: Rate | None = None,
    ) -> None:
        self.limiter = trio.CapacityLimiter(limit)
        self.idle_ttl = idle_ttl
        self.max_messages = max_messages
        self.throttle = throttle
        self.reuses = 0
        self._idle: OrderedDict[int, _Idle] = OrderedDict()
        # Checkouts waiting for a connection or a token, in the order they began to wait.
        self._waiting: dict[trio.Event, PoolKey] = {}
        self._closer: trio.Nursery | None = None
        self.timers = TimerWheel()  # the reply and data timeouts of the zone's connections

    @property
    def open_connections(self) -> int:
        return self.limiter.borrowed_tokens

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Closes idle connections after ``idle_ttl``; connections are closed in here."""
        async with trio.open_nursery() as nursery:
            self._closer = nursery
            await nursery.start(self.timers.run)
            task_status.started()
            try:
                while True:
                    await trio.sleep(max(self.idle_ttl / 2, 0.05))
                    self._close_expired(trio.current_time())
            finally:
                for idle in list(self._idle.values()):
                    self._discard(idle.slot, polite=False)
                self._idle.clear()
                self._closer = None

    async def checkout(self, key: PoolKey) -> Slot:
        """A slot for ``key``: with an idle connection to reuse when there is one, else
        empty (the caller opens the connection and stores it in ``slot.connection``).
        Waits while the zone is full and no idle connection can be closed for room."""
        while True:
            slot = self._take_idle(key)
            if slot is not None:
                return slot
            slot = Slot(key, throttle=Throttle(self.throttle) if self.throttle else None)
            try:
                self.limiter.acquire_on_behalf_of_nowait(slot)
                return slot
            except trio.WouldBlock:
                pass
            if self._idle:
                # Full, but an idle connection to another destination can make room.
                _, oldest = self._idle.popitem(last=False)
                self._discard(oldest.slot)
                continue
            wake = trio.Event()
            self._waiting[wake] = key
            try:
                await wake.wait()
            except BaseException:
                if self._waiting.pop(wake, None) is None:
                    self._notify()  # woken, but leaving: the next waiter may use it
                raise

    def _take_idle(self, key: PoolKey) -> Slot | None:
        now = self.timers.now()
        for ident, idle in self._idle.items():
            if idle.slot.key == key:
                del self._idle[ident]
                if now - idle.since > self.idle_ttl or idle.slot.connection is None:
                    self._discard(idle.slot)
                    return self._take_idle(key)
                self.reuses += 1
                idle.slot.reused = True
                return idle.slot
        return None

    def _notify(self, key: PoolKey | None = None) -> None:
        """Wake the first waiter for ``key`` (a connection to it is idle), else the first
        waiter."""
        waiting = self._waiting
        if not waiting:
            return
        chosen = None
        if key is not None:
            for wake, wanted in waiting.items():
                if wanted == key:
                    chosen = wake
                    break
        if chosen is None:
            chosen = next(iter(waiting))
        del waiting[chosen]
        chosen.set()

    def checkin(self, slot: Slot) -> None:
        """Return a slot after use; a healthy connection waits idle for the next message."""
        connection = slot.connection
        if (
            connection is not None
            and not connection.broken
            and connection.messages < self.max_messages
            and self._closer is not None
        ):
            # The throttle stays with the slot: it paces this connection.
            slot.reused = False
            self._idle[id(slot)] = _Idle(slot, self.timers.now())
            self._notify(slot.key)
            return
        self._discard(slot)

    def _close_expired(self, now: float) -> None:
        for ident, idle in list(self._idle.items()):
            if now - idle.since > self.idle_ttl:
                del self._idle[ident]
                self._discard(idle.slot)

    def _discard(self, slot: Slot, *, polite: bool = True) -> None:
        """Close the slot's connection (in the background) and give its token back."""
        connection, slot.connection = slot.connection, None
        self.limiter.release_on_behalf_of(slot)
        self._notify()
        if connection is None:
            return
        if self._closer is not None and polite and not connection.broken:
            self._closer.start_soon(connection.aclose)
        else:
            connection.broken = True
            _close_now(connection.stream)


def _close_now(stream: trio.abc.Stream) -> None:
    """Close a socket stream at once, without awaiting (no task to do it in)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, DirectSocketStream):
        stream.close()
    elif isinstance(stream, trio.SocketStream):
        stream.socket.close()
