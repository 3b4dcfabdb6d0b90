"""MX resolution for delivery: which hosts and addresses to try for one recipient domain.

``MxResolver`` owns all DNS traffic of the delivery path. It runs dnspython's async resolver
on the trio backend, adds what dnspython lacks (single-flight de-duplication of concurrent
identical queries, one hard deadline per resolution) and turns every outcome into either a
``Destination`` or a typed ``DnsFailure``; no dnspython exception reaches a caller.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Sequence

import attrs
import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import trio

from zonemta.transport.smtp.reply import Reply

__all__ = [
    "Destination",
    "DnsFailure",
    "DnsFailureKind",
    "InvalidDomain",
    "MxHost",
    "MxResolver",
    "NoAddresses",
    "NoSuchDomain",
    "NullMx",
    "ServerFailure",
    "Timeout",
]

# EDNS(0) UDP payload we advertise: the 2020 DNS flag day value, avoids IP fragmentation.
EDNS_PAYLOAD = 1232
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


@attrs.frozen
class _Failed:
    """A lookup failure as shared between single-flight waiters (each raises a fresh error)."""

    kind: DnsFailureKind
    message: str

    def to_exception(self) -> DnsFailure:
        cls = _FAILURE_CLASSES[self.kind]
        return cls(self.message)


_FAILURE_CLASSES: dict[DnsFailureKind, type[NoSuchDomain | InvalidDomain | Timeout | ServerFailure]]
_FAILURE_CLASSES = {
    DnsFailureKind.NO_SUCH_DOMAIN: NoSuchDomain,
    DnsFailureKind.INVALID_DOMAIN: InvalidDomain,
    DnsFailureKind.TIMEOUT: Timeout,
    DnsFailureKind.SERVER_FAILURE: ServerFailure,
}


@attrs.frozen
class _Records:
    """The answer of one lookup, already unpacked (both empty for NODATA)."""

    mx: tuple[tuple[int, dns.name.Name], ...] = ()
    addresses: tuple[str, ...] = ()


_Outcome = _Records | _Failed


class _Flight:
    """One in-flight query; followers wait on ``done`` and read ``outcome``."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: _Outcome | None = None  # None after done: the leader was cancelled


def new_resolver(
    nameservers: Sequence[tuple[str, int]], timeout: float
) -> dns.asyncresolver.Resolver:
    """A dnspython resolver asking ``nameservers`` (the system's when empty), with
    ``timeout`` for each query. Raises ValueError when the system's configuration is
    unusable."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers
        ]
    else:
        try:
            resolver = dns.asyncresolver.Resolver(configure=True)
        except dns.exception.DNSException as exc:
            raise ValueError(f"no usable system DNS configuration: {exc}") from exc
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


class MxResolver:
    """Resolves recipient domains and smart hosts to ``Destination``s.

    Owns one dnspython async resolver (with an LRU cache) and the single-flight table. Empty
    ``nameservers`` means the system configuration (/etc/resolv.conf); otherwise exactly the
    given ``(address, port)`` pairs are asked. ``timeout`` is the hard deadline of one whole
    ``resolve``/``resolve_host`` call. ``rng`` orders MX hosts of equal preference.

    Raises ``ValueError`` when the system resolver configuration cannot be read.
    """

    def __init__(
        self,
        *,
        nameservers: Sequence[tuple[str, int]] = (),
        timeout: float = 5.0,
        cache_size: int = 10000,
        rng: random.Random | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        resolver = new_resolver(nameservers, timeout)
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.cache = dns.resolver.LRUCache(cache_size) if cache_size > 0 else None
        self._resolver = resolver
        self._timeout = timeout
        self._rng = rng if rng is not None else random.Random()
        self._backend = dns.asyncbackend.get_backend("trio")
        self._flights: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], _Flight] = {}

    # -- public API ---------------------------------------------------------------------------

    async def resolve(
        self,
        domain: str,
        *,
        ipv4: bool = True,
        ipv6: bool = False,
        prefer_ipv6: bool = False,
        max_hosts: int = 10,
    ) -> Destination:
        """The MX hosts of ``domain`` with their addresses, in the order delivery should try.

        Sorted by preference, equal preferences shuffled; no MX means the implicit MX (the
        domain's own addresses); ``[1.2.3.4]``/``[IPv6:...]`` address literals need no DNS.
        At most ``max_hosts`` MX hosts are looked up. Raises ``DnsFailure`` (``NullMx``,
        ``NoSuchDomain``, ``InvalidDomain``, ``NoAddresses``, ``Timeout``, ``ServerFailure``).
        """
        if domain.startswith("["):
            literal = _parse_address_literal(domain)
            host = MxHost(literal, 0, self._filter_literal(literal, ipv4=ipv4, ipv6=ipv6))
            return Destination(domain.lower(), (host,))
        name = _to_name(domain)
        ascii_domain = name.to_text(omit_final_dot=True)
        try:
            with trio.fail_after(self._timeout):
                return await self._resolve_mx(
                    name, ascii_domain, ipv4, ipv6, prefer_ipv6, max_hosts
                )
        except trio.TooSlowError:
            raise Timeout(f"resolving {ascii_domain} took over {self._timeout}s") from None

    async def resolve_host(
        self,
        host: str,
        *,
        port: int,
        ipv4: bool = True,
        ipv6: bool = False,
        prefer_ipv6: bool = False,
    ) -> Destination:
        """A smart host as a one-host ``Destination`` on ``port``.

        An IP literal (optionally in brackets) is used as-is; ``localhost`` is the loopback
        addresses (RFC 6761); any other name is resolved to A/AAAA. Raises ``DnsFailure``.
        """
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if bare.lower().startswith("ipv6:"):
            bare = bare[5:]
        if _is_ip(bare):
            addresses = self._filter_literal(bare, ipv4=ipv4, ipv6=ipv6)
            return Destination(host, (MxHost(bare, 0, addresses, port),))
        if bare.rstrip(".").lower() == "localhost":
            addresses = _order(
                ("127.0.0.1",) if ipv4 else (), ("::1",) if ipv6 else (), prefer_ipv6
            )
            if not addresses:
                raise NoAddresses("localhost: no address family enabled")
            return Destination("localhost", (MxHost("localhost", 0, addresses, port),))
        name = _to_name(bare)
        ascii_host = name.to_text(omit_final_dot=True)
        try:
            with trio.fail_after(self._timeout):
                outcome = await self._addresses(name, ipv4, ipv6, prefer_ipv6)
        except trio.TooSlowError:
            raise Timeout(f"resolving {ascii_host} took over {self._timeout}s") from None
        if isinstance(outcome, _Failed):
            raise outcome.to_exception()
        if not outcome:
            raise NoAddresses(f"{ascii_host} has no usable A/AAAA records")
        return Destination(ascii_host, (MxHost(ascii_host, 0, outcome, port),))

    # -- resolution steps ---------------------------------------------------------------------

    async def _resolve_mx(
        self,
        name: dns.name.Name,
        ascii_domain: str,
        ipv4: bool,
        ipv6: bool,
        prefer_ipv6: bool,
        max_hosts: int,
    ) -> Destination:
        mx = await self._lookup(name, dns.rdatatype.MX)
        if isinstance(mx, _Failed):
            raise mx.to_exception()
        records = mx.mx
        if not records:
            # RFC 5321 5.1: no MX records, the domain itself is the implicit MX.
            outcome = await self._addresses(name, ipv4, ipv6, prefer_ipv6)
            if isinstance(outcome, _Failed):
                raise outcome.to_exception()
            if not outcome:
                raise NoAddresses(f"{ascii_domain} has no MX and no usable A/AAAA records")
            return Destination(ascii_domain, (MxHost(ascii_domain, 0, outcome),))
        real = [(pref, exchange) for pref, exchange in records if exchange != dns.name.root]
        if not real:
            raise NullMx(f"{ascii_domain} publishes a null MX (RFC 7505)")
        ordered = self._order_mx(real)[: max(1, max_hosts)]

        results: list[tuple[str, ...] | _Failed] = [() for _ in ordered]

        async def look_up(index: int, exchange: dns.name.Name) -> None:
            results[index] = await self._addresses(exchange, ipv4, ipv6, prefer_ipv6)

        async with trio.open_nursery() as nursery:
            for index, (_pref, exchange) in enumerate(ordered):
                nursery.start_soon(look_up, index, exchange)

        hosts: list[MxHost] = []
        skipped: list[str] = []
        for (pref, exchange), outcome in zip(ordered, results, strict=True):
            host_name = exchange.to_text(omit_final_dot=True)
            if isinstance(outcome, _Failed):
                skipped.append(f"{host_name}: {outcome.message}")
            elif not outcome:
                skipped.append(f"{host_name}: no usable A/AAAA records")
            else:
                hosts.append(MxHost(host_name, pref, outcome))
        if not hosts:
            raise NoAddresses(f"no MX host of {ascii_domain} has an address ({'; '.join(skipped)})")
        return Destination(ascii_domain, tuple(hosts))

    def _order_mx(
        self, records: list[tuple[int, dns.name.Name]]
    ) -> list[tuple[int, dns.name.Name]]:
        """Sort by preference; hosts of equal preference in random order (RFC 5321 5.1)."""
        shuffled = sorted(records, key=lambda r: (r[0], r[1].to_text()))
        self._rng.shuffle(shuffled)
        return sorted(shuffled, key=lambda r: r[0])  # stable: keeps the shuffle within a tie

    async def _addresses(
        self, name: dns.name.Name, ipv4: bool, ipv6: bool, prefer_ipv6: bool
    ) -> tuple[str, ...] | _Failed:
        """A and/or AAAA of ``name`` in family preference order, or the failure of both."""
        families = [t for t, on in ((dns.rdatatype.A, ipv4), (dns.rdatatype.AAAA, ipv6)) if on]
        results: dict[dns.rdatatype.RdataType, tuple[str, ...] | _Failed] = {}

        async def look_up(rdtype: dns.rdatatype.RdataType) -> None:
            outcome = await self._lookup(name, rdtype)
            results[rdtype] = outcome if isinstance(outcome, _Failed) else outcome.addresses

        async with trio.open_nursery() as nursery:
            for rdtype in families:
                nursery.start_soon(look_up, rdtype)

        v4 = results.get(dns.rdatatype.A, ())
        v6 = results.get(dns.rdatatype.AAAA, ())
        found = _order(
            v4 if not isinstance(v4, _Failed) else (),
            v6 if not isinstance(v6, _Failed) else (),
            prefer_ipv6,
        )
        if found:
            return found
        for outcome in (v4, v6):
            if isinstance(outcome, _Failed):
                return outcome
        return ()

    async def _lookup(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Outcome:
        """One query, shared with every concurrent caller asking the same (name, type)."""
        key = (name, rdtype)
        while True:
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.outcome is not None:
                return flight.outcome
            # The leader was cancelled before it had an answer: try again ourselves.
        flight = _Flight()
        self._flights[key] = flight
        try:
            flight.outcome = await self._query(name, rdtype)
            return flight.outcome
        finally:
            del self._flights[key]
            flight.done.set()

    async def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Outcome:
        """Ask dnspython; translate its exceptions into ``_Failed`` values."""
        label = f"{name.to_text(omit_final_dot=True)}/{dns.rdatatype.to_text(rdtype)}"
        try:
            answer = await self._resolver.resolve(
                name,
                rdtype,
                search=False,
                raise_on_no_answer=False,
                backend=self._backend,
            )
        except dns.resolver.NXDOMAIN:
            return _Failed(DnsFailureKind.NO_SUCH_DOMAIN, f"{label}: no such domain (NXDOMAIN)")
        except dns.resolver.YXDOMAIN:
            return _Failed(DnsFailureKind.INVALID_DOMAIN, f"{label}: name too long after DNAME")
        except dns.exception.Timeout:
            return _Failed(DnsFailureKind.TIMEOUT, f"{label}: DNS timeout")
        except dns.resolver.NoNameservers as exc:
            return _Failed(DnsFailureKind.SERVER_FAILURE, f"{label}: no server answered ({exc})")
        except dns.exception.DNSException as exc:
            return _Failed(DnsFailureKind.SERVER_FAILURE, f"{label}: {exc}")
        if answer.rrset is None:
            return _Records()
        if rdtype == dns.rdatatype.MX:
            return _Records(mx=tuple((int(r.preference), r.exchange) for r in answer.rrset))
        return _Records(addresses=tuple(str(r.address) for r in answer.rrset))

    def _filter_literal(self, address: str, *, ipv4: bool, ipv6: bool) -> tuple[str, ...]:
        version = ipaddress.ip_address(address).version
        if (version == 4 and not ipv4) or (version == 6 and not ipv6):
            raise NoAddresses(f"{address}: IPv{version} is disabled for this delivery")
        return (address,)


def _order(v4: tuple[str, ...], v6: tuple[str, ...], prefer_ipv6: bool) -> tuple[str, ...]:
    return v6 + v4 if prefer_ipv6 else v4 + v6


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_address_literal(domain: str) -> str:
    """``[1.2.3.4]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 4.1.3) to the bare address."""
    if not domain.endswith("]"):
        raise InvalidDomain(f"malformed address literal {domain!r}")
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        text, version = inner[5:], 6
    else:
        text, version = inner, 4
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidDomain(f"malformed address literal {domain!r}") from None
    if address.version != version:
        raise InvalidDomain(f"address literal {domain!r} has the wrong IP version tag")
    return str(address)


def _to_name(domain: str) -> dns.name.Name:
    """An absolute DNS name; IDN labels become punycode. Raises ``InvalidDomain``."""
    text = domain.strip().rstrip(".")
    if not text:
        raise InvalidDomain("empty domain name")
    try:
        return dns.name.from_text(text.lower() + ".")
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise InvalidDomain(f"invalid domain name {domain!r}: {exc}") from exc
