"""Outbound delivery's resolver and SMTP client settings: ``[dns]`` and ``[delivery]``.

The sending zones themselves (``[zones.<name>]``) are in ``conf/zones.py``.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta

import attrs
from attrs import validators as v

from zonemta.conf.validators import positive_duration

__all__ = ["DeliveryConfig", "DnsConfig", "parse_nameserver"]


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
    timeout: timedelta = attrs.field(default=timedelta(seconds=5), validator=positive_duration)
    cache_size: int = attrs.field(default=10000, validator=v.ge(0))

    def parsed_nameservers(self) -> list[tuple[str, int]]:
        """The nameservers as (ip, port) pairs, port 53 when not given."""
        return [parse_nameserver(entry) for entry in self.nameservers]


@attrs.frozen
class DeliveryConfig:
    """Outbound SMTP timeouts and MX handling (``[delivery]``)."""

    connect_timeout: timedelta = attrs.field(
        default=timedelta(seconds=60), validator=positive_duration
    )
    greeting_timeout: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=positive_duration
    )
    command_timeout: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=positive_duration
    )
    data_timeout: timedelta = attrs.field(
        default=timedelta(minutes=10), validator=positive_duration
    )
    max_mx_hosts: int = attrs.field(default=10, validator=v.ge(1))
    # Child processes that send (0: the relay's own process). Zones are shared out among them.
    processes: int = attrs.field(default=0, validator=[v.ge(0), v.le(64)])
