"""When to try a deferred delivery again, and when to give up."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import attrs

from zonemta.statemachine import Trigger


@attrs.frozen
class RetryPolicy:
    """``schedule[n]`` is the wait after the (n+1)-th failed attempt; when a delivery has
    failed ``len(schedule) + 1`` times, or has been queued longer than ``max_queue_time``,
    the next temporary failure bounces it."""

    schedule: tuple[float, ...]
    max_queue_time: float

    @classmethod
    def from_config(cls, schedule: Sequence[timedelta], max_queue_time: timedelta) -> RetryPolicy:
        return cls(tuple(t.total_seconds() for t in schedule), max_queue_time.total_seconds())

    def on_temporary_failure(self, *, attempts: int, created: float, now: float) -> Trigger:
        """Classify a temporary failure of a delivery that had ``attempts`` failures before."""
        if attempts >= len(self.schedule) or now - created >= self.max_queue_time:
            return Trigger.RETRIES_EXHAUSTED
        return Trigger.TRANSIENT_FAILURE

    def next_attempt(self, *, attempts: int, now: float) -> float:
        """When to retry after the failure that follows ``attempts`` earlier failures."""
        return now + self.schedule[min(attempts, len(self.schedule) - 1)]

    def is_expired(self, *, created: float, now: float) -> bool:
        return now - created >= self.max_queue_time
