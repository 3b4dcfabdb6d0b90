"""DotStuffer: dot-stuffing on whole chunks, checked against a line-by-line reference."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zonemta.transport.smtp.dotstuff import DotStuffer
from zonemta.transport.smtp.errors import LocalProtocolError


def reference_stuff(content: bytes) -> bytes:
    """Straightforward RFC 5321 4.5.2 encoder: line by line."""
    if not content:
        return b".\r\n"
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    out = []
    for line in content[:-2].split(b"\r\n"):
        out.append((b"." + line if line.startswith(b".") else line) + b"\r\n")
    return b"".join(out) + b".\r\n"


def unstuff(wire: bytes) -> bytes:
    """Straightforward receiver: read lines up to the lone dot, removing one leading dot."""
    lines = wire.split(b"\r\n")
    assert lines[-1] == b"", "the data must end with CRLF"
    assert lines[-2] == b".", "the data must end with the terminator line"
    out = []
    for line in lines[:-2]:
        assert line != b".", "a terminator line before the end"
        assert b"\r" not in line and b"\n" not in line
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
    return b"".join(out)


def encode(chunks: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join([stuffer.feed(chunk) for chunk in chunks]) + stuffer.finish()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


_plain_line = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_dot_line = st.builds(lambda n, rest: b"." * n + rest, st.integers(1, 3), _plain_line)
_lines = st.lists(st.one_of(_plain_line, _dot_line, st.just(b"")), max_size=12)


@st.composite
def crlf_content(draw: st.DrawFn) -> bytes:
    lines: list[bytes] = draw(_lines)
    trailing: bool = draw(st.booleans())
    content = b"\r\n".join(lines)
    if lines and trailing:
        content += b"\r\n"
    return content


@given(content=crlf_content(), cuts=st.lists(st.integers(0, 300), max_size=10))
def test_matches_reference_in_any_chunking(content: bytes, cuts: list[int]) -> None:
    wire = encode(split_at(content, cuts))
    assert wire == reference_stuff(content)
    expected = content if not content or content.endswith(b"\r\n") else content + b"\r\n"
    assert unstuff(wire) == expected


@given(content=st.binary(max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8))
def test_arbitrary_bytes_are_encoded_or_refused(content: bytes, cuts: list[int]) -> None:
    # Valid exactly when every CR is followed by LF and every LF preceded by CR.
    valid = b"\r" not in content.replace(b"\r\n", b"") and b"\n" not in content.replace(
        b"\r\n", b""
    )
    if valid:
        assert encode(split_at(content, cuts)) == reference_stuff(content)
    else:
        with pytest.raises(LocalProtocolError):
            encode(split_at(content, cuts))


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"", b".\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
        (b"hello", b"hello\r\n.\r\n"),
        (b"hello\r\n", b"hello\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".hidden\r\n", b"..hidden\r\n.\r\n"),
        (b"a\r\n.\r\nMAIL FROM:<x>\r\n", b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"),
        (b"a\r\n..b\r\n.", b"a\r\n...b\r\n..\r\n.\r\n"),
        (b"x.y\r\n a.\r\n", b"x.y\r\n a.\r\n.\r\n"),
    ],
)
def test_examples(content: bytes, wire: bytes) -> None:
    assert encode([content]) == wire
    assert encode([content[i : i + 1] for i in range(len(content))]) == wire


@pytest.mark.parametrize(
    ("chunks", "wire"),
    [
        ([b"a\r", b"\n.b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b"\n", b".b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r\n", b".b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r\n", b"", b"."], b"a\r\n..\r\n.\r\n"),
        ([b"a\r", b"\n"], b"a\r\n.\r\n"),
        ([b".", b"."], b"...\r\n.\r\n"),
    ],
)
def test_chunk_boundaries(chunks: list[bytes], wire: bytes) -> None:
    assert encode(chunks) == wire


@pytest.mark.parametrize(
    "chunks",
    [
        [b"a\nb"],
        [b"a\rb"],
        [b"\n"],
        [b"a\n.\r\n"],
        [b"a\r", b"b"],
        [b"a\r", b"\r\n"],
        [b"a", b"\n"],
        [b"a\r"],
        [b"a\r\n\r"],
    ],
)
def test_bare_line_endings_are_refused(chunks: list[bytes]) -> None:
    with pytest.raises(LocalProtocolError, match="bare"):
        encode(chunks)


def test_use_after_finish_is_refused() -> None:
    stuffer = DotStuffer()
    stuffer.feed(b"a\r\n")
    assert stuffer.finish() == b".\r\n"
    with pytest.raises(LocalProtocolError):
        stuffer.feed(b"b")
    with pytest.raises(LocalProtocolError):
        stuffer.finish()
