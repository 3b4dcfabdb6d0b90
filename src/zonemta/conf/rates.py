"""Rates as written in the config file: ``"600/hour"``, ``"10 messages/minute"``, ``"5/s"``."""

from __future__ import annotations

import re

import attrs

_UNITS: dict[str, float] = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_RATE_RE = re.compile(
    r"^\s*(\d+)\s*(?:messages?|msgs?)?\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+?)s?\s*$", re.IGNORECASE
)
_HINT = "(use e.g. '600/hour', '10 messages/minute', '5/second')"


@attrs.frozen
class Rate:
    """``count`` events per ``per`` seconds."""

    count: int
    per: float

    @property
    def interval(self) -> float:
        """Seconds between events when they are spread evenly."""
        return self.per / self.count

    def __str__(self) -> str:
        for name, seconds in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
            if self.per == seconds:
                return f"{self.count}/{name}"
        return f"{self.count}/{self.per:g}second"


def parse_rate(text: str) -> Rate:
    """Parse a rate; raises ValueError with a message for the person editing the file."""
    match = _RATE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"bad rate {text!r} {_HINT}")
    count = int(match.group(1))
    multiple = float(match.group(2)) if match.group(2) else 1.0
    unit = _UNITS.get(match.group(3).lower())
    if unit is None or count < 1 or multiple <= 0:
        raise ValueError(f"bad rate {text!r} {_HINT}")
    return Rate(count, unit * multiple)
