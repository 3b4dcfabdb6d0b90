"""The intake's header block checks against their plain per-line definitions, on random
blocks: ``is_header_block`` (two regex passes instead of one match per line) and the header
policy's "is this field there" test (patterns compiled once per name)."""

from __future__ import annotations

import random
import re

import pytest

from zonemta.engine.intake.reception import is_header_block
from zonemta.engine.intake.routing import strip_routing_fields
from zonemta.headers import _has_field

_LINE = re.compile(rb"^(?:[!-9;-~]+[ \t]*:|[ \t])")
PIECES = (b"a", b"Date", b"message-id", b"bcc", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"-")


def header_block_by_lines(headers: bytes) -> bool:
    """The definition: every CRLF-separated line a field or a continuation, the first a field."""
    lines = headers.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines or lines[0][:1] in (b" ", b"\t"):
        return False
    return all(_LINE.match(line) for line in lines)


def has_field_by_lines(lowered: bytes, name: bytes) -> bool:
    """The definition: some line (split at CRLF) starts with ``name``, blanks, a colon."""
    return any(re.match(re.escape(name) + rb"[ \t]*:", line) for line in lowered.split(b"\r\n"))


def random_blocks(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"".join(rng.choices(PIECES, k=rng.randrange(0, 14))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(4))
def test_is_header_block_agrees_with_its_per_line_definition(seed: int) -> None:
    for block in random_blocks(seed, 5000):
        assert is_header_block(block) == header_block_by_lines(block), block


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (b"Subject: x\r\n\tcontinued\r\nX-A:1\r\n", True),
        (b"Subject: x\r\nX-A :1", True),  # no final CRLF
        (b"Subject: x\r\n\r\n", False),  # an empty line inside
        (b"\r\nSubject: x\r\n", False),
        (b" Subject: x\r\n", False),
        (b"Subject: x\r\nbody text\r\n", False),
        (b"Subject: x\r\r\n a\n\r\n", True),  # bare CR and LF belong to their line
        (b"\r\n", False),
        (b"", False),
    ],
)
def test_is_header_block_cases(block: bytes, expected: bool) -> None:
    assert is_header_block(block) is expected
    assert header_block_by_lines(block) is expected


@pytest.mark.parametrize("seed", range(2))
def test_has_field_agrees_with_its_per_line_definition(seed: int) -> None:
    for block in random_blocks(seed, 5000):
        lowered = block.lower()
        for name in (b"date", b"message-id"):
            assert _has_field(lowered, name) == has_field_by_lines(lowered, name), block


def test_routing_fields_are_stripped_only_when_present() -> None:
    plain = b"From: a@b.test\r\nSubject: hi\r\n"
    assert strip_routing_fields(plain) is plain  # nothing to strip: no copy made
    assert strip_routing_fields(b"Subject: bcc me\r\n") == b"Subject: bcc me\r\n"
    assert strip_routing_fields(plain + b"BCC: c@d.test\r\n") == plain
    assert strip_routing_fields(b"X-Sending-Zone\t: z\r\n" + plain) == plain
