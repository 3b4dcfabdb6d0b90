"""CPU time and memory of a process tree, read straight from ``/proc`` (no psutil).

The tree is found afresh at every reading (every pid whose ``ppid`` chain leads to the root),
so children that start after the root (zonemta's delivery and intake processes, a child
started again after it died) are in it from the first reading after they started.

CPU: for every live process in the tree, ``utime + stime + cutime + cstime`` from
``/proc/PID/stat``. A child that exited and was reaped by a process of the tree is counted in
its reaper's ``cutime/cstime``; a live one in its own ``utime/stime``; so the sum is the CPU
the whole tree has used, and the difference of two samples is what a load cost it: a child
started between them counts whole, a child that died between them (reaped by its parent, as
zonemta's supervisor does) counts through its parent. Only a process that leaves the tree
alive (a daemon that double-forks) would escape; zonemta starts none.

Memory, three views (the report says which one a figure is):
- ``VmHWM`` (``/proc/PID/status``): the kernel's peak resident set of one process; exact, but
  only for a process that is alive when read.
- sampled ``VmRSS`` summed over the tree: double-counts pages shared between processes.
- sampled PSS summed over the tree (``/proc/PID/smaps_rollup``): shared pages split between
  their sharers; the fair figure for a many-process MTA such as Postfix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import attrs

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (field 3 onwards), or None."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode("ascii").split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot): with the pid, names one process even
    when pids are reused. None when the process is gone."""
    fields = _stat_fields(pid)
    # After the name: state=0, ppid=1, ... starttime=19.
    return None if fields is None else int(fields[19])


def parent_map() -> dict[int, int]:
    """Map every visible pid to its parent pid."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def tree_pids(root: int, parents: dict[int, int] | None = None) -> list[int]:
    """``root`` and all its live descendants (empty when ``root`` is gone); ``parents`` is a
    :func:`parent_map` to reuse (one scan of ``/proc`` for several trees)."""
    if parents is None:
        parents = parent_map()
    if root not in parents:
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found = [root]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system, including reaped children) used by ``pids`` so far."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # After the name: state=0, ppid=1, ... utime=11, stime=12, cutime=13, cstime=14.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root``'s process tree (see the module docstring)."""
    return cpu_seconds(tree_pids(root))


def _status_kb(pid: int, key: str) -> int:
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def hwm_kb(pid: int) -> int:
    """Peak resident set (``VmHWM``) of one live process in KiB, 0 when unreadable."""
    return _status_kb(pid, "VmHWM:")


def rss_kb(pid: int) -> int:
    """Current resident set (``VmRSS``) of one process in KiB, 0 when unreadable."""
    return _status_kb(pid, "VmRSS:")


def pss_kb(pid: int) -> int:
    """Proportional set size of one process in KiB (``smaps_rollup``), 0 when unreadable."""
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


@attrs.define
class MemorySampler:
    """Keeps the peak of the tree's summed RSS and PSS, and the largest VmHWM seen.

    Call :meth:`sample` periodically; reading the ~100 processes of a Postfix tree takes a
    few milliseconds. Every process found in the tree is remembered (``seen``: pid and start
    time), so the report can say how many processes a figure covers.
    """

    root: int
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    peak_hwm_kb: int = 0
    peak_processes: int = 0
    samples: int = 0
    seen: set[tuple[int, int]] = attrs.Factory(set)

    def sample(self, parents: dict[int, int] | None = None) -> None:
        """Read the tree's memory now; ``parents`` as for :func:`tree_pids`."""
        pids = tree_pids(self.root, parents)
        if not pids:
            return
        self.samples += 1
        self.peak_processes = max(self.peak_processes, len(pids))
        for pid in pids:
            started = start_ticks(pid)
            if started is not None:
                self.seen.add((pid, started))
        self.peak_rss_kb = max(self.peak_rss_kb, sum(rss_kb(pid) for pid in pids))
        self.peak_pss_kb = max(self.peak_pss_kb, sum(pss_kb(pid) for pid in pids))
        self.peak_hwm_kb = max(self.peak_hwm_kb, sum(hwm_kb(pid) for pid in pids))
