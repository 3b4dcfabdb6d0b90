"""Server-side TLS for the SMTP listener: the context per interface and the handshake.

Minimum protocol TLS 1.2. The handshake runs under a deadline; a failed or timed-out
handshake closes the connection forcefully (trio leaves the transport open otherwise, see
dependencies.md section 1). ``https_compatible=True``: SMTP clients commonly drop TCP after
``221`` without a TLS close_notify, which then reads as a plain EOF.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import trio

from zonemta.conf import ConfigError

__all__ = ["MIN_TLS_VERSION", "TlsHandshakeFailed", "server_context", "start_server_tls"]

log = logging.getLogger(__name__)

MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2


class TlsHandshakeFailed(Exception):
    """The client did not complete a TLS handshake; the connection is already closed."""


def server_context(cert: str, key: str, *, where: str) -> ssl.SSLContext:
    """A server context from PEM files ``cert`` (chain) and ``key``, TLS 1.2 or newer.

    ``where`` names the config table in errors (e.g. ``config.smtp.submission``). Raises
    :class:`ConfigError` when a file is missing or unreadable or the pair does not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MIN_TLS_VERSION
    for key_name, path in (("cert", cert), ("key", key)):
        if not Path(path).is_file():
            raise ConfigError(where, [f"{where}.{key_name}: file not found: {path!r}"])
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            where, [f"{where}.cert/key: cannot load {cert!r} with {key!r}: {exc}"]
        ) from exc
    return context


async def start_server_tls(
    stream: trio.abc.Stream, context: ssl.SSLContext, *, within: float
) -> trio.SSLStream[trio.abc.Stream]:
    """Run the server side of a TLS handshake over ``stream`` within ``within`` seconds.

    Returns the TLS stream. Raises :class:`TlsHandshakeFailed` (after closing ``stream``)
    when the handshake fails, the peer goes away or time runs out.
    """
    tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
    try:
        with trio.fail_after(within):
            await tls.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
        await trio.aclose_forcefully(tls)
        cause = exc.__cause__ or exc
        raise TlsHandshakeFailed(f"TLS handshake failed: {cause!r}") from exc
    return tls
