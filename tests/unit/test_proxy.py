"""The PROXY protocol header parser (v1 and v2): fed whole, byte by byte, with trailing
bytes, and fuzzed."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zonemta.transport.proxy import (
    MAX_V2_PAYLOAD,
    NEED_DATA,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
    parse_proxy_header,
)


def v2(
    command: int = 0x21, family: int = 0x11, payload: bytes | None = None, tlvs: bytes = b""
) -> bytes:
    if payload is None:
        payload = struct.pack(
            "!4s4sHH",
            ipaddress.ip_address("192.0.2.7").packed,
            ipaddress.ip_address("198.51.100.1").packed,
            40000,
            25,
        )
    payload += tlvs
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(payload)) + payload


V2_INET6 = (
    V2_SIGNATURE
    + struct.pack("!BBH", 0x21, 0x21, 36)
    + struct.pack(
        "!16s16sHH",
        ipaddress.ip_address("2001:db8::7").packed,
        ipaddress.ip_address("2001:db8::1").packed,
        1,
        587,
    )
)

VALID = [
    (
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n",
        ProxyHeader(1, ("192.0.2.7", 40000), ("198.51.100.1", 25)),
    ),
    (
        b"PROXY TCP6 2001:db8::7 2001:db8::1 1 587\r\n",
        ProxyHeader(1, ("2001:db8::7", 1), ("2001:db8::1", 587)),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1, None, None)),
    (v2(), ProxyHeader(2, ("192.0.2.7", 40000), ("198.51.100.1", 25))),
    (v2(tlvs=b"\x01\x00\x02h2"), ProxyHeader(2, ("192.0.2.7", 40000), ("198.51.100.1", 25))),
    (V2_INET6, ProxyHeader(2, ("2001:db8::7", 1), ("2001:db8::1", 587))),
    (v2(command=0x20, payload=b""), ProxyHeader(2, None, None)),  # LOCAL (health check)
    (v2(family=0x31, payload=b"\x00" * 216), ProxyHeader(2, None, None)),  # UNIX socket
    (v2(family=0x00, payload=b""), ProxyHeader(2, None, None)),  # UNSPEC
]

INVALID = [
    b"EHLO client.test\r\n",  # no header at all
    b"GET / HTTP/1.1\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n",  # a field missing
    b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",  # wrong family
    b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.777 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 025 25\r\n",  # leading zero
    b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n",
    b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",  # bare LF
    b"PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n",  # double space
    b"PROXY UNKNOWN x\ny\r\n",  # bare LF inside
    b"PROXY " + b"x" * 120 + b"\r\n",  # longer than 107 bytes
    v2(command=0x11),  # version 1 in the binary form
    v2(command=0x22),  # unknown command
    v2(payload=b"\x00" * 5),  # address block too short for TCP4
    V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, MAX_V2_PAYLOAD + 1),
]


def parse_in_pieces(data: bytes, size: int) -> tuple[ProxyHeader, bytes]:
    parser = ProxyHeaderParser()
    for start in range(0, len(data), size):
        parser.receive_data(data[start : start + size])
        event = parser.next_event()
        if event is not NEED_DATA:
            assert isinstance(event, ProxyHeader)
            return event, parser.trailing_data
    parser.receive_data(b"")
    event = parser.next_event()
    assert isinstance(event, ProxyHeader)
    return event, parser.trailing_data


@pytest.mark.parametrize(("data", "expected"), VALID)
@pytest.mark.parametrize("size", [1, 3, 1000], ids=["bytewise", "threes", "whole"])
def test_valid_headers(data: bytes, expected: ProxyHeader, size: int) -> None:
    assert parse_in_pieces(data, size) == (expected, b"")


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_trailing_bytes_are_kept(data: bytes, expected: ProxyHeader) -> None:
    trailing = b"\x16\x03\x01 a TLS ClientHello or EHLO\r\n"
    assert parse_proxy_header(data + trailing) == (expected, len(data))
    assert parse_in_pieces(data + trailing, 1000) == (expected, trailing)
    # Byte by byte the header is complete before the trailing bytes arrive.
    assert parse_in_pieces(data + trailing, 1)[0] == expected


@pytest.mark.parametrize("data", INVALID)
def test_invalid_headers(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_in_pieces(data, 1000)
    with pytest.raises(ProxyProtocolError):
        parse_in_pieces(data, 1)


def test_prefixes_need_more_data_and_eof_inside_is_an_error() -> None:
    for data, _expected in VALID:
        for cut in range(len(data)):
            assert parse_proxy_header(data[:cut]) is None, (data, cut)
    parser = ProxyHeaderParser()
    parser.receive_data(b"PROXY TCP4 1.2.3.4")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    with pytest.raises(ProxyProtocolError, match="closed"):
        parser.next_event()


def test_bad_input_fails_before_the_whole_header_arrives() -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(b"EH")
    header = V2_SIGNATURE + struct.pack("!BBH", 0x11, 0x11, 100)  # bad version, short payload
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(header)
    with pytest.raises(TypeError):
        NEED_DATA()


@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.sampled_from([d for d, _ in VALID] + INVALID).flatmap(
            lambda d: st.tuples(st.integers(0, len(d)), st.binary(max_size=8)).map(
                lambda cut_junk: d[: cut_junk[0]] + cut_junk[1] + d[cut_junk[0] :]
            )
        ),
    ),
    size=st.integers(min_value=1, max_value=64),
)
def test_any_input_gives_a_header_or_a_protocol_error(data: bytes, size: int) -> None:
    outcomes: list[object] = []
    for piece_size in (len(data) or 1, size, 1):
        try:
            outcomes.append(parse_in_pieces(data, piece_size)[0])
        except ProxyProtocolError:
            outcomes.append(ProxyProtocolError)
    assert outcomes[0] == outcomes[1] == outcomes[2]
    header = outcomes[0]
    if isinstance(header, ProxyHeader) and header.source is not None:
        assert ipaddress.ip_address(header.source[0])
