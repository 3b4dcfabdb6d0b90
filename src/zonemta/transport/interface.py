"""What an SMTP interface is configured with at run time, and the network checks the
listener and its sessions share."""

from __future__ import annotations

import functools
import ipaddress
import ssl
from typing import Protocol

import attrs

from zonemta.transport.smtp import server as smtp

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class Authenticator(Protocol):
    """Checks AUTH credentials (implemented by :mod:`zonemta.engine.intake.auth`)."""

    async def authenticate(self, client_address: str, username: str, password: str) -> bool:
        """True for valid credentials; a failure may take a while (throttling)."""
        ...


class FailureDelays(Protocol):
    """Failed AUTH attempts per client address and the delay each one earns (implemented by
    :class:`zonemta.engine.intake.auth.FailureThrottle`)."""

    def failure(self, address: str, now: float) -> float:
        """Record a failure; the seconds to wait before answering it."""
        ...

    def success(self, address: str) -> None: ...


def in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    """True when the IP literal ``address`` lies in one of ``networks`` (IPv4-mapped IPv6
    addresses count as IPv4). False for anything that is not an IP address."""
    ip = _client_ip(address)
    return ip is not None and any(ip in network for network in networks)


@functools.lru_cache(maxsize=4096)
def _client_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``address`` parsed (an IPv4-mapped IPv6 address as IPv4), None when it is none.
    Cached: each session asks about its client more than once, and clients come back."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@attrs.frozen
class InterfaceSettings:
    """What one SMTP interface needs at run time (built from the config by the app).

    ``tls_context`` serves both STARTTLS (``server.starttls_available``) and implicit TLS
    (``server.implicit_tls``). ``max_clients_per_address`` (0 = no limit) does not apply to
    clients inside ``relay_networks``. With ``proxy_protocol`` every connection must start
    with a PROXY header and come from ``proxy_networks``.
    """

    name: str
    host: str
    port: int
    server: smtp.ServerSettings
    idle_timeout: float
    data_timeout: float
    max_clients: int
    max_header_size: int
    tls_context: ssl.SSLContext | None = None
    relay_networks: tuple[Network, ...] = LOOPBACK_NETWORKS
    max_clients_per_address: int = 0
    proxy_protocol: bool = False
    proxy_networks: tuple[Network, ...] = LOOPBACK_NETWORKS
    authenticator: Authenticator | None = None
    handshake_timeout: float = 30.0  # PROXY header, TLS handshake
    # Delays for AUTH failures decided by plugins (or by nobody); the users-file
    # authenticator shares it, so every failed guess from an address counts the same.
    auth_throttle: FailureDelays | None = None

    def __attrs_post_init__(self) -> None:
        tls_needed = self.server.starttls_available or self.server.implicit_tls
        if tls_needed and self.tls_context is None:
            raise ValueError(f"interface {self.name}: STARTTLS or implicit TLS needs a context")
