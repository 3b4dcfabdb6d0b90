"""TOML → :class:`Config` through one strict cattrs converter.

Owns the converter and its hooks and turns every failure (I/O, TOML syntax, types, unknown
keys, validator messages) into one :class:`ConfigError` that lists every bad path, one per
line, e.g. ``config.zones.default.connections: expected int, got str 'ten'``.

Strictness (cattrs' defaults are lax, see dependencies.md §6): ``"25"``, ``true`` and ``2.5``
are not ints, ``"false"`` is not a bool, ``1`` is not a str; an int is accepted for a float.
Tables must be tables, arrays must be arrays, unknown keys are errors.
"""

from __future__ import annotations

import enum
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from zonemta.conf.model import Config
from zonemta.conf.units import (
    ByteSize,
    ProcessCount,
    format_duration,
    format_process_count,
    format_size,
    parse_duration,
    parse_process_count,
    parse_size,
)
from zonemta.conf.validators import NAME_RE
from zonemta.conf.zones import TableKey

__all__ = ["ConfigError", "config_from_dict", "converter", "load_config"]

ROOT = "config"


class ConfigError(Exception):
    """The configuration cannot be used. ``str(e)`` is the full message, one problem per line.

    ``errors`` holds the individual ``path: problem`` lines.
    """

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = tuple(errors)
        lines = [f"invalid configuration ({source}):", *(f"  {e}" for e in errors)]
        super().__init__("\n".join(lines))


class _TypeMismatch(TypeError):
    """A value of the wrong TOML type; the message is what the user sees."""


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _mismatch(expected: str, value: Any) -> _TypeMismatch:
    return _TypeMismatch(f"expected {expected}, got {_describe(value)}")


# ------------------------------------------------------------------------------ scalar hooks


def _structure_int(value: Any, _typ: type) -> int:
    if type(value) is not int:  # bool is an int subclass and is refused here
        raise _mismatch("int", value)
    return value


def _structure_float(value: Any, _typ: type) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _mismatch("float", value)


def _structure_bool(value: Any, _typ: type) -> bool:
    if type(value) is not bool:
        raise _mismatch("bool", value)
    return value


def _structure_str(value: Any, typ: type) -> Any:
    # Registered on ``str`` through singledispatch, so it also receives str subclasses such as
    # our StrEnums: those must go to the enum hook, or any string would pass unvalidated.
    if typ is not str:
        if isinstance(typ, type) and issubclass(typ, enum.Enum):
            return _structure_enum(value, typ)
        if typ is TableKey:
            if type(value) is not str:
                raise _mismatch("str", value)
            return TableKey(value)
        raise TypeError(f"no strict hook for str subclass {typ!r}")
    if type(value) is not str:
        raise _mismatch("str", value)
    return value


def _structure_enum(value: Any, typ: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, typ):
        return value
    choices = [member.value for member in typ]
    if type(value) is str:
        for member in typ:
            if member.value == value:
                return member
    shown = ", ".join(repr(c) for c in choices)
    if type(value) is not str:
        raise _TypeMismatch(f"expected one of {shown}, got {_describe(value)}")
    raise ValueError(f"{value!r} is not a valid {typ.__name__} (use one of {shown})")


def _structure_timedelta(value: Any, _typ: type) -> timedelta:
    if type(value) not in (str, int, float):
        raise _mismatch("duration (seconds or e.g. '5m')", value)
    return parse_duration(value)


def _structure_bytesize(value: Any, _typ: type) -> ByteSize:
    if type(value) not in (str, int):
        raise _mismatch("size (bytes or e.g. '30MB')", value)
    return ByteSize(parse_size(value))


def _structure_process_count(value: Any, _typ: type) -> ProcessCount:
    if type(value) not in (str, int):
        raise _mismatch("'auto' or a number of processes", value)
    return parse_process_count(value)


def _structure_path(value: Any, _typ: type) -> Path:
    if type(value) is not str:
        raise _mismatch("str (a path)", value)
    if value == "":
        raise ValueError("path must not be empty")
    return Path(value)


# --------------------------------------------------------------------------- container hooks


def _is_attrs_class(typ: Any) -> bool:
    return isinstance(typ, type) and attrs.has(typ)


def _attrs_hook_factory(cls: type, conv: cattrs.Converter) -> Callable[[Any, type], Any]:
    """The generated strict hook for ``cls``, refusing non-tables before it runs."""
    inner: Callable[[Mapping[str, Any], Any], Any] = make_dict_structure_fn(cls, conv)

    def structure(value: Any, typ: type) -> Any:
        if not isinstance(value, Mapping):
            raise _mismatch("table", value)
        return inner(value, typ)

    return structure


def _is_name_dict(typ: Any) -> bool:
    args = typing.get_args(typ)
    return typing.get_origin(typ) is dict and len(args) == 2 and args[0] is str


def _name_dict_hook_factory(typ: Any, conv: cattrs.Converter) -> Callable[[Any, type], Any]:
    """``dict[str, X]`` keyed by zone/interface names: a table of tables with checked names."""
    value_type = typing.get_args(typ)[1]
    value_hook = conv.get_structure_hook(value_type)

    def structure(value: Any, typ: type) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _mismatch("table", value)
        result: dict[str, Any] = {}
        errors: list[Exception] = []
        for key, item in value.items():
            if not isinstance(key, str) or NAME_RE.fullmatch(key) is None:
                errors.append(ValueError(f"bad name {key!r} (use letters, digits, '_' and '-')"))
                continue
            try:
                result[key] = value_hook(item, value_type)
            except Exception as exc:
                exc.__notes__ = [*getattr(exc, "__notes__", []), _note(key, value_type)]
                errors.append(exc)
        if errors:
            raise IterableValidationError("While structuring a named table", errors, typ)
        return result

    return structure


def _is_homogeneous_tuple(typ: Any) -> bool:
    args = typing.get_args(typ)
    return typing.get_origin(typ) is tuple and len(args) == 2 and args[1] is Ellipsis


def _tuple_hook_factory(typ: Any, conv: cattrs.Converter) -> Callable[[Any, type], Any]:
    """``tuple[X, ...]`` from a TOML array only (a string is not a sequence of characters)."""
    item_type = typing.get_args(typ)[0]
    item_hook = conv.get_structure_hook(item_type)

    def structure(value: Any, typ: type) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise _mismatch("array", value)
        result: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                result.append(item_hook(item, item_type))
            except Exception as exc:
                exc.__notes__ = [*getattr(exc, "__notes__", []), _note(index, item_type)]
                errors.append(exc)
        if errors:
            raise IterableValidationError("While structuring an array", errors, typ)
        return tuple(result)

    return structure


def _note(index: int | str, typ: Any) -> IterableValidationNote:
    return IterableValidationNote(f"Structuring element {index!r}", index, typ)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(ByteSize, _structure_bytesize)
    conv.register_structure_hook(ProcessCount, _structure_process_count)
    conv.register_structure_hook(timedelta, _structure_timedelta)
    conv.register_structure_hook(Path, _structure_path)
    conv.register_structure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), _structure_enum
    )
    conv.register_structure_hook_factory(_is_attrs_class, _attrs_hook_factory)
    conv.register_structure_hook_factory(_is_name_dict, _name_dict_hook_factory)
    conv.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook_factory)

    conv.register_unstructure_hook(ByteSize, format_size)
    conv.register_unstructure_hook(ProcessCount, format_process_count)
    conv.register_unstructure_hook(timedelta, format_duration)
    conv.register_unstructure_hook(Path, str)
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda e: e.value
    )
    return conv


#: The one converter for the config model (structure: strict; unstructure: TOML-ready values).
converter = _make_converter()


# ------------------------------------------------------------------------------ error paths


def _format_exception(exc: BaseException) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        return "unknown key(s): " + ", ".join(sorted(exc.extra_fields))
    return str(exc) or type(exc).__name__


def error_lines(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' nested exception groups into ``path: message`` lines.

    Like ``cattrs.transform_error`` but with the path first and dict keys written as
    ``.name`` (names are checked to be bare TOML keys before we descend into them).
    """
    if not isinstance(exc, ClassValidationError | IterableValidationError):
        return [f"{path}: {_format_exception(exc)}"]
    lines: list[str] = []
    for sub in exc.exceptions:
        sub_path = path
        for note in getattr(sub, "__notes__", []):
            if isinstance(note, AttributeValidationNote):
                sub_path = f"{path}.{note.name}"
                break
            if isinstance(note, IterableValidationNote):
                index = note.index
                sub_path = f"{path}.{index}" if isinstance(index, str) else f"{path}[{index}]"
                break
        lines.extend(error_lines(sub, sub_path))
    return lines


# ---------------------------------------------------------------------------------- loading


def config_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> Config:
    """Build a :class:`Config` from parsed TOML data.

    Raises :class:`ConfigError` listing every problem found.
    """
    try:
        return converter.structure(data, Config)
    except Exception as exc:
        raise ConfigError(source, error_lines(exc, ROOT)) from exc


_TOML_POSITION_RE = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def load_config(path: Path | None) -> Config:
    """Read and validate the TOML file at ``path``; ``None`` gives the all-defaults config.

    Raises :class:`ConfigError` for a missing or unreadable file, invalid UTF-8, a TOML syntax
    error (naming file, line and column) and every invalid value or unknown key.
    """
    if path is None:
        return Config()
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, [f"{source}: file not found"]) from None
    except OSError as exc:
        raise ConfigError(source, [f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"{source}: not UTF-8 (byte {exc.start})"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION_RE.match(message)
        if match:
            where = f"{source}:{match['line']}:{match['col']}"
            detail = f"TOML syntax error at line {match['line']}, column {match['col']}: "
            message = detail + match["msg"]
        else:
            where = source
            message = f"TOML syntax error: {message}"
        raise ConfigError(source, [f"{where}: {message}"]) from exc
    return config_from_dict(data, source=source)
