"""Receiving a body into the sqlite queue, one chunk row at a time."""

from __future__ import annotations

import logging
from functools import partial
from typing import Final

import trio

from zonemta.store.chunking import BodyState, ChunkingBodyWriter
from zonemta.store.errors import StoreError
from zonemta.store.sqlite import ops
from zonemta.store.sqlite.writer import GroupCommitWriter, Pending

log = logging.getLogger(__name__)

#: How long :meth:`SqliteBodyWriter.abort` waits for its delete (shielded from cancellation)
#: before leaving the chunks to ``remove_orphans``.
ABORT_TIMEOUT_SECONDS: Final = 10.0


class SqliteBodyWriter(ChunkingBodyWriter):
    """Each full chunk goes to the group-commit writer as its own op (an orphan chunk row
    until the message row is committed). One chunk may be in flight while the next one
    fills, so memory stays under two chunks plus the caller's largest ``write``.

    Made by :meth:`SqliteStore.new_body`; ``live`` is the store's set of bodies being written,
    which orphan collection must spare. The writer leaves that set when it is committed or
    aborted.
    """

    def __init__(
        self, writer: GroupCommitWriter, live: set[str], message_id: str, chunk_size: int
    ) -> None:
        super().__init__(message_id, chunk_size)
        self._writer = writer
        self._live = live
        self._inflight: Pending[None] | None = None
        live.add(message_id)

    @property
    def writer(self) -> GroupCommitWriter:
        return self._writer

    async def _store_chunk(self, index: int, data: bytes) -> None:
        if self._inflight is not None:
            await self._inflight.wait()
            self._inflight = None
        self._inflight = await self._writer.enqueue(
            partial(ops.insert_chunk, self.message_id, index, data)
        )

    def end_commit(self) -> None:
        """The message row is committed: the body belongs to the queue now."""
        self._state = BodyState.COMMITTED
        self._inflight = None
        self._live.discard(self.message_id)

    async def abort(self) -> None:
        """Delete the chunks written so far (through the writer, shielded from cancellation
        for at most :data:`ABORT_TIMEOUT_SECONDS`). Safe to call twice, and a no-op after a
        successful commit. Never raises StoreError: failures are logged and the chunks are
        left to ``remove_orphans``."""
        if self._begin_abort() is None:
            return
        self._inflight = None
        try:
            if self._stored:
                with trio.move_on_after(ABORT_TIMEOUT_SECONDS, shield=True) as scope:
                    await self._writer.submit(partial(ops.discard_body, self.message_id))
                if scope.cancelled_caught:
                    log.warning(
                        "abort of body %s timed out; left to orphan collection", self.message_id
                    )
        except StoreError as exc:
            log.warning(
                "abort of body %s failed (%s); left to orphan collection", self.message_id, exc
            )
        finally:
            self._live.discard(self.message_id)
