"""Client addresses against configured networks (relay_networks, proxy_networks)."""

from __future__ import annotations

import ipaddress

import pytest

from zonemta.transport.interface import LOOPBACK_NETWORKS, in_networks

LAN = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("address", "networks", "inside"),
    [
        ("127.0.0.1", LOOPBACK_NETWORKS, True),
        ("::1", LOOPBACK_NETWORKS, True),
        ("::ffff:127.0.0.5", LOOPBACK_NETWORKS, True),  # IPv4-mapped counts as IPv4
        ("10.1.2.3", LOOPBACK_NETWORKS, False),
        ("10.1.2.3", LAN, True),
        ("fd12::1%eth0", LAN, True),  # a zone index is ignored
        ("fe80::1", LAN, False),
        ("not an address", LAN, False),
        ("", LAN, False),
        ("10.1.2.3", (), False),
    ],
)
def test_membership(address: str, networks: tuple[ipaddress.IPv4Network], inside: bool) -> None:
    assert in_networks(address, networks) is inside
    assert in_networks(address, networks) is inside  # asked again (cached parse): the same
