"""The relay: wires configuration, store, intake, delivery engine and listeners together,
and runs them in one trio process until asked to stop."""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable

import attrs
import trio

from zonemta.conf import Config, QueueBackend
from zonemta.engine.bus import Event, EventBus
from zonemta.engine.engine import DeliveryEngine, make_resolver
from zonemta.engine.hooks import Hooks
from zonemta.engine.ids import QueueIdGenerator
from zonemta.engine.intake.reception import Intake
from zonemta.engine.intake.routing import Router
from zonemta.engine.processes.intake_process import IntakeProcess, intake_processes
from zonemta.headers import HeaderPolicy
from zonemta.http import ApiContext, ApiServer
from zonemta.inbound.interfaces import enabled_interfaces
from zonemta.inbound.listener import SmtpInterfaceService, open_reuseport_sockets
from zonemta.plugins import PluginHost
from zonemta.store import Store
from zonemta.store.mongodb import MongoStore
from zonemta.store.sqlite import SqliteStore
from zonemta.transport.admission import held_places

log = logging.getLogger(__name__)

# How long in-flight SMTP sessions and deliveries get to finish at shutdown.
SHUTDOWN_GRACE = 10.0


@attrs.frozen
class RelayInfo:
    """What a started relay bound: interface name → SMTP port, and the HTTP API's port
    (None when ``[api] enabled = false``)."""

    smtp_ports: dict[str, int]
    api_port: int | None = None


def make_store(config: Config) -> Store:
    """The queue backend ``[queue] backend`` selects (not opened yet)."""
    queue = config.queue
    if queue.backend is QueueBackend.MONGODB:
        return MongoStore(
            queue.mongodb_uri,
            queue.database,
            instance_id=queue.instance_id,
            durability=queue.durability.value,
            chunk_size=queue.body_chunk_size,
        )
    return SqliteStore(
        queue.path,
        durability=queue.durability.value,
        chunk_size=queue.body_chunk_size,
        max_size=queue.max_size,
    )


def log_message_event(event: Event) -> None:
    """A debug line per accepted message. At the default level the log has one line per
    delivery outcome (written by the attempt), which carries the queue id too."""
    if event.type == "message.queued" and log.isEnabledFor(logging.DEBUG):
        details = event.details or {}
        log.debug(
            "%s QUEUED from=<%s> recipients=%s size=%s interface=%s",
            event.id,
            details.get("from", ""),
            details.get("recipients"),
            details.get("size"),
            details.get("interface"),
        )


class Relay:
    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        shutdown_grace: float = SHUTDOWN_GRACE,
    ) -> None:
        self.config = config
        self.clock = clock
        self.shutdown_grace = shutdown_grace
        self.store = store if store is not None else make_store(config)
        self.bus = EventBus()
        self.bus.add_listener(log_message_event)
        self.resolver = make_resolver(config)
        self.hooks = Hooks()  # filled by the plugins' init (run())
        self.plugins = PluginHost(config, self.hooks)
        self.plugins.load()  # imports plugins, checks their options (ConfigError)
        self.engine = DeliveryEngine(
            config, self.store, self.bus, self.resolver, clock=clock, hooks=self.hooks
        )
        self.intake = Intake(
            self.store,
            Router(config),
            self.bus,
            ids=QueueIdGenerator(clock),
            clock=clock,
            on_queued=self.engine.wake,
            on_stored=self.engine.messages.put,
            headers=HeaderPolicy.from_config(config.headers, config.hostname),
            hooks=self.hooks,
            # The DKIM body hash only where a key may sign; a message queued without one is
            # hashed when it goes out if a key applies by then (transmit.body_hash_of).
            body_hash=config.dkim.enabled and bool(config.dkim.keys),
        )
        self.engine.bounces.notices.attach(self.intake)  # DSNs are queued through the intake
        self.interfaces = [
            SmtpInterfaceService(settings, self.intake) for settings in enabled_interfaces(config)
        ]
        self.intake_processes: list[IntakeProcess] = []  # with [intake] processes (run())
        self.api: ApiServer | None = None
        if config.api.enabled:
            context = ApiContext(config, self.store, self.bus, self.engine, self.intake, clock)
            self.api = ApiServer(context)
        self._stop = trio.Event()
        self._sockets: list[socket.socket] = []  # listening, held for the intake processes

    def request_stop(self) -> None:
        self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[RelayInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`request_stop`, then shut down gracefully."""
        store = self.store
        await store.open()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                recovered = await store.recover_leases(self.config.queue.instance_id)
                orphans = await store.remove_orphans()
                if recovered or orphans:
                    log.info("recovered %d leases, removed %d orphaned bodies", recovered, orphans)
                await nursery.start(self.plugins.start, self.bus, store)
                await nursery.start(self.engine.run)
                ports = await self._start_smtp(nursery)
                api_port: int | None = None
                if self.api is not None:
                    self.plugins.register_routes(self.api.app)
                    api_port = await nursery.start(self.api.run)
                log.info(
                    "zonemta ready: SMTP %s; HTTP API %s",
                    ", ".join(f"{n}={p}" for n, p in ports.items()),
                    api_port if api_port is not None else "disabled",
                )
                task_status.started(RelayInfo(ports, api_port))
                await self._stop.wait()
                log.info("shutting down")
                async with trio.open_nursery() as stopping:
                    for service in self.interfaces:
                        stopping.start_soon(service.stop, self.shutdown_grace)
                    for process in self.intake_processes:
                        stopping.start_soon(process.stop, self.shutdown_grace)
                    stopping.start_soon(self.engine.stop, self.shutdown_grace)
                    if self.api is not None:
                        stopping.start_soon(self.api.stop, self.shutdown_grace)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for sock in self._sockets:
                    sock.close()
                await store.aclose()
        log.info("stopped")

    async def _start_smtp(self, nursery: trio.Nursery) -> dict[str, int]:
        """Start the SMTP interfaces: served here, or by intake processes that inherit the
        listening sockets bound here. Returns interface name → port."""
        ports: dict[str, int] = {}
        count = intake_processes(self.config, self.hooks)
        if not count:
            for service in self.interfaces:
                ports[service.settings.name] = await nursery.start(service.run)
            return ports
        sets = {
            service.settings.name: open_reuseport_sockets(service.settings, count)
            for service in self.interfaces
        }
        for name, groups in sets.items():
            self._sockets.extend(sock for group in groups for sock in group)
            ports[name] = groups[0][0].getsockname()[1]
        counts = {service.settings.name: service.counts for service in self.interfaces}
        for index in range(count):
            process = IntakeProcess(
                index,
                self.config,
                sockets={
                    name: [s.fileno() for s in groups[index]] for name, groups in sets.items()
                },
                counts=counts,
                places={
                    service.settings.name: held_places(service.settings.max_clients, count)
                    for service in self.interfaces
                },
                intake=self.intake,
                store=self.store,
            )
            self.intake_processes.append(process)
            await nursery.start(process.run)
        log.info("SMTP intake in %d processes", count)
        return ports

    async def run_until_signalled(self) -> None:
        """Run; SIGINT or SIGTERM starts a graceful shutdown."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for signum in signals:
                        log.info("received %s", signal.Signals(signum).name)
                        self.request_stop()
                        return

                nursery.start_soon(watch)
                await self.run()
                nursery.cancel_scope.cancel()
