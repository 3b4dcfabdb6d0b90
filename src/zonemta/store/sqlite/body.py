"""Receiving a body into the sqlite queue, one chunk row at a time."""

from __future__ import annotations

import enum
import logging
from functools import partial
from typing import Final

import trio

from zonemta.store.base import BodyWriter, StoreError
from zonemta.store.sqlite import ops
from zonemta.store.sqlite.writer import GroupCommitWriter, Pending

log = logging.getLogger(__name__)

#: How long :meth:`SqliteBodyWriter.abort` waits for its delete (shielded from cancellation)
#: before leaving the chunks to ``remove_orphans``.
ABORT_TIMEOUT_SECONDS: Final = 10.0


class _State(enum.Enum):
    OPEN = "open"
    FAILED = "failed"  # a chunk could not be stored: only abort() is left
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"


class SqliteBodyWriter(BodyWriter):
    """Buffers up to ``chunk_size`` bytes; each full chunk goes to the group-commit writer as
    its own op (an orphan chunk row until the message row is committed). One chunk may be in
    flight while the next one fills, so memory stays under two chunks plus the caller's
    largest ``write``.

    Made by :meth:`SqliteStore.new_body`; ``live`` is the store's set of bodies being written,
    which orphan collection must spare. The writer leaves that set when it is committed or
    aborted.
    """

    def __init__(
        self, writer: GroupCommitWriter, live: set[str], message_id: str, chunk_size: int
    ) -> None:
        self.message_id = message_id
        self.size = 0
        self._writer = writer
        self._live = live
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._stored = 0  # chunks handed to the writer
        self._inflight: Pending[None] | None = None
        self._state = _State.OPEN
        live.add(message_id)

    @property
    def writer(self) -> GroupCommitWriter:
        return self._writer

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; hands full chunks to the writer. Raises :class:`StoreError` if a
        chunk could not be stored or the body is no longer open."""
        if self._state is not _State.OPEN:
            raise StoreError(f"body of {self.message_id} is {self._state.value}")
        self._buffer += chunk
        self.size += len(chunk)
        size = self._chunk_size
        while len(self._buffer) >= size:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            await self._hand_over(data)

    async def _hand_over(self, data: bytes) -> None:
        try:
            if self._inflight is not None:
                await self._inflight.wait()
                self._inflight = None
            self._inflight = await self._writer.enqueue(
                partial(ops.insert_chunk, self.message_id, self._stored, data)
            )
        except BaseException:
            # Failed or cancelled half-way: ``data`` may not be stored, so this body can no
            # longer be committed whole.
            self._state = _State.FAILED
            raise
        self._stored += 1

    def begin_commit(self) -> tuple[bytes, int]:
        """For the store's commit: the unwritten tail and how many chunks were handed over.
        Raises :class:`StoreError` if the body is not open (failed, aborted, committed)."""
        if self._state is not _State.OPEN:
            raise StoreError(f"body of {self.message_id} is {self._state.value}")
        self._state = _State.COMMITTING
        tail = bytes(self._buffer)
        self._buffer = bytearray()
        return tail, self._stored

    def end_commit(self) -> None:
        """The message row is committed: the body belongs to the queue now."""
        self._state = _State.COMMITTED
        self._inflight = None
        self._live.discard(self.message_id)

    async def abort(self) -> None:
        """Delete the chunks written so far (through the writer, shielded from cancellation
        for at most :data:`ABORT_TIMEOUT_SECONDS`). Safe to call twice, and a no-op after a
        successful commit. Never raises StoreError: failures are logged and the chunks are
        left to ``remove_orphans``."""
        if self._state in (_State.ABORTED, _State.COMMITTED):
            return
        self._state = _State.ABORTED
        self._buffer = bytearray()
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
