"""Outbound TLS end to end on loopback: zonemta delivers to an aiosmtpd MX that offers
STARTTLS with trustme certificates, found through the loopback DNS server (TLSA records, the
AD bit), with MTA-STS policies from a loopback HTTPS server.

Runs in the relay's process and (ZONEMTA_TEST_DELIVERY_PROCESSES=1) in a delivery process.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.dnsserver import DnsServer, run_dns_server
from tests.support.mx import TestMx, broken_tls_context, tls_context
from tests.support.policy_server import PolicyServer, run_policy_server
from tests.support.relay import collect_until, relay_config, running_relay, submit_async
from zonemta.engine.bus import Event

MESSAGE = b"From: s@origin.test\r\nTo: r@one.test\r\nSubject: tls\r\n\r\nhello\r\n"
MX_NAME = "mx.one.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def zone_text(port: int, *extra: str) -> str:
    lines = [
        "$ORIGIN test.",
        "$TTL 60",
        "@ IN SOA ns.test. admin.test. 1 60 60 60 60",
        "one IN MX 10 mx.one",
        "mx.one IN A 127.0.0.1",
        "mta-sts.one IN A 127.0.0.1",
        *extra,
    ]
    return "\n".join(lines) + "\n"


def spki_sha256(leaf: trustme.LeafCert) -> str:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def cert_sha256(ca: trustme.CA) -> str:
    cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@asynccontextmanager
async def relay_for(
    tmp_path: Path, dns: DnsServer, mx: TestMx, **zone: Any
) -> AsyncIterator[tuple[Any, Any]]:
    outbound = zone.pop("outbound_tls", {})
    config = relay_config(
        tmp_path / "q",
        dns={"nameservers": [f"127.0.0.1:{dns.port}"], "timeout": "2s"},
        zones={"default": {"port": mx.port, **zone}},
        outbound_tls=outbound,
    )
    async with running_relay(config) as running:
        yield running


async def first_outcome(tmp_path: Path, dns: DnsServer, mx: TestMx, **zone: Any) -> list[Event]:
    """Submit one message to r@one.test; the events up to its first outcome."""
    async with relay_for(tmp_path, dns, mx, **zone) as (relay, info):
        events = relay.bus.subscribe()
        await submit_async(info.smtp_ports["feeder"], "s@origin.test", ["r@one.test"], MESSAGE)
        return await collect_until(
            events, lambda seen: any(e.to_state in ("delivered", "deferred") for e in seen)
        )


def outcome(events: list[Event]) -> Event:
    return next(e for e in events if e.to_state in ("delivered", "deferred", "bounced"))


def connected(events: list[Event]) -> dict[str, Any]:
    event = next(e for e in events if e.details and e.details.get("trigger") == "connected")
    assert event.details is not None
    return event.details


# -- the zone's tls mode ---------------------------------------------------------------------


async def test_opportunistic_tls_is_used_and_recorded(
    tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zonemta.engine.delivery.attempt")
    with TestMx(tls=tls_context(ca.issue_cert("unrelated.example"))) as mx:
        async with run_dns_server(zone_text(mx.port)) as dns:
            events = await first_outcome(tmp_path, dns, mx)
    assert outcome(events).to_state == "delivered"
    assert [m.tls for m in mx.received()] == [True]
    details = connected(events)
    assert details["tls"] is True
    assert details["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert details["tls_cipher"]
    assert details["tls_verified"] == "no"  # opportunistic: the certificate is not checked
    line = next(r.getMessage() for r in caplog.records if "DELIVERED" in r.getMessage())
    assert f"tls={details['tls_version']}/{details['tls_cipher']}" in line


async def test_failed_handshake_falls_back_to_plaintext(
    tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zonemta.engine.delivery.attempt")
    with TestMx(tls=broken_tls_context(ca.issue_cert(MX_NAME))) as mx:
        async with run_dns_server(zone_text(mx.port)) as dns:
            events = await first_outcome(tmp_path, dns, mx)
    assert outcome(events).to_state == "delivered"
    assert [m.tls for m in mx.received()] == [False]
    assert connected(events)["tls"] is False
    assert "tls_version" not in connected(events)
    line = next(r.getMessage() for r in caplog.records if "DELIVERED" in r.getMessage())
    assert " tls=- " in line


async def test_required_defers_when_the_handshake_fails(tmp_path: Path, ca: trustme.CA) -> None:
    with TestMx(tls=broken_tls_context(ca.issue_cert(MX_NAME))) as mx:
        async with run_dns_server(zone_text(mx.port)) as dns:
            events = await first_outcome(tmp_path, dns, mx, tls="required")
    deferred = outcome(events)
    assert deferred.to_state == "deferred"
    assert deferred.category == "tls"
    assert "TLS handshake with mx.one.test failed" in (deferred.response or "")
    assert mx.received() == []


async def test_required_defers_without_starttls(tmp_path: Path) -> None:
    with TestMx() as mx:
        async with run_dns_server(zone_text(mx.port)) as dns:
            events = await first_outcome(tmp_path, dns, mx, tls="required")
    deferred = outcome(events)
    assert deferred.to_state == "deferred"
    assert deferred.category == "tls"
    assert "does not offer STARTTLS" in (deferred.response or "")
    assert mx.received() == []


async def test_required_defers_on_an_untrusted_certificate(tmp_path: Path, ca_file: str) -> None:
    stranger = trustme.CA()
    with TestMx(tls=tls_context(stranger.issue_cert(MX_NAME))) as mx:
        async with run_dns_server(zone_text(mx.port)) as dns:
            events = await first_outcome(
                tmp_path, dns, mx, tls="required", outbound_tls={"ca_file": ca_file}
            )
    deferred = outcome(events)
    assert deferred.to_state == "deferred"
    assert "certificate verify failed" in (deferred.response or "")
    assert mx.received() == []


async def test_required_accepts_a_trusted_certificate_for_any_name(
    tmp_path: Path, ca: trustme.CA, ca_file: str
) -> None:
    with TestMx(tls=tls_context(ca.issue_cert("another.name.example"))) as mx:
        async with run_dns_server(zone_text(mx.port)) as dns:
            events = await first_outcome(
                tmp_path, dns, mx, tls="required", outbound_tls={"ca_file": ca_file}
            )
    assert outcome(events).to_state == "delivered"
    assert connected(events)["tls_verified"] == "ca"


@pytest.mark.parametrize(("name", "state"), [(MX_NAME, "delivered"), ("other.test", "deferred")])
async def test_verify_needs_the_mx_name(
    tmp_path: Path, ca: trustme.CA, ca_file: str, name: str, state: str
) -> None:
    with TestMx(tls=tls_context(ca.issue_cert(name))) as mx:
        async with run_dns_server(zone_text(mx.port)) as dns:
            events = await first_outcome(
                tmp_path, dns, mx, tls="verify", outbound_tls={"ca_file": ca_file}
            )
    result = outcome(events)
    assert result.to_state == state
    if state == "delivered":
        assert connected(events)["tls_verified"] == "ca+name"
    else:
        assert "certificate verify failed" in (result.response or "")
        assert mx.received() == []


# -- DANE ------------------------------------------------------------------------------------


async def test_dane_ee_authenticates_an_untrusted_certificate(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("whatever.example")  # no CA anyone trusts, another name
    with TestMx(tls=tls_context(leaf)) as mx:
        tlsa = f"_{mx.port}._tcp.mx.one IN TLSA 3 1 1 {spki_sha256(leaf)}"
        async with run_dns_server(zone_text(mx.port, tlsa)) as dns:
            dns.set_authenticated(True)
            events = await first_outcome(tmp_path, dns, mx)
    assert outcome(events).to_state == "delivered"
    details = connected(events)
    assert (details["tls_verified"], details["tls_policy"]) == ("dane-ee", "dane")
    assert dns.count(f"_{mx.port}._tcp.mx.one.test", "TLSA") >= 1


async def test_dane_ta_checks_the_chain_and_the_mx_name(tmp_path: Path) -> None:
    private = trustme.CA()
    with TestMx(tls=tls_context(private.issue_cert(MX_NAME), with_chain_root=private)) as mx:
        tlsa = f"_{mx.port}._tcp.mx.one IN TLSA 2 0 1 {cert_sha256(private)}"
        async with run_dns_server(zone_text(mx.port, tlsa)) as dns:
            dns.set_authenticated(True)
            events = await first_outcome(tmp_path, dns, mx)
    assert outcome(events).to_state == "delivered"
    assert connected(events)["tls_verified"] == "dane-ta"


async def test_dane_mismatch_defers(tmp_path: Path, ca: trustme.CA) -> None:
    with TestMx(tls=tls_context(ca.issue_cert(MX_NAME))) as mx:
        tlsa = f"_{mx.port}._tcp.mx.one IN TLSA 3 1 1 {'00' * 32}"
        async with run_dns_server(zone_text(mx.port, tlsa)) as dns:
            dns.set_authenticated(True)
            events = await first_outcome(tmp_path, dns, mx)
    deferred = outcome(events)
    assert deferred.to_state == "deferred"
    assert deferred.category == "tls"
    assert "DANE authentication of mx.one.test failed" in (deferred.response or "")
    assert mx.received() == []


async def test_tlsa_records_without_the_ad_bit_are_ignored(tmp_path: Path, ca: trustme.CA) -> None:
    with TestMx(tls=tls_context(ca.issue_cert(MX_NAME))) as mx:
        tlsa = f"_{mx.port}._tcp.mx.one IN TLSA 3 1 1 {'00' * 32}"
        async with run_dns_server(zone_text(mx.port, tlsa)) as dns:
            events = await first_outcome(tmp_path, dns, mx)  # nothing authenticated
    assert outcome(events).to_state == "delivered"
    assert connected(events)["tls_verified"] == "no"


async def test_dane_opt_out_per_zone(tmp_path: Path, ca: trustme.CA) -> None:
    with TestMx(tls=tls_context(ca.issue_cert(MX_NAME))) as mx:
        tlsa = f"_{mx.port}._tcp.mx.one IN TLSA 3 1 1 {'00' * 32}"
        async with run_dns_server(zone_text(mx.port, tlsa)) as dns:
            dns.set_authenticated(True)
            events = await first_outcome(tmp_path, dns, mx, dane=False)
    assert outcome(events).to_state == "delivered"
    assert dns.count(f"_{mx.port}._tcp.mx.one.test", "TLSA") == 0


# -- MTA-STS ---------------------------------------------------------------------------------


def policy(mode: str, *mx: str) -> str:
    return (
        "version: STSv1\r\nmode: "
        + mode
        + "\r\n"
        + "".join(f"mx: {m}\r\n" for m in mx)
        + ("max_age: 86400\r\n")
    )


STS_TXT = '_mta-sts.one IN TXT "v=STSv1; id=20261204"'


async def sts_outcome(
    tmp_path: Path,
    ca: trustme.CA,
    ca_file: str,
    mx: TestMx,
    body: str,
) -> tuple[list[Event], PolicyServer]:
    async with (
        run_policy_server(ca.issue_cert("mta-sts.one.test")) as server,
        run_dns_server(zone_text(mx.port, STS_TXT)) as dns,
    ):
        server.serve("mta-sts.one.test", body)
        outbound = {"ca_file": ca_file, "mta_sts_port": server.port}
        events = await first_outcome(tmp_path, dns, mx, outbound_tls=outbound)
    return events, server


async def test_mta_sts_enforce_verifies_the_mx_certificate(
    tmp_path: Path, ca: trustme.CA, ca_file: str
) -> None:
    with TestMx(tls=tls_context(ca.issue_cert(MX_NAME))) as mx:
        events, server = await sts_outcome(
            tmp_path, ca, ca_file, mx, policy("enforce", "*.one.test")
        )
    assert outcome(events).to_state == "delivered"
    details = connected(events)
    assert (details["tls_verified"], details["tls_policy"]) == ("ca+name", "mta-sts")
    assert server.requests == [("mta-sts.one.test", "/.well-known/mta-sts.txt")]


async def test_mta_sts_enforce_defers_on_a_certificate_for_another_name(
    tmp_path: Path, ca: trustme.CA, ca_file: str
) -> None:
    with TestMx(tls=tls_context(ca.issue_cert("other.test"))) as mx:
        events, _ = await sts_outcome(tmp_path, ca, ca_file, mx, policy("enforce", MX_NAME))
    deferred = outcome(events)
    assert deferred.to_state == "deferred"
    assert "certificate verify failed" in (deferred.response or "")
    assert "mta-sts" in (deferred.response or "")
    assert mx.received() == []


async def test_mta_sts_enforce_defers_when_no_mx_matches(
    tmp_path: Path, ca: trustme.CA, ca_file: str
) -> None:
    with TestMx(tls=tls_context(ca.issue_cert(MX_NAME))) as mx:
        events, _ = await sts_outcome(
            tmp_path, ca, ca_file, mx, policy("enforce", "mail.elsewhere.test")
        )
    deferred = outcome(events)
    assert deferred.to_state == "deferred"
    assert "not an MX host of the MTA-STS policy of one.test" in (deferred.response or "")
    assert mx.received() == []


async def test_mta_sts_testing_delivers_despite_a_bad_certificate(
    tmp_path: Path, ca: trustme.CA, ca_file: str
) -> None:
    with TestMx(tls=tls_context(trustme.CA().issue_cert("other.test"))) as mx:
        events, server = await sts_outcome(tmp_path, ca, ca_file, mx, policy("testing", MX_NAME))
    assert outcome(events).to_state == "delivered"
    assert connected(events)["tls_verified"] == "no"
    assert server.count("mta-sts.one.test") == 1


# -- smart hosts -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "state"), [("localhost", "delivered"), (MX_NAME, "deferred")])
async def test_a_smart_host_is_verified_for_its_configured_name(
    tmp_path: Path, ca: trustme.CA, ca_file: str, name: str, state: str
) -> None:
    with TestMx(tls=tls_context(ca.issue_cert(name))) as mx:
        smart = {"host": "localhost", "port": mx.port, "tls": "verify"}
        config = relay_config(
            tmp_path / "q",
            zones={"default": smart, "bounces": smart},
            outbound_tls={"ca_file": ca_file},
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            await submit_async(info.smtp_ports["feeder"], "s@origin.test", ["r@one.test"], MESSAGE)
            seen = await collect_until(
                events, lambda got: any(e.to_state in ("delivered", "deferred") for e in got)
            )
    assert outcome(seen).to_state == state
    if state == "delivered":
        assert connected(seen)["tls_verified"] == "ca+name"
        assert [m.tls for m in mx.received()] == [True]
    else:
        assert "certificate verify failed" in (outcome(seen).response or "")


# -- a refused STARTTLS ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "state"), [("opportunistic", "delivered"), ("verify", "deferred")]
)
async def test_a_refused_starttls_goes_on_in_plaintext_unless_tls_is_required(
    tmp_path: Path, ca: trustme.CA, ca_file: str, mode: str, state: str
) -> None:
    refusing = TestMx(
        tls=tls_context(ca.issue_cert(MX_NAME)), starttls_reply="454 4.7.0 TLS not available now"
    )
    with refusing as mx:
        before = mx.connections  # aiosmtpd's controller connects once when it starts
        async with run_dns_server(zone_text(mx.port)) as dns:
            events = await first_outcome(
                tmp_path, dns, mx, tls=mode, outbound_tls={"ca_file": ca_file}
            )
    result = outcome(events)
    assert result.to_state == state
    if state == "delivered":
        assert [m.tls for m in mx.received()] == [False]
        assert mx.connections == before + 1  # the same session went on
    else:
        assert result.category == "tls"
        assert "refused STARTTLS (454 4.7.0 TLS not available now)" in (result.response or "")
        assert mx.received() == []
