"""Delivery processes, the relay's side: start, supervise, and send attempts to them.

With ``[delivery] processes = N`` the relay keeps the intake, the store, the schedulers and
every outcome, and N child processes (``zonemta.engine.processes.delivery_worker``) do the sending:
DNS, the zone's connection pool, the SMTP transaction, DKIM signing and the classification
of replies. Each zone belongs to one process, so a zone's connection limit holds exactly.

An attempt crosses the pipe as the leased rows (a group: one message to one destination,
one SMTP transaction), the message record and (when it is held in memory) the body; the
process sends back each transition of each row as it happens — the relay fires it on that
row's own state machine, so events, logs and metrics are those of the in-process engine —
then one outcome per row. Bodies that are not in memory are pulled chunk by chunk. A process that
dies is started again; the attempts it had are deferred as a temporary failure.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncGenerator, Iterator, Sequence
from itertools import count

import attrs
import trio

from zonemta.conf import Config, ConfigError
from zonemta.engine.delivery.blacklist import Blacklist
from zonemta.engine.delivery.machine import DeliveryMachine
from zonemta.engine.delivery.messages import MessageCache
from zonemta.engine.delivery.outcome import Outcome
from zonemta.engine.hooks import Hooks
from zonemta.engine.processes.child_process import ChildProcess, StartError
from zonemta.engine.processes.frames import (
    Attempt,
    Cancel,
    Chunk,
    Done,
    Fired,
    Init,
    More,
    PoolCounts,
    Stats,
)
from zonemta.engine.processes.pipe import Frame, PipeError
from zonemta.store import MessageRecord

__all__ = ["DeliveryProcess", "PoolFigures", "StartError", "check_hooks"]

log = logging.getLogger(__name__)

# Plugin hooks that run while sending: they live in the relay's process.
SENDING_HOOKS = ("fetch", "before_connect", "send_headers", "response_error")


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


@attrs.frozen
class _Lost:
    """The process is gone (put in the inbox of each attempt it had)."""


class _Inbox:
    """The frames of one attempt, from the reader to the attempt's task: an unbounded
    queue with one receiver, as a memory channel of ``math.inf`` would be, without making
    a channel pair per attempt (about twenty Python calls, trio's generics among them)."""

    __slots__ = ("_frames", "_receiver")

    def __init__(self) -> None:
        self._frames: deque[More | Done | _Lost] = deque()
        self._receiver: trio.lowlevel.Task | None = None

    def send_nowait(self, frame: More | Done | _Lost) -> None:
        self._frames.append(frame)
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            trio.lowlevel.reschedule(receiver)

    async def receive(self) -> More | Done | _Lost:
        """The next frame (a checkpoint, as a channel's ``receive``)."""
        if self._frames:
            await trio.lowlevel.checkpoint_if_cancelled()
            frame = self._frames.popleft()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return frame
        if self._receiver is not None:
            raise trio.BusyResourceError("another task is receiving from this inbox")
        self._receiver = trio.lowlevel.current_task()

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            self._receiver = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        return self._frames.popleft()


@attrs.define(eq=False)
class _Pending:
    machines: Sequence[DeliveryMachine]
    inbox: _Inbox  # from the reader
    outcomes: list[Outcome] | None = None


class DeliveryProcess(ChildProcess):
    """One child process and the attempts in flight on it."""

    kind = "delivery"
    module = "zonemta.engine.processes.delivery_worker"

    def __init__(
        self,
        index: int,
        config: Config,
        zones: list[str],
        *,
        blacklist: Blacklist,
    ) -> None:
        super().__init__(index)
        self.config = config  # plain data (plugin options stay raw): it pickles as it is
        self.zones = zones
        self.blacklist = blacklist
        self.pools = {zone: PoolFigures() for zone in zones}
        self._ids: Iterator[int] = count(1)
        self._pending: dict[int, _Pending] = {}

    # -- the attempt, called by the Deliverer ------------------------------------------

    async def transmit(
        self, machines: Sequence[DeliveryMachine], message: MessageRecord, messages: MessageCache
    ) -> list[Outcome] | None:
        """The outcome of each delivery of the group, in order; None when the process died
        (or is stopping) before it reported them."""
        rows = tuple(machine.row for machine in machines)
        await self.ready.wait()
        pipe = self.pipe
        if pipe is None:
            return None
        rid = next(self._ids)
        inbox = _Inbox()
        pending = _Pending(machines, inbox)
        self._pending[rid] = pending
        body = messages.cached_body(message.id) if message.body_size else b""
        disabled = {row.domain: self.blacklist.disabled_for(row.domain) for row in rows}
        states = tuple(machine.state for machine in machines)
        pipe.send(Attempt(rid, rows[0].zone, rows, message, body, disabled, states))
        streams: dict[int, AsyncGenerator[bytes, None]] = {}  # body readers, by stream
        try:
            while True:
                frame = await inbox.receive()
                if not isinstance(frame, More):  # Done or _Lost
                    break
                chunks = streams.get(frame.stream)
                if chunks is None:
                    chunks = streams[frame.stream] = messages.body(message)
                chunk = await anext(chunks, None)
                if chunk is None:
                    await streams.pop(frame.stream).aclose()
                if self.pipe is pipe:
                    pipe.send(Chunk(rid, frame.stream, chunk))
        except BaseException:
            if self._pending.pop(rid, None) is not None and self.pipe is pipe:
                pipe.send(Cancel(rid))
            raise
        finally:
            self._pending.pop(rid, None)
            for chunks in streams.values():
                await chunks.aclose()
        return pending.outcomes

    # -- the process (engine/processes/child_process.py) -----------------------------------------

    def init_frame(self) -> Init:
        level = logging.getLogger("zonemta").getEffectiveLevel()
        return Init(self.config, self.zones, level, self.index)

    def lost(self) -> None:
        for pending in list(self._pending.values()):
            pending.inbox.send_nowait(_Lost())
        self._pending.clear()

    def dispatch(self, frame: Frame) -> None:
        match frame:
            case Stats(pools=pools):
                self._update_pools(pools)
            case Fired(rid=rid) | More(rid=rid) | Done(rid=rid):
                pending = self._pending.get(rid)
                if pending is not None:  # else: an attempt cancelled here meanwhile
                    self._attempt_frame(pending, frame)
            case _:
                raise PipeError(f"unknown frame {type(frame).__name__}")

    def _attempt_frame(self, pending: _Pending, frame: Fired | More | Done) -> None:
        match frame:
            case Fired():
                machine = pending.machines[frame.index]
                machine.mx, machine.local_address = frame.mx, frame.local_address
                machine.fire(frame.trigger, response=frame.response, **frame.details)
            case More():
                pending.inbox.send_nowait(frame)
            case Done():
                self._update_pools(frame.pools)
                if len(frame.outcomes) != len(pending.machines):
                    raise PipeError(
                        f"{len(frame.outcomes)} outcomes for {len(pending.machines)} deliveries"
                    )
                for machine, done in zip(pending.machines, frame.outcomes, strict=True):
                    machine.mx, machine.local_address = done.mx, done.local_address
                pending.outcomes = [done.outcome for done in frame.outcomes]
                pending.inbox.send_nowait(frame)

    def _update_pools(self, figures: PoolCounts) -> None:
        for zone, (reuses, open_connections) in figures.items():
            pool = self.pools[zone]  # the engine's metrics hold these objects
            pool.reuses, pool.open_connections = reuses, open_connections
