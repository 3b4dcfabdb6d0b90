"""Deadlines for many connections at the price of an attribute write per operation.

A trio ``CancelScope`` with a deadline costs about 15 µs to enter and leave, and moving a
live scope's deadline about 8 µs (measured on loopback ping-pong): with one per SMTP command
that is a tenth of the intake's CPU. Here each connection has one :class:`Timer` (one
cancel scope without a deadline, for the connection's life); arming it before an operation
stores the deadline in an attribute. One :class:`TimerWheel` task per service sleeps until
the earliest deadline it knows of and cancels the timers that have expired when it wakes;
a timer re-armed further in the meantime is simply left alone. The wheel is woken early
only when a timer is armed earlier than anything it waits for, which a steady stream of
equal timeouts never does.

When no wheel runs (a component used without its service, in tests), a timer falls back
to setting the deadline on its own scope: the same behaviour, at trio's price.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import TracebackType

import trio

__all__ = ["Timer", "TimerWheel"]

# The wheel scans its timers at most this often (a few thousand connections each timing
# out at a different moment must not cost a scan per expiry): a timer may fire this late.
MIN_SCAN_INTERVAL = 0.05


class Timer:
    """One connection's deadline: enter it once (``with timer:``), then :meth:`arm` before
    and :meth:`disarm` after each operation that may take too long. When the deadline
    passes, the ``with`` block is cancelled (and absorbs the cancellation) and
    :attr:`expired` is true."""

    __slots__ = ("_cancelled", "_expired", "_scoped", "_wheel", "deadline", "scope")

    def __init__(self, wheel: TimerWheel) -> None:
        self._wheel = wheel
        self.scope = trio.CancelScope()
        self.deadline = math.inf
        self._expired = False
        self._cancelled = False
        self._scoped = False  # the scope has a deadline of its own (armed without a wheel)

    def __enter__(self) -> Timer:
        self.scope.__enter__()
        self._wheel._timers.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._wheel._timers.discard(self)
        if self._scoped:  # else the scope's deadline is infinite: nothing to note
            self._note_own_deadline()
        return self.scope.__exit__(exc_type, exc, traceback)

    def _note_own_deadline(self) -> None:
        """Without a wheel: record that the scope's own deadline has cancelled it."""
        scope = self.scope
        if not self._cancelled and scope.cancel_called and scope.deadline <= trio.current_time():
            self._expired = True

    def arm(self, seconds: float) -> None:
        """Expire ``seconds`` from now (trio time) unless re-armed or disarmed first."""
        self.arm_at(self._wheel.now() + seconds)

    def arm_at(self, deadline: float) -> None:
        """Expire at ``deadline`` (trio time) unless re-armed or disarmed first."""
        self.deadline = deadline
        wheel = self._wheel
        if not wheel.running:
            self.scope.deadline = deadline
            self._scoped = True
            return
        if self._scoped:  # armed before the wheel ran
            self.scope.deadline = math.inf
            self._scoped = False
        if deadline < wheel._next:
            wheel._wake_at(deadline)

    def disarm(self) -> None:
        self.deadline = math.inf
        if self._scoped:
            self._note_own_deadline()
            self.scope.deadline = math.inf
            self._scoped = False

    def expire(self) -> None:
        """Expire now (what the wheel does once the deadline has passed)."""
        self._expired = True
        self.scope.cancel()

    @property
    def expired(self) -> bool:
        """The deadline ended the block (by the wheel, or by the scope's own deadline
        without one; recorded when the block ends or the timer is disarmed)."""
        return self._expired

    @property
    def cancelled_caught(self) -> bool:
        """The ``with`` block ended because the timer expired or was cancelled."""
        return self.scope.cancelled_caught

    def cancel(self) -> None:
        """Cancel the ``with`` block for another reason than the deadline."""
        if not self.scope.cancel_called:
            self._cancelled = True
        self.scope.cancel()


class TimerWheel:
    """The task that expires :class:`Timer` s; run it in the service's nursery."""

    def __init__(self) -> None:
        self._timers: set[Timer] = set()
        self._next = math.inf  # when the sleeping task wakes
        self._sleep: trio.CancelScope | None = None
        self.running = False
        # trio's current time: while the wheel runs, straight from the run's clock (what
        # trio.current_time() returns, two calls shorter).
        self.now: Callable[[], float] = trio.current_time

    def timer(self) -> Timer:
        return Timer(self)

    def _wake_at(self, deadline: float) -> None:
        self._next = deadline
        if self._sleep is not None:
            self._sleep.deadline = deadline

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire timers until cancelled. Timers armed before this runs keep their own
        scope deadlines (the fallback)."""
        self.running = True
        self.now = trio.lowlevel.current_clock().current_time
        task_status.started()
        try:
            last_scan = -math.inf
            while True:
                with trio.CancelScope(deadline=self._next) as sleep:
                    self._sleep = sleep
                    await trio.sleep_forever()
                self._sleep = None
                now = trio.current_time()
                if now < last_scan + MIN_SCAN_INTERVAL:  # the sum the deadline was set to
                    self._next = last_scan + MIN_SCAN_INTERVAL
                    continue
                last_scan = now
                self._next = self._expire(now)
        finally:
            self.running = False
            self.now = trio.current_time
            self._sleep = None

    def _expire(self, now: float) -> float:
        """Expire what is due; returns the earliest deadline left."""
        earliest = math.inf
        for timer in list(self._timers):
            if timer.deadline <= now:
                timer.deadline = math.inf
                timer.expire()
            elif timer.deadline < earliest:
                earliest = timer.deadline
        return earliest
