"""The configuration model: frozen attrs classes, validated in their constructors.

These classes are what the rest of zonemta reads. The loader (``loader.py``) builds them from
TOML through one strict cattrs converter; code and tests may also build them directly. Every
field has a default, so ``Config()`` is a complete, working configuration.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
from attrs import validators as v

from zonemta.conf import security
from zonemta.conf.api import ApiConfig
from zonemta.conf.bounces import BouncesConfig
from zonemta.conf.dkim import DkimConfig, HeadersConfig
from zonemta.conf.intake import IntakeConfig
from zonemta.conf.outbound_tls import OutboundTlsConfig
from zonemta.conf.plugins import PluginConfig
from zonemta.conf.units import ByteSize, format_duration
from zonemta.conf.zones import (
    BlacklistConfig,
    ConnectionCache,
    DomainConfig,
    PoolEntry,
    RoutingConfig,
    TableKey,
    domain_list,
    domain_table_keys,
    header_map,
    lower_keys,
    lower_tuple,
    rate_or_empty,
)

__all__ = [
    "NAME_RE",
    "Config",
    "DeliveryConfig",
    "DnsConfig",
    "Durability",
    "LogConfig",
    "LogLevel",
    "QueueBackend",
    "QueueConfig",
    "SmtpInterface",
    "TlsMode",
    "ZoneConfig",
    "parse_nameserver",
]

#: Names of zones and SMTP interfaces (the keys of ``[zones.*]`` and ``[smtp.*]``).
NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9_.-]+")
_HOSTNAME_RE = re.compile(r"[^\s]+")
#: A MongoDB database name: no ``/\. "$``, no NUL, at most 63 bytes (MongoDB's limits).
_MONGO_DATABASE_RE = re.compile(r'[^/\\. "$\x00]{1,63}')
_MONGO_URI_RE = re.compile(r"mongodb(\+srv)?://\S+")

KB = 1024
MB = 1024 * 1024


class QueueBackend(enum.StrEnum):
    """Where the queue lives."""

    SQLITE = "sqlite"
    MONGODB = "mongodb"  # shared by several instances (``mongodb_uri``, ``database``)


class Durability(enum.StrEnum):
    """How hard the store pushes commits to disk."""

    FULL = "full"  # fsync on every commit (sqlite synchronous=FULL)
    NORMAL = "normal"  # survives a process crash, may lose the last commits on power loss


class TlsMode(enum.StrEnum):
    """STARTTLS policy for outbound delivery (docs/config.md "Outbound TLS")."""

    OPPORTUNISTIC = "opportunistic"  # use STARTTLS when offered, fall back to plain on failure
    NONE = "none"  # never STARTTLS (and no MTA-STS or DANE)
    REQUIRED = "required"  # TLS with a certificate from a trusted CA (any name), or defer
    VERIFY = "verify"  # TLS with a trusted certificate for the MX (smart host) name, or defer


class LogLevel(enum.StrEnum):
    """Log verbosity."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def logging_level(self) -> int:
        """The matching :mod:`logging` level number."""
        return int(logging.getLevelName(self.value.upper()))


# ---------------------------------------------------------------------------------- validators


def _duration_at_least(minimum: timedelta) -> Any:
    """attrs validator: a timedelta >= ``minimum`` (or > 0 when ``minimum`` is zero)."""

    def check(_inst: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
        if minimum and value < minimum:
            raise ValueError(
                f"'{attribute.name}' must be >= {format_duration(minimum)}: {_show(value)}"
            )
        if not minimum and value <= timedelta(0):
            raise ValueError(f"'{attribute.name}' must be > 0s: {_show(value)}")

    return check


_positive_duration = _duration_at_least(timedelta(0))


def _show(value: timedelta) -> str:
    return format_duration(value) if value >= timedelta(0) else str(value)


def _matches(pattern: re.Pattern[str], what: str, *, allow_empty: bool = False) -> Any:
    """attrs validator: a string fully matching ``pattern`` (or empty when allowed)."""

    def check(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
        if allow_empty and value == "":
            return
        if pattern.fullmatch(value) is None:
            raise ValueError(f"'{attribute.name}' must be {what}: {value!r}")

    return check


def _ip_literal_or_empty(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value == "":
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"'{attribute.name}' must be an IP address or empty: {value!r}") from None


def _names(_inst: object, attribute: attrs.Attribute[Mapping[str, Any]], value: Any) -> None:
    for name in value:
        if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
            raise ValueError(
                f"bad {attribute.name} name {name!r} (use letters, digits, '_' and '-')"
            )


_hostname = _matches(_HOSTNAME_RE, "a host name without spaces")
_hostname_or_empty = _matches(_HOSTNAME_RE, "a host name without spaces", allow_empty=True)


def _to_bytesize(value: int) -> ByteSize:
    return value if isinstance(value, ByteSize) else ByteSize(value)


# -------------------------------------------------------------------------------------- model


@attrs.frozen
class SmtpInterface:
    """One SMTP listener (``[smtp.<name>]``). Security rules: ``conf/security.py``."""

    enabled: bool = True
    host: str = attrs.field(default="127.0.0.1", validator=_hostname)
    port: int = attrs.field(default=2525, validator=[v.ge(0), v.le(65535)])  # 0 = any free port
    hostname: str = attrs.field(default="", validator=_hostname_or_empty)  # "" → Config.hostname
    max_size: ByteSize = attrs.field(
        default=ByteSize(30 * MB), converter=_to_bytesize, validator=v.ge(ByteSize(1))
    )
    max_recipients: int = attrs.field(default=1000, validator=v.ge(1))
    max_line_length: ByteSize = attrs.field(
        default=ByteSize(2048), converter=_to_bytesize, validator=v.ge(ByteSize(512))
    )
    max_header_size: ByteSize = attrs.field(
        default=ByteSize(1 * MB), converter=_to_bytesize, validator=v.ge(ByteSize(1 * KB))
    )
    idle_timeout: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_positive_duration
    )
    # The PROXY header and the TLS handshake (implicit TLS, STARTTLS) must finish within this.
    handshake_timeout: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_positive_duration
    )
    data_timeout: timedelta = attrs.field(
        default=timedelta(minutes=10), validator=_positive_duration
    )
    max_clients: int = attrs.field(default=1000, validator=v.ge(1))
    # Submission security (docs/config.md "Submission security", rules in conf/security.py).
    starttls: bool = False
    secure: bool = False
    cert: str = ""
    key: str = ""
    authentication: bool = False
    allow_insecure_auth: bool = False
    users_file: str = ""
    auth_failure_delay: timedelta = attrs.field(
        default=timedelta(seconds=1), validator=_positive_duration
    )
    relay_networks: tuple[str, ...] = attrs.field(
        default=security.LOOPBACK_NETWORKS, validator=security.network_list
    )
    max_clients_per_address: int = attrs.field(default=20, validator=v.ge(0))
    max_errors: int = attrs.field(default=20, validator=v.ge(0))
    proxy_protocol: bool = False
    proxy_networks: tuple[str, ...] = attrs.field(
        default=security.LOOPBACK_NETWORKS, validator=security.network_list
    )

    def __attrs_post_init__(self) -> None:
        security.check_interface_security(self)


_DEFAULT_RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(minutes=5),
    timedelta(minutes=7),
    timedelta(minutes=8),
    timedelta(minutes=25),
    timedelta(minutes=75),
    timedelta(hours=2),
    *(timedelta(hours=4),) * 11,
)


def _retry_schedule(
    _inst: object, attribute: attrs.Attribute[tuple[timedelta, ...]], value: tuple[timedelta, ...]
) -> None:
    if not value:
        raise ValueError("'retry_schedule' must not be empty")
    for index, step in enumerate(value):
        if step <= timedelta(0):
            raise ValueError(f"'retry_schedule' entries must be > 0s: [{index}] is {_show(step)}")


@attrs.frozen
class QueueConfig:
    """The durable queue (``[queue]``)."""

    backend: QueueBackend = QueueBackend.SQLITE
    path: Path = Path("zonemta-data")
    instance_id: str = attrs.field(
        default="default", validator=_matches(_INSTANCE_ID_RE, "letters, digits, '_', '.', '-'")
    )
    retry_schedule: tuple[timedelta, ...] = attrs.field(
        default=_DEFAULT_RETRY_SCHEDULE, validator=_retry_schedule
    )
    max_queue_time: timedelta = attrs.field(default=timedelta(days=5), validator=_positive_duration)
    lease_time: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_duration_at_least(timedelta(seconds=10))
    )
    durability: Durability = Durability.FULL
    body_chunk_size: ByteSize = attrs.field(
        default=ByteSize(256 * KB),
        converter=_to_bytesize,
        validator=[v.ge(ByteSize(4 * KB)), v.le(ByteSize(16 * MB))],
    )
    # The sqlite queue's size limit (0: none); past it submissions get 452 4.3.1.
    max_size: ByteSize = attrs.field(default=ByteSize(0), converter=_to_bytesize)
    mongodb_uri: str = attrs.field(
        default="",
        validator=_matches(
            _MONGO_URI_RE, "a 'mongodb://' or 'mongodb+srv://' URI", allow_empty=True
        ),
    )
    database: str = attrs.field(
        default="zonemta", validator=_matches(_MONGO_DATABASE_RE, "a MongoDB database name")
    )

    def __attrs_post_init__(self) -> None:
        if self.backend is QueueBackend.MONGODB and not self.mongodb_uri:
            raise ValueError("'mongodb_uri' is required when 'backend' is 'mongodb'")
        if self.max_size and self.max_size < 1 * MB:
            raise ValueError(f"'max_size' must be 0 (no limit) or at least 1MB: {self.max_size}")
        if self.max_size and self.backend is QueueBackend.MONGODB:
            raise ValueError("'max_size' applies to the sqlite queue only (size MongoDB itself)")


def parse_nameserver(text: str) -> tuple[str, int]:
    """Split ``"ip"``, ``"ip:port"``, ``"ipv6"`` or ``"[ipv6]:port"`` into (ip, port).

    The port defaults to 53. Raises ``ValueError`` naming the bad entry.
    """
    error = ValueError(f"bad nameserver {text!r} (use 'ip', 'ip:port' or '[ipv6]:port')")
    host, port_text = text, ""
    if text.startswith("["):
        match = re.fullmatch(r"\[([^\]]+)\](?::(\d{1,5}))?", text)
        if match is None:
            raise error
        host, port_text = match.group(1), match.group(2) or ""
        if ":" not in host:  # brackets are for IPv6 only
            raise error
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text.isdigit():
            raise error
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise error from None
    port = int(port_text) if port_text else 53
    if not 1 <= port <= 65535:
        raise error
    return str(address), port


def _nameservers(
    _inst: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for index, entry in enumerate(value):
        try:
            parse_nameserver(entry)
        except ValueError as exc:
            raise ValueError(f"'nameservers'[{index}]: {exc}") from None


@attrs.frozen
class DnsConfig:
    """The resolver (``[dns]``). No nameservers means the system's (``/etc/resolv.conf``)."""

    nameservers: tuple[str, ...] = attrs.field(default=(), validator=_nameservers)
    timeout: timedelta = attrs.field(default=timedelta(seconds=5), validator=_positive_duration)
    cache_size: int = attrs.field(default=10000, validator=v.ge(0))

    def parsed_nameservers(self) -> list[tuple[str, int]]:
        """The nameservers as (ip, port) pairs, port 53 when not given."""
        return [parse_nameserver(entry) for entry in self.nameservers]


@attrs.frozen
class DeliveryConfig:
    """Outbound SMTP timeouts and MX handling (``[delivery]``)."""

    connect_timeout: timedelta = attrs.field(
        default=timedelta(seconds=60), validator=_positive_duration
    )
    greeting_timeout: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_positive_duration
    )
    command_timeout: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_positive_duration
    )
    data_timeout: timedelta = attrs.field(
        default=timedelta(minutes=10), validator=_positive_duration
    )
    max_mx_hosts: int = attrs.field(default=10, validator=v.ge(1))
    # Child processes that send (0: the relay's own process). Zones are shared out among them.
    processes: int = attrs.field(default=0, validator=[v.ge(0), v.le(64)])


@attrs.frozen
class ZoneConfig:
    """A sending zone (``[zones.<name>]``)."""

    connections: int = attrs.field(default=10, validator=v.ge(1))
    host: str = attrs.field(default="", validator=_hostname_or_empty)  # smart host; "" = MX
    port: int = attrs.field(default=25, validator=[v.ge(1), v.le(65535)])
    ignore_ipv6: bool = True
    prefer_ipv6: bool = False
    local_address: str = attrs.field(default="", validator=_ip_literal_or_empty)
    name: str = attrs.field(default="", validator=_hostname_or_empty)  # EHLO; "" → Config.hostname
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


@attrs.frozen
class LogConfig:
    """Logging (``[log]``)."""

    level: LogLevel = LogLevel.INFO


@functools.cache
def default_hostname() -> str:
    """This machine's FQDN, looked up once per process."""
    return socket.getfqdn()


def _default_interfaces() -> dict[str, SmtpInterface]:
    return {"feeder": SmtpInterface()}


def _with_builtin_zones(zones: Mapping[str, ZoneConfig]) -> dict[str, ZoneConfig]:
    """Add the ``default`` and ``bounces`` zones when they are not configured."""
    result = dict(zones)
    result.setdefault("default", ZoneConfig())
    result.setdefault("bounces", ZoneConfig(connections=1))
    return result


@attrs.frozen
class Config:
    """The whole configuration. ``Config()`` is the all-defaults configuration."""

    hostname: str = attrs.field(factory=default_hostname, validator=_hostname)
    smtp: dict[str, SmtpInterface] = attrs.field(factory=_default_interfaces, validator=_names)
    queue: QueueConfig = attrs.field(factory=QueueConfig)
    dns: DnsConfig = attrs.field(factory=DnsConfig)
    outbound_tls: OutboundTlsConfig = attrs.field(factory=OutboundTlsConfig)
    delivery: DeliveryConfig = attrs.field(factory=DeliveryConfig)
    intake: IntakeConfig = attrs.field(factory=IntakeConfig)
    zones: dict[str, ZoneConfig] = attrs.field(
        factory=dict, converter=_with_builtin_zones, validator=_names
    )
    log: LogConfig = attrs.field(factory=LogConfig)
    api: ApiConfig = attrs.field(factory=ApiConfig)
    dkim: DkimConfig = attrs.field(factory=DkimConfig)
    headers: HeadersConfig = attrs.field(factory=HeadersConfig)
    bounces: BouncesConfig = attrs.field(factory=BouncesConfig)
    pools: dict[str, tuple[PoolEntry, ...]] = attrs.field(factory=dict, validator=_names)
    domains: dict[TableKey, DomainConfig] = attrs.field(factory=dict, validator=domain_table_keys)
    routing: RoutingConfig = attrs.field(factory=RoutingConfig)
    blacklist: BlacklistConfig = attrs.field(factory=BlacklistConfig)
    plugins: dict[str, PluginConfig] = attrs.field(factory=dict, validator=_names)

    def __attrs_post_init__(self) -> None:
        plugins = any(p.enabled for p in self.plugins.values())
        for name, iface in self.smtp.items():
            if iface.authentication and not iface.users_file and not plugins:
                raise ValueError(
                    f"[smtp.{name}] 'authentication' needs 'users_file' or an enabled plugin "
                    "that answers AUTH (e.g. http-auth)"
                )
        for name, entries in self.pools.items():
            fixed = sum(e.ratio for e in entries if e.ratio is not None)
            if not entries:
                raise ValueError(f"pool {name!r} is empty")
            if fixed > 1 + 1e-9 or (fixed >= 1 - 1e-9 and any(e.ratio is None for e in entries)):
                raise ValueError(
                    f"pool {name!r}: ratios add up to {fixed:g}; they must stay below 1 when "
                    "some addresses have no ratio, and never exceed 1"
                )
        for name, zone in self.zones.items():
            if zone.pool and zone.pool not in self.pools:
                raise ValueError(f"zone {name!r}: 'pool' {zone.pool!r} is not in [pools]")
        if self.routing.default_zone not in self.zones:
            raise ValueError(
                f"[routing] 'default_zone' {self.routing.default_zone!r} is not a zone"
            )
        if self.zones[self.routing.default_zone].disabled:
            raise ValueError(f"the default zone {self.routing.default_zone!r} is disabled")

    def interface_hostname(self, name: str) -> str:
        """The banner/EHLO name of SMTP interface ``name``. Raises ``KeyError`` if unknown."""
        return self.smtp[name].hostname or self.hostname

    def zone_hostname(self, name: str) -> str:
        """The EHLO name zone ``name`` uses. Raises ``KeyError`` if unknown."""
        return self.zones[name].name or self.hostname
