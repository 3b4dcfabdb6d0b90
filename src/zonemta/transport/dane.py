"""DANE for SMTP (RFC 7672): TLSA records and the check of a server's certificate chain.

Pure: no I/O. The TLSA lookup (with the DNSSEC AD bit) is in ``policy_dns.py``; the driver
(``outbound.py``) calls :func:`check_chain` after the handshake with the chain the server
presented, leaf first.

* usage 3 (DANE-EE): the leaf matches a record; its names and validity are not checked
  (RFC 7672 3.1.1).
* usage 2 (DANE-TA): a certificate of the presented chain matches a record and is taken as
  the trust anchor; the chain from the leaf to it must verify (signatures, validity) and the
  leaf must be valid for the MX host name (RFC 7672 3.1.2, 3.2.3).
* usages 0 and 1 (PKIX-TA/EE) are not usable for SMTP (RFC 7672 3.1.3), nor are unknown
  selectors or matching types; an RRset without a usable record means "encrypt, but nothing
  to authenticate with" (RFC 7672 2.2).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from datetime import datetime

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import DNSName
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = ["DaneMismatch", "DaneResult", "TlsaRecord", "check_chain"]

# RFC 6698 2.1 / RFC 7218 acronyms.
DANE_TA = 2
DANE_EE = 3
SELECTOR_CERT = 0
SELECTOR_SPKI = 1
MATCH_FULL = 0
MATCH_SHA256 = 1
MATCH_SHA512 = 2
# Longest chain accepted between the leaf and a DANE-TA anchor.
MAX_CHAIN_DEPTH = 8


class DaneResult(enum.StrEnum):
    """How the certificate was authenticated (goes on the delivery event)."""

    DANE_EE = "dane-ee"
    DANE_TA = "dane-ta"


class DaneMismatch(Exception):
    """The presented chain matches no usable TLSA record (the message says why)."""


@attrs.frozen
class TlsaRecord:
    """One TLSA record: certificate usage, selector, matching type, association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        """Usage 2 or 3 with a known selector and matching type (RFC 7672 3.1)."""
        return (
            self.usage in (DANE_TA, DANE_EE)
            and self.selector in (SELECTOR_CERT, SELECTOR_SPKI)
            and self.mtype in (MATCH_FULL, MATCH_SHA256, MATCH_SHA512)
        )

    def matches(self, certificate: x509.Certificate) -> bool:
        """True when ``certificate`` (or its public key, per the selector) is this record's."""
        if self.selector == SELECTOR_CERT:
            selected = certificate.public_bytes(Encoding.DER)
        else:
            selected = certificate.public_key().public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo
            )
        if self.mtype == MATCH_SHA256:
            selected = hashlib.sha256(selected).digest()
        elif self.mtype == MATCH_SHA512:
            selected = hashlib.sha512(selected).digest()
        return selected == self.data

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def check_chain(
    chain: Sequence[bytes], records: Sequence[TlsaRecord], *, host: str, now: datetime
) -> DaneResult:
    """Authenticate the server's ``chain`` (DER, leaf first) with the usable ``records``.

    ``host`` is the MX host name (the TLSA base domain) that a DANE-TA leaf must match;
    ``now`` the time for validity checks. Returns how it matched; raises
    :class:`DaneMismatch` naming the reason when nothing matches.
    """
    usable = [record for record in records if record.usable]
    if not usable:
        raise DaneMismatch("no usable TLSA record")
    if not chain:
        raise DaneMismatch("the server presented no certificate")
    try:
        certificates = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        raise DaneMismatch(f"unreadable server certificate: {exc}") from exc
    leaf = certificates[0]
    if any(r.usage == DANE_EE and r.matches(leaf) for r in usable):
        return DaneResult.DANE_EE
    problems: list[str] = []
    for index, anchor in enumerate(certificates):
        if not any(r.usage == DANE_TA and r.matches(anchor) for r in usable):
            continue
        try:
            _verify_to_anchor(leaf, certificates[1:index], anchor, host=host, now=now)
        except (VerificationError, ValueError) as exc:
            problems.append(f"chain to the DANE-TA certificate #{index}: {exc}")
            continue
        return DaneResult.DANE_TA
    if problems:
        raise DaneMismatch("; ".join(problems))
    raise DaneMismatch(f"no TLSA record of {host} matches the certificate chain")


# Issuers must be CAs (basicConstraints), the leaf must carry its names (subjectAltName);
# nothing else of the Web PKI profile is demanded.
_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, None
)
_EE_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)


def _verify_to_anchor(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    anchor: x509.Certificate,
    *,
    host: str,
    now: datetime,
) -> None:
    """Signatures, validity and the host name from ``leaf`` up to ``anchor`` (raises
    ``VerificationError``). Extension profiles are relaxed: a DANE-TA is a private CA, not
    a Web PKI one."""
    builder = (
        PolicyBuilder()
        .store(Store([anchor]))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
    )
    verifier = builder.build_server_verifier(DNSName(host))
    verifier.verify(leaf, intermediates)
