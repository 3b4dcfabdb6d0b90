"""/send-raw helpers: line endings made CRLF in any chunking, envelope from the headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zonemta.http.rawmail import LineEndings, RawMessageError, parse_head


def normalise(chunks: list[bytes]) -> bytes:
    endings = LineEndings()
    return b"".join(endings.feed(c) for c in chunks) + endings.finish()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"a\r\n\rb\n\r\n", b"a\r\n\r\nb\r\n\r\n"),
        (b"no end", b"no end\r\n"),
        (b"", b""),
    ],
)
def test_whole_and_byte_by_byte(data: bytes, expected: bytes) -> None:
    assert normalise([data]) == expected
    assert normalise([data[i : i + 1] for i in range(len(data))]) == expected
    assert normalise([data, b""]) == expected


def test_crlf_split_across_chunks_stays_one_line_end() -> None:
    assert normalise([b"a\r", b"\nb"]) == b"a\r\nb\r\n"


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_any_chunking_gives_the_same_crlf_only_output(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    out = normalise(chunks)
    assert out == normalise([data])
    assert b"\r" not in out.replace(b"\r\n", b"") and b"\n" not in out.replace(b"\r\n", b"")
    assert out == b"" or out.endswith(b"\r\n")


def test_envelope_from_headers_and_bcc_removed() -> None:
    head = parse_head(
        b"From: A <a@x.test>\r\nTo: b@y.test, C <c@y.test>\r\nCc: d@z.test\r\n"
        b"Bcc: e@z.test,\r\n f@z.test\r\nSubject: s\r\n"
    )
    assert head.mail_from == "a@x.test"
    assert head.recipients == ("b@y.test", "c@y.test", "d@z.test", "e@z.test", "f@z.test")
    assert head.headers == (
        b"From: A <a@x.test>\r\nTo: b@y.test, C <c@y.test>\r\nCc: d@z.test\r\nSubject: s\r\n"
    )


def test_sender_header_wins_and_duplicates_go() -> None:
    head = parse_head(b"From: a@x.test\r\nSender: s@x.test\r\nTo: b@y.test, b@y.test\r\n")
    assert head.mail_from == "s@x.test" and head.recipients == ("b@y.test",)


@pytest.mark.parametrize(
    ("headers", "words"),
    [(b"To: b@y.test\r\n", "From"), (b"From: a@x.test\r\nSubject: s\r\n", "To")],
)
def test_missing_sender_or_recipients(headers: bytes, words: str) -> None:
    with pytest.raises(RawMessageError, match=words):
        parse_head(headers)
