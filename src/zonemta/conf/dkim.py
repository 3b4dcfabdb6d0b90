"""DKIM signing (``[dkim]``, ``[dkim.keys.<name>]``) and header hygiene at intake
(``[headers]``).

Keys are only described here; they are read and parsed once at start by
``zonemta.dkim.signer`` (a bad file or format is a configuration error naming the key).
"""

from __future__ import annotations

import enum
import re
from datetime import timedelta
from typing import NewType

import attrs
from attrs import validators as v

__all__ = [
    "DEFAULT_SIGNED_HEADERS",
    "DkimAlgorithm",
    "DkimConfig",
    "DkimKey",
    "HeadersConfig",
    "KeyName",
]

#: The key of a ``[dkim.keys.<name>]`` table: usually the signing domain, e.g. ``"example.com"``.
KeyName = NewType("KeyName", str)

# A DNS label sequence (selectors may contain dots, RFC 6376 3.1); A-labels for IDNs.
_DOMAIN_RE = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+")
_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")

# Header fields a signature must not cover: they change in transit (dkimpy refuses them too).
_NEVER_SIGNED = frozenset(
    {
        "return-path",
        "received",
        "comments",
        "keywords",
        "bcc",
        "resent-bcc",
        "dkim-signature",
        "x-sending-zone",
    }
)

#: Signed when present (the bottom-most instance of each), as ZoneMTA and most signers do.
DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "list-unsubscribe-post",
    "feedback-id",
)


class DkimAlgorithm(enum.StrEnum):
    """Signature algorithm of a key (RFC 6376, RFC 8463; rsa-sha1 is forbidden by RFC 8301)."""

    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


def _domain_or_empty(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value and _DOMAIN_RE.fullmatch(value) is None:
        raise ValueError(f"'{attribute.name}' must be a domain name: {value!r}")


def _required(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"'{attribute.name}' is required")


@attrs.frozen
class DkimKey:
    """One signing key (``[dkim.keys.<name>]``). ``domain`` defaults to the table's name, so
    ``[dkim.keys."example.com"]`` signs mail from example.com; give ``domain`` to have two
    keys (e.g. RSA and Ed25519) for one domain."""

    selector: str = attrs.field(default="", validator=[_required, _domain_or_empty])
    private_key: str = attrs.field(default="", validator=_required)  # path of the key file
    algorithm: DkimAlgorithm = DkimAlgorithm.RSA_SHA256
    domain: str = attrs.field(default="", validator=_domain_or_empty)


def _key_names(
    _inst: object, attribute: attrs.Attribute[dict[KeyName, DkimKey]], value: dict[KeyName, DkimKey]
) -> None:
    for name, key in value.items():
        if not key.domain and _DOMAIN_RE.fullmatch(name) is None:
            raise ValueError(
                f"key {name!r} is not a domain name: name the table after the signing domain "
                "or set 'domain'"
            )


def _signed_headers(
    _inst: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for name in value:
        if _HEADER_NAME_RE.fullmatch(name) is None:
            raise ValueError(f"'headers': {name!r} is not a header field name")
        if name.lower() in _NEVER_SIGNED:
            raise ValueError(f"'headers': {name!r} must not be signed (it changes in transit)")
    if "from" not in (name.lower() for name in value):
        raise ValueError("'headers' must include 'from' (RFC 6376 5.4)")


def _lower_names(value: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name.lower() for name in value))


def _not_negative(_inst: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value < timedelta(0):
        raise ValueError(f"'{attribute.name}' must not be negative")


@attrs.frozen
class DkimConfig:
    """DKIM signing at delivery time (``[dkim]``).

    Each message is signed with every key of the domain of its From header (or of the
    nearest parent domain that has keys) and, with ``sign_transport_domain``, also with the
    keys of the envelope sender's domain when that is another domain.
    """

    enabled: bool = True
    keys: dict[KeyName, DkimKey] = attrs.field(factory=dict, validator=_key_names)
    headers: tuple[str, ...] = attrs.field(
        default=DEFAULT_SIGNED_HEADERS, converter=_lower_names, validator=_signed_headers
    )
    timestamp: bool = False  # add t= (signing time)
    expire_after: timedelta = attrs.field(  # add x= (t= + this) when > 0
        default=timedelta(0), validator=_not_negative
    )
    sign_transport_domain: bool = False


@attrs.frozen
class HeadersConfig:
    """What the intake does to the header block of every message (``[headers]``)."""

    max_hops: int = attrs.field(default=35, validator=v.ge(1))  # Received fields; more = loop
    add_message_id: bool = True
    add_date: bool = True
