"""Built-in plugin ``header-rules``: add, remove or replace header fields per delivery.

Each rule matches on the envelope sender, the recipient and the zone (all given criteria
must hold; an address criterion is a full address or a domain). Rules run in the
``send_headers`` hook, so they apply per recipient, after everything else and before the
DKIM signature is made over the result.
"""

from __future__ import annotations

import attrs

from zonemta.engine.hooks import OutgoingHeaders
from zonemta.engine.intake.routing import recipient_domain
from zonemta.plugins.host import PluginApp


def _address_matches(patterns: tuple[str, ...], address: str) -> bool:
    address = address.lower()
    domain = recipient_domain(address)
    return any(p.lower() in (address, domain) for p in patterns)


@attrs.frozen
class HeaderRule:
    sender: tuple[str, ...] = ()
    recipient: tuple[str, ...] = ()
    zone: tuple[str, ...] = ()
    add: dict[str, str] = attrs.field(factory=dict)
    remove: tuple[str, ...] = ()
    replace: dict[str, str] = attrs.field(factory=dict)

    def matches(self, mail_from: str, recipient: str, zone: str) -> bool:
        return (
            (not self.sender or _address_matches(self.sender, mail_from))
            and (not self.recipient or _address_matches(self.recipient, recipient))
            and (not self.zone or zone in self.zone)
        )


@attrs.frozen
class HeaderRulesOptions:
    rules: tuple[HeaderRule, ...] = ()


class HeaderRules:
    options = HeaderRulesOptions

    async def init(self, app: PluginApp) -> None:
        self.rules: tuple[HeaderRule, ...] = app.options.rules
        if self.rules:
            app.hooks.send_headers.append(self.on_send_headers)

    async def on_send_headers(self, outgoing: OutgoingHeaders) -> None:
        row = outgoing.row
        for rule in self.rules:
            if not rule.matches(outgoing.message.mail_from, row.recipient, row.zone):
                continue
            for name in rule.remove:
                outgoing.headers.remove(name)
            for name, value in rule.replace.items():
                outgoing.headers.replace(name, value)
            for name, value in rule.add.items():
                outgoing.headers.add(name, value)


plugin = HeaderRules
