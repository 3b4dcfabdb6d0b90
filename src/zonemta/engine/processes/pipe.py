"""The pipe between the relay and its child processes: length-prefixed pickled frames.

Both ends are zonemta processes started from the same installation (the relay starts its
children itself and hands each one end of a socket pair), so a frame is the pickle of a
:class:`Frame`: one small frozen attrs class per kind, listed in
``engine/processes/frames.py`` (those of the delivery processes and of the intake
processes), matched by its class on the receiving side.

:class:`FrameDecoder` is sans-IO; :class:`FramedPipe` drives a trio stream: over a
:class:`~zonemta.transport.direct_stream.DirectSocketStream` a frame goes to the kernel
when it is sent, if nothing is queued before it and the kernel takes it all (no task
switch); otherwise one writer task sends everything queued so far in one ``send_all``.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import AsyncIterator

import trio

from zonemta.transport.direct_stream import DirectSocketStream


class Frame:
    """What crosses the pipe (the frame classes derive from it)."""

    __slots__ = ()


_LENGTH = struct.Struct("!I")
MAX_FRAME = 64 << 20  # a body chunk is at most [queue] body_chunk_size (<= 16 MiB)
READ_SIZE = 256 << 10


class PipeError(Exception):
    """The other end sent something that is not a frame."""


def encode(frame: Frame) -> bytes:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class FrameDecoder:
    """Bytes in, frames out; keeps an incomplete frame's bytes between feeds."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        offset = 0
        while len(buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length > MAX_FRAME:
                raise PipeError(f"frame of {length} bytes is larger than {MAX_FRAME}")
            end = offset + _LENGTH.size + length
            if end > len(buffer):
                break
            try:
                frame = pickle.loads(memoryview(buffer)[offset + _LENGTH.size : end])
            except Exception as exc:  # truncated or foreign data
                raise PipeError(f"undecodable frame: {exc!r}") from exc
            if not isinstance(frame, Frame):
                raise PipeError(f"not a frame: {type(frame).__name__}")
            frames.append(frame)
            offset = end
        del buffer[:offset]
        return frames


class FramedPipe:
    """One end of the pipe. :meth:`send` queues without waiting (callable from synchronous
    code); :meth:`run_writer` sends the queue; :meth:`frames` yields what arrives until the
    other end closes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._direct = stream if isinstance(stream, DirectSocketStream) else None
        self._queue: list[bytes] = []
        self._wake = trio.Event()
        self._closing = False
        self._writing = False  # the writer holds bytes it has not sent yet

    def send(self, frame: Frame) -> None:
        data = encode(frame)
        direct = self._direct
        if direct is not None and not self._queue and not self._writing and not self._closing:
            try:
                sent = direct.send_nowait(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the other end died; the reader sees the end of the frames
            if sent == len(data):
                return
            data = data[sent:]
        self._queue.append(data)
        self._wake.set()

    def close_after_sending(self) -> None:
        """Let the writer send what is queued, then send EOF and stop."""
        self._closing = True
        self._wake.set()

    async def run_writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._queue:
                data, self._queue = b"".join(self._queue), []
                self._writing = True
                try:
                    await self.stream.send_all(data)
                except trio.BrokenResourceError:
                    return  # the other end died; the reader sees the end of the frames
                finally:
                    self._writing = False
            if self._closing and not self._queue:
                if isinstance(self.stream, trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()
                return

    async def frames(self) -> AsyncIterator[Frame]:
        """Async iterator of frames; ends at EOF, or when the other process is gone (a
        reset). Raises PipeError on garbage."""
        decoder = FrameDecoder()
        while True:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except trio.BrokenResourceError:
                return  # the other end died: for the reader, the end of the frames
            if not data:
                return
            for frame in decoder.feed(data):
                yield frame
