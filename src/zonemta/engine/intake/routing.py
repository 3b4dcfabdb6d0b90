"""Which sending zone each recipient of a message goes through.

Order (the first rule that names an enabled zone wins):

1. an internal submission's own zone (DSNs go through ``bounces``);
2. the ``X-Sending-Zone`` header, honoured only for interfaces listed in
   ``[routing] allow_routing_headers`` (default ``api`` and ``bounce``);
3. a zone's ``routing_headers`` (header name → value, names case-insensitive, values exact
   after trimming; the lowest matching header field wins, as in ZoneMTA);
4. a zone's ``sender_domains`` (the envelope sender's domain);
5. a zone's ``recipient_domains`` (per recipient);
6. ``[routing] default_zone``.

The same rules apply to SMTP and HTTP submissions. ``X-Sending-Zone`` and ``Bcc`` never
reach the stored message (:func:`strip_routing_fields`).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from zonemta.conf import Config
from zonemta.headers import remove_fields, unfolded_fields

#: Header fields removed from every message before it is stored.
STRIPPED_FIELDS = ("x-sending-zone", "bcc")
# What a header block must contain (lower-cased) for one of them to be there at all.
_STRIPPED_HINTS = tuple(
    name.encode() + end for name in STRIPPED_FIELDS for end in (b":", b" ", b"\t")
)


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


def strip_routing_fields(headers: bytes) -> bytes:
    """The header block without ``X-Sending-Zone`` and ``Bcc`` fields (continuations too)."""
    lowered = headers.lower()
    for hint in _STRIPPED_HINTS:  # a loop, not any(generator): this runs for every message
        if hint in lowered:
            return remove_fields(headers, frozenset(STRIPPED_FIELDS))
    return headers


class Router:
    """Routes recipients to zones. Disabled and unknown zones are never chosen."""

    def __init__(self, config: Config) -> None:
        self.zones = frozenset(name for name, zone in config.zones.items() if not zone.disabled)
        self.default_zone = config.routing.default_zone
        self.header_interfaces = frozenset(config.routing.allow_routing_headers)
        self._by_header: dict[tuple[str, str], str] = {}
        self._by_sender: dict[str, str] = {}
        self._by_recipient: dict[str, str] = {}
        for name in sorted(self.zones):
            zone = config.zones[name]
            for header, value in zone.routing_headers.items():
                self._by_header.setdefault((header.lower(), value.strip()), name)
            for domain in zone.sender_domains:
                self._by_sender.setdefault(domain, name)
            for domain in zone.recipient_domains:
                self._by_recipient.setdefault(domain, name)

    def message_zone(
        self, *, zone: str | None, interface: str, mail_from: str, headers: bytes
    ) -> str | None:
        """The zone every recipient takes, when a message-level rule decides it."""
        if zone is not None and zone in self.zones:
            return zone
        by_zone_header = interface in self.header_interfaces
        # Parse the header block only when a header rule can apply (the common SMTP case
        # has none).
        fields = unfolded_fields(headers) if headers and (by_zone_header or self._by_header) else []
        if by_zone_header:
            for name, value in reversed(fields):
                if name == "x-sending-zone" and value in self.zones:
                    return value
        if self._by_header:
            for name, value in reversed(fields):
                found = self._by_header.get((name, value))
                if found is not None:
                    return found
        if self._by_sender and "@" in mail_from:
            return self._by_sender.get(recipient_domain(mail_from))
        return None

    def route(
        self,
        recipients: Sequence[str],
        *,
        zone: str | None = None,
        interface: str = "",
        mail_from: str = "",
        headers: bytes = b"",
    ) -> list[Route]:
        """One route per distinct recipient, in submission order. Recipients are compared
        with their domain lower-cased (local parts are case-sensitive, RFC 5321 2.4)."""
        chosen = self.message_zone(
            zone=zone, interface=interface, mail_from=mail_from, headers=headers
        )
        seen: set[str] = set()
        routes: list[Route] = []
        for recipient in recipients:
            local, at, _ = recipient.rpartition("@")
            domain = recipient_domain(recipient)
            normalised = f"{local}{at}{domain}" if at else recipient
            if normalised in seen:
                continue
            seen.add(normalised)
            target = chosen or self._by_recipient.get(domain) or self.default_zone
            routes.append(Route(normalised, domain, target))
        return routes
