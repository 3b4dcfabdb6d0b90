"""An intake process: ``python -m zonemta.inbound.intake_worker FD SOCKET...``, started by
the relay (``engine/processes/intake_process.py`` describes the frames).

It accepts SMTP clients on the listening sockets it inherited and runs their sessions and
the :class:`~zonemta.engine.intake.reception.Intake` as the relay would, except that it stores
through
the relay: :class:`RelayStore` sends the body and the commit over the pipe, and a session
answers 250 only after the relay has committed. It ignores SIGINT and SIGTERM — the relay
tells it to stop — and exits at once when the pipe closes (the relay's death included).
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio

from zonemta.conf import Config
from zonemta.engine.bus import Event, EventBus
from zonemta.engine.ids import QueueIdGenerator
from zonemta.engine.intake.reception import Intake
from zonemta.engine.intake.routing import Router
from zonemta.engine.processes.child_entry import child_main, connect_to_relay
from zonemta.engine.processes.frames import (
    Abort,
    Admit,
    Body,
    Commit,
    Forward,
    IntakeGrant,
    Joined,
    Leave,
    Ready,
    Reply,
    Stop,
)
from zonemta.engine.processes.pipe import Frame, FramedPipe, PipeError
from zonemta.headers import HeaderPolicy
from zonemta.inbound.interfaces import enabled_interfaces
from zonemta.inbound.listener import SmtpInterfaceService
from zonemta.store import BodyWriter, MessageRecord, NewDelivery, StoreError
from zonemta.transport.admission import without_address_limit
from zonemta.transport.interface import InterfaceSettings
from zonemta.transport.smtp.reply import Reply as SmtpReply

log = logging.getLogger(__name__)

# Events of the intake that the relay publishes for us (message.queued it makes itself).
FORWARDED_EVENTS = ("message.rejected", "message.dropped")


class RelayGone(StoreError):
    """The relay closed the pipe: nothing can be stored any more."""


class _Call:
    """One call in progress: the task waiting for its answer, and the answer."""

    __slots__ = ("done", "task", "value")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.value: Any = None
        self.done = False  # the task is rescheduled (answered, failed or cancelled)

    def abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        """Cancelled while waiting: no answer may reschedule the task any more."""
        self.done = True
        return trio.lowlevel.Abort.SUCCEEDED


class RelayLink:
    """Calls to the relay over the pipe: each waits for its ``Reply(rid, value)``.

    A call's task sleeps in ``wait_task_rescheduled`` and :meth:`answer` reschedules it
    (what a ``trio.Event`` per call did, without the Event): cancellable while it waits,
    and a cancelled call is forgotten (its late answer is then a :class:`PipeError`)."""

    def __init__(self, pipe: FramedPipe) -> None:
        self.pipe = pipe
        self._next_rid = 1
        self._calls: dict[int, _Call] = {}
        self.closed = False

    async def call(self, frame: Callable[[int], Frame]) -> Any:
        """Send ``frame(rid)`` (a frame class with its other fields bound) and wait for
        the relay's answer."""
        if self.closed:
            raise RelayGone("the relay has gone")
        rid = self._next_rid
        self._next_rid = rid + 1
        call = self._calls[rid] = _Call(trio.lowlevel.current_task())
        try:
            self.pipe.send(frame(rid))
            await trio.lowlevel.wait_task_rescheduled(call.abort)
        finally:
            del self._calls[rid]
        value = call.value
        if isinstance(value, RelayGone):
            raise value
        return value

    def answer(self, rid: int, value: object) -> None:
        call = self._calls.get(rid)
        if call is None:
            raise PipeError(f"a reply to no call: {rid}")
        call.value = value
        if not call.done:
            call.done = True
            trio.lowlevel.reschedule(call.task)

    def close(self) -> None:
        """The pipe closed: every call in progress fails."""
        self.closed = True
        for call in self._calls.values():
            call.value = RelayGone("the relay has gone")
            if not call.done:
                call.done = True
                trio.lowlevel.reschedule(call.task)


class RelayAdmission:
    """The client limits of one interface, counted by the relay for all its children. A
    client without a per-address limit joins on one of the ``places`` the relay holds for
    this process, without a round trip, while one is free (``transport/admission.py``)."""

    def __init__(self, link: RelayLink, settings: InterfaceSettings, places: int) -> None:
        self.link = link
        self.settings = settings
        self.interface = settings.name
        self.free_places = places
        self._on_held: Counter[str] = Counter()  # address -> clients on held places

    async def admit(self, address: str) -> SmtpReply | None:
        if self.free_places > 0 and without_address_limit(self.settings, address):
            self.free_places -= 1
            self._on_held[address] += 1
            self.link.pipe.send(Joined(self.interface, address))
            return None
        refusal: SmtpReply | None = await self.link.call(
            partial(Admit, interface=self.interface, address=address)
        )
        return refusal

    def leave(self, address: str) -> None:
        held = self._on_held[address] > 0
        if held:
            self._on_held[address] -= 1
            if not self._on_held[address]:
                del self._on_held[address]
            self.free_places += 1
        else:
            self._on_held.pop(address, None)
        if not self.link.closed:
            self.link.pipe.send(Leave(self.interface, address, held))


class RelayBody(BodyWriter):
    """A body stored by the relay: sent in pieces of ``chunk_size`` (each acknowledged, so
    a fast client cannot fill memory), the last piece with the commit."""

    def __init__(self, link: RelayLink, message_id: str, chunk_size: int) -> None:
        self.link = link
        self.message_id = message_id
        self.size = 0
        self.chunk_size = chunk_size
        self._buffer = bytearray()
        self._sent = False  # the relay has a part of it
        self._finished = False

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._buffer += chunk
        while len(self._buffer) >= self.chunk_size:
            piece = bytes(self._buffer[: self.chunk_size])
            del self._buffer[: self.chunk_size]
            self._sent = True
            error = await self.link.call(partial(Body, message_id=self.message_id, data=piece))
            if error is not None:
                raise error

    def take_tail(self) -> bytes:
        self._finished = True
        tail = bytes(self._buffer)
        self._buffer.clear()
        return tail

    async def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._buffer.clear()
        if self._sent and not self.link.closed:
            self.link.pipe.send(Abort(self.message_id))
        await trio.lowlevel.checkpoint()


class RelayStore:
    """The intake's store in an intake process: the relay stores."""

    def __init__(self, link: RelayLink, chunk_size: int) -> None:
        self.link = link
        self.chunk_size = chunk_size

    def new_body(self, message_id: str) -> BodyWriter:
        return RelayBody(self.link, message_id, self.chunk_size)

    async def commit_message(
        self, message: MessageRecord, body: BodyWriter, deliveries: Sequence[NewDelivery]
    ) -> None:
        assert isinstance(body, RelayBody)
        tail = body.take_tail()
        error = await self.link.call(
            partial(Commit, record=message, deliveries=list(deliveries), tail=tail)
        )
        if error is not None:
            raise error


def build_intake(config: Config, link: RelayLink) -> Intake:
    bus = EventBus()

    def forward(event: Event) -> None:
        if event.type in FORWARDED_EVENTS and not link.closed:
            link.pipe.send(Forward(event))

    bus.add_listener(forward)
    return Intake(
        RelayStore(link, int(config.queue.body_chunk_size)),
        Router(config),
        bus,
        ids=QueueIdGenerator(time.time),
        clock=time.time,
        headers=HeaderPolicy.from_config(config.headers, config.hostname),
        announces=False,  # the relay announces (message.queued) what it commits for us
        # The DKIM body hash only when a key may sign (load_signer's condition): only the
        # signer reads it.
        body_hash=config.dkim.enabled and bool(config.dkim.keys),
    )


def _listening_sockets(fds: list[int]) -> list[socket.socket]:
    return [socket.socket(fileno=fd) for fd in fds]


async def run(fd: int) -> None:
    pipe, frames, config, grant = await connect_to_relay(fd, "intake")
    assert isinstance(grant, IntakeGrant)
    link = RelayLink(pipe)
    intake = build_intake(config, link)
    services = [
        (
            SmtpInterfaceService(
                settings, intake, RelayAdmission(link, settings, grant.places.get(settings.name, 0))
            ),
            settings,
        )
        for settings in enabled_interfaces(config)
    ]

    async def read_frames(cancel_scope: trio.CancelScope) -> None:
        try:
            async for frame in frames:
                match frame:
                    case Reply(rid=rid, value=value):
                        link.answer(rid, value)
                    case Stop(grace=grace):
                        for service, _ in services:
                            await service.stop(grace)
                    case _:
                        raise PipeError(f"unknown frame {type(frame).__name__}")
        finally:
            link.close()
            cancel_scope.cancel()  # the relay has gone: so do we

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe.run_writer)
        nursery.start_soon(read_frames, nursery.cancel_scope)
        async with trio.open_nursery() as serving:
            for service, settings in services:
                await serving.start(service.run, _listening_sockets(grant.sockets[settings.name]))
            pipe.send(Ready())
        # Every interface stopped and its sessions ended: we are done.
        pipe.close_after_sending()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv, run, "zonemta.inbound.intake_worker"))
