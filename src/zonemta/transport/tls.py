"""TLS for the SMTP listener (the context per interface and the handshake) and for outbound
STARTTLS (client contexts per certificate check, the presented chain for DANE).

Minimum protocol TLS 1.2. The handshake runs under a deadline; a failed or timed-out
handshake closes the connection forcefully (trio leaves the transport open otherwise, see
dependencies.md section 1). ``https_compatible=True``: SMTP clients commonly drop TCP after
``221`` without a TLS close_notify, which then reads as a plain EOF.
"""

from __future__ import annotations

import _ssl
import enum
import functools
import logging
import ssl
from pathlib import Path
from typing import Any

import trio

from zonemta.conf import ConfigError

__all__ = [
    "MIN_TLS_VERSION",
    "CertificateCheck",
    "TlsHandshakeFailed",
    "client_context",
    "describe_handshake_failure",
    "peer_chain",
    "server_context",
    "start_server_tls",
]

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


# -- client side (outbound STARTTLS) -------------------------------------------------------------


class CertificateCheck(enum.Enum):
    """What an outbound connection checks of the server's certificate during the handshake
    (DANE is checked after it, against TLSA records: ``transport/dane.py``)."""

    NONE = "none"  # encrypt only (opportunistic TLS, RFC 7435; DANE checks afterwards)
    CA = "ca"  # a chain to a trusted CA, any name
    CA_AND_NAME = "ca+name"  # a chain to a trusted CA, valid for the host name


@functools.lru_cache(maxsize=16)
def client_context(check: CertificateCheck, ca_file: str = "") -> ssl.SSLContext:
    """The client context for ``check``, trusting ``ca_file`` (PEM) or, when empty, the
    system's store. Contexts are built once per (check, ca_file). Raises ``OSError`` or
    ``ssl.SSLError`` for an unreadable ``ca_file``."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if check is CertificateCheck.CA_AND_NAME:
        return context
    context.check_hostname = False
    if check is CertificateCheck.NONE:
        context.verify_mode = ssl.CERT_NONE
    return context


def peer_chain(stream: trio.SSLStream[Any]) -> list[bytes]:
    """The certificate chain the server presented (DER, leaf first), unverified.

    Python exposes it publicly from 3.13 (``SSLObject.get_unverified_chain``); before, the
    same method exists on the private ``_sslobj`` (3.10+), and trio keeps its SSLObject in
    ``_ssl_object``. An empty list when neither is there."""
    ssl_object = getattr(stream, "_ssl_object", None)
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:
        return [bytes(der) for der in public() or []]
    private = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if private is None:
        return []
    return [cert.public_bytes(_ssl.ENCODING_DER) for cert in private() or []]


def describe_handshake_failure(exc: BaseException) -> str:
    """A short reason for a failed handshake: the SSL error under trio's wrapper."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return repr(cause)
