"""The delivery engine: one scheduler, one connection pool and one deliverer per zone."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial

import trio

from zonemta.conf import Config, ConfigError, QueueBackend, TlsMode
from zonemta.conf.rates import parse_rate
from zonemta.engine.bounces.notices import BounceHandling
from zonemta.engine.bounces.suppression import SuppressionList
from zonemta.engine.bus import EventBus
from zonemta.engine.delivery.attempt import Deliverer
from zonemta.engine.delivery.backoff import Backoff, BackoffRulesError, load_backoff_rules
from zonemta.engine.delivery.blacklist import Blacklist
from zonemta.engine.delivery.connections import ZoneConnections
from zonemta.engine.delivery.messages import MessageCache
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.delivery.scheduler import ZoneScheduler
from zonemta.engine.delivery.shared_connections import SharedConnections
from zonemta.engine.delivery.shared_rate import SharedRates
from zonemta.engine.delivery.suspensions import Suspensions
from zonemta.engine.delivery.transmit import Sender, ZoneRoute
from zonemta.engine.delivery.warmup import WarmupCaps
from zonemta.engine.delivery.zones import DomainPolicy, SourceAddresses
from zonemta.engine.hooks import Hooks
from zonemta.engine.processes.delivery_process import DeliveryProcess, PoolFigures, check_hooks
from zonemta.store import Store
from zonemta.transport.dns import MxResolver
from zonemta.transport.outbound import Timeouts, TlsPolicy
from zonemta.transport.tls_policy import OutboundTls

log = logging.getLogger(__name__)


def zone_route(config: Config, name: str) -> ZoneRoute:
    zone = config.zones[name]
    return ZoneRoute(
        name=name,
        smart_host=zone.host or None,
        port=zone.port,
        ipv6=not zone.ignore_ipv6,
        prefer_ipv6=zone.prefer_ipv6,
        tls=TlsPolicy(zone.tls.value if isinstance(zone.tls, TlsMode) else zone.tls),
        max_mx_hosts=config.delivery.max_mx_hosts,
        connections=zone.connections,
        mta_sts=zone.mta_sts,
        dane=zone.dane,
        max_recipients=zone.max_recipients,
    )


def delivery_timeouts(config: Config) -> Timeouts:
    delivery = config.delivery
    return Timeouts(
        connect=delivery.connect_timeout.total_seconds(),
        greeting=delivery.greeting_timeout.total_seconds(),
        command=delivery.command_timeout.total_seconds(),
        data=delivery.data_timeout.total_seconds(),
    )


def make_resolver(config: Config) -> MxResolver:
    """The MX resolver ``[dns]`` describes (in the relay and in each delivery process)."""
    return MxResolver(
        nameservers=config.dns.parsed_nameservers(),
        timeout=config.dns.timeout.total_seconds(),
        cache_size=config.dns.cache_size,
    )


def zone_connections(config: Config, name: str) -> ZoneConnections:
    """The connection pool of zone ``name`` (in this process or a delivery process)."""
    zone = config.zones[name]
    return ZoneConnections(
        zone.connections,
        idle_ttl=zone.connection_cache.ttl.total_seconds(),
        max_messages=zone.connection_cache.reuse_count,
        throttle=parse_rate(zone.throttling) if zone.throttling else None,
    )


def make_backoff(config: Config, suspensions: Suspensions) -> Backoff | None:
    """The automatic backoff ``[bounces]`` asks for. Raises ConfigError for a bad rules file."""
    if not config.bounces.backoff:
        return None
    try:
        rules = load_backoff_rules(config.bounces.backoff_rules_file or None)
    except BackoffRulesError as exc:
        raise ConfigError("configuration", [f"config.bounces.backoff_rules_file: {exc}"]) from None
    return Backoff(rules, suspensions)


class DeliveryEngine:
    def __init__(
        self,
        config: Config,
        store: Store,
        bus: EventBus,
        resolver: MxResolver,
        *,
        clock: Callable[[], float],
        hooks: Hooks | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.messages = MessageCache(store)
        self.suppressions = SuppressionList(store)
        self.domains = DomainPolicy(config, resolver)
        self.suspensions = Suspensions(
            store,
            bus=bus,
            clock=clock,
            site_of=self.domains.site_of,
            members=self.domains.members,
        )
        self.suspensions.on_change(lambda: self.wake(self.schedulers))
        self.backoff = make_backoff(config, self.suspensions)
        self.warmup = WarmupCaps.from_config(config, store, clock)
        shared = config.queue.backend is QueueBackend.MONGODB  # instances may share it
        self.shared_rates = SharedRates(store, clock=clock) if shared else None
        self.shared_connections = (
            SharedConnections(store, owner=config.queue.instance_id, clock=clock)
            if shared
            else None
        )
        self.warmup.on_change(lambda: self.wake(self.schedulers))
        self.blacklist = Blacklist(
            store,
            ttl=config.blacklist.ttl.total_seconds(),
            clock=clock,
            held_sources=lambda: self.suspensions.held_sources().keys() | self.warmup.capped(),
        )
        queue = config.queue
        retry = RetryPolicy.from_config(queue.retry_schedule, queue.max_queue_time)
        # Bounce rules, DKIM keys, DSNs, webhook (raises ConfigError for bad keys or rules).
        self.bounces = BounceHandling.from_config(
            config, messages=self.messages, retry=retry, clock=clock
        )
        timeouts = delivery_timeouts(config)
        self.hooks = hooks if hooks is not None else Hooks()
        self.pools: dict[str, PoolFigures | ZoneConnections] = {}
        self.schedulers: dict[str, ZoneScheduler] = {}
        self.processes: list[DeliveryProcess] = []
        self._stopped = trio.Event()
        self._connection_pools: list[ZoneConnections] = []
        enabled = [name for name, zone in config.zones.items() if not zone.disabled]
        tls_policy = OutboundTls.from_config(config, resolver)  # MTA-STS cache, DANE lookups
        count = min(config.delivery.processes, len(enabled))
        shares: list[list[str]] = [enabled[i::count] for i in range(count)]
        for index, zones in enumerate(shares):
            self.processes.append(DeliveryProcess(index, config, zones, blacklist=self.blacklist))
        remote_of = {zone: p for p in self.processes for zone in p.zones}
        for name in enabled:
            zone = config.zones[name]
            pool = zone_connections(config, name)
            sender = Sender(
                zone=zone_route(config, name),
                connections=pool,
                resolver=resolver,
                retry=retry,
                timeouts=timeouts,
                clock=clock,
                sources=SourceAddresses.for_zone(config, name),
                domains=self.domains,
                classifier=self.bounces.classifier,
                signer=self.bounces.signer,
                blacklist=self.blacklist,
                hooks=hooks,
                tls_policy=tls_policy,
            )
            remote = remote_of.get(name)
            deliverer = Deliverer(
                sender=sender,
                store=store,
                messages=self.messages,
                bus=bus,
                retry=retry,
                suppressions=self.suppressions,
                owner=queue.instance_id,
                clock=clock,
                notices=self.bounces.notices,
                blacklist=self.blacklist,
                hooks=hooks,
                remote=remote,
                suspensions=self.suspensions,
                backoff=self.backoff,
                warmup=self.warmup,
            )
            if remote is None:
                self.pools[name] = pool
                self._connection_pools.append(pool)
            else:
                self.pools[name] = remote.pools[name]
            self.schedulers[name] = ZoneScheduler(
                deliverer,
                store=store,
                bus=bus,
                owner=queue.instance_id,
                lease_time=queue.lease_time.total_seconds(),
                max_inflight=zone.connections * 4,
                domains=self.domains,
                clock=clock,
                suspensions=self.suspensions,
                warmup=self.warmup,
                shared_rates=self.shared_rates,
                shared_connections=self.shared_connections,
            )

    def wake(self, zones: Iterable[str]) -> None:
        for zone in zones:
            scheduler = self.schedulers.get(zone)
            if scheduler is not None:
                scheduler.wake()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.suppressions.run)
            await nursery.start(self.blacklist.run)
            await nursery.start(self.suspensions.run)
            await nursery.start(self.warmup.run)
            if self.bounces.webhook is not None:
                await nursery.start(self.bounces.webhook.run)
            for pool in self._connection_pools:
                await nursery.start(pool.run)
            check_hooks(self.hooks, len(self.processes))
            for process in self.processes:
                await nursery.start(process.run)
            async with trio.open_nursery() as schedulers:
                for scheduler in self.schedulers.values():
                    await schedulers.start(scheduler.run)
                task_status.started()
            await self._stopped.wait()  # stop() has let the services finish their work
            nursery.cancel_scope.cancel()

    async def stop(self, grace: float) -> None:
        """Stop leasing, let attempts finish for ``grace`` seconds, release the rest."""
        async with trio.open_nursery() as nursery:
            for scheduler in self.schedulers.values():
                nursery.start_soon(partial(scheduler.stop, grace))
        # No attempt is left: the delivery processes close their connections and exit, and
        # the bounce webhook posts what it has queued.
        async with trio.open_nursery() as nursery:
            for process in self.processes:
                nursery.start_soon(process.stop)
            if self.bounces.webhook is not None:
                nursery.start_soon(self.bounces.webhook.finish, grace)
        self._stopped.set()
