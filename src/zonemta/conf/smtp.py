"""The SMTP interfaces (``[smtp.<name>]``): what each listener binds, advertises and limits.

The submission security rules every interface is checked against (open relay, TLS, AUTH)
are in ``conf/security.py``.
"""

from __future__ import annotations

from datetime import timedelta

import attrs
from attrs import validators as v

from zonemta.conf import security
from zonemta.conf.units import ByteSize
from zonemta.conf.validators import (
    KB,
    MB,
    hostname_or_empty,
    positive_duration,
    to_bytesize,
    valid_hostname,
)

__all__ = ["SmtpInterface"]


@attrs.frozen
class SmtpInterface:
    """One SMTP listener (``[smtp.<name>]``). Security rules: ``conf/security.py``."""

    enabled: bool = True
    host: str = attrs.field(default="127.0.0.1", validator=valid_hostname)
    port: int = attrs.field(default=2525, validator=[v.ge(0), v.le(65535)])  # 0 = any free port
    hostname: str = attrs.field(default="", validator=hostname_or_empty)  # "" → Config.hostname
    max_size: ByteSize = attrs.field(
        default=ByteSize(30 * MB), converter=to_bytesize, validator=v.ge(ByteSize(1))
    )
    max_recipients: int = attrs.field(default=1000, validator=v.ge(1))
    max_line_length: ByteSize = attrs.field(
        default=ByteSize(2048), converter=to_bytesize, validator=v.ge(ByteSize(512))
    )
    max_header_size: ByteSize = attrs.field(
        default=ByteSize(1 * MB), converter=to_bytesize, validator=v.ge(ByteSize(1 * KB))
    )
    idle_timeout: timedelta = attrs.field(default=timedelta(minutes=5), validator=positive_duration)
    # The PROXY header and the TLS handshake (implicit TLS, STARTTLS) must finish within this.
    handshake_timeout: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=positive_duration
    )
    data_timeout: timedelta = attrs.field(
        default=timedelta(minutes=10), validator=positive_duration
    )
    max_clients: int = attrs.field(default=1000, validator=v.ge(1))
    # Submission security (docs/config.md "Submission security", rules in conf/security.py).
    starttls: bool = False
    secure: bool = False
    cert: str = ""
    key: str = ""
    authentication: bool = False
    allow_insecure_auth: bool = False
    users_file: str = ""
    auth_failure_delay: timedelta = attrs.field(
        default=timedelta(seconds=1), validator=positive_duration
    )
    relay_networks: tuple[str, ...] = attrs.field(
        default=security.LOOPBACK_NETWORKS, validator=security.network_list
    )
    max_clients_per_address: int = attrs.field(default=20, validator=v.ge(0))
    max_errors: int = attrs.field(default=20, validator=v.ge(0))
    proxy_protocol: bool = False
    proxy_networks: tuple[str, ...] = attrs.field(
        default=security.LOOPBACK_NETWORKS, validator=security.network_list
    )

    def __attrs_post_init__(self) -> None:
        security.check_interface_security(self)
