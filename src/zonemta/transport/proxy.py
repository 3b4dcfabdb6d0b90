"""The PROXY protocol header (HAProxy, versions 1 and 2), sans-IO: bytes in, a header out.

A load balancer in front of the listener sends this header first on every connection, so
that relay control and logs see the real client address instead of the balancer's.

- v1 (text): ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or ``PROXY UNKNOWN ...\\r\\n``,
  at most 107 bytes.
- v2 (binary): a 12-byte signature, version/command, family/protocol, a 16-bit length, the
  addresses, then TLVs (skipped).

``LOCAL`` (v2), ``UNKNOWN`` (v1) and families other than TCP over IPv4/IPv6 carry no usable
client address: the header then has ``source = None`` and the driver keeps the connection's
own peer address. Anything malformed raises :class:`ProxyProtocolError`; nothing else is
raised for any input.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_PAYLOAD",
    "NEED_DATA",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "parse_proxy_header",
]

#: The longest v1 header, CRLF included (the specification's own bound).
MAX_V1_LENGTH = 107
#: The longest v2 address-and-TLV block we accept (the spec allows 65535; TLVs are small).
MAX_V2_PAYLOAD = 16 * 1024
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V2_HEADER = struct.Struct("!12sBBH")
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")


class ProxyProtocolError(Exception):
    """The connection did not start with a valid PROXY protocol header."""


class NEED_DATA:
    """Sentinel: feed more bytes. Compare with ``is``; never instantiated."""

    def __init__(self) -> None:
        raise TypeError("NEED_DATA is a sentinel; compare with `is NEED_DATA`")


Address = tuple[str, int]


@attrs.frozen
class ProxyHeader:
    """A parsed header. ``source``/``destination`` are ``(ip, port)``, or None when the
    header carries no address (LOCAL, UNKNOWN, UNIX or unspecified family)."""

    version: int
    source: Address | None
    destination: Address | None


def _port(text: bytes) -> int:
    if not (text.isdigit() and 1 <= len(text) <= 5) or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyProtocolError(f"bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"port out of range: {port}")
    return port


def _v1(line: bytes) -> ProxyHeader:
    """``line`` is the header without its CRLF."""
    parts = line.split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ProxyProtocolError("malformed PROXY v1 header")
    if parts[1] == b"UNKNOWN":
        return ProxyHeader(1, None, None)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("malformed PROXY v1 header")
    version = 4 if parts[1] == b"TCP4" else 6
    addresses: list[str] = []
    for raw in parts[2:4]:
        try:
            address = ipaddress.ip_address(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ProxyProtocolError(f"bad address {raw!r}") from None
        if address.version != version:
            raise ProxyProtocolError(f"{raw!r} is not an IPv{version} address")
        addresses.append(str(address))
    return ProxyHeader(1, (addresses[0], _port(parts[4])), (addresses[1], _port(parts[5])))


def _v2(command: int, family: int, payload: bytes) -> ProxyHeader:
    if command >> 4 != 2:
        raise ProxyProtocolError(f"unsupported PROXY v2 version {command >> 4}")
    if command & 0x0F == 0:  # LOCAL: the balancer's own connection (health check)
        return ProxyHeader(2, None, None)
    if command & 0x0F != 1:
        raise ProxyProtocolError(f"unknown PROXY v2 command {command & 0x0F}")
    layout = {0x11: _V2_INET, 0x21: _V2_INET6}.get(family)
    if layout is None:  # UNSPEC, UNIX, datagrams: nothing we can use as a client address
        return ProxyHeader(2, None, None)
    if len(payload) < layout.size:
        raise ProxyProtocolError("PROXY v2 address block too short")
    src, dst, sport, dport = layout.unpack_from(payload)
    return ProxyHeader(
        2,
        (str(ipaddress.ip_address(src)), sport),
        (str(ipaddress.ip_address(dst)), dport),
    )


def parse_proxy_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse the header at the start of ``data``.

    Returns ``(header, length)`` where ``length`` is the number of bytes the header took, or
    None when more bytes are needed. Raises :class:`ProxyProtocolError` as soon as the bytes
    cannot start a valid header.
    """
    if data[:12] == V2_SIGNATURE[: len(data[:12])] and data[:1] == b"\r":
        if len(data) < _V2_HEADER.size:
            return None
        _signature, command, family, length = _V2_HEADER.unpack_from(data)
        if length > MAX_V2_PAYLOAD:
            raise ProxyProtocolError(f"PROXY v2 header too long ({length} bytes)")
        end = _V2_HEADER.size + length
        if len(data) < end:
            # Fail early on a bad version or command rather than waiting for the payload.
            if command >> 4 != 2 or command & 0x0F > 1:
                _v2(command, family, b"")
            return None
        return _v2(command, family, data[_V2_HEADER.size : end]), end
    if data[:6] != _V1_PREFIX[: len(data[:6])]:
        raise ProxyProtocolError("connection does not start with a PROXY header")
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        if len(data) >= MAX_V1_LENGTH or b"\n" in data[:MAX_V1_LENGTH]:
            raise ProxyProtocolError("PROXY v1 header without CRLF within 107 bytes")
        return None
    if b"\n" in data[:end]:  # a bare LF before the CRLF: refused however the bytes arrive
        raise ProxyProtocolError("PROXY v1 header with a bare LF")
    return _v1(data[:end]), end + 2


class ProxyHeaderParser:
    """Incremental wrapper of :func:`parse_proxy_header` (h11 style).

    ``receive_data(b"")`` is EOF. After a header, :attr:`trailing_data` holds the bytes that
    followed it (the start of the proxied connection's own data).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._eof = False
        self.trailing_data = b""

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        self._buffer += data

    def next_event(self) -> ProxyHeader | type[NEED_DATA]:
        """The header, or NEED_DATA. Raises :class:`ProxyProtocolError` for a bad header or
        EOF before a whole one."""
        result = parse_proxy_header(self._buffer)
        if result is None:
            if self._eof:
                raise ProxyProtocolError("connection closed inside the PROXY header")
            return NEED_DATA
        header, length = result
        self.trailing_data = self._buffer[length:]
        self._buffer = b""
        return header
