"""Intake processes, the relay's side: SMTP intake in child processes, the store here.

With ``[intake] processes = N`` the relay binds the SMTP listening sockets and N children
(``zonemta.inbound.intake_worker``) inherit them and accept from them: each runs the sessions
and the :class:`~zonemta.engine.intake.reception.Intake` (header policy, routing, DKIM body
hash). The
relay stays the one owner of the store: a child's message body and commit cross the pipe,
the relay's group-commit writer stores them with everyone else's, and the child answers 250
only once the relay said the commit is durable. The client limits of each interface are
counted here, so ``max_clients`` and ``max_clients_per_address`` hold over all children.

Frames (``engine/processes/frames.py``), child → relay; ``rid`` numbers a call the relay
answers with ``Reply(rid, value)``:

``Admit(rid, interface, address)``
    count a new client in; the value is None or the refusal (a Reply).
``Joined(interface, address)``
    a client let in on a place the relay holds for this process (``transport/admission.py``).
``Leave(interface, address, held)``
    a counted client has gone (``held``: one that had joined on a held place).
``Body(rid, message_id, data)``
    the next piece of a body being received (value: None, or the StoreError).
``Abort(message_id)``
    the reception ended without a commit.
``Commit(rid, record, deliveries, tail)``
    the rest of the body and the commit (value: None, or the StoreError).
``Forward(event)``
    ``message.rejected`` / ``message.dropped``, published on the relay's bus.

Relay → child: ``Init(config, IntakeGrant(sockets, places), log_level, index)``, the replies, and
``Stop(grace)``: stop accepting, finish the sessions within ``grace``, then exit.

A child that dies is started again; the clients it had counted are released and the bodies
of its unfinished receptions discarded. A message whose commit the relay had begun is stored
whatever happens to the child (the client may then send it again: at-least-once).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from zonemta.conf import Config, ConfigError
from zonemta.conf.units import AUTO_PROCESSES
from zonemta.engine.hooks import Hooks
from zonemta.engine.intake.reception import SMALL_BODY, Intake
from zonemta.engine.processes.child_process import ChildProcess
from zonemta.engine.processes.frames import (
    Abort,
    Admit,
    Body,
    Commit,
    Forward,
    Init,
    IntakeGrant,
    Joined,
    Leave,
    Reply,
    Stop,
)
from zonemta.engine.processes.pipe import Frame, PipeError
from zonemta.store import BodyWriter, MessageRecord, NewDelivery, Store, StoreError
from zonemta.transport.admission import ClientCounts

__all__ = ["INTAKE_HOOKS", "IntakeProcess", "intake_processes"]

log = logging.getLogger(__name__)

# Plugin hooks that run during SMTP intake: intake processes run no plugins.
INTAKE_HOOKS = (
    "connect",
    "auth",
    "mail_from",
    "rcpt_to",
    "data",
    "headers",
    "body",
    "queue",
    "route",
)
# "auto" runs this many intake processes per core (measured: benchmarks/RESULTS.md).
AUTO_MAX = 4


def intake_processes(config: Config, hooks: Hooks) -> int:
    """How many intake processes to run. "auto": one per core (at most 4), none when a
    plugin hooks into the SMTP intake. Raises ConfigError for an explicit number with such
    plugins."""
    used = [name for name in INTAKE_HOOKS if getattr(hooks, name)]
    wanted = config.intake.processes
    if wanted == AUTO_PROCESSES:
        if used:
            log.info("SMTP intake in the relay's process: plugins use %s", ", ".join(used))
            return 0
        return max(1, min(os.cpu_count() or 1, AUTO_MAX))
    if wanted and used:
        raise ConfigError(
            "configuration",
            [
                f"config.intake.processes: plugins use the intake hooks {', '.join(used)}, "
                "which run only in the relay's own process; set processes = 0 (or 'auto')"
            ],
        )
    return int(wanted)


@attrs.define(eq=False)
class _Receiving:
    """A body arriving from a child."""

    writer: BodyWriter
    small: list[bytes] | None = attrs.field(factory=list)  # while it fits SMALL_BODY

    async def write(self, data: bytes) -> None:
        if not data:
            return
        await self.writer.write(data)
        if self.small is not None:
            if self.writer.size <= SMALL_BODY:
                self.small.append(data)
            else:
                self.small = None


class IntakeProcess(ChildProcess):
    """One intake child and what it has in progress here."""

    kind = "intake"
    module = "zonemta.inbound.intake_worker"

    def __init__(
        self,
        index: int,
        config: Config,
        *,
        sockets: dict[str, list[int]],
        counts: dict[str, ClientCounts],
        places: dict[str, int],
        intake: Intake,
        store: Store,
    ) -> None:
        super().__init__(index)
        self.config = config
        self.sockets = sockets  # interface name → listening socket descriptors
        self.counts = counts  # interface name → client counts (shared by all children)
        self.places = places  # interface name → places of max_clients held for the child
        self.intake = intake
        self.store = store
        self._clients: Counter[tuple[str, str]] = Counter()  # counted in by this process
        self._on_held: Counter[tuple[str, str]] = Counter()  # of those, joined on held places
        self._held: dict[str, int] = {}  # interface → held places not in use
        self._receiving: dict[str, _Receiving] = {}
        self._tasks: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Body writes and commits run as tasks that outlive a dying child: what the relay
        # has begun to store, it finishes.
        async with trio.open_nursery() as tasks:
            self._tasks = tasks
            await super().run(task_status=task_status)

    def init_frame(self) -> Init:
        """The child's Init; the places it is given are held from now until it is lost."""
        for interface, places in self.places.items():
            self.counts[interface].held += places
            self._held[interface] = places
        level = logging.getLogger("zonemta").getEffectiveLevel()
        return Init(self.config, IntakeGrant(self.sockets, self.places), level, self.index)

    def inherited_fds(self) -> tuple[int, ...]:
        return tuple(fd for fds in self.sockets.values() for fd in fds)

    def request_stop(self, grace: float) -> None:
        if self.pipe is not None:
            self.pipe.send(Stop(grace))

    def lost(self) -> None:
        for (interface, address), count in self._clients.items():
            for _ in range(count):
                self.counts[interface].leave(address)
        self._clients.clear()
        self._on_held.clear()
        for interface, unused in self._held.items():
            self.counts[interface].held -= unused
        self._held.clear()
        receiving, self._receiving = self._receiving, {}
        assert self._tasks is not None
        for item in receiving.values():
            self._tasks.start_soon(item.writer.abort)

    # -- frames --------------------------------------------------------------------------

    def dispatch(self, frame: Frame) -> None:
        match frame:
            case Admit(rid=rid, interface=interface, address=address):
                refusal = self.counts[interface].check(address)
                if refusal is None:
                    self._clients[interface, address] += 1
                self._reply(rid, refusal)
            case Joined(interface=interface, address=address):
                if self._held.get(interface, 0) <= 0:
                    raise PipeError(f"joined on no held place: {interface}")
                self._held[interface] -= 1
                self.counts[interface].join_held(address)
                self._clients[interface, address] += 1
                self._on_held[interface, address] += 1
            case Leave(interface=interface, address=address, held=held):
                key = (interface, address)
                if self._clients[key] <= 0 or (held and self._on_held[key] <= 0):
                    raise PipeError(f"leave without admit: {key}")
                _take_one(self._clients, key)
                self.counts[interface].leave(address)
                if held:
                    _take_one(self._on_held, key)
                    self.counts[interface].held += 1
                    self._held[interface] += 1
            case Forward(event=event):
                self.intake.bus.publish(event)
            case Body(rid=rid, message_id=message_id, data=data):
                self._start(self._body, rid, message_id, data)
            case Commit(rid=rid, record=record, deliveries=deliveries, tail=tail):
                self._start(self._commit, rid, record, deliveries, tail)
            case Abort(message_id=message_id):
                self._start(self._abort, message_id)
            case _:
                raise PipeError(f"unknown frame {type(frame).__name__}")

    def _start(self, handler: Callable[..., Awaitable[None]], *args: Any) -> None:
        assert self._tasks is not None
        self._tasks.start_soon(handler, *args)

    def _reply(self, rid: int, value: object) -> None:
        pipe = self.pipe
        if pipe is None:
            return  # the child is gone; nobody waits for the answer
        try:
            pipe.send(Reply(rid, value))
        except Exception:  # an error that does not pickle: send its text
            pipe.send(Reply(rid, StoreError(str(value))))

    async def _body(self, rid: int, message_id: str, data: bytes) -> None:
        receiving = self._receiving.get(message_id)
        if receiving is None:
            receiving = self._receiving[message_id] = _Receiving(self.store.new_body(message_id))
        try:
            await receiving.write(data)
        except Exception as exc:
            self._reply(rid, _as_store_error(exc))
            return
        self._reply(rid, None)

    async def _abort(self, message_id: str) -> None:
        receiving = self._receiving.pop(message_id, None)
        if receiving is not None:
            await receiving.writer.abort()

    async def _commit(
        self, rid: int, record: MessageRecord, deliveries: Sequence[NewDelivery], tail: bytes
    ) -> None:
        receiving = self._receiving.pop(record.id, None)
        if receiving is None:
            receiving = _Receiving(self.store.new_body(record.id))
        try:
            with trio.CancelScope(shield=True):
                await receiving.write(tail)
                await self.store.commit_message(record, receiving.writer, deliveries)
        except Exception as exc:  # a bug too: the client gets 451, the child goes on
            log.warning(
                "message %s from intake process %d not stored: %r", record.id, self.index, exc
            )
            await receiving.writer.abort()
            self._reply(rid, _as_store_error(exc))
            return
        self._reply(rid, None)  # stored: the child may answer 250
        small = b"".join(receiving.small) if receiving.small is not None else None
        try:
            self.intake.announce(record, small, [d.zone for d in deliveries])
        except Exception:  # stored all the same: the scheduler's poll finds it
            log.exception("announcing message %s failed", record.id)


def _take_one(counter: Counter[tuple[str, str]], key: tuple[str, str]) -> None:
    counter[key] -= 1
    if not counter[key]:
        del counter[key]


def _as_store_error(exc: Exception) -> StoreError:
    """What the child raises for ``exc`` (its session answers 451, or 452 for a full disk)."""
    if isinstance(exc, StoreError):
        return exc
    log.error("storing for an intake process failed", exc_info=exc)
    return StoreError(f"internal error: {exc!r}")
