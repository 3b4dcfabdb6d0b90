"""Figures from one run, the side-by-side table and the JSON file.

A run's raw record (:class:`RunRecord`) holds what the harness observed; :func:`figures`
turns it into the published numbers:

- ``accepted_per_s``: messages answered 250 after DATA, divided by the time from the start of
  injection to the last such answer.
- ``delivered_per_s``: messages that reached the sink, divided by the time from the start of
  injection to the last arrival (the relay's end-to-end throughput).
- ``latency_p50_s`` / ``p95`` / ``p99``: per message, sink arrival minus relay acceptance
  (both ``time.monotonic()``, one clock on Linux for every process); linear interpolation
  between closest ranks.
- ``cpu_s_per_msg``: CPU seconds (user+system) the relay's process tree used during the run,
  divided by the messages delivered.
- ``peak_rss_mb``: see ``memory_method`` in the same object.
- ``harness_cpu_s_per_msg``: CPU seconds of the load generator (the harness process, and
  the smtp-source processes with ``--injector smtp-source``) per message delivered: the
  share of the machine the measurement itself took.
- ``backend_cpu_s_per_msg`` / ``backend_peak_rss_mb``: the queue's database server
  (``--backend mongodb``), not included in the relay's figures.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

MB = 1024 * 1024


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation; None if empty.

    Same definition as numpy's default: rank ``(n - 1) * q / 100`` over the sorted values.
    Raises ValueError when ``q`` is outside 0..100.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latencies(accepted: Mapping[int, float], arrived: Mapping[str, float]) -> list[float]:
    """Arrival minus acceptance for every message id seen at both ends."""
    result = []
    for n, t_accept in accepted.items():
        t_arrive = arrived.get(str(n))
        if t_arrive is not None:
            result.append(t_arrive - t_accept)
    return result


@attrs.frozen
class RunRecord:
    """What the harness observed while one system relayed one load."""

    system: str
    offered: int
    accepted: int
    rejected: int
    failed: int
    delivered: int
    started: float
    last_accept: float | None
    last_delivery: float | None
    latencies_s: tuple[float, ...]
    cpu_s: float | None
    peak_rss_kb: int | None
    peak_pss_kb: int | None
    memory_method: str
    sink_connections: int
    sessions: int
    complete: bool
    notes: tuple[str, ...] = ()
    #: False when the injector cannot tell which message an acceptance was for.
    latency_measured: bool = True
    harness_cpu_s: float | None = None
    backend_cpu_s: float | None = None
    backend_peak_rss_kb: int | None = None
    #: Processes of the relay's tree: ever seen during the run, and at most at once.
    processes_seen: int | None = None
    peak_processes: int | None = None


def _rate(count: int, start: float, end: float | None) -> float | None:
    if end is None or count == 0 or end <= start:
        return None
    return count / (end - start)


def _span(start: float, end: float | None) -> float | None:
    return None if end is None else end - start


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _per_message(seconds: float | None, messages: int) -> float | None:
    return None if seconds is None or not messages else seconds / messages


def figures(record: RunRecord) -> dict[str, Any]:
    """The published figures of one run (see the module docstring), JSON-ready."""
    lat = record.latencies_s
    cpu_per_msg = _per_message(record.cpu_s, record.delivered)
    backend_rss = record.backend_peak_rss_kb
    return {
        "accepted_per_s": _round(_rate(record.accepted, record.started, record.last_accept), 1),
        "delivered_per_s": _round(_rate(record.delivered, record.started, record.last_delivery), 1),
        "latency_p50_s": _round(percentile(lat, 50), 6),
        "latency_p95_s": _round(percentile(lat, 95), 6),
        "latency_p99_s": _round(percentile(lat, 99), 6),
        "latency_max_s": _round(max(lat, default=None), 6),
        "latency_measured": record.latency_measured,
        "cpu_s_per_msg": _round(cpu_per_msg, 6),
        "peak_rss_mb": _round(None if record.peak_rss_kb is None else record.peak_rss_kb / 1024, 1),
        "peak_pss_mb": _round(None if record.peak_pss_kb is None else record.peak_pss_kb / 1024, 1),
        "memory_method": record.memory_method,
        "cpu_s": _round(record.cpu_s, 3),
        "accept_duration_s": _round(_span(record.started, record.last_accept), 3),
        "deliver_duration_s": _round(_span(record.started, record.last_delivery), 3),
        "offered": record.offered,
        "accepted": record.accepted,
        "rejected": record.rejected,
        "failed": record.failed,
        "delivered": record.delivered,
        "smtp_sessions_in": record.sessions,
        "sink_connections": record.sink_connections,
        "complete": record.complete,
        "harness_cpu_s_per_msg": _round(_per_message(record.harness_cpu_s, record.delivered), 6),
        "backend_cpu_s_per_msg": _round(_per_message(record.backend_cpu_s, record.delivered), 6),
        "backend_peak_rss_mb": _round(None if backend_rss is None else backend_rss / 1024, 1),
        "relay_processes_seen": record.processes_seen,
        "relay_processes_peak": record.peak_processes,
        "notes": list(record.notes),
    }


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, kernel and Python of this machine."""
    cpu_model = "unknown"
    memory_mb: int | None = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_mb": memory_mb,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


#: (label, key, scale, format) of the rows in the table.
_ROWS: tuple[tuple[str, str, float, str], ...] = (
    ("accepted/s", "accepted_per_s", 1, "{:.1f}"),
    ("delivered/s", "delivered_per_s", 1, "{:.1f}"),
    ("latency p50 ms", "latency_p50_s", 1000, "{:.1f}"),
    ("latency p95 ms", "latency_p95_s", 1000, "{:.1f}"),
    ("latency p99 ms", "latency_p99_s", 1000, "{:.1f}"),
    ("latency max ms", "latency_max_s", 1000, "{:.1f}"),
    ("CPU ms/msg", "cpu_s_per_msg", 1000, "{:.2f}"),
    ("peak RSS MB", "peak_rss_mb", 1, "{:.1f}"),
    ("peak PSS MB", "peak_pss_mb", 1, "{:.1f}"),
    ("seconds to deliver all", "deliver_duration_s", 1, "{:.2f}"),
    ("delivered", "delivered", 1, "{:.0f}"),
    ("sink connections", "sink_connections", 1, "{:.0f}"),
)
#: Rows shown only when some system has the figure.
_OPTIONAL_ROWS: tuple[tuple[str, str, float, str], ...] = (
    ("SMTP sessions in", "smtp_sessions_in", 1, "{:.0f}"),
    ("relay processes (peak)", "relay_processes_peak", 1, "{:.0f}"),
    ("relay processes seen", "relay_processes_seen", 1, "{:.0f}"),
    ("harness CPU ms/msg", "harness_cpu_s_per_msg", 1000, "{:.2f}"),
    ("backend CPU ms/msg", "backend_cpu_s_per_msg", 1000, "{:.2f}"),
    ("backend peak RSS MB", "backend_peak_rss_mb", 1, "{:.1f}"),
)


def _cell(value: Any, scale: float, fmt: str) -> str:
    if value is None:
        return "-"
    return fmt.format(value * scale)


def ratio(a: Any, b: Any) -> float | None:
    """``a / b`` for two figures, None when either is missing or ``b`` is zero."""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return float(a) / float(b)


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table, one column per system; with exactly zonemta and postfix, a ratio
    column ``zonemta/postfix`` follows."""
    systems = list(results)
    compare = set(systems) == {"zonemta", "postfix"}
    if compare:
        systems = ["zonemta", "postfix"]
    header = ["figure", *systems] + (["zonemta/postfix"] if compare else [])
    rows = [header]
    optional = [
        row for row in _OPTIONAL_ROWS if any(results[s].get(row[1]) is not None for s in systems)
    ]
    for label, key, scale, fmt in (*_ROWS, *optional):
        row = [label] + [_cell(results[s].get(key), scale, fmt) for s in systems]
        if compare:
            r = ratio(results["zonemta"].get(key), results["postfix"].get(key))
            row.append("-" if r is None else f"{r:.2f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    memory = {s: results[s].get("memory_method", "") for s in systems}
    for system, method in memory.items():
        lines.append(f"{system} memory: {method}")
    return "\n".join(lines)


def write_json(path: Path, results: Mapping[str, Mapping[str, Any]]) -> None:
    """Write one object per system run, keyed by system name."""
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
