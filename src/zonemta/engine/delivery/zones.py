"""Per-zone and per-domain delivery policy: source addresses, domain limits and rates.

**Sites (MX rollup).** A ``[domains."*.provider.example"]`` table is a *site*: every
recipient domain whose MX hosts end in ``.provider.example`` shares that table's
``max_connections`` and ``rate`` (one limit, one bucket, keyed by the site), as KumoMTA's
site names do. With ``[domains.default] mx_rollup = true``, domains that match no site and
have no table of their own are grouped by their MX host set (site ``mx:<hosts, sorted>``).
The relay learns a domain's site from an MX lookup (the resolver's cache makes it cheap)
the first time it delivers to the domain, and keeps it for :data:`SITE_TTL` seconds; until
then the domain counts as its own site.
"""

from __future__ import annotations

from collections.abc import Collection

import trio

from zonemta.conf import Config
from zonemta.conf.zones import (
    DomainSettings,
    TableKey,
    is_site_pattern,
    resolve_domain,
    site_matches,
)
from zonemta.engine.delivery.pools import AddressPool, PoolAddress
from zonemta.engine.delivery.ratelimit import TokenBucket
from zonemta.transport.dns import MxResolver
from zonemta.transport.dns_results import DnsFailure

#: Seconds a domain's learned site is kept before its MX hosts are looked up again.
SITE_TTL = 3600.0


class DomainPolicy:
    """Each recipient domain's (or site's) settings (``[domains]``) and its rate bucket,
    shared by every zone: a ``rate`` counts deliveries across all connections."""

    def __init__(self, config: Config, resolver: MxResolver | None = None) -> None:
        self._config = config.domains
        self._settings: dict[str, DomainSettings] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self.site_patterns = tuple(str(k) for k in config.domains if is_site_pattern(str(k)))
        default = config.domains.get(TableKey("default"))
        self.mx_rollup = bool(default is not None and default.mx_rollup)
        self._resolver = resolver
        self._sites: dict[str, tuple[str, float]] = {}  # domain -> (site, learned until)
        self._members: dict[str, set[str]] = {}  # site -> domains known to belong to it

    def site_of(self, domain: str) -> str:
        """The key ``domain``'s limits are counted under: its site when one is known, else
        the domain itself."""
        known = self._sites.get(domain)
        return known[0] if known is not None else domain

    def needs_site(self, domain: str) -> bool:
        """Whether :meth:`learn_site` would look ``domain``'s MX hosts up."""
        if not (self.site_patterns or self.mx_rollup) or self._resolver is None:
            return False
        known = self._sites.get(domain)
        return known is None or known[1] <= trio.current_time()

    async def learn_site(self, domain: str) -> str:
        """Look up ``domain``'s MX hosts and remember which site (if any) they belong to.
        A DNS failure leaves the domain its own site (the attempt reports the failure)."""
        if not self.needs_site(domain):
            return self.site_of(domain)
        assert self._resolver is not None
        try:
            destination = await self._resolver.resolve(domain, max_hosts=10)
        except DnsFailure:
            return self.site_of(domain)
        site = domain
        for host in destination.hosts:
            found = next((p for p in self.site_patterns if site_matches(p, host.name)), None)
            if found is not None:
                site = found
                break
        else:
            if self.mx_rollup and TableKey(domain) not in self._config and destination.hosts:
                site = "mx:" + ",".join(sorted({h.name.lower() for h in destination.hosts}))
        self._sites[domain] = (site, trio.current_time() + SITE_TTL)
        if site != domain:
            self._members.setdefault(site, set()).add(domain)
        return site

    def members(self, key: str) -> set[str]:
        """The recipient domains counted under ``key`` (a site's known domains, or the
        domain itself)."""
        return {key, *self._members.get(key, ())}

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
