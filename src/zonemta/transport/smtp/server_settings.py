"""What one SMTP server session advertises and enforces: :class:`ServerSettings`.

The settings are checked in their constructor against the RFC 5321 minimums named here
(a command line of at least 512 octets, at least 100 recipients per transaction), so the
protocol object never runs with limits the RFC forbids. The replies that depend only on
the settings (the greeting, the answers to HELO and EHLO) are built once per settings
object and reused by every session.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs

from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server_auth import MECHANISMS

__all__ = ["MIN_LINE_LENGTH", "MIN_RECIPIENTS", "ServerSettings"]

# RFC 5321 4.5.3.1.4: a server must accept command lines of at least 512 octets incl. CRLF.
MIN_LINE_LENGTH = 512
# RFC 5321 4.5.3.1.8: at least 100 recipients per transaction must be accepted.
MIN_RECIPIENTS = 100


def _positive(minimum: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    def check(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value}")

    return check


def _hostname(_instance: object, _attribute: object, value: str) -> None:
    if not value or any(c in value for c in " \r\n"):
        raise ValueError(f"hostname must be one non-empty word: {value!r}")


@attrs.frozen
class ServerSettings:
    """What one SMTP server session advertises and enforces. 0 disables a size limit.

    ``implicit_tls``: the session runs inside TLS from the start (port 465 style).
    ``auth_available``: AUTH PLAIN and LOGIN are offered, once TLS is active unless
    ``allow_insecure_auth``. ``max_errors``: after this many error replies (4xx/5xx, not
    counting 452 for too many recipients) without an accepted message the session gets
    421 and is closed; 0 disables the cap.
    """

    hostname: str = attrs.field(validator=_hostname)
    max_size: int = attrs.field(validator=_positive(0))
    max_recipients: int = attrs.field(default=1000, validator=_positive(1))
    max_line_length: int = attrs.field(default=2048, validator=_positive(MIN_LINE_LENGTH))
    max_header_size: int = attrs.field(default=1024 * 1024, validator=_positive(0))
    starttls_available: bool = False
    banner: str = "ESMTP zonemta"
    implicit_tls: bool = False
    auth_available: bool = False
    allow_insecure_auth: bool = False
    max_errors: int = attrs.field(default=0, validator=_positive(0))

    @functools.cached_property
    def greeting(self) -> bytes:
        """The 220 greeting as it goes on the wire."""
        return Reply(220, (f"{self.hostname} {self.banner}".strip(),)).to_bytes()

    @functools.cached_property
    def helo_reply(self) -> bytes:
        """The 250 answer to HELO as it goes on the wire."""
        return Reply(250, (self.hostname,)).to_bytes()

    def ehlo_reply(self, *, tls_active: bool, auth_offered: bool) -> bytes:
        """The 250 answer to EHLO as it goes on the wire: what the session offers (STARTTLS
        outside TLS when available, AUTH when offered)."""
        key = (tls_active, auth_offered)
        wire = self._ehlo_replies.get(key)
        if wire is None:
            wire = self._ehlo_replies[key] = self._ehlo(tls_active, auth_offered).to_bytes()
        return wire

    @functools.cached_property
    def _ehlo_replies(self) -> dict[tuple[bool, bool], bytes]:
        return {}

    def _ehlo(self, tls_active: bool, auth_offered: bool) -> Reply:
        lines = [self.hostname, "PIPELINING"]
        lines.append(f"SIZE {self.max_size}" if self.max_size else "SIZE")
        lines += ["8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if self.starttls_available and not tls_active:
            lines.append("STARTTLS")
        if auth_offered:
            lines.append(" ".join(("AUTH", *MECHANISMS)))
        lines.append("HELP")
        return Reply(250, tuple(lines))
