"""What MX resolution comes to: a ``Destination`` (hosts to try, in order) or a typed
``DnsFailure``.

These are the values :class:`~zonemta.transport.dns.MxResolver` returns and raises, and that
delivery (the sender, the TLS policy, MTA-STS) passes on: each failure kind says whether it
is temporary and which SMTP-style reply is recorded for the recipients.
"""

from __future__ import annotations

import enum

import attrs

from zonemta.transport.smtp.reply import Reply

__all__ = [
    "SMTP_PORT",
    "Destination",
    "DnsFailure",
    "DnsFailureKind",
    "InvalidDomain",
    "MxHost",
    "NoAddresses",
    "NoSuchDomain",
    "NullMx",
    "ServerFailure",
    "Timeout",
]

# RFC 5321 5.1: the SMTP port used for MX hosts.
SMTP_PORT = 25


@attrs.frozen
class MxHost:
    """One host to try: its name (no trailing dot), MX preference and addresses in order."""

    name: str
    preference: int
    addresses: tuple[str, ...]
    port: int = SMTP_PORT


@attrs.frozen
class Destination:
    """What delivery to one recipient domain should try, hosts in order.

    ``domain`` is the ASCII (punycode), lower-case form without trailing dot; an address
    literal keeps its brackets.
    """

    domain: str
    hosts: tuple[MxHost, ...]


class DnsFailureKind(enum.Enum):
    NO_SUCH_DOMAIN = "no_such_domain"
    INVALID_DOMAIN = "invalid_domain"
    NULL_MX = "null_mx"
    NO_ADDRESSES = "no_addresses"
    TIMEOUT = "timeout"
    SERVER_FAILURE = "server_failure"


class DnsFailure(Exception):
    """A resolution that produced no destination. ``temporary`` True means defer and retry."""

    kind: DnsFailureKind = DnsFailureKind.SERVER_FAILURE

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.message = message
        self.temporary = temporary

    @property
    def reply(self) -> Reply:
        """The SMTP-style reply to record for the affected recipients."""
        if self.temporary:
            return Reply.make(451, f"DNS lookup failed: {self.message}", "4.4.3")
        return Reply.make(550, f"DNS lookup failed: {self.message}", "5.1.2")


class NoSuchDomain(DnsFailure):
    """NXDOMAIN: the domain does not exist. Permanent."""

    kind = DnsFailureKind.NO_SUCH_DOMAIN

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=False)


class InvalidDomain(DnsFailure):
    """The name cannot be a DNS name (bad label, bad address literal, ...). Permanent."""

    kind = DnsFailureKind.INVALID_DOMAIN

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=False)


class NullMx(DnsFailure):
    """RFC 7505: the domain publishes ``MX 0 .`` and accepts no mail. Permanent."""

    kind = DnsFailureKind.NULL_MX

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=False)

    @property
    def reply(self) -> Reply:
        return Reply.make(556, f"Domain does not accept mail (null MX): {self.message}", "5.1.10")


class NoAddresses(DnsFailure):
    """No MX host (or the implicit MX) has a usable A/AAAA address. Temporary."""

    kind = DnsFailureKind.NO_ADDRESSES

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=True)

    @property
    def reply(self) -> Reply:
        return Reply.make(451, f"No usable address: {self.message}", "4.4.4")


class Timeout(DnsFailure):
    """The resolution missed its deadline or no server answered in time. Temporary."""

    kind = DnsFailureKind.TIMEOUT

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=True)


class ServerFailure(DnsFailure):
    """SERVFAIL/REFUSED or no nameserver usable. Temporary."""

    kind = DnsFailureKind.SERVER_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=True)
