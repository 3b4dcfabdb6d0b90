"""Admission of SMTP clients: ``max_clients`` and the per-address limit of one interface.

:class:`ClientCounts` keeps the counts. The listener asks an :class:`Admission` — the counts
themselves when it runs in the relay's process, or a link to the relay when it runs in an
intake process, so that the limits hold across every process serving the interface.
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
]

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

    def check(self, address: str) -> Reply | None:
        settings = self.settings
        if self.active >= settings.max_clients:
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

    async def admit(self, address: str) -> Reply | None:
        return self.check(address)

    def leave(self, address: str) -> None:
        self.active -= 1
        left = self.per_address[address] - 1
        if left:
            self.per_address[address] = left
        else:
            del self.per_address[address]
