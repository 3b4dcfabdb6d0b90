"""DANE (RFC 7672): TLSA matching with trustme certificates, the chain a TLS client sees, and
the TLSA/MX lookups with the AD bit against the loopback DNS server."""

from __future__ import annotations

import hashlib
import ssl
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.dnsserver import run_dns_server
from zonemta.transport.dane import DaneMismatch, DaneResult, TlsaRecord, check_chain
from zonemta.transport.policy_dns import PolicyDns
from zonemta.transport.tls import CertificateCheck, client_context, peer_chain

NOW = datetime.now(UTC)
HOST = "mx.example.test"


def der(blob: trustme.Blob) -> bytes:
    return x509.load_pem_x509_certificate(blob.bytes()).public_bytes(Encoding.DER)


def chain_of(leaf: trustme.LeafCert, *cas: trustme.CA) -> list[bytes]:
    """The DER chain a server would present: leaf, intermediates, then the given roots."""
    return [der(blob) for blob in leaf.cert_chain_pems] + [der(ca.cert_pem) for ca in cas]


def association(certificate: bytes, selector: int, mtype: int) -> bytes:
    data = certificate
    if selector == 1:
        key = x509.load_der_x509_certificate(certificate).public_key()
        data = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_matches_every_selector_and_matching_type(
    ca: trustme.CA, selector: int, mtype: int
) -> None:
    chain = chain_of(ca.issue_cert(HOST))
    record = TlsaRecord(3, selector, mtype, association(chain[0], selector, mtype))
    assert check_chain(chain, [record], host=HOST, now=NOW) is DaneResult.DANE_EE
    right = association(chain[0], selector, mtype)
    # The last byte flipped, never equal to it (a fixed b"x" matched 1 run in 256).
    wrong = TlsaRecord(3, selector, mtype, right[:-1] + bytes([right[-1] ^ 0xFF]))
    with pytest.raises(DaneMismatch, match="matches the certificate chain"):
        check_chain(chain, [wrong], host=HOST, now=NOW)


def test_dane_ee_ignores_the_name_and_the_dates(ca: trustme.CA) -> None:
    expired = ca.issue_cert(
        "someone.else.example",
        not_before=NOW - timedelta(days=30),
        not_after=NOW - timedelta(days=1),
    )
    chain = chain_of(expired)
    record = TlsaRecord(3, 1, 1, association(chain[0], 1, 1))
    assert check_chain(chain, [record], host=HOST, now=NOW) is DaneResult.DANE_EE


def test_dane_ta_checks_the_chain_up_to_the_anchor_and_the_name() -> None:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert(HOST)
    chain = chain_of(leaf, root)  # leaf, intermediate, root
    assert len(chain) == 3
    anchor = TlsaRecord(2, 0, 1, association(chain[-1], 0, 1))
    assert check_chain(chain, [anchor], host=HOST, now=NOW) is DaneResult.DANE_TA
    by_intermediate_key = TlsaRecord(2, 1, 2, association(chain[1], 1, 2))
    assert check_chain(chain, [by_intermediate_key], host=HOST, now=NOW) is DaneResult.DANE_TA
    with pytest.raises(DaneMismatch, match="DANE-TA"):
        check_chain(chain, [anchor], host="other.example.test", now=NOW)


def test_dane_ta_refuses_an_expired_leaf() -> None:
    root = trustme.CA()
    leaf = root.issue_cert(HOST, not_after=NOW - timedelta(days=1))
    chain = chain_of(leaf, root)
    anchor = TlsaRecord(2, 0, 1, association(chain[-1], 0, 1))
    with pytest.raises(DaneMismatch, match="DANE-TA"):
        check_chain(chain, [anchor], host=HOST, now=NOW)


def test_dane_ta_refuses_a_chain_from_another_ca(ca: trustme.CA) -> None:
    other = trustme.CA()
    chain = chain_of(other.issue_cert(HOST), other)
    anchor = TlsaRecord(2, 0, 1, association(der(ca.cert_pem), 0, 1))
    with pytest.raises(DaneMismatch, match="matches the certificate chain"):
        check_chain(chain, [anchor], host=HOST, now=NOW)


@pytest.mark.parametrize(
    ("usage", "selector", "mtype", "usable"),
    [
        (3, 1, 1, True),
        (2, 0, 2, True),
        (1, 1, 1, False),
        (0, 0, 1, False),
        (3, 2, 1, False),
        (3, 1, 3, False),
        (4, 1, 1, False),
    ],
)
def test_only_usages_2_and_3_with_known_parameters_are_usable(
    usage: int, selector: int, mtype: int, usable: bool
) -> None:
    assert TlsaRecord(usage, selector, mtype, b"x").usable is usable


def test_no_usable_record_and_bad_chains_are_mismatches(ca: trustme.CA) -> None:
    chain = chain_of(ca.issue_cert(HOST))
    pkix = TlsaRecord(1, 1, 1, association(chain[0], 1, 1))  # PKIX-EE: not for SMTP
    with pytest.raises(DaneMismatch, match="no usable TLSA record"):
        check_chain(chain, [pkix], host=HOST, now=NOW)
    record = TlsaRecord(3, 1, 1, association(chain[0], 1, 1))
    with pytest.raises(DaneMismatch, match="no certificate"):
        check_chain([], [record], host=HOST, now=NOW)
    with pytest.raises(DaneMismatch, match="unreadable"):
        check_chain([b"not a certificate"], [record], host=HOST, now=NOW)


async def test_peer_chain_is_what_the_server_presented() -> None:
    root = trustme.CA()
    leaf = root.create_child_ca().issue_cert(HOST)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_context)
    client_end, server_end = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_end, client_context(CertificateCheck.NONE), server_hostname=HOST)
    server = trio.SSLStream(server_end, server_context, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    assert peer_chain(client) == chain_of(leaf)


# -- lookups -----------------------------------------------------------------------------------

ZONE = """
$ORIGIN test.
$TTL 60
@ IN SOA ns.test. admin.test. 1 60 60 60 60
signed IN MX 10 mx.signed
mx.signed IN A 127.0.0.1
_25._tcp.mx.signed IN TLSA 3 1 1 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20
"""


async def test_tlsa_and_mx_lookups_report_the_ad_bit() -> None:
    async with run_dns_server(ZONE) as server:
        trusting = PolicyDns(nameservers=[server.address], timeout=2, trust_ad=True)
        answer = await trusting.tlsa("mx.signed.test", 25)
        assert answer.exists and not answer.secure and not answer.failed
        assert answer.tlsa == (TlsaRecord(3, 1, 1, bytes(range(1, 33))),)
        server.set_authenticated(True)
        fresh = PolicyDns(nameservers=[server.address], timeout=2, trust_ad=True)
        assert (await fresh.tlsa("mx.signed.test", 25)).secure
        assert (await fresh.mx("signed.test")).secure
        absent = await fresh.tlsa("mx.nowhere.test", 25)  # an authenticated denial
        assert (absent.exists, absent.secure, absent.failed) == (False, True, "")
        doubting = PolicyDns(nameservers=[server.address], timeout=2, trust_ad=False)
        assert not (await doubting.tlsa("mx.signed.test", 25)).secure


async def test_a_failed_tlsa_lookup_is_reported_not_raised() -> None:
    async with run_dns_server(ZONE) as server:
        server.set_failure("_25._tcp.mx.signed")
        dns = PolicyDns(nameservers=[server.address], timeout=2, trust_ad=True)
        answer = await dns.tlsa("mx.signed.test", 25)
    assert answer.failed and not answer.exists and not answer.secure
