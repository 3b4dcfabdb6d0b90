"""The MongoDB queue backend: several relays (distinct ``instance_id``) share one database.

Lifecycle
---------
``open()``
    Connects (short timeouts, see :mod:`~zonemta.store.mongodb.client`), creates the indexes
    (idempotent) and records this instance's heartbeat. Raises StoreError when the database
    cannot be reached.
``run()``
    The store's service: beats the heartbeat every few seconds and collects garbage now and
    then (and soon after a commit whose deliveries could not be released). Start it with
    ``await nursery.start(store.run)``; it runs until :meth:`aclose` or cancellation.
``aclose()``
    Signs this instance off and closes the client. Idempotent.

Every method that changes data returns once the write is acknowledged with the write
concern of ``durability`` (``full``: majority and journal) unless the URI sets its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final

import trio

from zonemta.store.base import BodyWriter, Store
from zonemta.store.errors import StoreError
from zonemta.store.meta import meta_to_document
from zonemta.store.mongodb import gc, ops, readers, suspensions
from zonemta.store.mongodb.body import MongoBodyWriter, Receptions
from zonemta.store.mongodb.client import DatabaseUnavailable, Db, MongoRunner, client_options
from zonemta.store.mongodb.schema import INDEXES, new_body_id
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

log = logging.getLogger(__name__)

#: Bytes a body reader fetches per thread call (whole chunks, at least one).
READ_BYTES_PER_CALL: Final = 1024 * 1024

#: GridFS chunk documents must stay under MongoDB's 16 MiB document limit.
MAX_CHUNK_SIZE: Final = 8 * 1024 * 1024

#: Worker threads (and so concurrent pymongo calls) per store.
THREADS: Final = 16

#: Seconds between garbage collections by :meth:`MongoStore.run`.
GC_INTERVAL: Final = 600.0


def _create_indexes(db: Db) -> None:
    for collection, indexes in INDEXES.items():
        db[collection].create_indexes(indexes)


class MongoStore(Store):
    """The queue in MongoDB database ``database`` at ``uri``; ``instance_id`` names this
    relay in leases, heartbeats and the ids of the bodies it receives. ``options`` are
    extra :class:`pymongo.MongoClient` keyword options (the URI's own options win)."""

    def __init__(
        self,
        uri: str,
        database: str,
        *,
        instance_id: str = "default",
        durability: str = "full",
        chunk_size: int = 256 * 1024,
        threads: int = THREADS,
        gc_interval: float = GC_INTERVAL,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if not instance_id or "/" in instance_id:
            raise ValueError(f"bad instance id {instance_id!r}")
        self.uri = uri
        self.database = database
        self.instance_id = instance_id
        self.chunk_size = min(chunk_size, MAX_CHUNK_SIZE)
        self.gc_interval = gc_interval
        self._options = client_options(uri, durability, options or {})
        self._runner = MongoRunner(threads=threads)
        self._receptions = Receptions()
        self._open_lock = trio.Lock()
        self._closed = False
        self._gc_wanted = trio.Event()  # wakes the service early
        self._gc_pending = False  # a collection is wanted before the next periodic one
        self._service = trio.CancelScope()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the indexes, beat once. Raises :class:`StoreError`."""
        async with self._open_lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._runner.connected:
                return
            await self._runner.connect(self.uri, self.database, self._options)
            try:
                await self._runner.run(_create_indexes)
                await self._runner.run(partial(gc.heartbeat, self.instance_id))
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._runner.aclose()
                raise

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat and garbage collection until :meth:`aclose` or cancellation. Opens the
        store first if needed (raises StoreError if it cannot). Database failures are logged
        and retried; they never end the service."""
        await self.open()
        task_status.started()
        next_gc = trio.current_time() + self.gc_interval
        with self._service:
            while True:
                with trio.move_on_after(gc.HEARTBEAT_SECONDS):
                    await self._gc_wanted.wait()
                self._gc_wanted = trio.Event()
                try:
                    await self._runner.run(partial(gc.heartbeat, self.instance_id))
                    if self._gc_pending or trio.current_time() >= next_gc:
                        removed = await self.remove_orphans()
                        self._gc_pending = False
                        next_gc = trio.current_time() + self.gc_interval
                        if removed:
                            log.info("garbage collection removed %d messages/bodies", removed)
                except StoreError as exc:
                    # Retried at the next beat (the pending flag stays).
                    log.warning("queue housekeeping failed: %s", exc)

    async def aclose(self) -> None:
        """Stop the service, sign off, close the client. Shielded; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._service.cancel()
        with trio.CancelScope(shield=True):
            if self._runner.connected:
                try:
                    await self._runner.run(partial(gc.sign_off, self.instance_id))
                except StoreError as exc:
                    log.warning("signing off %s failed: %s", self.instance_id, exc)
            await self._runner.aclose()

    # -- receiving -------------------------------------------------------------------------

    def new_body(self, message_id: str) -> BodyWriter:
        """A GridFS body writer for ``message_id``. Raises :class:`StoreError` if one is
        already being written for that id in this process."""
        return MongoBodyWriter(
            self._runner,
            self._receptions,
            owner=self.instance_id,
            message_id=message_id,
            body_id=new_body_id(self.instance_id, message_id),
            chunk_size=self.chunk_size,
            on_orphan=self._want_gc,
        )

    def _want_gc(self) -> None:
        self._gc_pending = True
        self._gc_wanted.set()

    async def commit_message(
        self, message: MessageRecord, body: BodyWriter, deliveries: Sequence[NewDelivery]
    ) -> None:
        """The body's tail and files document, the deliveries (held), the message document
        (the commit point), the deliveries released: one thread call, see
        :func:`ops.commit_message`. On failure the body is aborted and StoreError raised;
        TypeError for a writer of another store, ValueError for no deliveries."""
        if not isinstance(body, MongoBodyWriter) or body.runner is not self._runner:
            raise TypeError("commit_message needs a body writer made by this store")
        try:
            if not deliveries:
                raise ValueError("a message needs at least one delivery")
            if body.message_id != message.id:
                raise ValueError(f"body {body.message_id} is not the body of {message.id}")
            try:
                meta = json.loads(json.dumps(meta_to_document(message.meta)))
            except (TypeError, ValueError) as exc:
                raise StoreError(f"meta of {message.id} is not JSON: {exc}") from exc
            tail, stored = body.begin_commit()
            released = await self._runner.run(
                partial(
                    ops.commit_message,
                    message,
                    meta,
                    self.instance_id,
                    body.body_id,
                    self.chunk_size,
                    tail,
                    stored,
                    tuple(deliveries),
                )
            )
        except BaseException as exc:
            if isinstance(exc, DatabaseUnavailable):
                body.database_unavailable()
            await body.abort()
            raise
        body.end_commit()
        if not released:
            self._want_gc()  # the collector releases them

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
        return await self._runner.run(
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
            await self._runner.run(partial(ops.renew, tuple(keys), owner, lease_until))

    async def _release(
        self, key: DeliveryKey, owner: str, next_attempt: float, state: RowState
    ) -> None:
        await self._runner.run(partial(ops.release, key, owner, next_attempt, state))

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
        await self._runner.run(
            partial(ops.defer, key, owner, now, next_attempt, response, delay_notified)
        )

    async def complete(self, key: DeliveryKey, *, owner: str) -> None:
        await self._runner.run(partial(ops.complete, key, owner))

    async def recover_leases(self, owner: str) -> int:
        return await self._runner.run(partial(ops.recover_leases, owner))

    async def remove_orphans(self) -> int:
        """Collect garbage by reachability (see :mod:`~zonemta.store.mongodb.gc`); spares
        every body being received, here or by another live instance."""
        return await self._runner.run(
            partial(gc.collect, self.instance_id, self._receptions.body_ids)
        )

    # -- reads -----------------------------------------------------------------------------

    async def next_due(self, zone: str) -> float | None:
        return await self._runner.run(partial(readers.next_due, zone))

    async def leased_elsewhere(self, zone: str, *, owner: str, now: float) -> dict[str, int]:
        return await self._runner.run(partial(readers.leased_elsewhere, zone, owner, now))

    async def get_message(self, message_id: str) -> MessageRecord | None:
        return await self._runner.run(partial(readers.get_message, message_id))

    async def read_body(self, message_id: str) -> AsyncIterator[bytes]:
        """Yields the body's GridFS chunks, fetching about :data:`READ_BYTES_PER_CALL` per
        thread call. Raises :class:`StoreError` if the message does not exist, or if its
        body disappears while being read (the message was completed meanwhile)."""
        per_call = max(1, READ_BYTES_PER_CALL // self.chunk_size)
        start = await self._runner.run(partial(readers.body_start, message_id, per_call))
        if start is None:
            raise StoreError(f"message {message_id} not found")
        body_id, total, rows = start
        index = 0
        while True:
            for n, data in rows:
                if n != index:
                    raise StoreError(f"body of {message_id} lacks chunk {index}")
                index += 1
                yield data
            if index >= total:
                return
            rows = await self._runner.run(
                partial(readers.read_chunks, body_id, index, min(per_call, total - index))
            )
            if not rows:
                raise StoreError(f"body of {message_id} vanished while being read")

    async def deliveries_of(self, message_id: str) -> list[Delivery]:
        return await self._runner.run(partial(readers.deliveries_of, message_id))

    async def zone_counts(self, now: float) -> dict[str, ZoneCounts]:
        return await self._runner.run(partial(readers.zone_counts, now))

    async def domain_counts(
        self, now: float, *, zone: str | None = None
    ) -> dict[tuple[str, str], ZoneCounts]:
        return await self._runner.run(partial(readers.domain_counts, now, zone))

    async def _list_deliveries(
        self, zone: str, deferred: bool, now: float, start: int, limit: int, descending: bool
    ) -> list[Delivery]:
        return await self._runner.run(
            partial(readers.list_deliveries, zone, deferred, now, start, limit, descending)
        )

    async def reschedule(self, message_id: str, seq: int | None, *, next_attempt: float) -> int:
        return await self._runner.run(partial(ops.reschedule, message_id, seq, next_attempt))

    async def remove_deliveries(self, message_id: str, seq: int | None) -> int:
        return await self._runner.run(partial(ops.remove_deliveries, message_id, seq))

    # -- suppression list ------------------------------------------------------------------

    async def _add_suppression(
        self, entry_id: str, address: str | None, domain: str | None, now: float
    ) -> SuppressionEntry:
        return await self._runner.run(
            partial(readers.add_suppression, entry_id, address, domain, now)
        )

    async def list_suppressions(self) -> list[SuppressionEntry]:
        return await self._runner.run(readers.list_suppressions)

    async def remove_suppression(self, entry_id: str) -> bool:
        return await self._runner.run(partial(readers.remove_suppression, entry_id))

    # -- blacklist ---------------------------------------------------------------------------

    async def put_blacklist(self, entry: BlacklistEntry) -> None:
        await self._runner.run(partial(readers.put_blacklist, entry))

    async def list_blacklist(self, now: float) -> list[BlacklistEntry]:
        return await self._runner.run(partial(readers.list_blacklist, now))

    async def purge_blacklist(self, now: float) -> int:
        return await self._runner.run(partial(readers.purge_blacklist, now))

    # -- suspensions -------------------------------------------------------------------------

    async def add_suspension(self, entry: Suspension) -> None:
        await self._runner.run(partial(suspensions.add_suspension, entry))

    async def list_suspensions(self, now: float) -> list[Suspension]:
        return await self._runner.run(partial(suspensions.list_suspensions, now))

    async def remove_suspension(self, entry_id: str, *, now: float) -> Suspension | None:
        return await self._runner.run(partial(suspensions.remove_suspension, entry_id, now))

    async def expire_suspensions(self, now: float) -> list[Suspension]:
        return await self._runner.run(partial(suspensions.expire_suspensions, now))

    async def credit_held_time(
        self, *, zone: str | None, domains: Collection[str], seconds: float
    ) -> None:
        await self._runner.run(partial(suspensions.credit_held_time, zone, tuple(domains), seconds))

    async def add_to_counter(self, name: str, amount: int, *, expires: float) -> int:
        return await self._runner.run(partial(suspensions.add_to_counter, name, amount, expires))

    async def get_counters(self, names: Collection[str]) -> dict[str, int]:
        return await self._runner.run(partial(suspensions.get_counters, tuple(names)))

    async def purge_counters(self, now: float) -> int:
        return await self._runner.run(partial(suspensions.purge_counters, now))

    async def is_suppressed(self, recipient: str) -> bool:
        return await self._runner.run(partial(readers.is_suppressed, recipient))


@asynccontextmanager
async def open_mongo_store(uri: str, database: str, **kwargs: Any) -> AsyncIterator[MongoStore]:
    """Open the store, run its service in a nursery of its own for the block, then close
    it. ``kwargs`` go to :class:`MongoStore`. Raises :class:`StoreError` if it cannot open.
    An exception from the block comes out as itself, not wrapped in an exception group."""
    store = MongoStore(uri, database, **kwargs)
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
