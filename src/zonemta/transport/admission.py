"""Admission of SMTP clients: ``max_clients`` and the per-address limit of one interface.

:class:`ClientCounts` keeps the counts. The listener asks an :class:`Admission` — the counts
themselves when it runs in the relay's process, or a link to the relay when it runs in an
intake process, so that the limits hold across every process serving the interface.

Held places: asking the relay costs a round trip per connection (measured: about a tenth of
the throughput for one message per session). So the relay holds a few places of
``max_clients`` for each intake process (:func:`held_places`), counted as taken; the
process lets in a client that the per-address limit does not apply to (one in
``relay_networks``, or every client when that limit is 0) on a held place without asking,
and tells the relay afterwards. Other clients, and every client once its places are in use,
are asked about. ``max_clients`` is never exceeded; places held and not in use can make the
relay refuse a client asked about up to ``held`` places early.
"""

from __future__ import annotations

from typing import Protocol

from zonemta.transport.interface import InterfaceSettings, in_networks
from zonemta.transport.smtp.reply import Reply

__all__ = [
    "REPLY_TOO_MANY",
    "REPLY_TOO_MANY_FROM_ADDRESS",
    "Admission",
    "ClientCounts",
    "held_places",
    "without_address_limit",
]

# At most this many places per intake process and interface are held (see the module).
MAX_HELD_PLACES = 32


def without_address_limit(settings: InterfaceSettings, address: str) -> bool:
    """The per-address limit does not apply to ``address``."""
    limit = settings.max_clients_per_address
    return not limit or in_networks(address, settings.relay_networks)


def held_places(max_clients: int, processes: int) -> int:
    """Places of ``max_clients`` held for each of ``processes`` intake processes: a quarter
    of the limit shared out, at most MAX_HELD_PLACES; 0 (every client asked about) for a
    small limit."""
    return min(MAX_HELD_PLACES, max_clients // (4 * processes))


REPLY_TOO_MANY = Reply(421, ("too many connections, try again later",), "4.7.0")
REPLY_TOO_MANY_FROM_ADDRESS = Reply(
    421, ("too many connections from your address, try again later",), "4.7.0"
)


class Admission(Protocol):
    async def admit(self, address: str) -> Reply | None:
        """Count a new client in, or say why it is refused (then it is not counted)."""

    def leave(self, address: str) -> None:
        """A client counted in has gone."""


class ClientCounts:
    """The connected clients of one interface, in total and per address."""

    def __init__(self, settings: InterfaceSettings) -> None:
        self.settings = settings
        self.active = 0
        self.per_address: dict[str, int] = {}
        self.held = 0  # places held for intake processes and not in use

    def check(self, address: str) -> Reply | None:
        settings = self.settings
        if self.active + self.held >= settings.max_clients:
            return REPLY_TOO_MANY
        limit = settings.max_clients_per_address
        if (
            limit
            and self.per_address.get(address, 0) >= limit
            and not in_networks(address, settings.relay_networks)
        ):
            return REPLY_TOO_MANY_FROM_ADDRESS
        self.active += 1
        self.per_address[address] = self.per_address.get(address, 0) + 1
        return None

    def join_held(self, address: str) -> None:
        """A client let in on a held place."""
        self.held -= 1
        self.active += 1
        self.per_address[address] = self.per_address.get(address, 0) + 1

    async def admit(self, address: str) -> Reply | None:
        return self.check(address)

    def leave(self, address: str) -> None:
        self.active -= 1
        left = self.per_address[address] - 1
        if left:
            self.per_address[address] = left
        else:
            del self.per_address[address]
