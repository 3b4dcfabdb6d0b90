"""The client side of outbound STARTTLS: the handshake a host's :class:`HostTls` asks for,
the DANE check after it, and what the connection then records.

A failed handshake or check closes the TLS stream forcefully (trio leaves the transport open
otherwise, see dependencies.md section 1) and raises :class:`TlsUpgradeFailed` with the
reason. ``https_compatible=True``: MX hosts commonly drop TCP after ``221`` without a TLS
close_notify.
"""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import trio

from zonemta.transport.dane import DaneMismatch, check_chain
from zonemta.transport.tls import (
    CertificateCheck,
    client_context,
    describe_handshake_failure,
    peer_chain,
)
from zonemta.transport.tls_policy import HostTls

__all__ = ["TlsSession", "TlsUpgradeFailed", "start_client_tls"]


class TlsUpgradeFailed(Exception):
    """The handshake or the certificate check failed; the stream is already closed."""


@attrs.frozen
class TlsSession:
    """A TLS stream that passed its checks. ``verified``: what was authenticated (``ca``,
    ``ca+name``, ``dane-ee``, ``dane-ta``), empty when nothing was checked."""

    stream: trio.SSLStream[trio.abc.Stream]
    version: str
    cipher: str
    verified: str


async def start_client_tls(
    stream: trio.abc.Stream, need: HostTls, *, host: str, within: float
) -> TlsSession:
    """Run the client handshake over ``stream`` for MX (or smart host) ``host`` within
    ``within`` seconds, then match ``need.tlsa`` when there are DANE records. The server
    name (SNI) is ``host`` (RFC 7672 8.1); ``CA_AND_NAME`` checks the certificate for it.
    Raises :class:`TlsUpgradeFailed`."""
    tls = trio.SSLStream(
        stream,
        client_context(need.check, need.ca_file),
        server_hostname=host or None,
        https_compatible=True,
    )
    why = f"; TLS is required ({need.source})" if need.required else ""
    try:
        with trio.fail_after(within):
            await tls.do_handshake()
    except (trio.TooSlowError, trio.BrokenResourceError) as exc:
        await trio.aclose_forcefully(tls)
        reason = describe_handshake_failure(exc)
        raise TlsUpgradeFailed(f"TLS handshake with {host} failed: {reason}{why}") from exc
    verified = "" if need.check is CertificateCheck.NONE else need.check.value
    if need.tlsa:
        try:
            result = check_chain(peer_chain(tls), need.tlsa, host=host, now=datetime.now(UTC))
        except DaneMismatch as exc:
            await trio.aclose_forcefully(tls)
            message = f"DANE authentication of {host} failed: {exc}; TLS is required (dane)"
            raise TlsUpgradeFailed(message) from exc
        verified = result.value
    cipher = tls.cipher()
    return TlsSession(tls, tls.version() or "", cipher[0] if cipher else "", verified)
