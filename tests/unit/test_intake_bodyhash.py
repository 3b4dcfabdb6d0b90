"""The streaming DKIM body hash on bodies without blanks (its shortcut: no space, no tab,
nothing to relax) and with only one kind of blank, in any chunking, against dkimpy."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest
from dkim.canonicalization import Relaxed

from zonemta.dkim.bodyhash import RelaxedBodyHasher, _relax_lines


def expected_bh(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest()).decode()


def hashed_in_chunks(body: bytes, rng: random.Random) -> str:
    hasher = RelaxedBodyHasher()
    start = 0
    while start < len(body):
        end = start + rng.randrange(1, 200)
        hasher.update(body[start:end])
        start = end
    return hasher.b64digest()


BASE64_LINE = base64.b64encode(bytes(range(57))) + b"\r\n"
BODIES = [
    BASE64_LINE * 60,
    BASE64_LINE * 3 + b"\r\n\r\n\r\n",
    b"1XXXXXXXX\r\n2XXXXXXXX\r\n" * 100,
    b"no blanks and no final line end".replace(b" ", b"_"),
    b"tabs\t\tonly\t\r\n" * 20,
    b"spaces  only  \r\n" * 20,
    b"a trailing space \r\nthen none\r\n",
]


@pytest.mark.parametrize("body", BODIES)
def test_bodies_with_and_without_blanks_hash_as_dkimpy_does(body: bytes) -> None:
    rng = random.Random(len(body))
    want = expected_bh(body)
    for _ in range(5):
        assert hashed_in_chunks(body, rng) == want


def test_lines_without_blanks_are_returned_as_they_are() -> None:
    lines = BASE64_LINE * 10
    assert _relax_lines(lines) is lines
    assert _relax_lines(b"a \r\n") == b"a\r\n"  # one space is enough to take the long way
    assert _relax_lines(b"a\t\tb\r\n") == b"a b\r\n"
