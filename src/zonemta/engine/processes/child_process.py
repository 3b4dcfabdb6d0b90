"""A supervised child process of the relay, talking over a framed pipe.

The delivery processes and the intake processes share this life cycle: the relay starts
``python -m MODULE FD [FD...]``, sends an ``Init`` frame, waits for ``Ready``, then
exchanges frames until the child exits or the relay stops it by closing the pipe. A child
that dies is started again after :data:`RESTART_DELAY`; the first start must succeed, or the
relay does not start (:class:`StartError`).
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import AsyncIterator

import trio

from zonemta.engine.exception_groups import first_leaf
from zonemta.engine.processes.frames import Init, Ready
from zonemta.engine.processes.pipe import Frame, FramedPipe, PipeError
from zonemta.transport.direct_stream import DirectSocketStream

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # importing and building the child's side takes about a second
RESTART_DELAY = 1.0
STOP_TIMEOUT = 10.0

# What a dying or misbehaving process raises here (the pipe breaks, garbage, no "ready").
PROCESS_FAILURES = (OSError, PipeError, trio.BrokenResourceError, trio.TooSlowError)


def process_failure(exc: BaseException) -> BaseException:
    """The failure in ``exc`` (a group of them from the pipe's tasks, too); any other
    exception (a bug, a cancellation) is raised again."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    failures, others = exc.split(PROCESS_FAILURES)
    if others is not None or failures is None:
        raise exc
    return first_leaf(failures)


class StartError(Exception):
    """A child process did not start (the relay does not start either)."""


class ChildProcess:
    """One child process, kept running until :meth:`stop`. Subclasses say what the child
    runs (:attr:`module`), what it is told first (:meth:`init_frame`), which descriptors it
    inherits (:meth:`inherited_fds`), what to do with its frames (:meth:`dispatch`) and
    what to clean up when it is gone (:meth:`lost`)."""

    kind = "child"
    module = ""

    def __init__(self, index: int) -> None:
        self.index = index
        self.restarts = 0
        self.pid: int | None = None  # of the running process
        self.exit_status: int | None = None  # of the last one that exited
        self.pipe: FramedPipe | None = None  # while the process is ready
        self.ready = trio.Event()
        self.stopping = False
        self._stopped = trio.Event()

    @property
    def name(self) -> str:
        return f"{self.kind} process {self.index}"

    # -- what subclasses fill in ---------------------------------------------------------

    def init_frame(self) -> Init:
        raise NotImplementedError

    def inherited_fds(self) -> tuple[int, ...]:
        return ()

    def dispatch(self, frame: Frame) -> None:
        """One frame from the child. Raise PipeError for a frame that makes no sense."""
        raise NotImplementedError

    def lost(self) -> None:
        """The process is gone: whatever waited for it must stop waiting."""

    def request_stop(self, grace: float) -> None:
        """Tell the running process to finish within ``grace`` seconds and exit. By default
        the pipe is closed (after what is queued), which the child takes as its signal."""
        if self.pipe is not None:
            self.pipe.close_after_sending()

    # -- the life cycle ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        first = True
        try:
            while not self.stopping:
                try:
                    await self._run_once(task_status if first else trio.TASK_STATUS_IGNORED)
                except (*PROCESS_FAILURES, BaseExceptionGroup) as exc:
                    failure = process_failure(exc)  # re-raises anything else
                    if first:
                        raise StartError(f"{self.name} did not start: {failure}") from exc
                    log.error("%s failed: %s", self.name, failure)
                first = False
                if not self.stopping:
                    self.restarts += 1
                    log.error("%s exited; starting it again", self.name)
                    await trio.sleep(RESTART_DELAY)
        finally:
            self._stopped.set()

    async def _run_once(self, task_status: trio.TaskStatus[None]) -> None:
        ours, theirs = socket.socketpair()
        with ours:
            fds = (theirs.fileno(), *self.inherited_fds())
            try:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", self.module, *map(str, fds)], pass_fds=fds
                )
            finally:
                theirs.close()
            self.pid = process.pid
            pipe = FramedPipe(DirectSocketStream(ours))
            pipe.send(self.init_frame())
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pipe.run_writer)
                    await self._serve(pipe, task_status)
                    nursery.cancel_scope.cancel()
            except trio.Cancelled:
                self.stopping = True  # the relay is going away
                raise
            finally:
                self.pipe = None
                self.ready = trio.Event()
                self.lost()
                with trio.CancelScope(shield=True):
                    await pipe.stream.aclose()  # the process sees the pipe close and exits
                    with trio.move_on_after(STOP_TIMEOUT):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                self.pid, self.exit_status = None, process.returncode
                if not self.stopping:
                    log.error("%s exit status %s", self.name, process.returncode)

    async def _serve(self, pipe: FramedPipe, task_status: trio.TaskStatus[None]) -> None:
        frames: AsyncIterator[Frame] = pipe.frames()
        with trio.fail_after(START_TIMEOUT):
            first = await anext(frames, None)
        if not isinstance(first, Ready):
            raise PipeError(f"expected ready, got {first!r}")
        self.pipe = pipe
        self.ready.set()
        task_status.started()
        if self.stopping:  # asked to stop while it was starting
            self.request_stop(0.0)
        async for frame in frames:
            try:
                self.dispatch(frame)
            except PipeError:
                raise
            except Exception:  # one bad report must not take the relay down
                log.exception("%s sent a frame that failed", self.name)

    async def stop(self, grace: float = 0.0) -> None:
        """Let the process finish (within ``grace`` seconds) and exit."""
        self.stopping = True
        log.debug("stopping %s", self.name)
        self.request_stop(grace)
        self.ready.set()  # nothing waits for a process that will not come back
        with trio.move_on_after(grace + STOP_TIMEOUT + 1):
            await self._stopped.wait()
