"""Recipient-domain (or site) rates held across instances that share a MongoDB store.

Each instance keeps its own token bucket (:class:`~zonemta.engine.delivery.ratelimit.TokenBucket`),
which paces its own deliveries; with several instances on one store, a delivery must also
claim a place in a counter the instances share: ``rate:<domain or site>:<window>``, where
the windows are the rate's period laid end to end on the wall clock (``[k * per, (k + 1) *
per)``). A claim past ``count`` in the current window is refused: the delivery is given back
without an attempt, and this instance leases nothing more for the domain until the next
window. So all instances together send at most ``count`` deliveries per window; as with any
fixed window, up to twice ``count`` may fall within one period that straddles two windows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from zonemta.conf.rates import Rate
from zonemta.store import Store, StoreError

log = logging.getLogger(__name__)

SHARED_RATE_USED = "the rate's window is used up by the instances sharing the store"


class SharedRates:
    def __init__(self, store: Store, *, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._blocked: dict[str, float] = {}  # key -> when its next window begins

    def blocked_until(self, key: str) -> float | None:
        """When ``key`` may claim again (engine clock), if its window is used up."""
        until = self._blocked.get(key)
        if until is None:
            return None
        if until <= self.clock():
            del self._blocked[key]
            return None
        return until

    async def claim(self, key: str, rate: Rate) -> bool:
        """Claim one delivery to ``key`` in the current window. False when the window is
        used up (then :meth:`blocked_until` says until when). A store failure lets the
        delivery go (logged): the local bucket still paces it."""
        now = self.clock()
        window = math.floor(now / rate.per)
        ends = (window + 1) * rate.per
        try:
            total = await self.store.add_to_counter(
                f"rate:{key}:{rate.per:g}:{window}", 1, expires=ends + rate.per
            )
        except StoreError as exc:
            log.warning("claiming a shared rate slot for %s failed: %s", key, exc)
            return True
        if total > rate.count:
            self._blocked[key] = ends
            return False
        return True
