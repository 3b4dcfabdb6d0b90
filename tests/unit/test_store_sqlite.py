"""The sqlite queue backend: the store contract, plus what only sqlite has (group commit,
reopening, the writer's failure isolation, chunk rows, lifecycle)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import wait_all_tasks_blocked

from tests.store_contract import ZONE, StoreContract, big_body, body_of, put, rcpts, record
from zonemta.store import FixedRoute, MessageMeta, StoreError
from zonemta.store.sqlite import GroupCommitWriter, SqliteStore, open_sqlite_store, ops, readers
from zonemta.store.sqlite.schema import DB_FILENAME, connect_writer
from zonemta.store.sqlite.writer import Pending

CHUNK = 16 * 1024


class TestSqliteContract(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SqliteStore]:
        async with open_sqlite_store(tmp_path / "queue", chunk_size=CHUNK) as store:
            yield store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "queue", chunk_size=CHUNK) as store:
        yield store


def raw_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path / DB_FILENAME)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_concurrent_commits_share_batches(store: SqliteStore) -> None:
    before = store.stats
    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(put, store, f"m{i}")
    stats = store.stats
    ops = stats.ops - before.ops
    batches = stats.batches - before.batches
    assert ops == 200  # one op per small message: chunk, message and deliveries together
    assert batches < ops / 10
    assert stats.largest_batch > 10
    assert len(raw_rows(store.path, "SELECT id FROM messages")) == 200


async def test_data_survives_reopening(tmp_path: Path) -> None:
    body = big_body(100_000)
    async with open_sqlite_store(tmp_path, chunk_size=CHUNK) as store:
        message = await put(store, "kept", body=body)
        await store.lease(ZONE, owner="a", now=200.0, lease_until=300.0, limit=1)
    async with open_sqlite_store(tmp_path, chunk_size=4096) as store:
        assert await store.get_message("kept") == message
        assert await body_of(store, "kept") == body
        [row] = await store.deliveries_of("kept")
        assert row.lease_owner == "a"
        assert await store.recover_leases("a") == 1


async def test_meta_is_stored_as_json_and_old_rows_load(store: SqliteStore) -> None:
    await put(store, "m1", meta=MessageMeta(interface="feeder", routes={1: FixedRoute(mx="m")}))
    [(text,)] = raw_rows(store.path, "SELECT meta FROM messages")
    assert json.loads(str(text))["routes"] == {"1": {"mx": "m"}}
    # What an earlier release wrote (no dkim_bh, no routes), with a key from a later one.
    old = {"interface": "api", "client_address": "", "helo": "", "transtype": "HTTP"}
    old |= {"body_8bit": False, "smtputf8": False, "user": None, "later": [1]}
    set_meta(store.path, json.dumps(old))
    stored = await store.get_message("m1")
    assert stored is not None
    assert (stored.meta.transtype, stored.meta.dkim_bh) == ("HTTP", "")
    assert stored.meta.extra == {"later": [1]}
    set_meta(store.path, json.dumps(old | {"user": 7}))
    with pytest.raises(StoreError, match=r"meta of m1 .*@ meta\.user"):
        await store.get_message("m1")
    set_meta(store.path, "{not json")
    with pytest.raises(StoreError, match="meta of m1 is not JSON"):
        await store.get_message("m1")


async def test_domain_counts_read_only_the_covering_index(store: SqliteStore) -> None:
    await put(store, "m1")
    conn = sqlite3.connect(store.path / DB_FILENAME)
    try:
        for zone in (None, ZONE):
            sql, args = domain_counts_query(zone)
            plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert "COVERING INDEX deliveries_by_domain" in plan
            assert "TEMP B-TREE" not in plan
    finally:
        conn.close()


def domain_counts_query(zone: str | None) -> tuple[str, tuple[object, ...]]:
    """The query :func:`readers.domain_counts` runs, captured from a recording connection."""
    seen: list[tuple[str, tuple[object, ...]]] = []

    class Recorder:
        def execute(self, sql: str, args: tuple[object, ...]) -> Recorder:
            seen.append((sql, args))
            return self

        def fetchall(self) -> list[object]:
            return []

    readers.domain_counts(100.0, zone, Recorder())  # type: ignore[arg-type]
    [query] = seen
    return query


def set_meta(path: Path, text: str) -> None:
    with sqlite3.connect(path / DB_FILENAME) as conn:
        conn.execute("UPDATE messages SET meta = ?", (text,))
    conn.close()


async def test_a_queue_from_before_delay_notified_gets_the_column(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path, chunk_size=CHUNK) as store:
        await put(store, "old")
    # Make it the queue an earlier release wrote: no delay_notified column.
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        conn.execute("ALTER TABLE deliveries DROP COLUMN delay_notified")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
        assert "delay_notified" not in columns
    async with open_sqlite_store(tmp_path, chunk_size=CHUNK) as store:
        [d] = await store.lease(ZONE, owner="a", now=200.0, lease_until=300.0, limit=1)
        assert not d.delay_notified
        await store.defer(
            d.key, owner="a", now=210.0, next_attempt=400.0, response="451", delay_notified=True
        )
        [row] = await store.deliveries_of("old")
        assert row.delay_notified and row.attempts == 1


async def test_body_is_stored_as_bounded_chunk_rows(store: SqliteStore) -> None:
    body = big_body(5 * CHUNK + 123)
    writer = store.new_body("chunked")
    for start in range(0, len(body), 1000):
        await writer.write(body[start : start + 1000])
        assert len(writer._buffer) < CHUNK  # type: ignore[attr-defined]
    await store.commit_message(
        record("chunked", body_size=len(body)), writer, rcpts(("a@b.c", ZONE, 1.0))
    )
    sizes = raw_rows(store.path, "SELECT length(data) FROM chunks ORDER BY idx")
    assert sizes == [(CHUNK,)] * 5 + [(123,)]
    chunks = [chunk async for chunk in store.read_body("chunked")]
    assert [len(c) for c in chunks] == [CHUNK] * 5 + [123]


async def test_failing_op_fails_only_its_caller(tmp_path: Path) -> None:
    conn = connect_writer(tmp_path / "w.sqlite3", "full")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    writer = GroupCommitWriter(conn, batch_limit=100)
    gate = threading.Event()
    results: dict[str, object] = {}

    async def submit(name: str, sql: str) -> None:
        try:
            await writer.submit(lambda c: c.execute(sql))
            results[name] = "ok"
        except StoreError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        # The first batch blocks in its thread until the others are queued behind it.
        nursery.start_soon(writer.submit, lambda c: gate.wait(10))
        await wait_all_tasks_blocked()
        async with trio.open_nursery() as callers:
            callers.start_soon(submit, "good1", "INSERT INTO t VALUES ('a')")
            callers.start_soon(submit, "bad", "INSERT INTO t VALUES ('a'), ('a')")
            callers.start_soon(submit, "good2", "INSERT INTO t VALUES ('b')")
            await wait_all_tasks_blocked()
            gate.set()
        writer.close()
    assert results["good1"] == results["good2"] == "ok"
    assert isinstance(results["bad"], StoreError)
    assert isinstance(results["bad"].__cause__, sqlite3.IntegrityError)
    assert writer.stats.batches == 2
    assert writer.stats.largest_batch == 3
    assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [("a",), ("b",)]
    conn.close()


async def test_enqueue_hands_over_without_yielding_when_the_queue_has_room(
    tmp_path: Path,
) -> None:
    # No trip through the scheduler per op: another runnable task does not run in between.
    conn = connect_writer(tmp_path / "w.sqlite3", "full")
    writer = GroupCommitWriter(conn, batch_limit=100)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(other)
        pending = await writer.enqueue(lambda c: c.execute("SELECT 1"))
        assert ran == []
        await pending.wait()
        assert ran == ["other"]
        writer.close()
    conn.close()


async def test_a_cancelled_caller_hands_nothing_over(tmp_path: Path) -> None:
    conn = connect_writer(tmp_path / "w.sqlite3", "full")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    writer = GroupCommitWriter(conn, batch_limit=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with trio.CancelScope() as scope:
            scope.cancel()
            await writer.enqueue(lambda c: c.execute("INSERT INTO t VALUES ('a')"))
        assert scope.cancelled_caught
        await writer.submit(lambda c: c.execute("INSERT INTO t VALUES ('b')"))
        writer.close()
    assert conn.execute("SELECT k FROM t").fetchall() == [("b",)]
    assert writer.stats.ops == 1
    conn.close()


async def test_enqueue_waits_for_room_when_the_queue_is_full(tmp_path: Path) -> None:
    conn = connect_writer(tmp_path / "w.sqlite3", "full")
    writer = GroupCommitWriter(conn, batch_limit=1)  # a queue of 64
    gate = threading.Event()
    handed: list[int] = []
    all_handed = trio.Event()

    async def hand_over(count: int) -> None:
        for index in range(count):
            await writer.enqueue(lambda c: None)
            handed.append(index)
        all_handed.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(writer.submit, lambda c: gate.wait(10))
        await wait_all_tasks_blocked()
        nursery.start_soon(hand_over, 70)
        await wait_all_tasks_blocked()
        assert len(handed) == 64  # the 65th waits for room
        gate.set()
        await all_handed.wait()
        writer.close()
    assert writer.stats.ops == 71
    conn.close()


def test_savepoint_journals_of_a_group_commit_stay_in_memory(tmp_path: Path) -> None:
    # Each op of a batch runs in a savepoint; with temp_store=FILE sqlite spills its statement
    # journal to a temporary file (about 15 extra writes per message under load).
    conn = connect_writer(tmp_path / "w.sqlite3", "full")
    try:
        assert conn.execute("PRAGMA temp_store").fetchone() == (2,)  # 2 = MEMORY
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


async def test_writes_wait_for_the_writer_to_start(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as callers:
            callers.start_soon(put, store, "early")
            await wait_all_tasks_blocked()
            assert await store.get_message("early") is None
            await nursery.start(store.run)
        assert await store.get_message("early") is not None
        await store.aclose()  # ends store.run
    await store.aclose()  # idempotent


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path) as store:
        pass
    with pytest.raises(StoreError):
        await put(store, "late")
    with pytest.raises(StoreError):
        await store.get_message("late")
    with pytest.raises(StoreError):
        await store.open()


async def test_writer_cancelled_before_it_started_fails_queued_ops(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    failures: list[BaseException] = []

    async def commit_and_record() -> None:
        try:
            await put(store, "queued")
        except StoreError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit_and_record)
        await wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.run()
        await store.aclose()  # the queued commit must fail, not hang
    assert len(failures) == 1


async def test_cancelled_writer_fails_ops_queued_behind_its_batch(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    gate = threading.Event()
    outcomes: dict[str, object] = {}

    async def call(name: str, fn: object) -> None:
        try:
            outcomes[name] = await store._writer.submit(fn)  # type: ignore[arg-type]
        except StoreError as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery, trio.open_nursery() as service:
        await service.start(store.run)
        nursery.start_soon(call, "running", lambda c: gate.wait(10))
        await wait_all_tasks_blocked()
        nursery.start_soon(call, "queued", lambda c: 1)
        await wait_all_tasks_blocked()
        service.cancel_scope.cancel()
        gate.set()
    assert outcomes["running"] is True  # the batch in the thread completed
    assert isinstance(outcomes["queued"], StoreError)
    await store.aclose()


async def test_cancelled_commit_is_all_or_nothing(store: SqliteStore) -> None:
    """A commit cancelled while queued still runs, and the abort that follows the
    cancellation must not remove the body of a message that did get committed."""
    gate = threading.Event()
    body = big_body(3 * CHUNK + 10)

    async def cancel_then_open_gate(scope: trio.CancelScope) -> None:
        await wait_all_tasks_blocked()
        scope.cancel()
        await wait_all_tasks_blocked()
        gate.set()

    writer = store.new_body("cut")
    await writer.write(body)  # three chunks stored as orphans
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._writer.submit, lambda c: gate.wait(10))
        await wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_then_open_gate, scope)
            # Queued behind the gate, then cancelled: the abort's delete queues behind it.
            await store.commit_message(record("cut"), writer, rcpts(("a@b.c", ZONE, 1.0)))
    assert scope.cancelled_caught
    assert await store.get_message("cut") is not None
    assert await body_of(store, "cut") == body
    assert await store.remove_orphans() == 0


async def test_remove_orphans_after_a_crash(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path, chunk_size=1024) as store:
        writer = store.new_body("crashed")
        await writer.write(b"z" * 5000)  # four chunks committed, never aborted
        await put(store, "fine")
        assert await store.remove_orphans() == 0  # still live in this process
    async with open_sqlite_store(tmp_path, chunk_size=1024) as store:
        assert await store.remove_orphans() == 1
        assert raw_rows(store.path, "SELECT DISTINCT message_id FROM chunks") == [("fine",)]
        assert await store.remove_orphans() == 0


def statement_of_lease(path: Path) -> str:
    """The UPDATE the store runs to lease (values bound in), captured as sqlite runs it:
    the plan below is of the real statement, not of a copy that could drift from it."""
    statements: list[str] = []
    conn = sqlite3.connect(path / DB_FILENAME, isolation_level=None)
    try:
        conn.set_trace_callback(statements.append)
        conn.execute("BEGIN")
        ops.lease("z", "owner", 1.0, 31.0, 5, ["skip.test"], ["held-id"], conn)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    [update] = [sql for sql in statements if sql.lstrip().upper().startswith("UPDATE")]
    return update


async def test_lease_uses_the_due_index(store: SqliteStore) -> None:
    plan = raw_rows(store.path, "EXPLAIN QUERY PLAN " + statement_of_lease(store.path))
    details = " ".join(str(row[-1]) for row in plan)
    assert "deliveries_by_due" in details
    assert "TEMP B-TREE" not in details  # no sort: the index gives due order


async def test_unopenable_path_raises_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SqliteStore(tmp_path / "file")
    with pytest.raises(StoreError):
        await store.open()


async def test_new_body_twice_for_one_id_is_refused(store: SqliteStore) -> None:
    writer = store.new_body("once")
    with pytest.raises(StoreError):
        store.new_body("once")
    await writer.abort()
    store.new_body("once")


def test_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteStore(tmp_path, durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SqliteStore(tmp_path, chunk_size=0)
    with pytest.raises(ValueError):
        SqliteStore(tmp_path, batch_limit=0)


async def test_context_manager_passes_exceptions_through_unwrapped(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        async with open_sqlite_store(tmp_path) as store:
            await put(store, "m")
            raise KeyError("boom")
    async with open_sqlite_store(tmp_path) as store:
        assert await store.get_message("m") is not None


async def test_a_large_body_is_deleted_in_slices_after_its_last_delivery(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "q", chunk_size=4096) as store:
        body = big_body(4096 * 50)  # 50 chunk rows: more than one slice
        await put(store, "big", rcpts(("a@x.example", ZONE, 1.0)), body=body, piece=4096)
        [row] = await store.lease(ZONE, owner="o", now=10.0, lease_until=100.0, limit=1)
        ops_before = store.stats.ops
        await store.complete(row.key, owner="o")
        assert await store.get_message("big") is None  # gone for readers at once
        assert await store.remove_orphans() == 0  # the rest is being reaped, not orphaned
        with trio.fail_after(10):
            while store._reaping:  # noqa: ASYNC110 - the reaper has no event to expose
                await trio.sleep(0.01)
        assert store.stats.ops - ops_before >= 50 // 16  # several slice operations
        conn = sqlite3.connect(store.db_path)
        try:
            (left,) = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()
        finally:
            conn.close()
        assert left == 0


class _OpFailed(Exception):
    """An op's own refusal (as LeaseLost is)."""


def _make_op(kind: str, key: str) -> Callable[[sqlite3.Connection], object]:
    """A write op of the kind the equivalence test draws: one that commits and returns a
    value, one that writes then hits a constraint, one that writes then refuses."""

    def op(conn: sqlite3.Connection) -> object:
        conn.execute("UPDATE n SET v = v + 1")
        if kind == "ok":
            conn.execute("INSERT OR REPLACE INTO t VALUES (?)", (key,))
            return conn.execute("SELECT v FROM n").fetchone()[0]
        if kind == "constraint":
            conn.execute("INSERT INTO t VALUES (?), (?)", (f"dup{key}", f"dup{key}"))
        raise _OpFailed(key)

    return op


def _run_batch_both_ways(
    tmp_path: Path, kinds: list[str]
) -> list[tuple[list[object], list[tuple[object, ...]]]]:
    """The writer's batch (optimistic first) and the careful path alone (a savepoint per
    op), each on its own database: each op's outcome and what was committed."""
    runs = []
    for careful in (False, True):
        conn = connect_writer(tmp_path / f"eq{careful}.sqlite3", "normal")
        conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
        conn.execute("CREATE TABLE IF NOT EXISTS n (v INTEGER)")
        conn.execute("DELETE FROM t")
        conn.execute("DELETE FROM n")
        conn.execute("INSERT INTO n VALUES (0)")
        writer = GroupCommitWriter(conn, batch_limit=100)
        batch: list[Pending[object]] = [
            Pending(_make_op(kind, str(i))) for i, kind in enumerate(kinds)
        ]
        if careful:
            rest = list(batch)
            while rest:
                rest = writer._run_transaction(conn, rest)
        else:
            writer._run_batch(list(batch))
        outcomes: list[object] = []
        for pending in batch:
            assert pending.settled
            error = pending._error
            outcomes.append(("error", type(error), str(error)) if error else pending._value)
        state = conn.execute("SELECT k FROM t ORDER BY k").fetchall()
        state += conn.execute("SELECT v FROM n").fetchall()
        assert not conn.in_transaction
        conn.close()
        runs.append((outcomes, state))
    return runs


@given(st.lists(st.sampled_from(["ok", "ok", "ok", "constraint", "refused"]), max_size=8))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_batch_ends_as_it_does_with_a_savepoint_per_op(tmp_path: Path, kinds: list[str]) -> None:
    # The savepoint-free first try of a batch must give every op the outcome (value or
    # error) and leave the database as the careful path does: nothing of a failed op, every
    # other op's write once (the counter counts the ops that committed).
    optimistic, careful = _run_batch_both_ways(tmp_path, kinds)
    assert optimistic == careful


def test_a_clean_batch_runs_without_savepoints(tmp_path: Path) -> None:
    conn = connect_writer(tmp_path / "w.sqlite3", "normal")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    writer = GroupCommitWriter(conn, batch_limit=100)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    batch: list[Pending[object]] = [
        Pending(lambda c, k=k: c.execute("INSERT INTO t VALUES (?)", (k,)).rowcount) for k in "abc"
    ]
    writer._run_batch(batch)
    conn.set_trace_callback(None)
    assert [p._value for p in batch] == [1, 1, 1]
    assert not any("SAVEPOINT" in sql or "RELEASE" in sql for sql in statements)
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    conn.close()


async def test_completing_the_last_delivery_of_a_message_without_its_row(
    store: SqliteStore,
) -> None:
    # complete()'s one-statement removal of the message misses when the message row is
    # already gone; the rest of its chunks still go, as before.
    await put(store, "gone")
    (row,) = await store.lease(ZONE, owner="me", now=1e12, lease_until=2e12, limit=10)
    assert raw_rows(store.path, "SELECT count(*) FROM chunks WHERE message_id = 'gone'") == [(1,)]
    conn = sqlite3.connect(store.path / DB_FILENAME)
    conn.execute("DELETE FROM messages WHERE id = 'gone'")
    conn.commit()
    conn.close()
    await store.complete(row.key, owner="me")
    assert raw_rows(store.path, "SELECT * FROM chunks WHERE message_id = 'gone'") == []
    assert raw_rows(store.path, "SELECT * FROM deliveries WHERE message_id = 'gone'") == []


async def test_a_pending_op_wakes_every_waiter_and_lets_a_cancelled_one_go() -> None:
    pending: Pending[int] = Pending(lambda conn: 1)
    woken: list[object] = []

    async def waiter(name: str) -> None:
        woken.append((name, await pending.wait()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        nursery.start_soon(waiter, "c")
        cancelled = trio.CancelScope()

        async def cancelled_waiter() -> None:
            with cancelled:
                await pending.wait()
            woken.append(("cancelled", cancelled.cancelled_caught))

        nursery.start_soon(cancelled_waiter)
        await wait_all_tasks_blocked()
        cancelled.cancel()
        await wait_all_tasks_blocked()
        assert woken == [("cancelled", True)]
        pending.set_value(5)
        pending.finish()
        pending.finish()  # a second finish changes nothing
    assert sorted(woken, key=str) == sorted(
        [("cancelled", True), ("a", 5), ("b", 5), ("c", 5)], key=str
    )
    assert await pending.wait() == 5  # after the fact: at once (a checkpoint)


async def test_a_pending_op_never_run_fails_its_waiter() -> None:
    pending: Pending[int] = Pending(lambda conn: 1)
    async with trio.open_nursery() as nursery:
        failures: list[BaseException] = []

        async def waiter() -> None:
            try:
                await pending.wait()
            except StoreError as exc:
                failures.append(exc)

        nursery.start_soon(waiter)
        await wait_all_tasks_blocked()
        pending.finish()
    assert len(failures) == 1 and "stopped before" in str(failures[0])


def test_row_to_delivery_reads_every_state_as_the_enum_does() -> None:
    from zonemta.store import RowState
    from zonemta.store.sqlite.schema import row_to_delivery

    base = ("m1", 1, "a@b.test", "b.test", "default", None, 0, 1.0, 2.0, None, None, "o", 3.0, 0)
    for state in RowState:
        row = (*base[:5], state.value, *base[6:])
        assert row_to_delivery(row).state is RowState(state.value)
    with pytest.raises(ValueError, match="not a valid RowState"):
        row_to_delivery((*base[:5], "bogus", *base[6:]))


async def test_lease_returns_rows_by_next_attempt_then_message_then_seq(
    store: SqliteStore,
) -> None:
    await put(store, "m2", rcpts(("a@x.test", ZONE, 5.0), ("b@x.test", ZONE, 5.0)))
    await put(store, "m1", rcpts(("c@x.test", ZONE, 5.0), ("d@x.test", ZONE, 4.0)))
    rows = await store.lease(ZONE, owner="me", now=10.0, lease_until=100.0, limit=10)
    assert [(r.next_attempt, r.message_id, r.seq) for r in rows] == [
        (4.0, "m1", 1),
        (5.0, "m1", 0),
        (5.0, "m2", 0),
        (5.0, "m2", 1),
    ]
