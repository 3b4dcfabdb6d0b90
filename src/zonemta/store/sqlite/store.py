"""The embedded sqlite queue backend.

Lifecycle
---------
``open()``
    Creates the directory and the database (WAL, schema) and opens the writing connection
    and the read pool, in a worker thread. Idempotent. Reads work from here on.
``run()``
    The writer service (see :mod:`zonemta.store.sqlite.writer`): start it in a nursery with
    ``await nursery.start(store.run)``; it opens the store first if needed. Writes made before
    it started wait in its queue. It returns once :meth:`~SqliteStore.aclose` was called and
    the queued writes ran, or when cancelled (queued writes then fail with StoreError).
``aclose()``
    Stops accepting writes, waits for the writer to finish what was queued, closes the
    connections. Idempotent.

:func:`open_sqlite_store` does all three around an ``async with`` block, which is what most
code (and every test) wants.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Final

import trio

from zonemta.store.base import BodyWriter, Store
from zonemta.store.errors import StoreError
from zonemta.store.meta import meta_to_document
from zonemta.store.records import (
    BlacklistEntry,
    Delivery,
    DeliveryKey,
    MessageRecord,
    NewDelivery,
    RowState,
    SuppressionEntry,
    Suspension,
    ZoneCounts,
)
from zonemta.store.sqlite import ops, readers, suspensions
from zonemta.store.sqlite.body import SqliteBodyWriter
from zonemta.store.sqlite.schema import DB_FILENAME, Durability, connect_writer
from zonemta.store.sqlite.writer import GroupCommitWriter, WriterStats

#: How the meta column is written: ``json.dumps(document, separators=(",", ":"))``, with
#: the encoder made once instead of for every message.
_META_JSON: Final = json.JSONEncoder(separators=(",", ":"))

#: Bytes a body reader fetches per thread call (whole chunks, at least one).
READ_BYTES_PER_CALL: Final = 512 * 1024

#: Read connections (and so concurrent read queries).
READ_POOL_SIZE: Final = 4


log = logging.getLogger(__name__)


class SqliteStore(Store):
    """The queue in ``path / "queue.sqlite3"``; see the module docstring for the lifecycle.

    ``durability="full"`` fsyncs every commit (``synchronous=FULL``); ``"normal"`` survives
    a process crash but may lose the last commits on power loss. ``chunk_size`` bounds body
    chunk rows (and a body writer's memory); ``batch_limit`` bounds a group commit.
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: Durability = "full",
        chunk_size: int = 256 * 1024,
        batch_limit: int = 500,
        max_size: int = 0,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if max_size < 0:
            raise ValueError("max_size must be 0 (no limit) or positive")
        # Largest database in bytes (sqlite's max_page_count); 0: as large as the disk allows.
        # Past it, writes that need more pages fail with StoreFull, as on a full disk.
        self.max_size = max_size
        self.path = Path(path)
        self.durability: Durability = durability
        self.chunk_size = chunk_size
        self._writer = GroupCommitWriter(batch_limit=batch_limit)
        self._readers = readers.ReadPool(READ_POOL_SIZE)
        self._live_bodies: set[str] = set()
        self._reaping: set[str] = set()  # messages whose large bodies are being deleted
        self._reap_wanted = trio.Event()
        self._opened = False
        self._closed = False
        self._open_lock = trio.Lock()
        self._writer_conn: sqlite3.Connection | None = None

    @property
    def db_path(self) -> Path:
        return self.path / DB_FILENAME

    @property
    def stats(self) -> WriterStats:
        """Group-commit counters: ``stats.ops / stats.batches`` ops share one fsync."""
        return self._writer.stats

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or open the database. Raises :class:`StoreError`."""
        async with self._open_lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._opened:
                return
            try:
                await trio.to_thread.run_sync(self._open_sync)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open the queue at {self.db_path}: {exc}") from exc
            self._opened = True

    def _open_sync(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        conn = connect_writer(self.db_path, self.durability)
        try:
            if self.max_size:
                (page_size,) = conn.execute("PRAGMA page_size").fetchone()
                conn.execute(f"PRAGMA max_page_count = {max(1, self.max_size // page_size)}")
            self._readers.open(self.db_path)
        except BaseException:
            conn.close()
            self._readers.close()
            raise
        self._writer_conn = conn
        self._writer.attach(conn)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer service (and the deleter of large bodies, slice by slice). Opens the
        store if needed, reports started, and runs until :meth:`aclose` (or cancellation).
        Raises :class:`StoreError` if it cannot open."""
        await self.open()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reap_bodies)
            await nursery.start(self._writer.run)
            task_status.started()
            await self._writer.wait_stopped()
            nursery.cancel_scope.cancel()

    def _reap(self, message_id: str) -> None:
        """Delete the rest of a large body's chunks in the background."""
        self._reaping.add(message_id)
        self._reap_wanted.set()

    async def _reap_bodies(self) -> None:
        while True:
            await self._reap_wanted.wait()
            self._reap_wanted = trio.Event()
            while self._reaping:
                message_id = next(iter(self._reaping))
                try:
                    while await self._writer.submit(
                        partial(ops.delete_chunk_slice, message_id, ops.CHUNK_SLICE)
                    ):
                        pass
                except StoreError as exc:  # orphans: remove_orphans takes them later
                    log.warning("deleting the body of %s failed: %s", message_id, exc)
                self._reaping.discard(message_id)

    async def aclose(self) -> None:
        """Let queued writes finish, stop the writer, close the connections. Shielded from
        cancellation: it waits for at most the batch and the reads in progress."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with trio.CancelScope(shield=True):
            await self._writer.wait_stopped()
            await self._readers.aclose()
            conn, self._writer_conn = self._writer_conn, None
            if conn is not None:
                await trio.to_thread.run_sync(conn.close)

    # -- receiving -------------------------------------------------------------------------

    def new_body(self, message_id: str) -> BodyWriter:
        """A body writer for ``message_id``. Raises :class:`StoreError` if one is already
        being written for that id in this process."""
        if message_id in self._live_bodies:
            raise StoreError(f"a body for {message_id} is already being written")
        return SqliteBodyWriter(self._writer, self._live_bodies, message_id, self.chunk_size)

    async def commit_message(
        self, message: MessageRecord, body: BodyWriter, deliveries: Sequence[NewDelivery]
    ) -> None:
        """One write op: the body's tail, the message row and its delivery rows. On failure
        (or cancellation) the body is aborted and nothing of the message is visible; raises
        :class:`StoreError`. Raises TypeError for a body writer of another store and
        ValueError for an empty ``deliveries`` (after aborting the body)."""
        if not isinstance(body, SqliteBodyWriter) or body.writer is not self._writer:
            raise TypeError("commit_message needs a body writer made by this store")
        try:
            if not deliveries:
                raise ValueError("a message needs at least one delivery")
            if body.message_id != message.id:
                raise ValueError(f"body {body.message_id} is not the body of {message.id}")
            try:
                meta_json = _META_JSON.encode(meta_to_document(message.meta))
            except (TypeError, ValueError) as exc:
                raise StoreError(f"meta of {message.id} is not JSON: {exc}") from exc
            tail, stored = body.begin_commit()
            await self._writer.submit(
                partial(ops.commit_message, message, meta_json, tail, stored, tuple(deliveries))
            )
        except BaseException:
            await body.abort()
            raise
        body.end_commit()

    # -- leases ----------------------------------------------------------------------------

    async def lease(
        self,
        zone: str,
        *,
        owner: str,
        now: float,
        lease_until: float,
        limit: int,
        skip_domains: Collection[str] = (),
        skip_messages: Collection[str] = (),
    ) -> list[Delivery]:
        return await self._writer.submit(
            partial(
                ops.lease,
                zone,
                owner,
                now,
                lease_until,
                limit,
                tuple(skip_domains),
                tuple(skip_messages),
            )
        )

    async def renew(self, keys: Sequence[DeliveryKey], *, owner: str, lease_until: float) -> None:
        if keys:
            await self._writer.submit(partial(ops.renew, tuple(keys), owner, lease_until))

    async def _release(
        self, key: DeliveryKey, owner: str, next_attempt: float, state: RowState
    ) -> None:
        await self._writer.submit(partial(ops.release, key, owner, next_attempt, state))

    async def defer(
        self,
        key: DeliveryKey,
        *,
        owner: str,
        now: float,
        next_attempt: float,
        response: str,
        delay_notified: bool = False,
    ) -> None:
        await self._writer.submit(
            partial(ops.defer, key, owner, now, next_attempt, response, delay_notified)
        )

    async def complete(self, key: DeliveryKey, *, owner: str) -> None:
        if await self._writer.submit(partial(ops.complete, key, owner)):
            self._reap(key.message_id)

    async def recover_leases(self, owner: str) -> int:
        return await self._writer.submit(partial(ops.recover_leases, owner))

    async def remove_orphans(self) -> int:
        """Runs in the writer; spares bodies being written by this process right now."""
        spared = frozenset({*self._live_bodies, *self._reaping})
        return await self._writer.submit(partial(ops.remove_orphans, spared))

    # -- reads -----------------------------------------------------------------------------

    async def next_due(self, zone: str) -> float | None:
        return await self._readers.run(partial(readers.next_due, zone))

    async def leased_elsewhere(self, zone: str, *, owner: str, now: float) -> dict[str, int]:
        return await self._readers.run(partial(readers.leased_elsewhere, zone, owner, now))

    async def get_message(self, message_id: str) -> MessageRecord | None:
        return await self._readers.run(partial(readers.get_message, message_id))

    async def read_body(self, message_id: str) -> AsyncIterator[bytes]:
        """Yields the body's chunks, fetching about :data:`READ_BYTES_PER_CALL` per thread
        call. Raises :class:`StoreError` if the message does not exist, or if its body
        disappears while being read (the message was completed meanwhile)."""
        per_call = max(1, READ_BYTES_PER_CALL // self.chunk_size)
        start = await self._readers.run(partial(readers.body_start, message_id, per_call))
        if start is None:
            raise StoreError(f"message {message_id} not found")
        total, rows = start
        index = 0
        while True:
            for idx, data in rows:
                if idx != index:
                    raise StoreError(f"body of {message_id} lacks chunk {index}")
                index += 1
                yield data
            if index >= total:
                return
            rows = await self._readers.run(
                partial(readers.read_chunks, message_id, index, min(per_call, total - index))
            )
            if not rows:
                raise StoreError(f"body of {message_id} vanished while being read")

    async def deliveries_of(self, message_id: str) -> list[Delivery]:
        return await self._readers.run(partial(readers.deliveries_of, message_id))

    async def zone_counts(self, now: float) -> dict[str, ZoneCounts]:
        return await self._readers.run(partial(readers.zone_counts, now))

    async def domain_counts(
        self, now: float, *, zone: str | None = None
    ) -> dict[tuple[str, str], ZoneCounts]:
        return await self._readers.run(partial(readers.domain_counts, now, zone))

    async def _list_deliveries(
        self, zone: str, deferred: bool, now: float, start: int, limit: int, descending: bool
    ) -> list[Delivery]:
        return await self._readers.run(
            partial(readers.list_deliveries, zone, deferred, now, start, limit, descending)
        )

    async def reschedule(self, message_id: str, seq: int | None, *, next_attempt: float) -> int:
        return await self._writer.submit(partial(ops.reschedule, message_id, seq, next_attempt))

    async def remove_deliveries(self, message_id: str, seq: int | None) -> int:
        removed, reap = await self._writer.submit(partial(ops.remove_deliveries, message_id, seq))
        if reap:
            self._reap(message_id)
        return removed

    async def _add_suppression(
        self, entry_id: str, address: str | None, domain: str | None, now: float
    ) -> SuppressionEntry:
        return await self._writer.submit(
            partial(ops.add_suppression, entry_id, address, domain, now)
        )

    async def list_suppressions(self) -> list[SuppressionEntry]:
        return await self._readers.run(readers.list_suppressions)

    async def remove_suppression(self, entry_id: str) -> bool:
        return await self._writer.submit(partial(ops.remove_suppression, entry_id))

    async def is_suppressed(self, recipient: str) -> bool:
        return await self._readers.run(partial(readers.is_suppressed, recipient))

    async def put_blacklist(self, entry: BlacklistEntry) -> None:
        await self._writer.submit(partial(ops.put_blacklist, entry))

    async def list_blacklist(self, now: float) -> list[BlacklistEntry]:
        return await self._readers.run(partial(readers.list_blacklist, now))

    async def purge_blacklist(self, now: float) -> int:
        return await self._writer.submit(partial(ops.purge_blacklist, now))

    async def add_suspension(self, entry: Suspension) -> None:
        await self._writer.submit(partial(suspensions.add_suspension, entry))

    async def list_suspensions(self, now: float) -> list[Suspension]:
        return await self._readers.run(partial(suspensions.list_suspensions, now))

    async def remove_suspension(self, entry_id: str, *, now: float) -> Suspension | None:
        return await self._writer.submit(partial(suspensions.remove_suspension, entry_id, now))

    async def expire_suspensions(self, now: float) -> list[Suspension]:
        return await self._writer.submit(partial(suspensions.expire_suspensions, now))

    async def credit_held_time(
        self, *, zone: str | None, domains: Collection[str], seconds: float
    ) -> None:
        await self._writer.submit(
            partial(suspensions.credit_held_time, zone, tuple(domains), seconds)
        )

    async def add_to_counter(self, name: str, amount: int, *, expires: float) -> int:
        return await self._writer.submit(partial(suspensions.add_to_counter, name, amount, expires))

    async def get_counters(self, names: Collection[str]) -> dict[str, int]:
        return await self._readers.run(partial(suspensions.get_counters, tuple(names)))

    async def purge_counters(self, now: float) -> int:
        return await self._writer.submit(partial(suspensions.purge_counters, now))


@asynccontextmanager
async def open_sqlite_store(
    path: Path,
    *,
    durability: Durability = "full",
    chunk_size: int = 256 * 1024,
    batch_limit: int = 500,
) -> AsyncIterator[SqliteStore]:
    """Open the store, run its writer in a nursery of its own for the block, then close it
    (queued writes finish first). Raises :class:`StoreError` if it cannot open. An exception
    from the block comes out as itself, not wrapped in an exception group."""
    store = SqliteStore(path, durability=durability, chunk_size=chunk_size, batch_limit=batch_limit)
    try:
        await store.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            try:
                yield store
            finally:
                with trio.CancelScope(shield=True):
                    await store.aclose()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0]  # noqa: B904 - the group only wrapped it
        raise
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
