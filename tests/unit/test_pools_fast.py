"""A pool with one address that has a share picks it without hashing: the same choice as
the weighted rendezvous hash over every entry."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from zonemta.engine.delivery.pools import AddressPool, PoolAddress, _unit_hash


def by_hash(pool: AddressPool, key: str, disabled: set[str]) -> PoolAddress | None:
    """The choice computed the long way (every entry's score)."""
    best, best_score = None, -math.inf
    for entry, weight in zip(pool.entries, pool._weights, strict=True):
        if weight <= 0 or entry.address in disabled:
            continue
        score = -weight / math.log(_unit_hash(key, entry.address))
        if score > best_score:
            best, best_score = entry, score
    return best


ADDRESSES = ["", "192.0.2.1", "192.0.2.2", "2001:db8::1"]


@given(
    st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from([None, 0.0, 0.5, 1.0]), min_size=3, max_size=3),
    st.text(max_size=12),
    st.sets(st.sampled_from(ADDRESSES)),
    st.booleans(),
)
def test_the_choice_is_the_hashed_one(
    addresses: list[str], ratios: list[float | None], key: str, disabled: set[str], ipv6: bool
) -> None:
    entries = [PoolAddress(a, "mta.test", r) for a, r in zip(addresses, ratios, strict=False)]
    try:
        pool = AddressPool(entries, ipv6=ipv6)
    except ValueError:  # ratios that do not add up, or nothing usable
        return
    assert pool.choose(key, disabled=disabled) == by_hash(pool, key, disabled)


def test_one_address_is_chosen_unless_disabled() -> None:
    pool = AddressPool(
        [PoolAddress("192.0.2.1", "a"), PoolAddress("192.0.2.2", "b", 0.0)], ipv6=False
    )
    assert pool._single == PoolAddress("192.0.2.1", "a")
    assert pool.choose("k") == PoolAddress("192.0.2.1", "a")
    assert pool.choose("k", disabled={"192.0.2.1"}) is None
    two = AddressPool([PoolAddress("192.0.2.1", "a"), PoolAddress("192.0.2.2", "b")], ipv6=False)
    assert two._single is None
