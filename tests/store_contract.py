"""The store contract: every queue backend passes these tests unchanged.

A backend's test module subclasses :class:`StoreContract` and provides a ``store`` fixture
that yields an open, running :class:`~zonemta.store.base.Store` on empty storage::

    class TestSqliteContract(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path):
            async with open_sqlite_store(tmp_path / "q", chunk_size=16 * 1024) as store:
                yield store

Only the abstract API is used here. Times are plain numbers: the store never reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from tests.store_suspension_contract import SuspensionContract
from zonemta.store import (
    BlacklistEntry,
    DeliveryKey,
    FixedRoute,
    LeaseLost,
    MessageMeta,
    MessageRecord,
    NewDelivery,
    RowState,
    Store,
    StoreError,
    ZoneCounts,
)

ZONE = "default"
OWNER = "instance-a"
OTHER = "instance-b"


def record(
    message_id: str, *, body_size: int = 0, meta: MessageMeta | None = None
) -> MessageRecord:
    return MessageRecord(
        id=message_id,
        mail_from="sender@example.org",
        headers=b"From: sender@example.org\r\nSubject: test \xc3\xa9\r\n",
        body_size=body_size,
        received_at=50.0,
        meta=meta if meta is not None else MessageMeta(interface="feeder"),
    )


def rcpts(*specs: tuple[str, str, float]) -> list[NewDelivery]:
    """``(recipient, zone, next_attempt)`` triples as deliveries numbered from 0."""
    return [
        NewDelivery(seq=i, recipient=r, domain=r.rpartition("@")[2], zone=z, next_attempt=t)
        for i, (r, z, t) in enumerate(specs)
    ]


async def put(
    store: Store,
    message_id: str,
    deliveries: Sequence[NewDelivery] | None = None,
    *,
    body: bytes = b"Hello\r\n",
    piece: int = 4096,
    meta: MessageMeta | None = None,
) -> MessageRecord:
    """Receive ``body`` in ``piece``-sized writes and commit it with ``deliveries``."""
    if deliveries is None:
        deliveries = rcpts(("rcpt@example.com", ZONE, 100.0))
    writer = store.new_body(message_id)
    for start in range(0, len(body), piece):
        await writer.write(body[start : start + piece])
    message = record(message_id, body_size=len(body), meta=meta)
    await store.commit_message(message, writer, deliveries)
    return message


async def body_of(store: Store, message_id: str) -> bytes:
    return b"".join([chunk async for chunk in store.read_body(message_id)])


def big_body(size: int) -> bytes:
    line = b"".join(bytes([33 + (i % 90)]) for i in range(76)) + b"\r\n"
    return (line * (size // len(line) + 1))[:size]


class StoreContract(SuspensionContract):
    """Behaviour every backend must show. Subclasses provide the ``store`` fixture."""

    # -- storing and reading ---------------------------------------------------------------

    async def test_commit_then_read_back(self, store: Store) -> None:
        body = big_body(1024 * 1024) + b"\x00\xff 8bit \xe2\x82\xac\r\n"
        meta = MessageMeta(
            interface="feeder",
            client_address="2001:db8::1",
            helo="client.example",
            transtype="ESMTPSA",
            body_8bit=True,
            smtputf8=True,
            user="andris",
            dkim_bh="47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            routes={0: FixedRoute(mx="10.0.0.5:2525"), 1: FixedRoute(http_url="http://h/x")},
            extra={"nested": {"ip": "127.0.0.1", "n": [1, 2]}, "later": None},
        )
        deliveries = rcpts(("a@one.example", ZONE, 100.0), ("b@two.example", "bulk", 120.0))
        message = await put(store, "msg1", deliveries, body=body, piece=7000, meta=meta)

        assert await store.get_message("msg1") == message
        assert await body_of(store, "msg1") == body
        rows = await store.deliveries_of("msg1")
        assert [(d.seq, d.recipient, d.domain, d.zone) for d in rows] == [
            (0, "a@one.example", "one.example", ZONE),
            (1, "b@two.example", "two.example", "bulk"),
        ]
        for row, new in zip(rows, deliveries, strict=True):
            assert row.key == DeliveryKey("msg1", new.seq)
            assert row.state is RowState.QUEUED
            assert row.attempts == 0
            assert row.created == message.received_at
            assert row.next_attempt == new.next_attempt
            assert (row.first_failure, row.last_response) == (None, None)
            assert (row.lease_owner, row.lease_until) == (None, None)

    async def test_meta_defaults_round_trip(self, store: Store) -> None:
        message = await put(store, "plain", meta=MessageMeta())
        stored = await store.get_message("plain")
        assert stored == message
        assert stored.meta.routes == {} and stored.meta.extra == {}

    async def test_meta_that_is_not_json_is_refused_and_nothing_stored(self, store: Store) -> None:
        with pytest.raises(StoreError, match="meta of odd"):
            await put(store, "odd", meta=MessageMeta(extra={"when": object()}))
        assert await store.get_message("odd") is None
        assert await store.zone_counts(1000.0) == {}

    async def test_body_chunks_come_in_order_whatever_the_writes(self, store: Store) -> None:
        body = bytes(range(256)) * 300
        writer = store.new_body("odd")
        sizes = [0, 1, 2, 5000, 0, 17, 30000, 1]
        pos = 0
        for size in sizes:
            await writer.write(body[pos : pos + size])
            pos += size
        await writer.write(body[pos:])
        assert writer.size == len(body)
        await store.commit_message(
            record("odd", body_size=len(body)), writer, rcpts(("x@y.z", ZONE, 1.0))
        )
        assert await body_of(store, "odd") == body

    async def test_empty_body(self, store: Store) -> None:
        await put(store, "empty", body=b"")
        assert await body_of(store, "empty") == b""
        assert (await store.get_message("empty")) is not None

    async def test_unknown_message(self, store: Store) -> None:
        assert await store.get_message("nope") is None
        assert await store.deliveries_of("nope") == []
        with pytest.raises(StoreError):
            await body_of(store, "nope")

    async def test_abort_leaves_nothing(self, store: Store) -> None:
        writer = store.new_body("aborted")
        for _ in range(40):
            await writer.write(b"x" * 5000)
        await writer.abort()
        await writer.abort()  # safe twice
        assert await store.get_message("aborted") is None
        with pytest.raises(StoreError):
            await body_of(store, "aborted")
        assert await store.remove_orphans() == 0
        assert await store.zone_counts(1000.0) == {}

    async def test_remove_orphans_spares_a_body_being_written(self, store: Store) -> None:
        body = big_body(200_000)
        writer = store.new_body("slow")
        await writer.write(body[:150_000])
        assert await store.remove_orphans() == 0
        await writer.write(body[150_000:])
        await store.commit_message(
            record("slow", body_size=len(body)), writer, rcpts(("a@b.c", ZONE, 1.0))
        )
        assert await store.remove_orphans() == 0
        assert await body_of(store, "slow") == body

    async def test_duplicate_id_fails_and_keeps_the_first(self, store: Store) -> None:
        first = await put(store, "dup", body=b"first\r\n")
        writer = store.new_body("dup")
        await writer.write(b"second\r\n")
        with pytest.raises(StoreError):
            await store.commit_message(
                record("dup", body_size=8), writer, rcpts(("o@p.q", ZONE, 1.0))
            )
        assert await store.get_message("dup") == first
        assert await body_of(store, "dup") == b"first\r\n"
        assert len(await store.deliveries_of("dup")) == 1

    async def test_many_concurrent_commits_are_all_stored(self, store: Store) -> None:
        async def one(i: int) -> None:
            await put(store, f"m{i:04d}", body=f"body {i}\r\n".encode() * 100)

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
        for i in range(0, 200, 7):
            assert await body_of(store, f"m{i:04d}") == f"body {i}\r\n".encode() * 100
        assert await store.zone_counts(100.0) == {ZONE: ZoneCounts(active=200, deferred=0)}

    # -- leasing ---------------------------------------------------------------------------

    async def test_lease_orders_by_due_time_and_limits(self, store: Store) -> None:
        times = [105.0, 101.0, 103.0, 104.0, 102.0]
        for i, t in enumerate(times):
            await put(store, f"m{i}", rcpts((f"r{i}@example.com", ZONE, t)))
        leased = await store.lease(ZONE, owner=OWNER, now=200.0, lease_until=500.0, limit=3)
        assert [d.next_attempt for d in leased] == [101.0, 102.0, 103.0]
        for d in leased:
            assert d.state is RowState.LOCKED
            assert (d.lease_owner, d.lease_until) == (OWNER, 500.0)
        rest = await store.lease(ZONE, owner=OWNER, now=200.0, lease_until=500.0, limit=10)
        assert [d.next_attempt for d in rest] == [104.0, 105.0]
        assert await store.lease(ZONE, owner=OWNER, now=200.0, lease_until=500.0, limit=10) == []

    async def test_lease_only_due_rows_of_the_zone(self, store: Store) -> None:
        await put(
            store,
            "m",
            rcpts(
                ("a@x.example", ZONE, 100.0),
                ("b@x.example", ZONE, 100.5),
                ("c@x.example", "other", 50.0),
            ),
        )
        leased = await store.lease(ZONE, owner=OWNER, now=100.0, lease_until=400.0, limit=10)
        assert [d.recipient for d in leased] == ["a@x.example"]  # next_attempt == now is due
        other = await store.lease("other", owner=OWNER, now=100.0, lease_until=400.0, limit=10)
        assert [d.recipient for d in other] == ["c@x.example"]
        assert await store.lease("nozone", owner=OWNER, now=1e9, lease_until=2e9, limit=10) == []

    async def test_lease_skips_domains(self, store: Store) -> None:
        await put(
            store,
            "m",
            rcpts(
                ("a@slow.example", ZONE, 1.0),
                ("b@fast.example", ZONE, 2.0),
                ("c@busy.example", ZONE, 3.0),
            ),
        )
        leased = await store.lease(
            ZONE,
            owner=OWNER,
            now=10.0,
            lease_until=100.0,
            limit=10,
            skip_domains={"slow.example", "busy.example"},
        )
        assert [d.domain for d in leased] == ["fast.example"]

    async def test_concurrent_leasers_never_share_a_row(self, store: Store) -> None:
        for m in range(10):
            await put(store, f"m{m}", rcpts(*[(f"r{i}@d{i}.example", ZONE, 1.0) for i in range(5)]))
        got: dict[str, list[DeliveryKey]] = {}

        async def leaser(owner: str) -> None:
            got[owner] = []
            while True:
                batch = await store.lease(ZONE, owner=owner, now=10.0, lease_until=100.0, limit=3)
                if not batch:
                    return
                assert all(d.lease_owner == owner for d in batch)
                got[owner].extend(d.key for d in batch)

        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(leaser, f"owner{n}")
        keys = [k for ks in got.values() for k in ks]
        assert len(keys) == 50
        assert len(set(keys)) == 50

    async def test_leased_rows_wait_until_the_lease_expires(self, store: Store) -> None:
        await put(store, "m")
        [first] = await store.lease(ZONE, owner=OWNER, now=100.0, lease_until=200.0, limit=5)
        assert await store.lease(ZONE, owner=OTHER, now=199.0, lease_until=300.0, limit=5) == []
        [again] = await store.lease(ZONE, owner=OTHER, now=201.0, lease_until=300.0, limit=5)
        assert again.key == first.key
        assert (again.lease_owner, again.lease_until) == (OTHER, 300.0)
        with pytest.raises(LeaseLost):
            await store.complete(first.key, owner=OWNER)
        with pytest.raises(LeaseLost):
            await store.defer(first.key, owner=OWNER, now=201.0, next_attempt=400.0, response="x")
        await store.complete(again.key, owner=OTHER)
        assert await store.get_message("m") is None

    async def test_defer(self, store: Store) -> None:
        await put(store, "m")
        [d] = await store.lease(ZONE, owner=OWNER, now=100.0, lease_until=200.0, limit=1)
        await store.defer(d.key, owner=OWNER, now=110.0, next_attempt=400.0, response="451 later")
        [row] = await store.deliveries_of("m")
        assert row.state is RowState.DEFERRED
        assert (row.attempts, row.first_failure, row.last_response) == (1, 110.0, "451 later")
        assert (row.next_attempt, row.lease_owner, row.lease_until) == (400.0, None, None)
        assert await store.lease(ZONE, owner=OWNER, now=399.0, lease_until=500.0, limit=1) == []
        [d] = await store.lease(ZONE, owner=OWNER, now=400.0, lease_until=500.0, limit=1)
        assert d.attempts == 1
        await store.defer(d.key, owner=OWNER, now=410.0, next_attempt=900.0, response="452 full")
        [row] = await store.deliveries_of("m")
        assert (row.attempts, row.first_failure, row.last_response) == (2, 110.0, "452 full")
        with pytest.raises(LeaseLost):  # no longer leased at all
            await store.defer(d.key, owner=OWNER, now=420.0, next_attempt=950.0, response="x")

    async def test_defer_remembers_the_delay_notice_for_good(self, store: Store) -> None:
        await put(store, "m")
        [d] = await store.lease(ZONE, owner=OWNER, now=100.0, lease_until=200.0, limit=1)
        assert not d.delay_notified
        await store.defer(d.key, owner=OWNER, now=110.0, next_attempt=300.0, response="451 a")
        [d] = await store.lease(ZONE, owner=OWNER, now=300.0, lease_until=400.0, limit=1)
        assert not d.delay_notified
        await store.defer(
            d.key, owner=OWNER, now=310.0, next_attempt=500.0, response="451 b", delay_notified=True
        )
        [row] = await store.deliveries_of("m")
        assert row.delay_notified and row.attempts == 2
        [d] = await store.lease(ZONE, owner=OWNER, now=500.0, lease_until=600.0, limit=1)
        assert d.delay_notified  # the leased row carries it to the next attempt
        await store.defer(d.key, owner=OWNER, now=510.0, next_attempt=700.0, response="451 c")
        [row] = await store.deliveries_of("m")
        assert row.delay_notified  # a later deferral does not clear it

    async def test_complete_removes_body_after_the_last_delivery(self, store: Store) -> None:
        body = big_body(100_000)
        await put(
            store, "m", rcpts(("a@x.example", ZONE, 1.0), ("b@y.example", ZONE, 1.0)), body=body
        )
        a, b = await store.lease(ZONE, owner=OWNER, now=10.0, lease_until=100.0, limit=5)
        await store.complete(a.key, owner=OWNER)
        assert [d.key for d in await store.deliveries_of("m")] == [b.key]
        assert await body_of(store, "m") == body
        await store.complete(b.key, owner=OWNER)
        assert await store.deliveries_of("m") == []
        assert await store.get_message("m") is None
        with pytest.raises(StoreError):
            await body_of(store, "m")
        assert await store.remove_orphans() == 0
        with pytest.raises(LeaseLost):
            await store.complete(b.key, owner=OWNER)

    async def test_lease_lost_for_foreign_owner_or_unleased_row(self, store: Store) -> None:
        await put(store, "m", rcpts(("a@x.example", ZONE, 1.0), ("b@x.example", ZONE, 2.0)))
        [d] = await store.lease(ZONE, owner=OWNER, now=10.0, lease_until=100.0, limit=1)
        assert d.seq == 0
        with pytest.raises(LeaseLost):
            await store.complete(d.key, owner=OTHER)
        with pytest.raises(LeaseLost):
            await store.defer(d.key, owner=OTHER, now=10.0, next_attempt=20.0, response="x")
        with pytest.raises(LeaseLost):  # seq 1 is queued, not leased
            await store.complete(DeliveryKey("m", 1), owner=OWNER)
        with pytest.raises(LeaseLost):
            await store.complete(DeliveryKey("missing", 0), owner=OWNER)
        [row, _] = await store.deliveries_of("m")
        assert (row.state, row.lease_owner, row.attempts) == (RowState.LOCKED, OWNER, 0)

    async def test_release(self, store: Store) -> None:
        await put(store, "m", rcpts(("a@x.example", ZONE, 1.0), ("b@x.example", ZONE, 2.0)))
        a, b = await store.lease(ZONE, owner=OWNER, now=10.0, lease_until=100.0, limit=5)
        await store.release(a.key, owner=OWNER, next_attempt=50.0, state=RowState.QUEUED)
        await store.defer(b.key, owner=OWNER, now=10.0, next_attempt=20.0, response="421")
        [b] = await store.lease(ZONE, owner=OWNER, now=30.0, lease_until=100.0, limit=5)
        await store.release(b.key, owner=OWNER, next_attempt=60.0, state=RowState.DEFERRED)
        ra, rb = await store.deliveries_of("m")
        assert (ra.state, ra.attempts, ra.next_attempt) == (RowState.QUEUED, 0, 50.0)
        assert (rb.state, rb.attempts, rb.next_attempt) == (RowState.DEFERRED, 1, 60.0)
        for row in (ra, rb):
            assert (row.lease_owner, row.lease_until) == (None, None)
        leased = await store.lease(ZONE, owner=OTHER, now=60.0, lease_until=100.0, limit=5)
        assert [d.seq for d in leased] == [0, 1]
        # Releasing a lease one does not hold changes nothing.
        await store.release(a.key, owner=OWNER, next_attempt=999.0, state=RowState.QUEUED)
        assert [(d.lease_owner, d.next_attempt) for d in await store.deliveries_of("m")] == [
            (OTHER, 50.0),
            (OTHER, 60.0),
        ]

    async def test_release_writes_the_state_it_is_told(self, store: Store) -> None:
        # The delivery state machine's table decides a released row's state, not the store.
        await put(store, "m", rcpts(("a@x.example", ZONE, 1.0), ("b@x.example", ZONE, 2.0)))
        a, b = await store.lease(ZONE, owner=OWNER, now=10.0, lease_until=100.0, limit=5)
        await store.release(a.key, owner=OWNER, next_attempt=50.0, state=RowState.DEFERRED)
        with pytest.raises(ValueError, match="not locked"):
            await store.release(b.key, owner=OWNER, next_attempt=50.0, state=RowState.LOCKED)
        ra, rb = await store.deliveries_of("m")
        assert (ra.state, ra.attempts, ra.lease_owner) == (RowState.DEFERRED, 0, None)
        assert (rb.state, rb.lease_owner) == (RowState.LOCKED, OWNER)

    async def test_renew(self, store: Store) -> None:
        await put(store, "m", rcpts(("a@x.example", ZONE, 1.0), ("b@x.example", ZONE, 2.0)))
        a, b = await store.lease(ZONE, owner=OWNER, now=10.0, lease_until=100.0, limit=5)
        await store.release(b.key, owner=OWNER, next_attempt=1.0, state=RowState.QUEUED)
        [b] = await store.lease(ZONE, owner=OTHER, now=10.0, lease_until=100.0, limit=5)
        await store.renew([a.key, b.key, DeliveryKey("gone", 0)], owner=OWNER, lease_until=300.0)
        ra, rb = await store.deliveries_of("m")
        assert (ra.lease_owner, ra.lease_until) == (OWNER, 300.0)
        assert (rb.lease_owner, rb.lease_until) == (OTHER, 100.0)  # not ours: ignored
        stolen = await store.lease(ZONE, owner=OTHER, now=150.0, lease_until=400.0, limit=5)
        assert [d.key for d in stolen] == [b.key]  # only b's lease expired
        await store.renew([], owner=OWNER, lease_until=500.0)
        await store.complete(a.key, owner=OWNER)

    async def test_recover_leases(self, store: Store) -> None:
        await put(store, "m", rcpts(*[(f"r{i}@x.example", ZONE, float(i)) for i in range(4)]))
        mine = await store.lease(ZONE, owner=OWNER, now=10.0, lease_until=1000.0, limit=3)
        [theirs] = await store.lease(ZONE, owner=OTHER, now=10.0, lease_until=1000.0, limit=3)
        await store.defer(mine[0].key, owner=OWNER, now=10.0, next_attempt=5.0, response="451")
        [again] = await store.lease(ZONE, owner=OWNER, now=10.0, lease_until=1000.0, limit=1)
        assert again.key == mine[0].key
        assert await store.recover_leases(OWNER) == 3
        assert await store.recover_leases(OWNER) == 0
        rows = {d.seq: d for d in await store.deliveries_of("m")}
        assert rows[0].state is RowState.DEFERRED
        assert rows[1].state is rows[2].state is RowState.QUEUED
        assert rows[3].lease_owner == OTHER
        for seq in (0, 1, 2):
            assert (rows[seq].lease_owner, rows[seq].lease_until) == (None, None)
        back = await store.lease(ZONE, owner=OWNER, now=11.0, lease_until=1000.0, limit=10)
        assert sorted(d.seq for d in back) == [0, 1, 2]
        assert theirs.seq == 3

    async def test_next_due(self, store: Store) -> None:
        assert await store.next_due(ZONE) is None
        await put(store, "m", rcpts(("a@x.example", ZONE, 30.0), ("b@x.example", ZONE, 70.0)))
        await put(store, "n", rcpts(("c@x.example", "other", 5.0)))
        assert await store.next_due(ZONE) == 30.0
        await store.lease(ZONE, owner=OWNER, now=40.0, lease_until=50.0, limit=1)
        assert await store.next_due(ZONE) == 70.0  # the leased row does not count
        await store.lease(ZONE, owner=OWNER, now=80.0, lease_until=90.0, limit=5)
        assert await store.next_due(ZONE) is None
        assert await store.next_due("other") == 5.0

    async def test_zone_counts(self, store: Store) -> None:
        await put(
            store,
            "m",
            rcpts(
                ("a@x.example", ZONE, 10.0),
                ("b@x.example", ZONE, 20.0),
                ("c@x.example", ZONE, 200.0),
                ("d@x.example", "bulk", 300.0),
            ),
        )
        assert await store.zone_counts(100.0) == {
            ZONE: ZoneCounts(active=2, deferred=1),
            "bulk": ZoneCounts(active=0, deferred=1),
        }
        [d] = await store.lease(ZONE, owner=OWNER, now=100.0, lease_until=500.0, limit=1)
        await store.defer(d.key, owner=OWNER, now=100.0, next_attempt=250.0, response="451")
        await store.lease(ZONE, owner=OWNER, now=100.0, lease_until=150.0, limit=1)  # locked
        assert await store.zone_counts(100.0) == {
            ZONE: ZoneCounts(active=1, deferred=2),
            "bulk": ZoneCounts(active=0, deferred=1),
        }
        assert await store.zone_counts(1000.0) == {
            ZONE: ZoneCounts(active=3, deferred=0),
            "bulk": ZoneCounts(active=1, deferred=0),
        }

    async def test_domain_counts(self, store: Store) -> None:
        assert await store.domain_counts(100.0) == {}
        await put(
            store,
            "m",
            rcpts(
                ("a@x.example", ZONE, 10.0),
                ("b@x.example", ZONE, 200.0),
                ("c@y.example", ZONE, 20.0),
                ("d@x.example", "bulk", 300.0),
                ("e@x.example", ZONE, 30.0),
            ),
        )
        await put(store, "n", rcpts(("f@y.example", ZONE, 400.0)))
        assert await store.domain_counts(100.0) == {
            (ZONE, "x.example"): ZoneCounts(active=2, deferred=1),
            (ZONE, "y.example"): ZoneCounts(active=1, deferred=1),
            ("bulk", "x.example"): ZoneCounts(active=0, deferred=1),
        }
        assert await store.domain_counts(100.0, zone="bulk") == {
            ("bulk", "x.example"): ZoneCounts(active=0, deferred=1)
        }
        assert await store.domain_counts(100.0, zone="none") == {}
        # A leased row is active whatever its lease; a deferred one waits.
        leased = await store.lease(ZONE, owner=OWNER, now=100.0, lease_until=900.0, limit=3)
        [d] = [row for row in leased if row.domain == "y.example"]
        await store.defer(d.key, owner=OWNER, now=100.0, next_attempt=250.0, response="451")
        counts = await store.domain_counts(100.0, zone=ZONE)
        assert counts == {
            (ZONE, "x.example"): ZoneCounts(active=2, deferred=1),
            (ZONE, "y.example"): ZoneCounts(active=0, deferred=2),
        }
        # The per-domain counts add up to the zone's.
        for zone, total in (await store.zone_counts(100.0)).items():
            parts = [c for (z, _), c in (await store.domain_counts(100.0)).items() if z == zone]
            assert total == ZoneCounts(sum(c.active for c in parts), sum(c.deferred for c in parts))

    async def test_deliveries_of_lists_by_seq(self, store: Store) -> None:
        deliveries = [
            NewDelivery(
                seq=s, recipient=f"r{s}@x.example", domain="x.example", zone=ZONE, next_attempt=1.0
            )
            for s in (3, 0, 7, 1)
        ]
        await put(store, "m", deliveries)
        await put(store, "n")
        assert [d.seq for d in await store.deliveries_of("m")] == [0, 1, 3, 7]
        assert [d.message_id for d in await store.deliveries_of("n")] == ["n"]

    # -- operator actions and listings -----------------------------------------------------
    async def test_list_deliveries_splits_active_and_deferred_and_pages(self, store: Store) -> None:
        for n in range(5):
            await put(store, f"m{n}", rcpts((f"r{n}@x.example", ZONE, 10.0 if n % 2 else 500.0)))
        await put(store, "other", rcpts(("o@x.example", "bulk", 10.0)))
        active = await store.list_deliveries(ZONE, deferred=False, now=100.0)
        deferred = await store.list_deliveries(ZONE, deferred=True, now=100.0)
        assert [d.message_id for d in active] == ["m1", "m3"]
        assert [d.message_id for d in deferred] == ["m0", "m2", "m4"]
        page = await store.list_deliveries(ZONE, deferred=True, now=100.0, start=1, limit=1)
        assert [d.message_id for d in page] == ["m2"]
        newest = await store.list_deliveries(ZONE, deferred=True, now=100.0, descending=True)
        assert [d.message_id for d in newest] == ["m4", "m2", "m0"]
        # A leased delivery counts as active even if its next attempt is later.
        [leased] = await store.lease(ZONE, owner=OWNER, now=600.0, lease_until=700.0, limit=1)
        active = await store.list_deliveries(ZONE, deferred=False, now=100.0)
        assert leased.message_id in {d.message_id for d in active}

    async def test_reschedule_makes_unleased_deliveries_due(self, store: Store) -> None:
        await put(
            store,
            "m",
            rcpts(("a@x.example", ZONE, 900.0), ("b@x.example", ZONE, 900.0)),
        )
        assert await store.reschedule("m", 1, next_attempt=100.0) == 1
        [due] = await store.lease(ZONE, owner=OWNER, now=100.0, lease_until=200.0, limit=5)
        assert due.seq == 1
        # The leased one is left alone; the other is rescheduled.
        assert await store.reschedule("m", None, next_attempt=100.0) == 1
        assert await store.reschedule("nothing", None, next_attempt=100.0) == 0

    async def test_remove_deliveries_spares_leased_and_removes_the_message_last(
        self, store: Store
    ) -> None:
        await put(
            store,
            "m",
            rcpts(("a@x.example", ZONE, 10.0), ("b@x.example", ZONE, 900.0)),
        )
        [leased] = await store.lease(ZONE, owner=OWNER, now=100.0, lease_until=200.0, limit=5)
        assert await store.remove_deliveries("m", None) == 1
        assert [d.seq for d in await store.deliveries_of("m")] == [leased.seq]
        assert await store.get_message("m") is not None
        await store.release(leased.key, owner=OWNER, next_attempt=100.0, state=RowState.QUEUED)
        assert await store.remove_deliveries("m", leased.seq) == 1
        assert await store.get_message("m") is None
        assert await store.remove_orphans() == 0

    async def test_suppression_list(self, store: Store) -> None:
        first = await store.add_suppression(address="User@Example.COM", now=10.0)
        assert first.address == "User@example.com"
        again = await store.add_suppression(address="User@example.com", now=20.0)
        assert again == first
        blocked = await store.add_suppression(domain="Blocked.Example", now=30.0)
        assert blocked.domain == "blocked.example"
        assert [e.id for e in await store.list_suppressions()] == [blocked.id, first.id]
        assert await store.is_suppressed("User@EXAMPLE.com")
        assert not await store.is_suppressed("user@example.com")  # local parts are exact
        assert await store.is_suppressed("anyone@blocked.example")
        assert not await store.is_suppressed("anyone@example.org")
        assert await store.remove_suppression(first.id)
        assert not await store.remove_suppression(first.id)
        assert not await store.is_suppressed("User@example.com")
        with pytest.raises(ValueError):
            await store.add_suppression(now=1.0)
        with pytest.raises(ValueError):
            await store.add_suppression(address="a@b.example", domain="b.example", now=1.0)

    async def test_blacklist_entries_replace_and_expire(self, store: Store) -> None:
        first = BlacklistEntry("x.example", "127.0.0.2", 10.0, 100.0, "554 listed")
        other = BlacklistEntry("x.example", "127.0.0.3", 10.0, 50.0, "554 listed too")
        await store.put_blacklist(first)
        await store.put_blacklist(other)
        assert await store.list_blacklist(20.0) == [other, first]
        renewed = BlacklistEntry("x.example", "127.0.0.2", 30.0, 300.0, "554 again")
        await store.put_blacklist(renewed)
        assert await store.list_blacklist(60.0) == [renewed]  # `other` expired at 50
        assert await store.purge_blacklist(60.0) == 1
        assert await store.purge_blacklist(60.0) == 0
        assert await store.list_blacklist(0.0) == [renewed]
