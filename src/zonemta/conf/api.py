"""The HTTP API's configuration (``[api]``): listener, token auth, limits, event stream."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta

import attrs
from attrs import validators as v

from zonemta.conf.units import ByteSize, format_duration

__all__ = ["ApiConfig"]

KB = 1024
MB = 1024 * 1024

_HOST_RE = re.compile(r"[^\s\[\]]+")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]*")  # RFC 6750 b64token characters


def _to_bytesize(value: int) -> ByteSize:
    return value if isinstance(value, ByteSize) else ByteSize(value)


def _host(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if _HOST_RE.fullmatch(value) is None:
        raise ValueError(f"'{attribute.name}' must be a host name or IP address: {value!r}")


def _token(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if _TOKEN_RE.fullmatch(value) is None:
        raise ValueError(
            f"'{attribute.name}' may only use letters, digits and '-._~+/=' (a Bearer token)"
        )


def _public_paths(
    _inst: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for index, path in enumerate(value):
        if not path.startswith("/"):
            raise ValueError(f"'{attribute.name}'[{index}] must start with '/': {path!r}")


def _positive(_inst: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"'{attribute.name}' must be > 0s: {format_duration(abs(value))}")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class ApiConfig:
    """The HTTP API (``[api]``): REST routes, ``/metrics`` and the ``/events`` websocket."""

    enabled: bool = True
    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=12080, validator=[v.ge(0), v.le(65535)])  # 0 = any free
    # When set, every route except ``public`` needs ``Authorization: Bearer <token>``.
    token: str = attrs.field(default="", validator=_token)
    public: tuple[str, ...] = attrs.field(default=("/metrics",), validator=_public_paths)
    # Largest request body of /send and /send-raw.
    max_send_size: ByteSize = attrs.field(
        default=ByteSize(30 * MB), converter=_to_bytesize, validator=v.ge(ByteSize(1 * KB))
    )
    # Idle /events streams get a heartbeat message this often.
    heartbeat: timedelta = attrs.field(default=timedelta(seconds=15), validator=_positive)
    # Events one /events subscriber may fall behind before it is disconnected.
    event_buffer: int = attrs.field(default=1000, validator=[v.ge(1), v.le(1_000_000)])
    # The web dashboard at /ui (its files are served without the token; off: no /ui at all).
    ui: bool = True

    def __attrs_post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"'host' {self.host!r} is not a loopback address: set 'token' so that not "
                "everyone who can reach it can send mail and manage the queue"
            )
