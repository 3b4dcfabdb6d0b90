"""Queue ids: sortable by creation time, unique across instances sharing a store.

An id is 14 hex digits of milliseconds since the epoch times 4096 plus a 12-bit counter (as
ZoneMTA's seq-index does), followed by 6 hex digits that are random per process: 20 hex
digits in all, e.g. ``019abc2d4e5f6001a3f09c``.
"""

from __future__ import annotations

import secrets
import time


class QueueIdGenerator:
    """Makes queue ids. Not thread-safe; one per process is enough (it is cheap)."""

    def __init__(self, clock: object = time.time, suffix: str | None = None) -> None:
        self._clock = clock
        self._suffix = suffix if suffix is not None else secrets.token_hex(3)
        self._last = 0

    def next_id(self) -> str:
        clock = self._clock
        assert callable(clock)
        value = int(clock() * 1000) * 4096
        # Strictly increasing even when the clock stands still or steps back.
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return f"{value:014x}{self._suffix}"
