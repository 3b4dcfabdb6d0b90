"""Certificate checks and policy discovery for outbound STARTTLS (``[outbound_tls]``).

The per-zone choice (``tls``, ``mta_sts``, ``dane``) is in ``ZoneConfig``; this section holds
what all zones share: the trust anchors for MX certificates and MTA-STS policy hosts, and the
MTA-STS fetch settings. docs/config.md "Outbound TLS" has the exact semantics.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import attrs
from attrs import validators as v

__all__ = ["MTA_STS_PORT", "OutboundTlsConfig"]

#: RFC 8461 3.3: the policy is fetched from https://mta-sts.<domain>/ (port 443).
MTA_STS_PORT = 443


def _pem_file_or_empty(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value and not Path(value).is_file():
        raise ValueError(f"'{attribute.name}': file not found: {value!r}")


def _positive(_inst: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"'{attribute.name}' must be > 0s: {value}")


@attrs.frozen
class OutboundTlsConfig:
    """``ca_file``: PEM trust anchors for MX certificates (``tls = "required"``/``"verify"``,
    MTA-STS ``enforce``) and for the MTA-STS policy hosts; empty = the system's store.
    ``mta_sts_port`` and ``ca_file`` exist for private PKI and tests: the RFC port is 443."""

    ca_file: str = attrs.field(default="", validator=_pem_file_or_empty)
    mta_sts_port: int = attrs.field(default=MTA_STS_PORT, validator=[v.ge(1), v.le(65535)])
    mta_sts_timeout: timedelta = attrs.field(default=timedelta(seconds=20), validator=_positive)
    mta_sts_cache_size: int = attrs.field(default=1000, validator=v.ge(1))
