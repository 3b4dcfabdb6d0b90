"""A recipient domain's (or site's) ``max_connections`` held across instances that share a
MongoDB store.

Each instance limits its own deliveries to a destination (``ZoneScheduler``); with several
instances on one store, the deliveries the *others* hold leased for the destination count
against the limit too. Before each lease query, an instance reads how many deliveries of the
zone the others hold leased, per recipient domain (:meth:`Store.leased_elsewhere`, one
query), and counts them in: a destination whose deliveries here and elsewhere reach its
limit is left out of the lease query, and an attempt that would go over it is given back
before it connects. Instances that lease in the same moment (between one's read and its
lease) may together go over the limit until one of those attempts ends; two that both find
the limit used give their deliveries back and stay away for a random moment, so they do
not keep colliding.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable

from zonemta.store import Store, StoreError

log = logging.getLogger(__name__)

#: How long (seconds, chosen at random between the two) a destination whose limit was found
#: used by other instances is left out of this instance's lease query.
COOL_DOWN = (0.5, 1.5)
SHARED_CONNECTIONS_USED = (
    "the destination's max_connections is used by the instances sharing the store"
)


class SharedConnections:
    def __init__(
        self,
        store: Store,
        *,
        owner: str,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.owner = owner
        self.clock = clock
        self._elsewhere: dict[str, dict[str, int]] = {}  # zone -> domain -> leased

    async def refresh(self, zone: str) -> None:
        """Read the other instances' leases in ``zone``. A store failure keeps the last
        figures (logged)."""
        now = self.clock()
        try:
            self._elsewhere[zone] = await self.store.leased_elsewhere(
                zone, owner=self.owner, now=now
            )
        except StoreError as exc:
            log.warning("reading other instances' leases in zone %s failed: %s", zone, exc)

    def elsewhere(self, zone: str, domains: Iterable[str]) -> int:
        """Deliveries to ``domains`` the other instances hold leased in ``zone``."""
        counts = self._elsewhere.get(zone, {})
        return sum(counts.get(domain, 0) for domain in domains)

    def domains_elsewhere(self, zone: str) -> list[str]:
        """The recipient domains other instances hold deliveries of in ``zone``."""
        return list(self._elsewhere.get(zone, {}))

    @staticmethod
    def cool_down() -> float:
        return random.uniform(*COOL_DOWN)
