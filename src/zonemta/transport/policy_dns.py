"""The DNS lookups of outbound TLS policy: ``_mta-sts`` TXT (RFC 8461), TLSA and the DNSSEC
state of MX answers (RFC 7672).

Separate from ``MxResolver`` (dns.py) because these queries ask for DNSSEC (EDNS DO and the
AD flag) and report whether the answer was authenticated. The AD bit is believed only when
``trust_ad`` is set: the relay sets it when ``[dns] nameservers`` names the resolvers
explicitly, which the operator promises are local validating resolvers (docs/config.md).
Every outcome is a value; no dnspython exception reaches a caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import trio

from zonemta.transport.dane import TlsaRecord
from zonemta.transport.dns_query import EDNS_PAYLOAD, new_resolver

__all__ = ["DnsAnswer", "PolicyDns"]


@attrs.frozen
class DnsAnswer:
    """One lookup's result. ``failed`` holds the reason when no answer came (SERVFAIL,
    timeout: the state is unknown); otherwise ``exists`` says whether the name had records of
    the type and ``secure`` whether the resolver authenticated the answer (AD, trusted)."""

    texts: tuple[str, ...] = ()
    tlsa: tuple[TlsaRecord, ...] = ()
    exists: bool = False
    secure: bool = False
    failed: str = ""


class PolicyDns:
    """TXT, TLSA and MX lookups with DNSSEC status. ``nameservers`` empty means the system's
    resolvers; ``trust_ad`` whether an AD bit in their answers is believed."""

    def __init__(
        self,
        *,
        nameservers: Sequence[tuple[str, int]] = (),
        timeout: float = 5.0,
        trust_ad: bool = False,
        cache_size: int = 10000,
    ) -> None:
        resolver = new_resolver(nameservers, timeout)
        # DO asks a validating resolver for the DNSSEC state; AD in the query (RFC 6840 5.7)
        # asks it to report that state.
        resolver.use_edns(0, dns.flags.DO, EDNS_PAYLOAD)
        resolver.flags = dns.flags.RD | dns.flags.AD
        resolver.cache = dns.resolver.LRUCache(cache_size) if cache_size > 0 else None
        self._resolver = resolver
        self._timeout = timeout
        self.trust_ad = trust_ad
        self._backend = dns.asyncbackend.get_backend("trio")

    async def txt(self, name: str) -> DnsAnswer:
        """The TXT strings of ``name`` (each record's strings joined)."""
        return await self._query(name, dns.rdatatype.TXT)

    async def tlsa(self, host: str, port: int) -> DnsAnswer:
        """The TLSA records of ``_<port>._tcp.<host>`` (RFC 7672 2.2)."""
        return await self._query(f"_{port}._tcp.{host}", dns.rdatatype.TLSA)

    async def mx(self, domain: str) -> DnsAnswer:
        """Only the DNSSEC state of the MX RRset of ``domain`` (RFC 7672 2.2.1)."""
        return await self._query(domain, dns.rdatatype.MX)

    async def _query(self, text: str, rdtype: dns.rdatatype.RdataType) -> DnsAnswer:
        label = f"{text.rstrip('.')}/{dns.rdatatype.to_text(rdtype)}"
        try:
            name = dns.name.from_text(text.rstrip(".").lower() + ".")
        except (dns.exception.DNSException, UnicodeError) as exc:
            return DnsAnswer(failed=f"{label}: bad name: {exc}")
        try:
            with trio.fail_after(self._timeout + 1):
                answer = await self._resolver.resolve(
                    name, rdtype, search=False, raise_on_no_answer=False, backend=self._backend
                )
        except dns.resolver.NXDOMAIN as exc:
            # A denial is as secure as the response that carried it.
            responses = list(exc.responses().values())  # type: ignore[no-untyped-call]
            return DnsAnswer(secure=bool(responses) and all(self._ad(r) for r in responses))
        except (dns.exception.Timeout, trio.TooSlowError):
            return DnsAnswer(failed=f"{label}: DNS timeout")
        except dns.exception.DNSException as exc:
            return DnsAnswer(failed=f"{label}: {exc}")
        secure = self._ad(answer.response)
        if answer.rrset is None:
            return DnsAnswer(secure=secure)
        if rdtype == dns.rdatatype.TXT:
            texts = tuple(b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset)
            return DnsAnswer(texts=texts, exists=True, secure=secure)
        if rdtype == dns.rdatatype.TLSA:
            records = tuple(
                TlsaRecord(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))
                for r in answer.rrset
            )
            return DnsAnswer(tlsa=records, exists=True, secure=secure)
        return DnsAnswer(exists=True, secure=secure)

    def _ad(self, response: dns.message.Message) -> bool:
        return self.trust_ad and bool(response.flags & dns.flags.AD)
