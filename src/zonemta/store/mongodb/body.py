"""Receiving a body into GridFS, one chunk document at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Final

import attrs
import trio

from zonemta.store.chunking import BodyState, ChunkingBodyWriter
from zonemta.store.errors import StoreError
from zonemta.store.mongodb import ops
from zonemta.store.mongodb.client import DatabaseUnavailable, MongoRunner

log = logging.getLogger(__name__)

#: How long :meth:`MongoBodyWriter.abort` waits (shielded from cancellation) before leaving
#: the chunks to orphan collection.
ABORT_TIMEOUT_SECONDS: Final = 20.0


@attrs.define
class Receptions:
    """The bodies this process is receiving right now: orphan collection never removes
    them. ``body_ids`` is read from the collector's worker thread (membership tests only)."""

    by_message: dict[str, str] = attrs.field(factory=dict)
    body_ids: set[str] = attrs.field(factory=set)

    def add(self, message_id: str, body_id: str) -> None:
        if message_id in self.by_message:
            raise StoreError(f"a body for {message_id} is already being written")
        self.by_message[message_id] = body_id
        self.body_ids.add(body_id)

    def discard(self, message_id: str, body_id: str) -> None:
        if self.by_message.get(message_id) == body_id:
            del self.by_message[message_id]
        self.body_ids.discard(body_id)


class MongoBodyWriter(ChunkingBodyWriter):
    """Buffers up to ``chunk_size`` bytes and stores each full chunk as a GridFS chunk
    document (one thread call per chunk, awaited before the next is taken). Memory stays
    under one chunk plus the caller's largest ``write``; a body smaller than a chunk costs
    no round trip before the commit.

    Made by :meth:`MongoStore.new_body`; registered in ``receptions`` until it is committed
    or aborted. ``on_orphan`` is called when an abort leaves stored chunks behind for
    garbage collection (the database was unreachable).
    """

    def __init__(
        self,
        runner: MongoRunner,
        receptions: Receptions,
        *,
        owner: str,
        message_id: str,
        body_id: str,
        chunk_size: int,
        on_orphan: Callable[[], None] = lambda: None,
    ) -> None:
        receptions.add(message_id, body_id)
        super().__init__(message_id, chunk_size)
        self.body_id = body_id
        self._runner = runner
        self._receptions = receptions
        self._owner = owner
        self._unavailable = False
        self._on_orphan = on_orphan

    @property
    def runner(self) -> MongoRunner:
        return self._runner

    async def _store_chunk(self, index: int, data: bytes) -> None:
        await self._runner.run(
            partial(
                ops.insert_chunk,
                self.body_id,
                self.message_id,
                self._owner,
                index,
                data,
                self._chunk_size,
            )
        )

    def _chunk_failed(self, exc: BaseException) -> None:
        self._unavailable = isinstance(exc, DatabaseUnavailable)

    def database_unavailable(self) -> None:
        """The commit failed because the database is unreachable: :meth:`abort` will not
        wait for it again, and leaves the body to garbage collection."""
        self._unavailable = True

    def end_commit(self) -> None:
        """The message is committed: the body belongs to the queue now."""
        self._state = BodyState.COMMITTED
        self._receptions.discard(self.message_id, self.body_id)

    async def abort(self) -> None:
        """Delete what was stored of this body unless a message references it (a commit
        whose outcome was unclear), shielded from cancellation. Safe to call twice, a no-op
        after a commit. Never raises StoreError: failures are logged and the body is left to
        orphan collection, as it is at once when the database was found unreachable (so a
        submitter gets its temporary failure without waiting for another timeout)."""
        previous = self._begin_abort()
        if previous is None:
            return
        written = self._stored > 0 or previous in (BodyState.COMMITTING, BodyState.FAILED)
        if written and self._unavailable:
            self._receptions.discard(self.message_id, self.body_id)
            self._on_orphan()
            return
        try:
            if written:
                with trio.move_on_after(ABORT_TIMEOUT_SECONDS, shield=True):
                    await self._runner.run(partial(ops.discard_body, self.body_id))
        except StoreError as exc:
            log.warning(
                "abort of body %s failed (%s); left to orphan collection", self.message_id, exc
            )
            self._on_orphan()
        finally:
            self._receptions.discard(self.message_id, self.body_id)
