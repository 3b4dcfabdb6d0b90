"""The store contract for suspensions and the skip lists of the lease query; part of
:class:`tests.store_contract.StoreContract`, so every backend passes it unchanged."""

from __future__ import annotations

from zonemta.store import NewDelivery, Store, Suspension

ZONE = "default"
OWNER = "instance-a"


def _rcpts(*specs: tuple[str, str]) -> list[NewDelivery]:
    return [
        NewDelivery(seq=i, recipient=r, domain=r.rpartition("@")[2], zone=z, next_attempt=1.0)
        for i, (r, z) in enumerate(specs)
    ]


async def _put(store: Store, message_id: str, deliveries: list[NewDelivery]) -> None:
    from tests.store_contract import put

    await put(store, message_id, deliveries)


class SuspensionContract:
    async def test_lease_skips_messages(self, store: Store) -> None:
        await _put(store, "held", _rcpts(("a@x.example", ZONE)))
        await _put(store, "free", _rcpts(("b@x.example", ZONE)))
        leased = await store.lease(
            ZONE, owner=OWNER, now=10.0, lease_until=100.0, limit=10, skip_messages={"held"}
        )
        assert [d.message_id for d in leased] == ["free"]

    async def test_suspensions_list_and_expire(self, store: Store) -> None:
        forever = Suspension("s1", 10.0, zone="default", reason="maintenance", who="ops")
        brief = Suspension("s2", 11.0, domain="x.example", until=50.0, rule="r", response="421")
        await store.add_suspension(forever)
        await store.add_suspension(brief)
        assert await store.list_suspensions(20.0) == [forever, brief]
        assert await store.list_suspensions(60.0) == [forever]
        assert await store.expire_suspensions(60.0) == [brief]
        assert await store.expire_suspensions(60.0) == []
        assert await store.list_suspensions(0.0) == [forever]

    async def test_removing_a_suspension_credits_its_held_time(self, store: Store) -> None:
        await _put(store, "m1", _rcpts(("a@x.example", ZONE), ("b@y.example", ZONE)))
        await _put(store, "m2", _rcpts(("c@x.example", "other")))
        await store.add_suspension(Suspension("s", 100.0, zone=ZONE, domain="x.example"))
        removed = await store.remove_suspension("s", now=130.0)
        assert removed is not None and removed.id == "s"
        assert await store.remove_suspension("s", now=130.0) is None
        created = {(d.message_id, d.domain): d.created for d in await store.deliveries_of("m1")}
        assert created == {("m1", "x.example"): 80.0, ("m1", "y.example"): 50.0}  # +30 s
        (other,) = await store.deliveries_of("m2")
        assert other.created == 50.0  # another zone: not held

    async def test_expiry_credits_until_the_end_and_message_holds_credit(
        self, store: Store
    ) -> None:
        await _put(store, "m1", _rcpts(("a@x.example", ZONE), ("b@y.example", "other")))
        await store.add_suspension(Suspension("s", 100.0, message_id="m1", until=120.0))
        await store.add_suspension(Suspension("t", 100.0, source="127.0.0.2", until=120.0))
        assert {e.id for e in await store.expire_suspensions(500.0)} == {"s", "t"}
        assert [d.created for d in await store.deliveries_of("m1")] == [70.0, 70.0]  # +20 s

    async def test_held_time_is_credited_to_a_sites_domains(self, store: Store) -> None:
        await _put(store, "m1", _rcpts(("a@x.example", ZONE), ("b@y.example", ZONE)))
        await _put(store, "m2", _rcpts(("c@x.example", "other"), ("d@z.example", ZONE)))
        await store.credit_held_time(zone=ZONE, domains=["x.example", "z.example"], seconds=30)
        created = {
            (d.message_id, d.domain): d.created
            for m in ("m1", "m2")
            for d in await store.deliveries_of(m)
        }
        assert created == {
            ("m1", "x.example"): 80.0,
            ("m1", "y.example"): 50.0,  # not one of the domains
            ("m2", "x.example"): 50.0,  # another zone
            ("m2", "z.example"): 80.0,
        }
        await store.credit_held_time(zone=None, domains=["x.example"], seconds=5)
        assert [d.created for d in await store.deliveries_of("m2")] == [55.0, 80.0]

    async def test_leases_held_by_other_instances_are_counted_per_domain(
        self, store: Store
    ) -> None:
        await _put(store, "m1", _rcpts(("a@x.example", ZONE), ("b@x.example", ZONE)))
        await _put(store, "m2", _rcpts(("c@y.example", ZONE), ("d@x.example", "other")))
        await _put(store, "m3", _rcpts(("e@x.example", ZONE)))
        assert await store.leased_elsewhere(ZONE, owner=OWNER, now=10.0) == {}
        await store.lease(ZONE, owner="b", now=10.0, lease_until=100.0, limit=3)
        await store.lease("other", owner="b", now=10.0, lease_until=100.0, limit=1)
        await store.lease(ZONE, owner=OWNER, now=10.0, lease_until=100.0, limit=1)
        assert await store.leased_elsewhere(ZONE, owner=OWNER, now=20.0) == {
            "x.example": 2,
            "y.example": 1,
        }
        assert await store.leased_elsewhere(ZONE, owner="b", now=20.0) == {"x.example": 1}
        assert await store.leased_elsewhere(ZONE, owner=OWNER, now=100.0) == {}  # expired

    async def test_counters_add_up_and_expire(self, store: Store) -> None:
        assert await store.add_to_counter("w:a", 2, expires=100.0) == 2
        assert await store.add_to_counter("w:a", 3, expires=50.0) == 5
        assert await store.add_to_counter("w:b", 1, expires=200.0) == 1
        assert await store.get_counters(["w:a", "w:b", "w:c"]) == {"w:a": 5, "w:b": 1}
        assert await store.purge_counters(150.0) == 1  # w:a kept its later expiry, 100
        assert await store.get_counters(["w:a", "w:b"]) == {"w:b": 1}

    async def test_a_slowing_entry_round_trips_and_credits_nothing(self, store: Store) -> None:
        await _put(store, "m1", _rcpts(("a@x.example", ZONE)))
        slow = Suspension("s", 100.0, zone=ZONE, domain="x.example", max_connections=2)
        await store.add_suspension(slow)
        assert await store.list_suspensions(0.0) == [slow]
        assert not slow.holds(ZONE, "x.example", "m1")
        assert await store.remove_suspension("s", now=500.0) == slow
        assert [d.created for d in await store.deliveries_of("m1")] == [50.0]
