"""The configuration model: the whole ``Config``, with the checks that span its sections.

These classes are what the rest of zonemta reads. The loader (``loader.py``) builds them from
TOML through one strict cattrs converter; code and tests may also build them directly. Every
field has a default, so ``Config()`` is a complete, working configuration.

Each section lives in the module of its area: ``smtp`` (interfaces), ``intake``, ``queue``,
``delivery`` (``[dns]``, ``[delivery]``), ``zones`` (zones, pools, domains, routing,
blacklist), ``outbound_tls``, ``api``, ``dkim`` (and ``[headers]``), ``bounces`` and
``plugins``; this module holds ``[log]`` and the top level.
"""

from __future__ import annotations

import enum
import functools
import logging
import socket
from collections.abc import Mapping

import attrs

from zonemta.conf.api import ApiConfig
from zonemta.conf.bounces import BouncesConfig
from zonemta.conf.delivery import DeliveryConfig, DnsConfig
from zonemta.conf.dkim import DkimConfig, HeadersConfig
from zonemta.conf.intake import IntakeConfig
from zonemta.conf.outbound_tls import OutboundTlsConfig
from zonemta.conf.plugins import PluginConfig
from zonemta.conf.queue import QueueConfig
from zonemta.conf.smtp import SmtpInterface
from zonemta.conf.validators import names, valid_hostname
from zonemta.conf.zones import (
    BlacklistConfig,
    DomainConfig,
    PoolEntry,
    RoutingConfig,
    TableKey,
    ZoneConfig,
    domain_table_keys,
)

__all__ = ["Config", "LogConfig", "LogLevel"]


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

    hostname: str = attrs.field(factory=default_hostname, validator=valid_hostname)
    smtp: dict[str, SmtpInterface] = attrs.field(factory=_default_interfaces, validator=names)
    queue: QueueConfig = attrs.field(factory=QueueConfig)
    dns: DnsConfig = attrs.field(factory=DnsConfig)
    outbound_tls: OutboundTlsConfig = attrs.field(factory=OutboundTlsConfig)
    delivery: DeliveryConfig = attrs.field(factory=DeliveryConfig)
    intake: IntakeConfig = attrs.field(factory=IntakeConfig)
    zones: dict[str, ZoneConfig] = attrs.field(
        factory=dict, converter=_with_builtin_zones, validator=names
    )
    log: LogConfig = attrs.field(factory=LogConfig)
    api: ApiConfig = attrs.field(factory=ApiConfig)
    dkim: DkimConfig = attrs.field(factory=DkimConfig)
    headers: HeadersConfig = attrs.field(factory=HeadersConfig)
    bounces: BouncesConfig = attrs.field(factory=BouncesConfig)
    pools: dict[str, tuple[PoolEntry, ...]] = attrs.field(factory=dict, validator=names)
    domains: dict[TableKey, DomainConfig] = attrs.field(factory=dict, validator=domain_table_keys)
    routing: RoutingConfig = attrs.field(factory=RoutingConfig)
    blacklist: BlacklistConfig = attrs.field(factory=BlacklistConfig)
    plugins: dict[str, PluginConfig] = attrs.field(factory=dict, validator=names)

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
