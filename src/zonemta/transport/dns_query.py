"""DNS queries for delivery: building the dnspython resolver, and one query at a time.

``new_resolver`` is the one place the dnspython async resolver is built (the MX lookups here,
and the TLS-policy lookups of ``policy_dns``). :class:`Lookups` owns the query side of
:class:`~zonemta.transport.dns.MxResolver`: the resolver with its EDNS payload and LRU
cache, trio as dnspython's backend, single-flight de-duplication of concurrent identical
queries, and the translation of every dnspython exception into a :class:`Failed` value (so
waiters sharing one query each raise a fresh error, and no dnspython exception escapes).
"""

from __future__ import annotations

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

from zonemta.transport.dns_results import (
    DnsFailure,
    DnsFailureKind,
    InvalidDomain,
    NoSuchDomain,
    ServerFailure,
    Timeout,
)

__all__ = ["EDNS_PAYLOAD", "Failed", "Lookups", "Outcome", "Records", "new_resolver"]

# EDNS(0) UDP payload we advertise: the 2020 DNS flag day value, avoids IP fragmentation.
EDNS_PAYLOAD = 1232


@attrs.frozen
class Failed:
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
class Records:
    """The answer of one lookup, already unpacked (both empty for NODATA)."""

    mx: tuple[tuple[int, dns.name.Name], ...] = ()
    addresses: tuple[str, ...] = ()


Outcome = Records | Failed


class _Flight:
    """One in-flight query; followers wait on ``done`` and read ``outcome``."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: Outcome | None = None  # None after done: the leader was cancelled


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


class Lookups:
    """Queries through one dnspython resolver (``cache_size`` > 0: with an LRU cache of that
    many answers), each (name, type) asked once however many callers want it at once."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, *, cache_size: int) -> None:
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.cache = dns.resolver.LRUCache(cache_size) if cache_size > 0 else None
        self._resolver = resolver
        self._backend = dns.asyncbackend.get_backend("trio")
        self._flights: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], _Flight] = {}

    async def lookup(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Outcome:
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
            flight.outcome = await self.query(name, rdtype)
            return flight.outcome
        finally:
            del self._flights[key]
            flight.done.set()

    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Outcome:
        """Ask dnspython; translate its exceptions into ``Failed`` values."""
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
            return Failed(DnsFailureKind.NO_SUCH_DOMAIN, f"{label}: no such domain (NXDOMAIN)")
        except dns.resolver.YXDOMAIN:
            return Failed(DnsFailureKind.INVALID_DOMAIN, f"{label}: name too long after DNAME")
        except dns.exception.Timeout:
            return Failed(DnsFailureKind.TIMEOUT, f"{label}: DNS timeout")
        except dns.resolver.NoNameservers as exc:
            return Failed(DnsFailureKind.SERVER_FAILURE, f"{label}: no server answered ({exc})")
        except dns.exception.DNSException as exc:
            return Failed(DnsFailureKind.SERVER_FAILURE, f"{label}: {exc}")
        if answer.rrset is None:
            return Records()
        if rdtype == dns.rdatatype.MX:
            return Records(mx=tuple((int(r.preference), r.exchange) for r in answer.rrset))
        return Records(addresses=tuple(str(r.address) for r in answer.rrset))
