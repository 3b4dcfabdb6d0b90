"""The group-commit writer: the one task that writes to the sqlite database.

Callers hand it *ops* (a blocking function taking the writing connection) and wait for the
commit that covers them. The writer takes everything that is waiting (up to
``batch_limit`` ops) and runs the lot in ONE worker-thread call, inside one
``BEGIN IMMEDIATE … COMMIT``: one thread hop and one fsync per batch, however many messages
or chunks arrived meanwhile. Each op runs in its own SAVEPOINT, so an op that raises is
rolled back alone and fails only its own caller; the others commit. When sqlite rolls the
whole transaction back on an op's error (it may, for a full disk or an I/O error), that op
fails and the others run again in a new transaction: their work was undone with it.

Results are handed back only after COMMIT returned, so a caller that sees success knows its
change is durable (as durable as the connection's ``synchronous`` setting makes it).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import attrs
import trio

from zonemta.store.errors import StoreError, StoreFull

T = TypeVar("T")

#: A write op: runs in a worker thread with the writing connection, inside a savepoint.
WriteOp = Callable[[sqlite3.Connection], T]

_UNSET: Final[Any] = object()


@attrs.frozen
class WriterStats:
    """Counters of a writer since it was created: transactions committed (or attempted)
    and ops run. ``ops / batches`` is the mean group-commit size."""

    batches: int
    ops: int
    largest_batch: int

    @property
    def mean_batch(self) -> float:
        """Mean ops per batch (0.0 before the first batch)."""
        return self.ops / self.batches if self.batches else 0.0


def as_store_error(exc: BaseException) -> BaseException:
    """``exc`` as the store's callers should see it: sqlite errors become a
    :class:`StoreError` caused by them; StoreErrors and programming errors stay as they are."""
    if isinstance(exc, sqlite3.Error):
        full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        err = (StoreFull if full else StoreError)(f"sqlite: {exc}")
        err.__cause__ = exc
        return err
    return exc


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, after an error (one from the rollback itself
    would only hide the first)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class Pending(Generic[T]):
    """One op handed to the writer, and the slot its outcome lands in.

    Its waiters park themselves (``wait_task_rescheduled``) and :meth:`finish` reschedules
    them: what a ``trio.Event`` would do, without making one per op."""

    __slots__ = ("_error", "_finished", "_value", "_waiters", "fn")

    def __init__(self, fn: WriteOp[T]) -> None:
        self.fn = fn
        self._value: T = _UNSET
        self._error: BaseException | None = None
        self._finished = False
        self._waiters: list[trio.lowlevel.Task] | None = None

    # Called from the writer's worker thread (before finish, so no race with readers).
    def set_value(self, value: T) -> None:
        self._value = value

    def set_error(self, error: BaseException) -> None:
        self._value = _UNSET
        self._error = error

    def reset(self) -> None:
        """Forget the outcome: the transaction that ran the op was rolled back."""
        self._value = _UNSET
        self._error = None

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def settled(self) -> bool:
        return self._error is not None or self._value is not _UNSET

    def finish(self) -> None:
        """Wake the waiters (trio thread). An op that never ran fails as 'store closed'."""
        if self._finished:
            return
        if not self.settled:
            self._error = StoreError("the store's writer stopped before this write ran")
        self._finished = True
        waiters, self._waiters = self._waiters, None
        if waiters:
            for task in waiters:
                trio.lowlevel.reschedule(task)

    async def wait(self) -> T:
        """The op's result once its batch committed. Raises what the op raised (sqlite errors
        as :class:`StoreError`), or StoreError if the batch could not commit."""
        if self._finished:
            await trio.lowlevel.checkpoint()
        else:
            task = trio.lowlevel.current_task()
            waiters = self._waiters
            if waiters is None:
                waiters = self._waiters = []
            waiters.append(task)

            def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
                # Not finished yet (finish reschedules its waiters, which are not aborted).
                waiters.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self._error is not None:
            raise self._error
        return self._value


class GroupCommitWriter:
    """Owns the writing connection once :meth:`run` is going. See the module docstring.

    ``connection`` may be None at construction and set later with :meth:`attach` (the store
    opens it in a worker thread); :meth:`run` refuses to start without one.
    """

    def __init__(self, connection: sqlite3.Connection | None = None, *, batch_limit: int) -> None:
        if batch_limit < 1:
            raise ValueError("batch_limit must be at least 1")
        self._conn = connection
        self._batch_limit = batch_limit
        # Bounded so that a writer that falls behind slows the senders instead of piling up
        # chunks in memory.
        self._send, self._receive = trio.open_memory_channel[Pending[Any]](max(64, batch_limit * 4))
        self._thread_limiter = trio.CapacityLimiter(1)
        self._running = False
        self._closed = False
        self._stopped = trio.Event()
        self._batches = 0
        self._ops = 0
        self._largest = 0

    def attach(self, connection: sqlite3.Connection) -> None:
        """Give the writer its connection (before :meth:`run`)."""
        self._conn = connection

    @property
    def stats(self) -> WriterStats:
        return WriterStats(batches=self._batches, ops=self._ops, largest_batch=self._largest)

    @property
    def running(self) -> bool:
        return self._running

    async def enqueue(self, fn: WriteOp[T]) -> Pending[T]:
        """Hand ``fn`` to the writer without waiting for its commit; await
        :meth:`Pending.wait` for that. Waits only when the writer's queue is full.

        Once handed over, the op runs even if the caller is cancelled. Raises
        :class:`StoreError` if the writer is closed.
        """
        pending = Pending(fn)
        # ``send`` without its schedule point when the queue has room: the caller waits for
        # the commit next anyway, so yielding here only costs a trip through the scheduler.
        # A caller already cancelled still hands nothing over.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                self._send.send_nowait(pending)
            except trio.WouldBlock:
                await self._send.send(pending)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise StoreError("the store is closed") from exc
        return pending

    async def submit(self, fn: WriteOp[T]) -> T:
        """Run ``fn`` in the next batch and return its result once that batch committed.
        Raises what ``fn`` raised (sqlite errors as :class:`StoreError`), or StoreError."""
        pending = await self.enqueue(fn)
        return await pending.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer loop. Returns when :meth:`close` was called and every op handed over
        before it ran, or when cancelled; ops still queued then fail with StoreError.
        Raises StoreError if the writer was closed before it started."""
        if self._conn is None:
            raise RuntimeError("the writer has no connection")
        if self._running or self._stopped.is_set():
            raise RuntimeError("the writer runs once")
        if self._closed:
            raise StoreError("the store is closed")
        self._running = True
        task_status.started()
        try:
            async for first in self._receive:
                batch: list[Pending[Any]] = [first]
                try:
                    # Let tasks that are already runnable hand over their ops too.
                    await trio.lowlevel.checkpoint()
                    while len(batch) < self._batch_limit:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await trio.to_thread.run_sync(
                        self._run_batch, batch, limiter=self._thread_limiter
                    )
                    self._batches += 1
                    self._ops += len(batch)
                    self._largest = max(self._largest, len(batch))
                finally:
                    for pending in batch:
                        pending.finish()
        finally:
            self._fail_queued()
            self._running = False
            self._stopped.set()

    def close(self) -> None:
        """Accept no more ops. A running loop finishes the queued ones and returns; if the
        loop is not running, the queued ops fail with StoreError now."""
        self._closed = True
        self._send.close()
        if not self._running:
            self._fail_queued()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`run` returned (returns at once if it is not running)."""
        if self._running:
            await self._stopped.wait()

    def _fail_queued(self) -> None:
        while True:
            try:
                pending = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            pending.finish()
        self._receive.close()

    def _run_batch(self, batch: list[Pending[Any]]) -> None:
        """Worker thread: the batch's ops, in as few transactions as their errors allow
        (one, unless an op's error rolled the whole transaction back).

        The batch first runs without savepoints (two statements fewer per op). If one of
        several ops raises, nothing of the transaction is kept: it is rolled back whole and
        the batch runs again the careful way (:meth:`_run_transaction`, a savepoint per op),
        which gives each op the outcome it has there. Ops only touch the database, so
        running one again after a rollback is running it once (as when sqlite rolls a
        transaction back itself)."""
        conn = self._conn
        assert conn is not None
        if self._run_optimistic(conn, batch):
            return
        while batch:
            batch = self._run_transaction(conn, batch)

    def _run_optimistic(self, conn: sqlite3.Connection, batch: list[Pending[Any]]) -> bool:
        """One transaction, no savepoints. True when the batch is settled: every op ran and
        COMMIT returned, or COMMIT failed (every op fails, as in :meth:`_run_transaction`),
        or the one op of the batch raised. False when an op of several raised: nothing was
        kept and the outcomes are reset, for the batch to run again with savepoints."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return False  # the careful path meets (and reports) the same error
        for pending in batch:
            try:
                pending.set_value(pending.fn(conn))
            except Exception as exc:
                _rollback(conn)
                if len(batch) == 1:
                    pending.set_error(as_store_error(exc))
                    return True
                for other in batch:
                    other.reset()
                return False
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            for pending in batch:
                pending.set_error(as_store_error(exc))
        return True

    def _run_transaction(
        self, conn: sqlite3.Connection, batch: list[Pending[Any]]
    ) -> list[Pending[Any]]:
        """One transaction, one savepoint per op. Returns the ops to run again: all but the
        failing one when its error made sqlite roll back the whole transaction."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for pending in batch:
                pending.set_error(as_store_error(exc))
            return []
        try:
            for pending in batch:
                conn.execute("SAVEPOINT op")
                try:
                    pending.set_value(pending.fn(conn))
                except Exception as exc:
                    pending.set_error(as_store_error(exc))
                    if not conn.in_transaction:  # sqlite rolled everything back itself
                        again = [other for other in batch if other is not pending]
                        for other in again:
                            other.reset()
                        return again
                    conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The transaction itself failed (disk full, I/O error, ...): nothing committed.
            _rollback(conn)
            for pending in batch:
                if not pending.failed:  # an op that failed on its own keeps its error
                    pending.set_error(as_store_error(exc))
        return []
