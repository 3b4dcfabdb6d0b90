"""SMTP replies: one immutable value used by both the server and the client side."""

from __future__ import annotations

import functools
import re

import attrs

# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
MAX_REPLY_LINE = 512

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


def _check_code(_instance: object, _attribute: object, value: int) -> None:
    if not 200 <= value <= 599:
        raise ValueError(f"SMTP reply code out of range: {value}")


def _check_lines(_instance: object, _attribute: object, value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError("an SMTP reply needs a non-empty tuple of lines")
    for line in value:
        if "\r" in line or "\n" in line:
            raise ValueError(f"SMTP reply text must not contain CR or LF: {line!r}")


@attrs.frozen
class Reply:
    """An SMTP reply: a three-digit code, an optional enhanced status code and text lines.

    ``enhanced`` is written after the code on every line (RFC 2034) when it is set.
    """

    code: int = attrs.field(validator=_check_code)
    lines: tuple[str, ...] = attrs.field(validator=_check_lines)
    enhanced: str | None = None

    @classmethod
    def make(cls, code: int, text: str, enhanced: str | None = None) -> Reply:
        """A reply from one text, split into lines at ``\\n``."""
        return cls(code, tuple(text.split("\n")), enhanced)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def text(self) -> str:
        """All text lines joined by single spaces (without code and enhanced code)."""
        return " ".join(line.strip() for line in self.lines).strip()

    def __str__(self) -> str:
        return self._text_form

    @functools.cached_property
    def _text_form(self) -> str:
        # Built once per reply: a client parses the same few replies again and again.
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        text = self.text
        if text:
            parts.append(text)
        return " ".join(parts)

    def to_bytes(self) -> bytes:
        """The reply as it goes on the wire, every line ending in CRLF."""
        return self._wire

    @functools.cached_property
    def _wire(self) -> bytes:
        # Built once per reply: the server sends the same few constants in every session.
        out: list[str] = []
        last = len(self.lines) - 1
        for index, line in enumerate(self.lines):
            sep = " " if index == last else "-"
            body = f"{self.enhanced} {line}" if self.enhanced else line
            out.append(f"{self.code}{sep}{body}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8")

    @classmethod
    def from_lines(cls, code: int, raw_lines: list[str]) -> Reply:
        """Build a reply from parsed wire lines (text after ``NNN-``/``NNN ``).

        An enhanced status code is recognised when the first line starts with one whose class
        digit matches the reply code's class; it is then stripped from every line that has it.
        """
        enhanced: str | None = None
        match = _ENHANCED.match(raw_lines[0]) if raw_lines else None
        if match and match.group(1) == str(code)[0]:
            enhanced = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
        lines: list[str] = []
        for line in raw_lines or [""]:
            if enhanced and line.startswith(enhanced):
                line = line[len(enhanced) :].lstrip(" ")
            lines.append(line)
        return cls(code, tuple(lines), enhanced)
