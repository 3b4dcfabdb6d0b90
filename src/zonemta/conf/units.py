"""Durations and byte sizes as written in the config file.

Durations: a number of seconds (``90``, ``1.5``) or a number with a unit suffix
(``"250ms"``, ``"90s"``, ``"5m"``, ``"1.5h"``, ``"3d"``, ``"1w"``). The model holds them as
:class:`datetime.timedelta`.

Sizes: a number of bytes (``2048``) or a number with a binary unit (``"512KB"``, ``"30MB"``,
``"1GB"``, ``"30MiB"``, ``"100B"``; case-insensitive; ``MB`` means 1024² bytes, as ``MiB``
does). The model holds them as :class:`ByteSize`, an ``int`` subclass that exists so the
config converter can tell a size field from a plain integer field.

Every parser raises :class:`ValueError` with a message meant for the person editing the file.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation

__all__ = [
    "AUTO_PROCESSES",
    "ByteSize",
    "ProcessCount",
    "format_duration",
    "format_process_count",
    "format_size",
    "parse_duration",
    "parse_process_count",
    "parse_size",
]

_US_PER_UNIT: dict[str, int] = {
    "w": 7 * 86_400_000_000,
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", re.IGNORECASE)
_DURATION_HINT = "(use seconds or e.g. '30s', '5m', '2h', '3d')"

_BYTES_PER_UNIT: dict[str, int] = {
    "": 1,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.IGNORECASE)
_SIZE_HINT = "(use bytes or e.g. '512KB', '30MB', '1GB')"
_SIZE_SUFFIXES = (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024))


class ByteSize(int):
    """A number of bytes; an ``int`` in every respect, typed apart for the config converter."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ByteSize({int.__repr__(self)})"

    def __str__(self) -> str:
        return int.__repr__(self)


def parse_duration(value: str | int | float) -> timedelta:
    """Parse a duration given as seconds (int/float >= 0) or a string with a unit suffix.

    Raises ``ValueError`` for negative, non-finite or malformed values and for bools.
    """
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r} {_DURATION_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"bad duration {value!r}: must not be negative")
        return timedelta(seconds=value)
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"bad duration {value!r}: must be a finite number >= 0")
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match is None:
            raise ValueError(f"bad duration {value!r} {_DURATION_HINT}")
        number, unit = match.group(1), (match.group(2) or "s").lower()
        micros = Decimal(number) * _US_PER_UNIT[unit]
        return timedelta(microseconds=int(micros.to_integral_value()))
    raise ValueError(f"bad duration {value!r} {_DURATION_HINT}")


def format_duration(td: timedelta) -> str:
    """Format a duration as the shortest exact string ``parse_duration`` reads back.

    ``timedelta(minutes=5)`` → ``"5m"``, ``timedelta(seconds=90)`` → ``"90s"``,
    ``timedelta(milliseconds=1500)`` → ``"1.5s"``. Raises ``ValueError`` for negative values.
    """
    micros = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    if micros < 0:
        raise ValueError(f"negative duration {td!r} cannot be written")
    if micros == 0:
        return "0s"
    candidates = []
    for unit, size in _US_PER_UNIT.items():
        text = _exact_decimal(micros, size)
        if text is not None:
            candidates.append(f"{text}{unit}")
    # "ms" with up to 3 decimals is always exact. Shortest wins; on a tie, no decimal point
    # ("250ms" over "0.25s"), then the larger unit (list order, min() is stable).
    return min(candidates, key=lambda c: (len(c), "." in c))


def _exact_decimal(numerator: int, denominator: int) -> str | None:
    """``numerator / denominator`` as a plain decimal string if it terminates within 6 places."""
    for places in range(7):
        scaled = numerator * 10**places
        if scaled % denominator == 0:
            digits = str(scaled // denominator)
            if places == 0:
                return digits
            digits = digits.rjust(places + 1, "0")
            return f"{digits[:-places]}.{digits[-places:]}"
    return None


def parse_size(value: str | int) -> int:
    """Parse a byte size: an int number of bytes, or e.g. ``"30MB"`` (binary units).

    Returns a :class:`ByteSize`. Raises ``ValueError`` for negative or fractional byte counts,
    bools, floats and malformed strings.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"bad size {value!r} {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"bad size {value!r}: must not be negative")
        return ByteSize(value)
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"bad size {value!r} {_SIZE_HINT}")
    number, unit = match.group(1), (match.group(2) or "").lower()
    try:
        total = Decimal(number) * _BYTES_PER_UNIT[unit]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"bad size {value!r} {_SIZE_HINT}") from exc
    if total != total.to_integral_value():
        raise ValueError(f"bad size {value!r}: not a whole number of bytes")
    return ByteSize(int(total))


def format_size(n: int) -> str:
    """Format a byte count with the largest binary unit that divides it exactly.

    ``31457280`` → ``"30MB"``, ``2048`` → ``"2KB"``, ``1000`` → ``"1000B"``. Raises
    ``ValueError`` for negative values.
    """
    if n < 0:
        raise ValueError(f"negative size {n!r} cannot be written")
    for suffix, size in _SIZE_SUFFIXES:
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return f"{n}B"


class ProcessCount(int):
    """A number of child processes, or :data:`AUTO_PROCESSES` ("auto" in the file): the
    relay chooses at start. An ``int`` subclass so the converter can tell it apart."""


AUTO_PROCESSES = ProcessCount(-1)
MAX_PROCESSES = 64


def parse_process_count(value: int | str) -> ProcessCount:
    """``"auto"`` or a whole number from 0 to 64."""
    if value == "auto":
        return AUTO_PROCESSES
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected 'auto' or a whole number of processes, got {value!r}")
    if not 0 <= value <= MAX_PROCESSES:
        raise ValueError(f"processes must be 'auto' or 0 to {MAX_PROCESSES}, got {value}")
    return ProcessCount(value)


def format_process_count(value: ProcessCount) -> int | str:
    return "auto" if value == AUTO_PROCESSES else int(value)
