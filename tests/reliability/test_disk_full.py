"""Disk full: the queue on a store with a size limit (sqlite's max_page_count, as a small
filesystem would be). Intake answers a temporary failure, nothing is half-stored, what is
queued is still delivered, and intake works again once deliveries have freed space."""

from __future__ import annotations

import functools
import sqlite3
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from tests.reliability.mail import check_intact, token_message, try_submit
from tests.support.faulty_mx import FaultyMx
from tests.support.relay import api_url, relay_config, running_relay
from zonemta.store import StoreFull
from zonemta.store.sqlite import GroupCommitWriter, SqliteStore
from zonemta.store.sqlite.schema import DB_FILENAME
from zonemta.store.sqlite.writer import WriteOp

LIMIT = 1024 * 1024  # the queue's whole database
BODY = 40 * 1024  # bigger than the 16 KB chunks: the store is written to during DATA


def stored_ids(queue: Path) -> tuple[set[str], set[str], set[str]]:
    """Message ids with a message row, with chunk rows, with delivery rows."""
    with sqlite3.connect(queue / DB_FILENAME) as db:
        return tuple(  # type: ignore[return-value]
            {row[0] for row in db.execute(sql)}
            for sql in (
                "SELECT id FROM messages",
                "SELECT DISTINCT message_id FROM chunks",
                "SELECT DISTINCT message_id FROM deliveries",
            )
        )


async def wait_until(predicate: object, seconds: float) -> None:
    """Poll state owned by the sink's threads (nothing there can wake a trio task)."""
    assert callable(predicate)
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def fill(port: int, prefix: str, limit: int) -> tuple[dict[str, str], tuple[int, str]]:
    """Submit until the relay refuses; the accepted {token: queue id} and the refusal."""
    accepted: dict[str, str] = {}
    for n in range(limit):
        token = f"t-{prefix}-{n}"
        code, text = await trio.to_thread.run_sync(
            try_submit, port, f"r{n}@one.test", token_message(token, BODY)
        )
        if code != 250:
            return accepted, (code, text)
        accepted[token] = text.rsplit(" ", 1)[-1]
    raise AssertionError(f"the store never filled up: {len(accepted)} messages accepted")


async def test_store_full_is_its_own_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "small", chunk_size=4096, max_size=64 * 1024)
    await store.open()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        writer = store.new_body("big")
        with pytest.raises(StoreFull, match="full"):
            for _ in range(100):
                await writer.write(b"x" * 4096)
        await writer.abort()
        nursery.cancel_scope.cancel()
    await store.aclose()


async def test_a_full_disk_fails_only_the_write_that_needed_space(tmp_path: Path) -> None:
    # sqlite rolls the whole transaction back when it runs out of pages: the writer must
    # run the batch's other ops again, not fail them all ("no such savepoint").
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    conn.execute("PRAGMA max_page_count = 8")
    writer = GroupCommitWriter(conn, batch_limit=10)

    def update(key: int) -> WriteOp[None]:
        return lambda db: db.execute("UPDATE t SET v = 'new' WHERE k = ?", (key,)) and None

    def grow(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES (3, ?)", (b"x" * 100_000,))

    first = await writer.enqueue(update(1))
    big = await writer.enqueue(grow)
    last = await writer.enqueue(update(2))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)  # the three ops go in one batch
        await first.wait()
        with pytest.raises(StoreFull):
            await big.wait()
        await last.wait()
        writer.close()
    assert writer.stats.batches == 1
    assert conn.execute("SELECT k, v FROM t").fetchall() == [(1, "new"), (2, "new")]
    conn.close()


async def test_full_store_refuses_keeps_nothing_half_stored_delivers_and_recovers(
    tmp_path: Path,
) -> None:
    queue = tmp_path / "q"
    with FaultyMx() as mx:
        mx.hold.clear()  # deliveries wait for the greeting: the queue only grows
        target = {"host": "127.0.0.1", "port": mx.port}
        config = relay_config(
            queue,
            queue={
                "path": str(queue),
                "body_chunk_size": "16KB",
                "max_size": LIMIT,
                "retry_schedule": ["1s"],
            },
            zones={"default": target, "bounces": {**target, "connections": 1}},
        )
        async with running_relay(config) as (relay, info):
            port = info.smtp_ports["feeder"]
            accepted, (code, text) = await fill(port, "a", 200)
            assert 400 <= code < 500, (code, text)  # a temporary failure: try again later
            assert len(accepted) >= 5
            # Still full: refused again, and the refusals left nothing behind.
            again = await trio.to_thread.run_sync(
                try_submit, port, "late@one.test", token_message("t-late", BODY)
            )
            assert 400 <= again[0] < 500, again
            # The HTTP API says so too: 503 with a JSON error, nothing stored.
            raw = b"To: web@one.test\r\n" + token_message("t-web", BODY)
            response = await trio.to_thread.run_sync(
                functools.partial(
                    httpx.post,
                    f"{api_url(info)}/send-raw",
                    content=raw,
                    headers={"Content-Type": "message/rfc822"},
                    timeout=30,
                )
            )
            assert response.status_code == 503, response.text
            assert "error" in response.json()
            messages, chunks, deliveries = stored_ids(queue)
            assert messages == deliveries == set(accepted.values())
            assert chunks <= messages  # no chunk of a refused message
            # Delivery of what is queued goes on while the store is full.
            mx.hold.set()
            await wait_until(lambda: len(mx.received()) >= len(accepted), 60)
            await wait_until(lambda: stored_ids(queue) == (set(), set(), set()), 30)
            # Space is back: intake accepts again.
            more: dict[str, str] = {}
            for n in range(3):
                token = f"t-b-{n}"
                code, text = await trio.to_thread.run_sync(
                    try_submit, port, f"s{n}@one.test", token_message(token, BODY)
                )
                assert code == 250, (code, text)
                more[token] = text
            await wait_until(lambda: len(mx.received()) >= len(accepted) + 3, 30)
            assert isinstance(relay.store, SqliteStore) and relay.store.max_size == LIMIT
    tokens = Counter(check_intact(m.content) for m in mx.received())
    assert tokens == Counter([*accepted, *more])  # every accepted message once, intact


async def test_a_full_store_answers_452_insufficient_storage(
    tmp_path: Path,
) -> None:
    queue = tmp_path / "q"
    with FaultyMx() as mx:
        mx.hold.clear()
        target = {"host": "127.0.0.1", "port": mx.port}
        config = relay_config(
            queue,
            queue={"path": str(queue), "body_chunk_size": "16KB", "max_size": LIMIT},
            zones={"default": target, "bounces": {**target, "connections": 1}},
        )
        async with running_relay(config) as (_relay, info):
            _accepted, (code, text) = await fill(info.smtp_ports["feeder"], "a", 200)
            mx.hold.set()
    assert (code, text.split(" ", 1)[0]) == (452, "4.3.1"), (code, text)
