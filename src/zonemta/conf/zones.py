"""Configuration of sending zones, their pools, recipient domains, routing and the blacklist.

``[zones.<name>]`` (``ZoneConfig``, with its outbound ``TlsMode`` and ``ConnectionCache``),
``[pools]``, ``[domains.<domain>]``, ``[routing]`` and ``[blacklist]`` tables.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import attrs
from attrs import validators as v

from zonemta.conf.rates import Rate, parse_rate
from zonemta.conf.units import format_duration
from zonemta.conf.validators import hostname_or_empty, ip_literal_or_empty

_DOMAIN_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
_HEADER_RE = re.compile(r"[!-9;-~]+")


class TableKey(str):
    """A table key that is not a zone or interface name (a recipient domain in
    ``[domains."example.com"]``, a header name in ``routing_headers``): a distinct type so the
    converter does not hold it to the zone-name syntax."""

    __slots__ = ()


def _ip_literal(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"'{attribute.name}' must be an IP address: {value!r}") from None


def _ratio(_inst: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not 0 < value <= 1:
        raise ValueError(f"'{attribute.name}' must be > 0 and <= 1: {value!r}")


def rate_or_empty(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value:
        parse_rate(value)  # raises ValueError naming the value


def _ip_literals(_inst: object, attribute: attrs.Attribute[tuple[str, ...]], value: Any) -> None:
    for item in value:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"'{attribute.name}' entries must be IP addresses: {item!r}") from None


def domain_list(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    for item in value:
        if _DOMAIN_RE.fullmatch(item) is None:
            raise ValueError(f"'{attribute.name}': not a domain name: {item!r}")


def header_map(_inst: object, attribute: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
    for name in value:
        if _HEADER_RE.fullmatch(name) is None:
            raise ValueError(f"'{attribute.name}': not a header name: {name!r}")


def lower_tuple(value: Any) -> Any:
    return tuple(item.lower() for item in value) if isinstance(value, tuple | list) else value


def lower_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k).lower(): v for k, v in value.items()}
    return value


def _iso_date(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'{attribute.name}' must be a date YYYY-MM-DD: {value!r}") from None


#: Recipients per SMTP transaction by default: Postfix's ``smtp_destination_recipient_limit``.
MAX_RECIPIENTS = 50
#: The most a zone may put in one transaction: RFC 5321 4.5.3.1.8 asks servers to take at
#: least 100 recipients; far past that, a refusal ("452 too many recipients") costs more.
MAX_RECIPIENTS_LIMIT = 1000

#: Caps above this are no cap at all (a growth factor has reached any useful volume).
WARMUP_UNLIMITED = 10**9


@attrs.frozen
class Warmup:
    """A new source address's warm-up ramp: a cap on deliveries per UTC day that grows,
    from ``start`` (day 0): either ``schedule[day]`` (no cap after the schedule), or
    ``initial * growth ** day``. Days before ``start`` get day 0's cap."""

    start: str = attrs.field(validator=_iso_date)
    schedule: tuple[int, ...] = attrs.field(default=(), validator=v.deep_iterable(v.ge(1)))
    initial: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)))
    growth: float | None = attrs.field(default=None, validator=v.optional(v.gt(1.0)))

    def __attrs_post_init__(self) -> None:
        if bool(self.schedule) == (self.initial is not None or self.growth is not None):
            raise ValueError("give either 'schedule' or 'initial' and 'growth'")
        if not self.schedule and (self.initial is None or self.growth is None):
            raise ValueError("'initial' and 'growth' go together")

    @property
    def start_epoch(self) -> float:
        return datetime.combine(date.fromisoformat(self.start), time(), UTC).timestamp()

    def cap(self, day: int) -> int | None:
        """Deliveries allowed on ``day`` (0 = the start date); None: no cap."""
        day = max(day, 0)
        if self.schedule:
            return self.schedule[day] if day < len(self.schedule) else None
        assert self.initial is not None and self.growth is not None
        if day * math.log(self.growth) > math.log(WARMUP_UNLIMITED / self.initial):
            return None
        return int(self.initial * self.growth**day)


@attrs.frozen
class PoolEntry:
    """One local address of a pool (``[[pools.<name>]]``)."""

    address: str = attrs.field(validator=_ip_literal)
    name: str = ""  # EHLO name from this address; "" = the zone's name or the hostname
    ratio: float | None = attrs.field(default=None, validator=_ratio)
    warmup: Warmup | None = None


@attrs.frozen
class ConnectionCache:
    """How long an idle delivery connection waits for the next message, and how many
    messages one connection carries (``[zones.<name>.connection_cache]``)."""

    ttl: timedelta = timedelta(seconds=10)
    reuse_count: int = attrs.field(default=100, validator=v.ge(1))


@attrs.frozen
class DomainConfig:
    """Limits for one recipient domain (``[domains.<domain>]``; ``default`` applies to all).
    A key left out of a domain's table comes from ``[domains.default]``."""

    max_connections: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)))
    disabled_addresses: tuple[str, ...] | None = attrs.field(
        default=None, validator=v.optional(_ip_literals)
    )
    rate: str | None = attrs.field(default=None, validator=v.optional(rate_or_empty))
    # Only in [domains.default]: domains with the same MX host set share their limits.
    mx_rollup: bool | None = None


@attrs.frozen
class DomainSettings:
    """A recipient domain's limits with the defaults applied."""

    max_connections: int = 5
    disabled_addresses: frozenset[str] = frozenset()
    rate: Rate | None = None


def resolve_domain(domains: Mapping[TableKey, DomainConfig], domain: str) -> DomainSettings:
    """The settings for ``domain``: its own table over ``default`` over built-in defaults."""
    base = DomainSettings()
    merged: dict[str, Any] = {}
    for table in (domains.get(TableKey("default")), domains.get(TableKey(domain.lower()))):
        if table is None:
            continue
        for key in ("max_connections", "disabled_addresses", "rate"):
            value = getattr(table, key)
            if value is not None:
                merged[key] = value
    return DomainSettings(
        max_connections=merged.get("max_connections", base.max_connections),
        disabled_addresses=frozenset(merged.get("disabled_addresses", ())),
        rate=parse_rate(merged["rate"]) if merged.get("rate") else None,
    )


def is_site_pattern(name: str) -> bool:
    """A ``[domains."*.provider.example"]`` key: a site, matched against MX host names."""
    return name.startswith("*.")


def site_matches(pattern: str, host: str) -> bool:
    """Whether MX host ``host`` (no trailing dot) belongs to site ``pattern`` (``*.suffix``)."""
    return host.lower().endswith(pattern[1:].lower())


def domain_table_keys(
    _inst: object, attribute: attrs.Attribute[Any], value: Mapping[str, Any]
) -> None:
    for name, table in value.items():
        bare = name[2:] if is_site_pattern(name) else name
        if name != "default" and _DOMAIN_RE.fullmatch(bare) is None:
            raise ValueError(
                f"'{attribute.name}': not a domain name or '*.<domain>' site: {name!r}"
            )
        if name != "default" and getattr(table, "mx_rollup", None) is not None:
            raise ValueError(f"'{attribute.name}.{name}': 'mx_rollup' goes in [domains.default]")


@attrs.frozen
class RoutingConfig:
    """``[routing]``: where ``X-Sending-Zone`` is honoured, and the fallback zone."""

    allow_routing_headers: tuple[str, ...] = ("api", "bounce")
    default_zone: str = "default"


@attrs.frozen
class BlacklistConfig:
    """``[blacklist]``: how long a local address stays disabled for a recipient domain
    after a reply that says the address is blacklisted there."""

    ttl: timedelta = timedelta(hours=6)

    def __attrs_post_init__(self) -> None:
        if self.ttl <= timedelta(0):
            raise ValueError(f"'ttl' must be > 0s: {format_duration(self.ttl)}")


class TlsMode(enum.StrEnum):
    """STARTTLS policy for outbound delivery (docs/config.md "Outbound TLS")."""

    OPPORTUNISTIC = "opportunistic"  # use STARTTLS when offered, fall back to plain on failure
    NONE = "none"  # never STARTTLS (and no MTA-STS or DANE)
    REQUIRED = "required"  # TLS with a certificate from a trusted CA (any name), or defer
    VERIFY = "verify"  # TLS with a trusted certificate for the MX (smart host) name, or defer


@attrs.frozen
class ZoneConfig:
    """A sending zone (``[zones.<name>]``)."""

    connections: int = attrs.field(default=10, validator=v.ge(1))
    host: str = attrs.field(default="", validator=hostname_or_empty)  # smart host; "" = MX
    port: int = attrs.field(default=25, validator=[v.ge(1), v.le(65535)])
    ignore_ipv6: bool = True
    prefer_ipv6: bool = False
    local_address: str = attrs.field(default="", validator=ip_literal_or_empty)
    name: str = attrs.field(default="", validator=hostname_or_empty)  # EHLO; "" → Config.hostname
    tls: TlsMode = TlsMode.OPPORTUNISTIC
    mta_sts: bool = True  # honour the recipient domain's MTA-STS policy (RFC 8461)
    dane: bool = True  # honour DNSSEC-signed TLSA records of the MX hosts (RFC 7672)
    dsn: bool = True  # tell senders about this zone's bounces and delays ([bounces.dsn])
    pool: str = ""  # a [pools] name; "" = local_address (or the OS's choice)
    throttling: str = attrs.field(default="", validator=rate_or_empty)  # per connection
    disabled: bool = False
    sender_domains: tuple[str, ...] = attrs.field(
        default=(), converter=lower_tuple, validator=domain_list
    )
    recipient_domains: tuple[str, ...] = attrs.field(
        default=(), converter=lower_tuple, validator=domain_list
    )
    routing_headers: dict[TableKey, str] = attrs.field(
        factory=dict, converter=lower_keys, validator=header_map
    )
    connection_cache: ConnectionCache = attrs.field(factory=ConnectionCache)
    # Recipients of one message to one destination sent in one SMTP transaction (1: each
    # alone).
    max_recipients: int = attrs.field(
        default=MAX_RECIPIENTS, validator=[v.ge(1), v.le(MAX_RECIPIENTS_LIMIT)]
    )

    def __attrs_post_init__(self) -> None:
        if self.ignore_ipv6 and self.prefer_ipv6:
            raise ValueError("'prefer_ipv6' needs 'ignore_ipv6 = false'")
        if self.ignore_ipv6 and ":" in self.local_address:
            raise ValueError(
                f"'local_address' {self.local_address!r} is IPv6 but 'ignore_ipv6' is true"
            )

    @property
    def smart_host(self) -> bool:
        """True when every delivery of this zone goes to ``host`` instead of the MX."""
        return self.host != ""
