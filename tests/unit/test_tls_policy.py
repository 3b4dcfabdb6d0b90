"""The TLS plan of a delivery: the zone's mode, DANE and MTA-STS, their precedence, and what
a failed lookup does, against the loopback DNS server and a loopback HTTPS policy server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

from tests.support.dnsserver import DnsServer, run_dns_server
from tests.support.policy_server import run_policy_server
from zonemta.conf import config_from_dict
from zonemta.transport.dane import TlsaRecord
from zonemta.transport.dns import MxResolver
from zonemta.transport.dns_results import Destination, MxHost
from zonemta.transport.mta_sts import MtaStsPolicies
from zonemta.transport.policy_dns import PolicyDns
from zonemta.transport.tls import CertificateCheck, client_context
from zonemta.transport.tls_policy import HostTls, OutboundTls, TlsPolicy

HASH = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"
ZONE = f"""
$ORIGIN test.
$TTL 60
@ IN SOA ns.test. admin.test. 1 60 60 60 60
example IN MX 10 mx1.example
example IN MX 20 mx2.example
mx1.example IN A 127.0.0.1
mx2.example IN A 127.0.0.1
_25._tcp.mx1.example IN TLSA 3 1 1 {HASH}
_25._tcp.mx2.example IN TLSA 1 1 1 {HASH}
mta-sts.example IN A 127.0.0.1
_mta-sts.example IN TXT "v=STSv1; id=1"
"""
DESTINATION = Destination(
    "example.test",
    (
        MxHost("mx1.example.test", 10, ("127.0.0.1",)),
        MxHost("mx2.example.test", 20, ("127.0.0.1",)),
    ),
)
DANE_EE = TlsaRecord(3, 1, 1, bytes.fromhex(HASH))


def planner(dns: DnsServer, *, trust_ad: bool = True) -> OutboundTls:
    return OutboundTls(dns=PolicyDns(nameservers=[dns.address], timeout=2, trust_ad=trust_ad))


def needs(plan_hosts: tuple[tuple[MxHost, HostTls], ...]) -> dict[str, HostTls]:
    return {host.name: need for host, need in plan_hosts}


async def test_mode_none_asks_nothing() -> None:
    async with run_dns_server(ZONE) as dns:
        dns.set_authenticated(True)
        plan = await planner(dns).plan(DESTINATION, mode=TlsPolicy.NONE, port=25)
        assert dns.queries == []
    assert {need.starttls for need in needs(plan.hosts).values()} == {False}


async def test_secure_tlsa_records_require_dane() -> None:
    async with run_dns_server(ZONE) as dns:
        dns.set_authenticated(True)
        plan = await planner(dns).plan(DESTINATION, mode=TlsPolicy.OPPORTUNISTIC, port=25)
    by_host = needs(plan.hosts)
    assert by_host["mx1.example.test"] == HostTls(required=True, tlsa=(DANE_EE,), source="dane")
    # Only a PKIX-EE record: TLS is mandatory, with nothing to authenticate against.
    assert by_host["mx2.example.test"] == HostTls(required=True, source="dane")
    assert plan.refused == ()
    async with run_dns_server(ZONE) as dns:
        dns.set_authenticated(True)
        plan = await planner(dns).plan(DESTINATION, mode=TlsPolicy.REQUIRED, port=25)
    # The zone's own check stays when the TLSA records cannot authenticate.
    expected = HostTls(required=True, check=CertificateCheck.CA, source="dane")
    assert needs(plan.hosts)["mx2.example.test"] == expected


@pytest.mark.parametrize("insecure", ["example", None])
async def test_dane_needs_a_secure_mx_rrset_and_a_trusted_ad_bit(insecure: str | None) -> None:
    async with run_dns_server(ZONE) as dns:
        dns.set_authenticated(True)
        if insecure is not None:
            dns.set_authenticated(False, insecure)  # the MX records are not signed
        plan = await planner(dns, trust_ad=insecure is not None).plan(
            DESTINATION, mode=TlsPolicy.OPPORTUNISTIC, port=25
        )
        tlsa_queries = dns.count(rdtype="TLSA")
    assert set(needs(plan.hosts).values()) == {HostTls()}
    assert tlsa_queries == 0


async def test_a_failed_tlsa_lookup_makes_the_host_unusable() -> None:
    async with run_dns_server(ZONE) as dns:
        dns.set_authenticated(True)
        dns.set_failure("_25._tcp.mx1.example")
        plan = await planner(dns).plan(DESTINATION, mode=TlsPolicy.OPPORTUNISTIC, port=25)
    assert [host.name for host, _ in plan.hosts] == ["mx2.example.test"]
    assert len(plan.refused) == 1 and "mx1.example.test: TLSA lookup failed" in plan.refused[0]


async def test_the_zone_can_opt_out_of_dane() -> None:
    async with run_dns_server(ZONE) as dns:
        dns.set_authenticated(True)
        plan = await planner(dns).plan(
            DESTINATION, mode=TlsPolicy.VERIFY, port=25, dane=False, mta_sts=False
        )
        assert dns.count(rdtype="TLSA") == 0
    expected = HostTls(required=True, check=CertificateCheck.CA_AND_NAME)
    assert set(needs(plan.hosts).values()) == {expected}


@asynccontextmanager
async def sts_planner(tmp_path: Path, dns: DnsServer, policy: str) -> AsyncIterator[OutboundTls]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with run_policy_server(ca.issue_cert("mta-sts.example.test")) as server:
        server.serve("mta-sts.example.test", policy)
        policy_dns = PolicyDns(nameservers=[dns.address], timeout=2, trust_ad=True)
        policies = MtaStsPolicies(
            dns=policy_dns,
            resolver=MxResolver(nameservers=[dns.address], timeout=2),
            ssl_context=client_context(CertificateCheck.CA_AND_NAME, str(ca_file)),
            port=server.port,
        )
        yield OutboundTls(dns=policy_dns, mta_sts=policies, ca_file=str(ca_file))


async def test_mta_sts_enforce_filters_hosts_and_dane_wins(tmp_path: Path) -> None:
    policy = "version: STSv1\nmode: enforce\nmx: mx2.example.test\nmax_age: 600\n"
    async with run_dns_server(ZONE) as dns:
        dns.set_authenticated(True)
        dns.set_authenticated(False, "_25._tcp.mx2.example")
        async with sts_planner(tmp_path, dns, policy) as tls:
            plan = await tls.plan(DESTINATION, mode=TlsPolicy.OPPORTUNISTIC, port=25)
            without_dane = await tls.plan(
                DESTINATION, mode=TlsPolicy.OPPORTUNISTIC, port=25, dane=False
            )
    by_host = needs(plan.hosts)
    assert by_host["mx1.example.test"].source == "dane"  # not in the policy, but DANE
    assert by_host["mx2.example.test"].check is CertificateCheck.CA_AND_NAME
    assert by_host["mx2.example.test"].source == "mta-sts"
    assert [host.name for host, _ in without_dane.hosts] == ["mx2.example.test"]
    assert "mx1.example.test is not an MX host of the MTA-STS policy" in without_dane.refused[0]


async def test_mta_sts_testing_changes_nothing(tmp_path: Path) -> None:
    policy = "version: STSv1\nmode: testing\nmx: mx2.example.test\nmax_age: 600\n"
    async with run_dns_server(ZONE) as dns, sts_planner(tmp_path, dns, policy) as tls:
        plan = await tls.plan(DESTINATION, mode=TlsPolicy.OPPORTUNISTIC, port=25)
    assert set(needs(plan.hosts).values()) == {HostTls(ca_file=tls.ca_file)}


def test_from_config_trusts_the_ad_bit_only_from_configured_nameservers(tmp_path: Path) -> None:
    resolver = MxResolver(nameservers=[("127.0.0.1", 1)])
    configured = config_from_dict({"dns": {"nameservers": ["127.0.0.1:1"]}})
    tls = OutboundTls.from_config(configured, resolver)
    assert tls.dns is not None and tls.dns.trust_ad
    assert tls.mta_sts is not None and tls.mta_sts.port == 443
    system = config_from_dict({"outbound_tls": {"mta_sts_port": 8443}})
    tls = OutboundTls.from_config(system, resolver)
    assert tls.dns is not None and not tls.dns.trust_ad
    assert tls.mta_sts is not None and tls.mta_sts.port == 8443
