"""The SMTP intake's process layout (``[intake]``)."""

from __future__ import annotations

import attrs

from zonemta.conf.units import AUTO_PROCESSES, ProcessCount, parse_process_count

__all__ = ["IntakeConfig"]


def _to_process_count(value: int | str) -> ProcessCount:
    return value if isinstance(value, ProcessCount) else parse_process_count(value)


@attrs.frozen
class IntakeConfig:
    """``processes``: SMTP intake in that many child processes sharing the listening sockets
    (0: in the relay's own process; "auto": see docs/config.md)."""

    processes: ProcessCount = attrs.field(default=AUTO_PROCESSES, converter=_to_process_count)
