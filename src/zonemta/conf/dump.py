"""The effective configuration as TOML, and the small TOML emitter behind it.

``dump_config`` writes every setting, defaults included, in a form ``load_config`` reads back
to an equal :class:`Config` (durations as e.g. ``"5m"``, sizes as e.g. ``"30MB"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from zonemta.conf.loader import converter
from zonemta.conf.model import Config

__all__ = ["dump_config", "to_toml"]

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def dump_config(config: Config) -> str:
    """Render ``config`` as a complete TOML document (every key, defaults included)."""
    data = converter.unstructure(config)
    return "# zonemta effective configuration\n\n" + to_toml(data)


def to_toml(data: Mapping[str, Any]) -> str:
    """Render a mapping as a TOML document.

    Supports tables (nested mappings), str, int, float, bool, and arrays (lists or tuples) of
    those or of mappings (written as inline tables). A key whose value is None (an optional
    setting left unset) is left out. Raises ``TypeError`` for anything else.
    """
    lines: list[str] = []
    _emit_table(lines, [], data)
    return "\n".join(lines).strip("\n") + "\n"


def _emit_table(lines: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    scalars = [(k, v) for k, v in table.items() if v is not None and not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    if path and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_key(part) for part in path) + "]")
    for key, value in scalars:
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables:
        _emit_table(lines, [*path, key], value)


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys must be str, got {type(key).__name__} {key!r}")
    return key if _BARE_KEY_RE.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + items + " }"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
