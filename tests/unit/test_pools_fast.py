"""A pool with one address that has a share picks it without hashing: the same choice as
the weighted rendezvous hash over every entry, and the same as SourceAddresses.choose when
the sender takes it without building the sets of disabled addresses."""

from __future__ import annotations

import math
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from zonemta.engine.delivery.pools import AddressPool, PoolAddress, _unit_hash
from zonemta.engine.delivery.transmit import Sender
from zonemta.engine.delivery.zones import SourceAddresses


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
    assert pool.single == PoolAddress("192.0.2.1", "a")
    assert pool.choose("k") == PoolAddress("192.0.2.1", "a")
    assert pool.choose("k", disabled={"192.0.2.1"}) is None
    two = AddressPool([PoolAddress("192.0.2.1", "a"), PoolAddress("192.0.2.2", "b")], ipv6=False)
    assert two.single is None


class _Domains:
    def __init__(self, disabled: dict[str, frozenset[str]]) -> None:
        self.disabled = disabled

    def settings(self, domain: str) -> SimpleNamespace:
        return SimpleNamespace(disabled_addresses=self.disabled.get(domain, frozenset()))


class _Blacklist:
    def __init__(self, listed: dict[str, frozenset[str]]) -> None:
        self.listed = listed

    def disabled_for(self, domain: str) -> frozenset[str]:
        return self.listed.get(domain, frozenset())


DOMAINS = ["a.test", "b.test", "c.test"]
address_sets = st.dictionaries(
    st.sampled_from(DOMAINS), st.frozensets(st.sampled_from(ADDRESSES), max_size=3), max_size=3
)


@given(
    st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from([None, 0.0, 0.5, 1.0]), min_size=3, max_size=3),
    st.lists(st.tuples(st.sampled_from(DOMAINS), st.text(max_size=8)), min_size=1, max_size=3),
    address_sets,
    address_sets | st.none(),
)
def test_the_senders_choice_is_the_pools_long_way(
    addresses: list[str],
    ratios: list[float | None],
    rows: list[tuple[str, str]],
    disabled: dict[str, frozenset[str]],
    listed: dict[str, frozenset[str]] | None,
) -> None:
    entries = [PoolAddress(a, "mta.test", r) for a, r in zip(addresses, ratios, strict=False)]
    try:
        sources = SourceAddresses(AddressPool(entries, ipv6=True), "mta.test")
    except ValueError:
        return
    blacklist = _Blacklist(listed) if listed is not None else None
    sender = SimpleNamespace(sources=sources, domains=_Domains(disabled), blacklist=blacklist)
    deliveries = [SimpleNamespace(domain=d, key=k) for d, k in rows]
    domains = {row.domain for row in deliveries}
    excluded = set().union(*(disabled.get(d, frozenset()) for d in domains))
    blacklisted = set().union(*(blacklist.disabled_for(d) for d in domains)) if blacklist else set()
    expected = sources.choose(str(rows[0][1]), excluded=excluded, blacklisted=blacklisted)
    assert Sender.source_for(sender, deliveries) == expected  # type: ignore[arg-type]
