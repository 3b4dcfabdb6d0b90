"""A delivery process: ``python -m zonemta.engine.processes.delivery_worker FD``, started by
the relay.

It owns the connection pools of the zones it was given and runs one
:class:`~zonemta.engine.delivery.transmit.Sender` attempt per ``Attempt`` frame (a group of
deliveries: one transaction), forwarding every transition of each delivery and then their
outcomes (``engine/processes/frames.py`` lists the
frames). It touches no store. It ignores SIGINT and SIGTERM — the relay decides when it
stops, by closing the pipe — and it exits when the pipe closes, the relay's death included.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import AsyncIterator
from itertools import count
from typing import Any

import trio

from zonemta.conf import Config
from zonemta.dkim.signer import load_signer
from zonemta.engine.bounces.classifier import BounceClassifier
from zonemta.engine.delivery.machine import MachineBase
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.delivery.transmit import BodyBytes, Sender
from zonemta.engine.delivery.zones import DomainPolicy, SourceAddresses
from zonemta.engine.engine import (
    delivery_timeouts,
    make_resolver,
    zone_connections,
    zone_route,
)
from zonemta.engine.processes.child_entry import child_main, connect_to_relay
from zonemta.engine.processes.frames import (
    Attempt,
    Cancel,
    Chunk,
    Done,
    Fired,
    More,
    Ready,
    RowOutcome,
    Stats,
)
from zonemta.engine.processes.pipe import Frame, FramedPipe
from zonemta.statemachine import DeliveryState, FailureCategory, Transition
from zonemta.transport.tls_policy import OutboundTls

log = logging.getLogger(__name__)

STATS_INTERVAL = 1.0


class BlacklistMirror:
    """The relay's blacklist for the domains of the attempts in flight: every attempt
    carries the addresses disabled for its domain when it was sent."""

    def __init__(self) -> None:
        self._by_domain: dict[str, frozenset[str]] = {}

    def update(self, domain: str, addresses: frozenset[str]) -> None:
        if addresses:
            self._by_domain[domain] = addresses
        else:
            self._by_domain.pop(domain, None)

    def disabled_for(self, domain: str) -> frozenset[str]:
        return self._by_domain.get(domain, frozenset())


class ForwardingMachine(MachineBase):
    """The attempt's state machine on this side: validates each transition against the
    table, and sends it to the relay, which publishes it."""

    def __init__(
        self, row: Any, rid: int, pipe: FramedPipe, start: DeliveryState, index: int = 0
    ) -> None:
        super().__init__(row, start)
        self.rid = rid
        self.index = index  # the delivery's place in the attempt's group
        self.pipe = pipe

    def publish(
        self,
        row: Transition,
        *,
        response: str | None = None,
        category: FailureCategory | None = None,
        **details: Any,
    ) -> None:
        self.pipe.send(
            Fired(self.rid, self.index, row.trigger, self.mx, self.local_address, response, details)
        )


def build_senders(
    config: Config, zones: list[str], blacklist: BlacklistMirror
) -> dict[str, Sender]:
    """The same senders the relay would build in-process, without plugins."""
    resolver = make_resolver(config)
    retry = RetryPolicy.from_config(config.queue.retry_schedule, config.queue.max_queue_time)
    classifier = BounceClassifier.load(config.bounces.rules_file or None)
    signer = load_signer(config.dkim, clock=time.time)
    domains = DomainPolicy(config)
    timeouts = delivery_timeouts(config)
    tls_policy = OutboundTls.from_config(config, resolver)  # this process's MTA-STS cache
    senders = {}
    for name in zones:
        senders[name] = Sender(
            zone=zone_route(config, name),
            connections=zone_connections(config, name),
            resolver=resolver,
            retry=retry,
            timeouts=timeouts,
            clock=time.time,
            sources=SourceAddresses.for_zone(config, name),
            domains=domains,
            classifier=classifier,
            signer=signer,
            blacklist=blacklist,
            tls_policy=tls_policy,
        )
    return senders


class Worker:
    def __init__(self, pipe: FramedPipe, senders: dict[str, Sender], blacklist: BlacklistMirror):
        self.pipe = pipe
        self.senders = senders
        self.blacklist = blacklist
        self._scopes: dict[int, trio.CancelScope] = {}
        # the body streams being read from the relay, by (attempt, stream)
        self._chunks: dict[tuple[int, int], trio.MemorySendChannel[bytes | None]] = {}
        self._streams = count()

    async def serve(self, frames: AsyncIterator[Frame]) -> None:
        async with trio.open_nursery() as services:
            for sender in self.senders.values():
                await services.start(sender.connections.run)
            services.start_soon(self._report_stats)
            async with trio.open_nursery() as attempts:
                self.pipe.send(Ready())
                async for frame in frames:
                    self._dispatch(frame, attempts)
                attempts.cancel_scope.cancel()  # the relay closed the pipe
            services.cancel_scope.cancel()

    def _dispatch(self, frame: Frame, attempts: trio.Nursery) -> None:
        match frame:
            case Attempt():
                attempts.start_soon(self._attempt, frame)
            case Chunk(rid=rid, stream=stream, data=data):
                channel = self._chunks.get((rid, stream))
                if channel is not None:
                    channel.send_nowait(data)
            case Cancel(rid=rid):
                scope = self._scopes.get(rid)
                if scope is not None:
                    scope.cancel()
            case _:
                log.error("unknown frame %s from the relay", type(frame).__name__)

    async def _attempt(self, attempt: Attempt) -> None:
        rid, body = attempt.rid, attempt.body
        zone = attempt.zone
        sender = self.senders[zone]
        for domain, addresses in attempt.blacklisted.items():
            self.blacklist.update(domain, addresses)
        # Each machine starts where the relay's is (leased); only the table moves it.
        machines = [
            ForwardingMachine(row, rid, self.pipe, state, index)
            for index, (row, state) in enumerate(zip(attempt.rows, attempt.states, strict=True))
        ]
        with trio.CancelScope() as scope:
            self._scopes[rid] = scope
            try:
                outcomes = await sender.transmit(
                    machines,
                    attempt.message,
                    BodyBytes(body) if body is not None else (lambda: self._pull(rid)),
                )
            except Exception as exc:  # never lose a delivery to a bug: defer it
                row = attempt.rows[0]
                log.exception("delivery %s.%03x failed unexpectedly", row.message_id, row.seq)
                outcomes = [
                    sender.temporary(m.row, f"internal error: {exc!r}", FailureCategory.INTERNAL)
                    for m in machines
                ]
            finally:
                del self._scopes[rid]
            done = tuple(
                [
                    RowOutcome(outcome, m.mx, m.local_address)
                    for m, outcome in zip(machines, outcomes, strict=True)
                ]
            )
            self.pipe.send(Done(rid, done, {zone: _figures(sender)}))

    async def _pull(self, rid: int) -> AsyncIterator[bytes]:
        """The body from the relay, chunk by chunk. Each call is a stream of its own that
        starts at the beginning (a transaction retried on a fresh connection sends the body
        again; parts of a group going to different hosts send it at the same time)."""
        key = (rid, next(self._streams))
        send, receive = trio.open_memory_channel[bytes | None](math.inf)
        self._chunks[key] = send
        try:
            while True:
                self.pipe.send(More(rid, key[1]))
                chunk = await receive.receive()
                if chunk is None:
                    return
                yield chunk
        finally:
            self._chunks.pop(key, None)

    async def _report_stats(self) -> None:
        last: dict[str, tuple[int, int]] = {}
        while True:
            stats = {zone: _figures(sender) for zone, sender in self.senders.items()}
            if stats != last:
                self.pipe.send(Stats(stats))
                last = stats
            await trio.sleep(STATS_INTERVAL)


def _figures(sender: Sender) -> tuple[int, int]:
    return (sender.connections.reuses, sender.connections.open_connections)


async def run(fd: int) -> None:
    pipe, frames, config, zones = await connect_to_relay(fd, "delivery")
    blacklist = BlacklistMirror()
    worker = Worker(pipe, build_senders(config, zones, blacklist), blacklist)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe.run_writer)
        await worker.serve(frames)
        pipe.close_after_sending()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv, run, "zonemta.engine.processes.delivery_worker"))
