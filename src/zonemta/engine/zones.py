"""Per-zone and per-domain delivery policy: source addresses, domain limits and rates."""

from __future__ import annotations

from collections.abc import Collection

import trio

from zonemta.conf import Config
from zonemta.conf.zones import DomainSettings, resolve_domain
from zonemta.engine.pools import AddressPool, PoolAddress
from zonemta.engine.ratelimit import TokenBucket


class DomainPolicy:
    """Each recipient domain's settings (``[domains]``) and its rate bucket, shared by every
    zone: a domain's ``rate`` counts deliveries across all connections."""

    def __init__(self, config: Config) -> None:
        self._config = config.domains
        self._settings: dict[str, DomainSettings] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def settings(self, domain: str) -> DomainSettings:
        found = self._settings.get(domain)
        if found is None:
            found = resolve_domain(self._config, domain)
            self._settings[domain] = found
        return found

    def bucket(self, domain: str) -> TokenBucket | None:
        rate = self.settings(domain).rate
        if rate is None:
            return None
        bucket = self._buckets.get(domain)
        if bucket is None:
            bucket = self._buckets[domain] = TokenBucket(rate)
        return bucket

    def rate_limited(self, domain: str) -> float | None:
        """When ``domain`` may next be delivered to (trio time), if that is later than now."""
        bucket = self.bucket(domain)
        if bucket is None:
            return None
        at = bucket.available_at()
        return at if at > trio.current_time() else None


class SourceAddresses:
    """Which local address (and EHLO name) a zone's delivery is sent from."""

    def __init__(self, pool: AddressPool, default_name: str) -> None:
        self.pool = pool
        self.default_name = default_name
        self.addresses = frozenset(e.address for e in pool.entries)

    @classmethod
    def for_zone(cls, config: Config, zone_name: str) -> SourceAddresses:
        zone = config.zones[zone_name]
        name = config.zone_hostname(zone_name)
        if zone.pool:
            entries = [
                PoolAddress(e.address, e.name or name, e.ratio) for e in config.pools[zone.pool]
            ]
        else:
            entries = [PoolAddress(zone.local_address, name)]
        return cls(AddressPool(entries, ipv6=not zone.ignore_ipv6), name)

    def choose(
        self,
        key: str,
        *,
        excluded: Collection[str],
        blacklisted: Collection[str],
        ipv6: bool | None = None,
    ) -> PoolAddress | None:
        """The address for delivery ``key``. ``excluded`` (the domain's
        ``disabled_addresses``) is ignored when it would leave nothing; ``blacklisted``
        addresses are never used: None when they are all there is. ``ipv6`` restricts the
        choice to one address family (the OS-chosen address fits both)."""

        def pick(disabled: Collection[str]) -> PoolAddress | None:
            if ipv6 is None:
                return self.pool.choose(key, disabled=disabled)
            return self.pool.choose_for_family(key, ipv6=ipv6, disabled=disabled)

        chosen = pick({*excluded, *blacklisted})
        if chosen is None and excluded:
            chosen = pick(set(blacklisted))
        return chosen
