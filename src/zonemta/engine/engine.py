"""The delivery engine: one scheduler, one connection pool and one deliverer per zone."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial

import trio

from zonemta.conf import Config, TlsMode
from zonemta.conf.rates import parse_rate
from zonemta.engine.attempt import Deliverer, ZoneRoute
from zonemta.engine.blacklist import Blacklist
from zonemta.engine.bus import EventBus
from zonemta.engine.connections import ZoneConnections
from zonemta.engine.hooks import Hooks
from zonemta.engine.messages import MessageCache
from zonemta.engine.notices import BounceHandling
from zonemta.engine.retry import RetryPolicy
from zonemta.engine.scheduler import ZoneScheduler
from zonemta.engine.suppression import SuppressionList
from zonemta.engine.zones import DomainPolicy, SourceAddresses
from zonemta.store import Store
from zonemta.transport.dns import MxResolver
from zonemta.transport.outbound import Timeouts, TlsPolicy

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
    )


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
        self.domains = DomainPolicy(config)
        self.blacklist = Blacklist(store, ttl=config.blacklist.ttl.total_seconds(), clock=clock)
        queue = config.queue
        retry = RetryPolicy.from_config(queue.retry_schedule, queue.max_queue_time)
        # Bounce rules, DKIM keys, DSNs, webhook (raises ConfigError for bad keys or rules).
        self.bounces = BounceHandling.from_config(
            config, messages=self.messages, retry=retry, clock=clock
        )
        delivery = config.delivery
        timeouts = Timeouts(
            connect=delivery.connect_timeout.total_seconds(),
            greeting=delivery.greeting_timeout.total_seconds(),
            command=delivery.command_timeout.total_seconds(),
            data=delivery.data_timeout.total_seconds(),
        )
        self.pools: dict[str, ZoneConnections] = {}
        self.schedulers: dict[str, ZoneScheduler] = {}
        for name, zone in config.zones.items():
            if zone.disabled:
                continue
            pool = ZoneConnections(
                zone.connections,
                idle_ttl=zone.connection_cache.ttl.total_seconds(),
                max_messages=zone.connection_cache.reuse_count,
                throttle=parse_rate(zone.throttling) if zone.throttling else None,
            )
            deliverer = Deliverer(
                zone=zone_route(config, name),
                store=store,
                messages=self.messages,
                connections=pool,
                resolver=resolver,
                bus=bus,
                retry=retry,
                suppressions=self.suppressions,
                owner=queue.instance_id,
                hostname=config.hostname,
                timeouts=timeouts,
                clock=clock,
                classifier=self.bounces.classifier,
                signer=self.bounces.signer,
                notices=self.bounces.notices,
                sources=SourceAddresses.for_zone(config, name),
                domains=self.domains,
                blacklist=self.blacklist,
                hooks=hooks,
            )
            self.pools[name] = pool
            self.schedulers[name] = ZoneScheduler(
                deliverer,
                store=store,
                bus=bus,
                owner=queue.instance_id,
                lease_time=queue.lease_time.total_seconds(),
                max_inflight=zone.connections * 2,
                domains=self.domains,
                clock=clock,
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
            if self.bounces.webhook is not None:
                await nursery.start(self.bounces.webhook.run)
            for pool in self.pools.values():
                await nursery.start(pool.run)
            async with trio.open_nursery() as schedulers:
                for scheduler in self.schedulers.values():
                    await schedulers.start(scheduler.run)
                task_status.started()
            nursery.cancel_scope.cancel()

    async def stop(self, grace: float) -> None:
        """Stop leasing, let attempts finish for ``grace`` seconds, release the rest."""
        async with trio.open_nursery() as nursery:
            for scheduler in self.schedulers.values():
                nursery.start_soon(partial(scheduler.stop, grace))
