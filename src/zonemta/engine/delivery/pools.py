"""IP pools: which local address a delivery is sent from.

Weighted rendezvous hashing: every address gets a score from a hash of (delivery key,
address) scaled by its weight, and the highest score wins. So the choice is stable (a retry
of the same delivery uses the same address), an address with ``ratio`` 0.05 gets about 5% of
deliveries, and when an address is disabled (blacklisted for a domain, or excluded by
``disabled_addresses``) only the deliveries that were on it move; all others keep theirs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence

import attrs


@attrs.frozen
class PoolAddress:
    """One local address of a pool. ``address`` "" means "let the OS choose" (the default
    pool when nothing is configured); ``name`` is the EHLO name used from it."""

    address: str
    name: str
    ratio: float | None = None

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address


class PoolError(ValueError):
    """The pool's ratios do not add up."""


def weights(entries: Sequence[PoolAddress]) -> list[float]:
    """Each entry's share: its ``ratio``, or an equal part of what the ratios leave."""
    fixed = sum(e.ratio for e in entries if e.ratio is not None)
    free = [e for e in entries if e.ratio is None]
    if fixed > 1.0 + 1e-9:
        raise PoolError(f"ratios add up to {fixed:g}, more than 1")
    if free and fixed >= 1.0 - 1e-9:
        raise PoolError("ratios add up to 1, leaving nothing for addresses without a ratio")
    rest = (1.0 - fixed) / len(free) if free else 0.0
    return [e.ratio if e.ratio is not None else rest for e in entries]


def _unit_hash(key: str, address: str) -> float:
    digest = hashlib.blake2b(f"{key}\0{address}".encode(), digest_size=8).digest()
    # In (0, 1): never 0 or 1, so the logarithm below is finite and negative.
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


class AddressPool:
    """The addresses a zone may send from."""

    def __init__(self, entries: Sequence[PoolAddress], *, ipv6: bool) -> None:
        usable = [e for e in entries if ipv6 or not e.is_ipv6]
        if not usable:
            raise PoolError("no usable address in the pool")
        self.entries = tuple(usable)
        self._weights = weights(self.entries)
        # The only address with a share, when there is one: it wins whatever the hash says.
        shared = [e for e, w in zip(self.entries, self._weights, strict=True) if w > 0]
        self.single = shared[0] if len(shared) == 1 else None

    def choose(self, key: str, *, disabled: Collection[str] = ()) -> PoolAddress | None:
        """The address for delivery ``key``, skipping ``disabled`` addresses; None when every
        address with a share is disabled."""
        single = self.single
        if single is not None:  # no hash to compute: its score beats -inf
            return None if single.address in disabled else single
        best: PoolAddress | None = None
        best_score = -math.inf
        for entry, weight in zip(self.entries, self._weights, strict=True):
            if weight <= 0 or entry.address in disabled:
                continue
            score = -weight / math.log(_unit_hash(key, entry.address))
            if score > best_score:
                best, best_score = entry, score
        return best

    def choose_for_family(
        self, key: str, *, ipv6: bool, disabled: Collection[str] = ()
    ) -> PoolAddress | None:
        """Like :meth:`choose`, among the addresses of one family (or the OS-chosen one)."""
        others = {e.address for e in self.entries if e.address and e.is_ipv6 != ipv6}
        return self.choose(key, disabled={*disabled, *others})
