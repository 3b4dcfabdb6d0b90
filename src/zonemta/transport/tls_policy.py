"""Which TLS each host of a delivery needs: the zone's ``tls`` mode, with MTA-STS (RFC 8461)
and DANE (RFC 7672) on top for MX deliveries.

:class:`OutboundTls` owns the policy DNS (``policy_dns.py``) and the MTA-STS cache
(``mta_sts.py``); one lives in each process that sends. Precedence per MX host: a secure,
non-empty TLSA RRset (DANE) wins; else an MTA-STS ``enforce`` policy (the host must match
its ``mx`` patterns and present a CA-valid certificate for its name); else the zone's mode.
An MTA-STS ``testing`` policy changes nothing: mismatches are logged. docs/config.md
"Outbound TLS" states the semantics.
"""

from __future__ import annotations

import enum
import logging
import ssl

import attrs
import trio

from zonemta.conf import Config, ConfigError
from zonemta.transport.dane import TlsaRecord
from zonemta.transport.dns import MxResolver
from zonemta.transport.dns_results import Destination, MxHost
from zonemta.transport.mta_sts import MtaStsMode, MtaStsPolicies, Policy
from zonemta.transport.policy_dns import PolicyDns
from zonemta.transport.tls import CertificateCheck, client_context

__all__ = ["HostTls", "OutboundTls", "TlsPlan", "TlsPolicy"]

log = logging.getLogger(__name__)


class TlsPolicy(enum.Enum):
    """A zone's ``tls`` mode (docs/config.md "Outbound TLS")."""

    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"
    VERIFY = "verify"


@attrs.frozen
class HostTls:
    """What one connection must do about TLS. ``starttls``: use it when offered;
    ``required``: no plaintext (a host without STARTTLS, or a failed handshake or check,
    fails the attempt); ``check``: what the handshake verifies; ``tlsa``: DANE records to
    match after it; ``source``: which policy asked (``zone``, ``mta-sts``, ``dane``);
    ``ca_file``: trust anchors for ``check`` ("" = the system's)."""

    starttls: bool = True
    required: bool = False
    check: CertificateCheck = CertificateCheck.NONE
    tlsa: tuple[TlsaRecord, ...] = ()
    source: str = "zone"
    ca_file: str = ""

    @classmethod
    def for_mode(cls, mode: TlsPolicy, ca_file: str = "") -> HostTls:
        """What a zone's mode alone asks (no MTA-STS or DANE)."""
        if mode is TlsPolicy.NONE:
            return cls(starttls=False)
        if mode is TlsPolicy.REQUIRED:
            return cls(required=True, check=CertificateCheck.CA, ca_file=ca_file)
        if mode is TlsPolicy.VERIFY:
            return cls(required=True, check=CertificateCheck.CA_AND_NAME, ca_file=ca_file)
        return cls(ca_file=ca_file)


@attrs.frozen
class TlsPlan:
    """The hosts to try, each with its TLS needs, and the hosts left out with the reason."""

    hosts: tuple[tuple[MxHost, HostTls], ...]
    refused: tuple[str, ...] = ()


class OutboundTls:
    """Plans TLS for MX deliveries. ``dns`` None (or not trusting AD) disables DANE;
    ``mta_sts`` None disables MTA-STS; ``ca_file`` is the trust store of certificate checks."""

    def __init__(
        self,
        *,
        dns: PolicyDns | None = None,
        mta_sts: MtaStsPolicies | None = None,
        ca_file: str = "",
    ) -> None:
        self.dns = dns
        self.mta_sts = mta_sts
        self.ca_file = ca_file

    @classmethod
    def from_config(cls, config: Config, resolver: MxResolver) -> OutboundTls:
        """The planner ``[outbound_tls]`` and ``[dns]`` describe. The AD bit is trusted only
        from explicitly configured nameservers. Raises ``ConfigError`` for an unusable
        ``ca_file``."""
        settings = config.outbound_tls
        try:
            fetch_context = client_context(CertificateCheck.CA_AND_NAME, settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            key = "config.outbound_tls.ca_file"
            raise ConfigError(key, [f"{key}: cannot load {settings.ca_file!r}: {exc}"]) from exc
        dns = PolicyDns(
            nameservers=config.dns.parsed_nameservers(),
            timeout=config.dns.timeout.total_seconds(),
            trust_ad=bool(config.dns.nameservers),
            cache_size=config.dns.cache_size,
        )
        policies = MtaStsPolicies(
            dns=dns,
            resolver=resolver,
            ssl_context=fetch_context,
            port=settings.mta_sts_port,
            timeout=settings.mta_sts_timeout.total_seconds(),
            cache_size=settings.mta_sts_cache_size,
        )
        return cls(dns=dns, mta_sts=policies, ca_file=settings.ca_file)

    def fixed(self, mode: TlsPolicy, hosts: tuple[MxHost, ...]) -> TlsPlan:
        """The zone's mode alone for every host (smart hosts, hosts fixed by a plugin)."""
        need = HostTls.for_mode(mode, self.ca_file)
        return TlsPlan(tuple((host, need) for host in hosts))

    async def plan(
        self,
        destination: Destination,
        *,
        mode: TlsPolicy,
        port: int,
        mta_sts: bool = True,
        dane: bool = True,
    ) -> TlsPlan:
        """The plan for the MX hosts of ``destination`` (a recipient domain)."""
        if mode is TlsPolicy.NONE:
            return self.fixed(mode, destination.hosts)
        domain = destination.domain
        policy: Policy | None = None
        if mta_sts and self.mta_sts is not None and not domain.startswith("["):
            policy = await self.mta_sts.policy_for(domain)
        tlsa = await self._dane_records(destination, port) if dane else {}
        base = HostTls.for_mode(mode, self.ca_file)
        hosts: list[tuple[MxHost, HostTls]] = []
        refused: list[str] = []
        for host in destination.hosts:
            records = tlsa.get(host.name)
            if isinstance(records, str):
                refused.append(records)
            elif records is not None:
                hosts.append((host, self._dane_need(records, base)))
            elif policy is not None and not policy.allows(host.name):
                if policy.mode is MtaStsMode.ENFORCE:
                    refused.append(
                        f"{host.name} is not an MX host of the MTA-STS policy of {domain}"
                    )
                    continue
                log.info("MTA-STS (testing) %s: %s is not in the policy", domain, host.name)
                hosts.append((host, base))
            elif policy is not None and policy.mode is MtaStsMode.ENFORCE:
                need = HostTls(
                    required=True,
                    check=CertificateCheck.CA_AND_NAME,
                    source="mta-sts",
                    ca_file=self.ca_file,
                )
                hosts.append((host, need))
            else:
                hosts.append((host, base))
        return TlsPlan(tuple(hosts), tuple(refused))

    def _dane_need(self, records: tuple[TlsaRecord, ...], base: HostTls) -> HostTls:
        usable = tuple(record for record in records if record.usable)
        if usable:
            return HostTls(required=True, tlsa=usable, source="dane", ca_file=self.ca_file)
        # No usable record: TLS is mandatory, with nothing to authenticate against
        # (RFC 7672 2.2); the zone's own certificate check still applies.
        return attrs.evolve(base, required=True, source="dane")

    async def _dane_records(
        self, destination: Destination, port: int
    ) -> dict[str, tuple[TlsaRecord, ...] | str]:
        """Per host: its secure TLSA records, or the reason it cannot be used (a failed
        lookup); hosts without DANE are absent. Empty unless the MX RRset is secure."""
        dns = self.dns
        if dns is None or not dns.trust_ad or destination.domain.startswith("["):
            return {}
        mx = await dns.mx(destination.domain)
        if mx.failed:
            reason = f"DNSSEC state of the MX records unknown ({mx.failed})"
            return {host.name: reason for host in destination.hosts}
        if not mx.secure:
            return {}  # RFC 7672 2.2.1: DANE needs a secure MX RRset
        found: dict[str, tuple[TlsaRecord, ...] | str] = {}

        async def look_up(host: MxHost) -> None:
            answer = await dns.tlsa(host.name, port)
            if answer.failed:
                found[host.name] = f"{host.name}: TLSA lookup failed ({answer.failed})"
            elif answer.exists and answer.secure:
                found[host.name] = answer.tlsa

        async with trio.open_nursery() as nursery:
            for host in destination.hosts:
                nursery.start_soon(look_up, host)
        return found
