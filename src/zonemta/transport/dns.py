"""MX resolution for delivery: which hosts and addresses to try for one recipient domain.

``MxResolver`` owns the resolution of the delivery path: MX records, the implicit MX, null
MX, address literals, smart hosts and ``localhost``, the address families and their order,
the MX order (preference, ties shuffled) and one hard deadline per resolution. Every outcome
is a ``Destination`` or a typed ``DnsFailure`` (both in ``dns_results``); the queries
themselves (the dnspython resolver, its cache, single-flight de-duplication, the translation
of dnspython's exceptions) are ``dns_query.Lookups``.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

import dns.exception
import dns.name
import dns.rdatatype
import trio

from zonemta.transport.dns_query import Failed, Lookups, new_resolver
from zonemta.transport.dns_results import (
    Destination,
    InvalidDomain,
    MxHost,
    NoAddresses,
    NullMx,
    Timeout,
)

__all__ = ["MxResolver"]


class MxResolver:
    """Resolves recipient domains and smart hosts to ``Destination``s.

    Owns one ``Lookups`` (a dnspython async resolver with an LRU cache, single-flight). Empty
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
        self._lookups = Lookups(new_resolver(nameservers, timeout), cache_size=cache_size)
        self._timeout = timeout
        self._rng = rng if rng is not None else random.Random()

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
        if isinstance(outcome, Failed):
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
        mx = await self._lookups.lookup(name, dns.rdatatype.MX)
        if isinstance(mx, Failed):
            raise mx.to_exception()
        records = mx.mx
        if not records:
            # RFC 5321 5.1: no MX records, the domain itself is the implicit MX.
            outcome = await self._addresses(name, ipv4, ipv6, prefer_ipv6)
            if isinstance(outcome, Failed):
                raise outcome.to_exception()
            if not outcome:
                raise NoAddresses(f"{ascii_domain} has no MX and no usable A/AAAA records")
            return Destination(ascii_domain, (MxHost(ascii_domain, 0, outcome),))
        real = [(pref, exchange) for pref, exchange in records if exchange != dns.name.root]
        if not real:
            raise NullMx(f"{ascii_domain} publishes a null MX (RFC 7505)")
        ordered = self._order_mx(real)[: max(1, max_hosts)]

        results: list[tuple[str, ...] | Failed] = [() for _ in ordered]

        async def look_up(index: int, exchange: dns.name.Name) -> None:
            results[index] = await self._addresses(exchange, ipv4, ipv6, prefer_ipv6)

        async with trio.open_nursery() as nursery:
            for index, (_pref, exchange) in enumerate(ordered):
                nursery.start_soon(look_up, index, exchange)

        hosts: list[MxHost] = []
        skipped: list[str] = []
        for (pref, exchange), outcome in zip(ordered, results, strict=True):
            host_name = exchange.to_text(omit_final_dot=True)
            if isinstance(outcome, Failed):
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
    ) -> tuple[str, ...] | Failed:
        """A and/or AAAA of ``name`` in family preference order, or the failure of both."""
        families = [t for t, on in ((dns.rdatatype.A, ipv4), (dns.rdatatype.AAAA, ipv6)) if on]
        results: dict[dns.rdatatype.RdataType, tuple[str, ...] | Failed] = {}

        async def look_up(rdtype: dns.rdatatype.RdataType) -> None:
            outcome = await self._lookups.lookup(name, rdtype)
            results[rdtype] = outcome if isinstance(outcome, Failed) else outcome.addresses

        async with trio.open_nursery() as nursery:
            for rdtype in families:
                nursery.start_soon(look_up, rdtype)

        v4 = results.get(dns.rdatatype.A, ())
        v6 = results.get(dns.rdatatype.AAAA, ())
        found = _order(
            v4 if not isinstance(v4, Failed) else (),
            v6 if not isinstance(v6, Failed) else (),
            prefer_ipv6,
        )
        if found:
            return found
        for outcome in (v4, v6):
            if isinstance(outcome, Failed):
                return outcome
        return ()

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
