"""Rate limits on the delivery path, timed with trio's clock (so tests use MockClock).

* :class:`TokenBucket` — a recipient domain's rate across all connections of a zone
  (``[domains.<d>] rate``): at most ``count`` at once, refilled at ``count`` per period.
* :class:`Throttle` — a zone's per-connection pace (``throttling``): at least
  ``period / count`` between two messages on one connection.
"""

from __future__ import annotations

import trio

from zonemta.conf.rates import Rate


class TokenBucket:
    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.capacity = float(rate.count)
        self._tokens = self.capacity
        self._updated = trio.current_time()

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(
                self.capacity,
                self._tokens + (now - self._updated) * self.rate.count / self.rate.per,
            )
            self._updated = now

    def available_at(self) -> float:
        """When the next event may happen (now or later)."""
        now = trio.current_time()
        self._refill(now)
        if self._tokens >= 1:
            return now
        return now + (1 - self._tokens) * self.rate.interval

    def try_take(self) -> bool:
        now = trio.current_time()
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def give_back(self) -> None:
        """Return one taken token (the event it was taken for did not happen)."""
        self._refill(trio.current_time())
        self._tokens = min(self.capacity, self._tokens + 1)

    async def take(self) -> None:
        """Reserve the next event and wait for its turn. Concurrent takers queue in order;
        a taker cancelled while waiting leaves its reservation used."""
        now = trio.current_time()
        self._refill(now)
        self._tokens -= 1
        if self._tokens < 0:
            await trio.sleep_until(now - self._tokens * self.rate.interval)


class Throttle:
    """The pace of one connection: :meth:`wait` before each message."""

    def __init__(self, rate: Rate) -> None:
        self.interval = rate.interval
        self._next = -float("inf")

    async def wait(self) -> None:
        now = trio.current_time()
        if now < self._next:
            await trio.sleep_until(self._next)
            now = self._next
        self._next = now + self.interval
