"""Which sending zone each recipient of a message goes through."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from zonemta.conf import Config


@attrs.frozen
class Route:
    recipient: str
    domain: str
    zone: str


def recipient_domain(address: str) -> str:
    """The domain part of an address, lower-cased; IDNs are kept as UTF-8 here and turned into
    A-labels by the resolver. An address literal keeps its brackets."""
    _, _, domain = address.rpartition("@")
    return domain.lower()


class Router:
    """Routes recipients to zones. Zones that are not configured are never chosen."""

    def __init__(self, config: Config, default_zone: str = "default") -> None:
        self._zones = config.zones
        self.default_zone = default_zone

    def route(self, recipients: Sequence[str]) -> list[Route]:
        """One route per distinct recipient, in submission order. Recipients are compared
        with their domain lower-cased (local parts are case-sensitive, RFC 5321 2.4)."""
        seen: set[str] = set()
        routes: list[Route] = []
        for recipient in recipients:
            local, at, _ = recipient.rpartition("@")
            domain = recipient_domain(recipient)
            normalised = f"{local}{at}{domain}" if at else recipient
            if normalised in seen:
                continue
            seen.add(normalised)
            routes.append(Route(normalised, domain, self.default_zone))
        return routes
