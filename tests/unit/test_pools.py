from __future__ import annotations

import collections

import pytest

from zonemta.engine.delivery.pools import AddressPool, PoolAddress, PoolError, weights

FOUR = [PoolAddress(f"127.0.0.{n}", f"mta{n}.test") for n in range(2, 6)]


def test_choice_is_stable_for_a_key() -> None:
    pool = AddressPool(FOUR, ipv6=False)
    assert {pool.choose("abc.001") for _ in range(10)} == {pool.choose("abc.001")}


def test_shares_follow_the_ratios_over_10000_choices() -> None:
    entries = [
        PoolAddress("127.0.0.2", "a", ratio=0.05),
        PoolAddress("127.0.0.3", "b"),
        PoolAddress("127.0.0.4", "c"),
    ]
    pool = AddressPool(entries, ipv6=False)
    counts = collections.Counter(pool.choose(f"id{n}.001").address for n in range(10_000))  # type: ignore[union-attr]
    # Expected 500 / 4750 / 4750; a binomial sd is about 22 and 50: allow 4 sd.
    assert abs(counts["127.0.0.2"] - 500) < 90
    assert abs(counts["127.0.0.3"] - 4750) < 200
    assert abs(counts["127.0.0.4"] - 4750) < 200


def test_disabling_an_address_moves_only_its_deliveries() -> None:
    pool = AddressPool(FOUR, ipv6=False)
    before = {f"k{n}": pool.choose(f"k{n}") for n in range(2000)}
    after = {k: pool.choose(k, disabled={"127.0.0.3"}) for k in before}
    for key, entry in before.items():
        assert entry is not None
        if entry.address == "127.0.0.3":
            assert after[key] is not None and after[key].address != "127.0.0.3"  # type: ignore[union-attr]
        else:
            assert after[key] == entry


def test_all_disabled_gives_none() -> None:
    pool = AddressPool(FOUR, ipv6=False)
    assert pool.choose("k", disabled={e.address for e in FOUR}) is None


def test_ipv6_addresses_join_only_when_allowed() -> None:
    entries = [PoolAddress("127.0.0.2", "v4"), PoolAddress("::1", "v6")]
    assert [e.address for e in AddressPool(entries, ipv6=False).entries] == ["127.0.0.2"]
    both = AddressPool(entries, ipv6=True)
    assert both.choose_for_family("k", ipv6=True).address == "::1"  # type: ignore[union-attr]
    assert both.choose_for_family("k", ipv6=False).address == "127.0.0.2"  # type: ignore[union-attr]


def test_ratio_errors() -> None:
    with pytest.raises(PoolError, match="more than 1"):
        weights([PoolAddress("a", "a", 0.7), PoolAddress("b", "b", 0.5)])
    with pytest.raises(PoolError, match="leaving nothing"):
        weights([PoolAddress("a", "a", 1.0), PoolAddress("b", "b")])
    with pytest.raises(PoolError, match="no usable"):
        AddressPool([PoolAddress("::1", "v6")], ipv6=False)
    assert weights([PoolAddress("a", "a", 0.2), PoolAddress("b", "b")]) == [0.2, 0.8]
