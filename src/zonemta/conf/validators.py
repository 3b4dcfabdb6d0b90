"""Field validators and converters shared by the configuration sections.

attrs validators for durations, host names, IP literals, regular-expression matches and the
names of zones and SMTP interfaces, the ``ByteSize`` converter and the ``KB``/``MB`` units.
Each raises ``ValueError`` naming the field, which the loader turns into a ``ConfigError``
naming the path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import attrs

from zonemta.conf.units import ByteSize, format_duration

__all__ = [
    "KB",
    "MB",
    "NAME_RE",
    "duration_at_least",
    "hostname_or_empty",
    "ip_literal_or_empty",
    "matches",
    "names",
    "positive_duration",
    "show_duration",
    "to_bytesize",
    "valid_hostname",
]

#: Names of zones and SMTP interfaces (the keys of ``[zones.*]`` and ``[smtp.*]``).
NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_HOSTNAME_RE = re.compile(r"[^\s]+")

KB = 1024
MB = 1024 * 1024


def duration_at_least(minimum: timedelta) -> Any:
    """attrs validator: a timedelta >= ``minimum`` (or > 0 when ``minimum`` is zero)."""

    def check(_inst: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
        if minimum and value < minimum:
            raise ValueError(
                f"'{attribute.name}' must be >= {format_duration(minimum)}: {show_duration(value)}"
            )
        if not minimum and value <= timedelta(0):
            raise ValueError(f"'{attribute.name}' must be > 0s: {show_duration(value)}")

    return check


positive_duration = duration_at_least(timedelta(0))


def show_duration(value: timedelta) -> str:
    return format_duration(value) if value >= timedelta(0) else str(value)


def matches(pattern: re.Pattern[str], what: str, *, allow_empty: bool = False) -> Any:
    """attrs validator: a string fully matching ``pattern`` (or empty when allowed)."""

    def check(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
        if allow_empty and value == "":
            return
        if pattern.fullmatch(value) is None:
            raise ValueError(f"'{attribute.name}' must be {what}: {value!r}")

    return check


def ip_literal_or_empty(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value == "":
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"'{attribute.name}' must be an IP address or empty: {value!r}") from None


def names(_inst: object, attribute: attrs.Attribute[Mapping[str, Any]], value: Any) -> None:
    for name in value:
        if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
            raise ValueError(
                f"bad {attribute.name} name {name!r} (use letters, digits, '_' and '-')"
            )


valid_hostname = matches(_HOSTNAME_RE, "a host name without spaces")
hostname_or_empty = matches(_HOSTNAME_RE, "a host name without spaces", allow_empty=True)


def to_bytesize(value: int) -> ByteSize:
    return value if isinstance(value, ByteSize) else ByteSize(value)
