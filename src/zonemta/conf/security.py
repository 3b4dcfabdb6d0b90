"""Submission security rules for ``[smtp.<name>]`` interfaces: networks, TLS, AUTH, relay.

The rule that keeps zonemta from being an open relay: an interface that listens on anything
but a loopback address must either require authentication (``authentication = true``) or name
the client networks allowed to relay (``relay_networks`` with at least one non-loopback
network). A network covering the whole address space (``0.0.0.0/0``, ``::/0``) is refused.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

import attrs

__all__ = [
    "LOOPBACK_NETWORKS",
    "check_interface_security",
    "is_loopback_host",
    "network_list",
    "parse_network",
]

#: The default ``relay_networks`` and ``proxy_networks``.
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """``"10.0.0.0/8"``, ``"2001:db8::/32"`` or a single address (``"192.0.2.7"``).

    Raises ``ValueError`` for anything else, including host bits set (``10.0.0.1/8``).
    """
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"bad network {text!r}: {exc}") from None


def network_list(_inst: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    """attrs validator: every entry parses and none covers every address."""
    for index, entry in enumerate(value):
        try:
            network = parse_network(entry)
        except ValueError as exc:
            raise ValueError(f"'{attribute.name}'[{index}]: {exc}") from None
        if network.prefixlen == 0:
            raise ValueError(
                f"'{attribute.name}'[{index}]: {entry!r} covers every address (an open relay)"
            )


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; any other name counts as public."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Interface(Protocol):
    """The fields of ``SmtpInterface`` these rules read (read-only)."""

    @property
    def host(self) -> str: ...
    @property
    def starttls(self) -> bool: ...
    @property
    def secure(self) -> bool: ...
    @property
    def cert(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def authentication(self) -> bool: ...
    @property
    def users_file(self) -> str: ...
    @property
    def relay_networks(self) -> tuple[str, ...]: ...


def check_interface_security(iface: _Interface) -> None:
    """Raise ``ValueError`` naming the keys when the interface's settings do not fit together:
    STARTTLS with implicit TLS, TLS without ``cert``/``key``, and
    a public listener that would be an open relay."""
    if iface.starttls and iface.secure:
        raise ValueError("'starttls' and 'secure' exclude each other (choose one)")
    if (iface.starttls or iface.secure) and not (iface.cert and iface.key):
        mode = "starttls" if iface.starttls else "secure"
        raise ValueError(f"'{mode}' needs 'cert' and 'key' (PEM file paths)")
    if is_loopback_host(iface.host) or iface.authentication:
        return
    public = [n for n in iface.relay_networks if not parse_network(n).is_loopback]
    if not public:
        raise ValueError(
            f"'host' {iface.host!r} is not a loopback address: set 'authentication = true' or "
            "list the client networks allowed to relay in 'relay_networks' (otherwise anyone "
            "who reaches it could relay, or nobody could)"
        )
