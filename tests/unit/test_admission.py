"""Client counts with places held for intake processes (transport/admission.py)."""

from __future__ import annotations

import attrs
import pytest

from zonemta.transport.admission import (
    MAX_HELD_PLACES,
    REPLY_TOO_MANY,
    REPLY_TOO_MANY_FROM_ADDRESS,
    ClientCounts,
    held_places,
    without_address_limit,
)
from zonemta.transport.interface import InterfaceSettings
from zonemta.transport.smtp import server as smtp

TRUSTED = "127.0.0.1"
OUTSIDE = "192.0.2.7"


def settings(**changes: object) -> InterfaceSettings:
    base = InterfaceSettings(
        name="feeder",
        host="127.0.0.1",
        port=0,
        server=smtp.ServerSettings(hostname="relay.test", max_size=0),
        idle_timeout=60,
        data_timeout=60,
        max_clients=10,
        max_header_size=65536,
        max_clients_per_address=2,
    )  # relay_networks: loopback
    return attrs.evolve(base, **changes)


@pytest.mark.parametrize(
    ("max_clients", "processes", "places"),
    [(1000, 2, MAX_HELD_PLACES), (8, 2, 1), (3, 2, 0), (100, 4, 6), (1, 1, 0)],
)
def test_held_places(max_clients: int, processes: int, places: int) -> None:
    assert held_places(max_clients, processes) == places


def test_held_places_count_against_max_clients() -> None:
    counts = ClientCounts(settings(max_clients=4))
    counts.held = 2
    assert counts.check(OUTSIDE) is None
    assert counts.check(TRUSTED) is None
    assert counts.check(TRUSTED) is REPLY_TOO_MANY  # 2 active + 2 held
    counts.join_held(TRUSTED)
    counts.join_held(TRUSTED)
    assert (counts.active, counts.held) == (4, 0)
    assert counts.per_address == {OUTSIDE: 1, TRUSTED: 3}
    counts.leave(TRUSTED)
    assert counts.check(TRUSTED) is None


def test_the_address_limit_applies_outside_relay_networks_only() -> None:
    plain = settings()
    assert without_address_limit(plain, TRUSTED)
    assert not without_address_limit(plain, OUTSIDE)
    assert without_address_limit(settings(max_clients_per_address=0), OUTSIDE)
    counts = ClientCounts(plain)
    assert counts.check(OUTSIDE) is None and counts.check(OUTSIDE) is None
    assert counts.check(OUTSIDE) is REPLY_TOO_MANY_FROM_ADDRESS
