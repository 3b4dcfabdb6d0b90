"""The part of a body writer every backend shares: buffering into chunks of a fixed size
and the writer's life cycle (open → committing → committed, or failed/aborted)."""

from __future__ import annotations

import abc
import enum

from zonemta.store.base import BodyWriter
from zonemta.store.errors import StoreError


class BodyState(enum.Enum):
    OPEN = "open"
    FAILED = "failed"  # a chunk could not be stored: only abort() is left
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"


class ChunkingBodyWriter(BodyWriter):
    """Buffers up to ``chunk_size`` bytes and hands each full chunk to :meth:`_store_chunk`
    (numbered from 0); the store's commit takes the unwritten tail with
    :meth:`begin_commit`. Memory stays bounded by the chunk size (plus what the backend keeps
    in flight) whatever the message size."""

    def __init__(self, message_id: str, chunk_size: int) -> None:
        self.message_id = message_id
        self.size = 0
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._stored = 0  # chunks handed to the backend
        self._state = BodyState.OPEN

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; stores full chunks. Raises :class:`StoreError` if a chunk could
        not be stored or the body is no longer open."""
        if self._state is not BodyState.OPEN:
            raise StoreError(f"body of {self.message_id} is {self._state.value}")
        self._buffer += chunk
        self.size += len(chunk)
        size = self._chunk_size
        while len(self._buffer) >= size:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            try:
                await self._store_chunk(self._stored, data)
            except BaseException as exc:
                # Failed or cancelled half-way: this chunk may not be stored, so the body
                # can no longer be committed whole.
                self._state = BodyState.FAILED
                self._chunk_failed(exc)
                raise
            self._stored += 1

    @abc.abstractmethod
    async def _store_chunk(self, index: int, data: bytes) -> None:
        """Store chunk number ``index``. Raises :class:`StoreError`."""

    def _chunk_failed(self, exc: BaseException) -> None:
        """A chunk was not stored (``exc``); backends may note why."""

    def begin_commit(self) -> tuple[bytes, int]:
        """For the store's commit: the unwritten tail and how many chunks were handed over.
        Raises :class:`StoreError` if the body is not open (failed, aborted, committed)."""
        if self._state is not BodyState.OPEN:
            raise StoreError(f"body of {self.message_id} is {self._state.value}")
        self._state = BodyState.COMMITTING
        tail = bytes(self._buffer)
        self._buffer = bytearray()
        return tail, self._stored

    def _begin_abort(self) -> BodyState | None:
        """Enter the aborted state; returns the state it was in, or None when there is
        nothing to do (already aborted, or committed)."""
        previous = self._state
        if previous in (BodyState.ABORTED, BodyState.COMMITTED):
            return None
        self._state = BodyState.ABORTED
        self._buffer = bytearray()
        return previous
