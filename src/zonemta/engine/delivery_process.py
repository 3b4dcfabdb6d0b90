"""Delivery processes, the relay's side: start, supervise, and send attempts to them.

With ``[delivery] processes = N`` the relay keeps the intake, the store, the schedulers and
every outcome, and N child processes (``zonemta.engine.delivery_worker``) do the sending:
DNS, the zone's connection pool, the SMTP transaction, DKIM signing and the classification
of replies. Each zone belongs to one process, so a zone's connection limit holds exactly.

An attempt crosses the pipe as the leased row, the message record and (when it is held in
memory) the body; the process sends back each transition as it happens — the relay fires it
on its own state machine, so events, logs and metrics are those of the in-process engine —
then the outcome. Bodies that are not in memory are pulled chunk by chunk. A process that
dies is started again; the attempts it had are deferred as a temporary failure.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
from collections.abc import Iterator
from itertools import count

import attrs
import trio

from zonemta.conf import Config, ConfigError
from zonemta.engine.blacklist import Blacklist
from zonemta.engine.delivery_pipe import Frame, FramedPipe, PipeError
from zonemta.engine.hooks import Hooks
from zonemta.engine.machine import DeliveryMachine
from zonemta.engine.messages import MessageCache
from zonemta.engine.transmit import Outcome
from zonemta.statemachine import Trigger
from zonemta.store import MessageRecord

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # importing and building the sender side takes about a second
RESTART_DELAY = 1.0
STOP_TIMEOUT = 10.0
# Plugin hooks that run while sending: they live in the relay's process.
SENDING_HOOKS = ("fetch", "before_connect", "send_headers", "response_error")


# What a dying or misbehaving process raises here (the pipe breaks, garbage, no "ready").
_PROCESS_FAILURES = (OSError, PipeError, trio.BrokenResourceError, trio.TooSlowError)


def _process_failure(exc: BaseException) -> BaseException:
    """The failure in ``exc`` (a group of them from the pipe's tasks, too); any other
    exception (a bug, a cancellation) is raised again."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    failures, others = exc.split(_PROCESS_FAILURES)
    if others is not None or failures is None:
        raise exc
    first: BaseException = failures
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class StartError(Exception):
    """A delivery process did not start (the relay does not start either)."""


def check_hooks(hooks: Hooks, processes: int) -> None:
    """Delivery processes run no plugins: refuse a configuration whose plugins hook into
    the sending step. Raises ConfigError naming the setting."""
    used = [name for name in SENDING_HOOKS if getattr(hooks, name)]
    if processes and used:
        raise ConfigError(
            "configuration",
            [
                f"config.delivery.processes: plugins use the sending hooks {', '.join(used)}, "
                "which run only in the relay's own process; set processes = 0"
            ],
        )


@attrs.define
class PoolFigures:
    """A zone's connection pool as a delivery process last reported it."""

    reuses: int = 0
    open_connections: int = 0


@attrs.define(eq=False)
class _Pending:
    machine: DeliveryMachine
    inbox: trio.MemorySendChannel[Frame]  # "more", "done" or "lost", from the reader
    outcome: Outcome | None = None


class DeliveryProcess:
    """One child process and the attempts in flight on it."""

    def __init__(
        self,
        index: int,
        config: Config,
        zones: list[str],
        *,
        blacklist: Blacklist,
    ) -> None:
        self.index = index
        self.config = config  # plain data (plugin options stay raw): it pickles as it is
        self.zones = zones
        self.blacklist = blacklist
        self.pools = {zone: PoolFigures() for zone in zones}
        self.restarts = 0
        self.pid: int | None = None  # of the running process
        self.exit_status: int | None = None  # of the last one that exited
        self._ids: Iterator[int] = count(1)
        self._pending: dict[int, _Pending] = {}
        self._pipe: FramedPipe | None = None
        self._ready = trio.Event()
        self._stopping = False
        self._stopped = trio.Event()

    # -- the attempt, called by the Deliverer ------------------------------------------

    async def transmit(
        self, machine: DeliveryMachine, message: MessageRecord, messages: MessageCache
    ) -> Outcome | None:
        """The attempt's outcome; None when the process died (or is stopping) before it
        reported one."""
        row = machine.row
        await self._ready.wait()
        pipe = self._pipe
        if pipe is None:
            return None
        rid = next(self._ids)
        send, receive = trio.open_memory_channel[Frame](math.inf)
        pending = _Pending(machine, send)
        self._pending[rid] = pending
        body = messages.cached_body(message.id) if message.body_size else b""
        disabled = self.blacklist.disabled_for(row.domain)
        pipe.send(("attempt", rid, row.zone, row, message, body, disabled, machine.state))
        chunks = None
        try:
            async for frame in receive:
                if frame[0] == "more":
                    if frame[2] and chunks is not None:  # from the start again
                        await chunks.aclose()
                        chunks = None
                    if chunks is None:
                        chunks = messages.body(message)
                    chunk = await anext(chunks, None)
                    if self._pipe is pipe:
                        pipe.send(("chunk", rid, chunk))
                else:  # "done" or "lost"
                    break
        except BaseException:
            if self._pending.pop(rid, None) is not None and self._pipe is pipe:
                pipe.send(("cancel", rid))
            raise
        finally:
            self._pending.pop(rid, None)
            if chunks is not None:
                await chunks.aclose()
        return pending.outcome

    # -- the process -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the process running until :meth:`stop`. The first start must succeed
        (else the relay does not start); later ones are retried."""
        first = True
        try:
            while not self._stopping:
                try:
                    await self._run_once(task_status if first else trio.TASK_STATUS_IGNORED)
                except (*_PROCESS_FAILURES, BaseExceptionGroup) as exc:
                    failure = _process_failure(exc)  # re-raises anything else
                    if first:
                        message = f"delivery process {self.index} did not start: {failure}"
                        raise StartError(message) from exc
                    log.error("delivery process %d failed: %s", self.index, failure)
                first = False
                if not self._stopping:
                    self.restarts += 1
                    log.error("delivery process %d exited; starting it again", self.index)
                    await trio.sleep(RESTART_DELAY)
        finally:
            self._stopped.set()

    async def _run_once(self, task_status: trio.TaskStatus[None]) -> None:
        ours, theirs = socket.socketpair()
        with ours:
            try:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "zonemta.engine.delivery_worker", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                )
            finally:
                theirs.close()
            self.pid = process.pid
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
            pipe = FramedPipe(stream)
            level = logging.getLogger("zonemta").getEffectiveLevel()
            pipe.send(("init", self.config, self.zones, level, self.index))
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pipe.run_writer)
                    await self._serve(pipe, task_status)
                    nursery.cancel_scope.cancel()
            except trio.Cancelled:
                self._stopping = True  # the relay is going away
                raise
            finally:
                self._pipe = None
                self._ready = trio.Event()
                for pending in list(self._pending.values()):
                    pending.inbox.send_nowait(("lost",))
                self._pending.clear()
                with trio.CancelScope(shield=True):
                    await stream.aclose()  # the process sees the pipe close and exits
                    with trio.move_on_after(STOP_TIMEOUT):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                self.pid, self.exit_status = None, process.returncode
                if not self._stopping:
                    log.error("delivery process %d exit status %s", self.index, process.returncode)

    async def _serve(self, pipe: FramedPipe, task_status: trio.TaskStatus[None]) -> None:
        frames = pipe.frames()
        with trio.fail_after(START_TIMEOUT):
            first = await anext(frames, None)
        if first != ("ready",):
            raise PipeError(f"expected ready, got {first!r}")
        self._pipe = pipe
        self._ready.set()
        task_status.started()
        if self._stopping:
            pipe.close_after_sending()
        async for frame in frames:
            try:
                self._dispatch(frame)
            except PipeError:
                raise
            except Exception:  # one bad report must not take the relay down
                log.exception("delivery process %d sent a frame that failed", self.index)

    def _dispatch(self, frame: Frame) -> None:
        kind = frame[0]
        if kind == "stats":
            self._update_pools(frame[1])
            return
        pending = self._pending.get(frame[1])
        if pending is None:
            return  # an attempt cancelled here meanwhile
        machine = pending.machine
        if kind == "fire":
            _, _, trigger, mx, local, response, category, details = frame
            machine.mx, machine.local_address = mx, local
            machine.fire(Trigger(trigger), response=response, category=category, **details)
        elif kind == "more":
            pending.inbox.send_nowait(frame)
        elif kind == "done":
            _, _, trigger, response, category, mx, local, pools = frame
            self._update_pools(pools)
            machine.mx, machine.local_address = mx, local
            pending.outcome = Outcome(Trigger(trigger), response, category)
            pending.inbox.send_nowait(frame)
        else:
            raise PipeError(f"unknown frame {kind!r}")

    def _update_pools(self, figures: dict[str, tuple[int, int]]) -> None:
        for zone, (reuses, open_connections) in figures.items():
            pool = self.pools[zone]  # the engine's metrics hold these objects
            pool.reuses, pool.open_connections = reuses, open_connections

    async def stop(self) -> None:
        """After the schedulers stopped: let the process close its connections and exit."""
        self._stopping = True
        log.debug("stopping delivery process %d", self.index)
        if self._pipe is not None:
            self._pipe.close_after_sending()
        self._ready.set()  # nothing waits for a process that will not come back
        with trio.move_on_after(STOP_TIMEOUT + 1):
            await self._stopped.wait()
