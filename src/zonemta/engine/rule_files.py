"""Rule files (bounce rules, backoff rules): one rule per line, blank lines and ``#``
comments skipped, every error naming ``file:line``; the operator's file is read first, then
the one shipped in ``zonemta/data``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import TypeVar

__all__ = ["load_rule_files", "rule_lines"]

R = TypeVar("R")


def rule_lines(text: str, source: str) -> Iterator[tuple[str, str]]:
    """``(where, line)`` for each rule line of ``text``: stripped, ``where`` is
    ``source:number``."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield f"{source}:{number}", line


def load_rule_files(
    parse: Callable[[str, str], list[R]],
    extra: str | Path | None,
    builtin: str,
    error: Callable[[str], Exception],
    what: str,
) -> list[R]:
    """The rules of the operator's file ``extra`` (if any), then the built-in ``builtin``
    (a file of ``zonemta/data``), each parsed by ``parse(text, source)``. An unreadable
    operator file raises ``error`` with a message naming the file and ``what`` it holds."""
    rules: list[R] = []
    if extra:
        path = Path(extra)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise error(f"{path}: cannot read {what}: {exc}") from None
        rules += parse(text, str(path))
    shipped = resources.files("zonemta.data").joinpath(builtin).read_text(encoding="utf-8")
    return rules + parse(shipped, builtin)
