"""The relay under test: ``zonemta run -c FILE`` as a subprocess with a generated config.

The harness writes a TOML config that listens on loopback port 0 (the relay binds a port the
kernel picks and names it in its ``zonemta ready`` log line, which :meth:`ZonemtaRelay.wait_ready`
reads), keeps its queue in the run's temp directory and sends everything to the sink through
the ``default`` zone (the sink is its smart host, an address: no DNS lookup), with ``[dns]``
pointed at a loopback port where nothing answers so the relay never reads the machine's
``resolv.conf``; merged with the user's ``--config`` file (its tables override). The relay
runs in its own process group; :meth:`ZonemtaRelay.stop` sends SIGTERM, waits up to 15 s,
then kills the group.

With ``profile=True`` the relay runs under ``py-spy record`` when py-spy is installed (it
attaches to the relay's pid, so py-spy's own CPU is not counted), else under
``python -m cProfile -o FILE`` (which only sees the main thread and slows the relay down).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Grace between SIGTERM and SIGKILL when stopping the relay.
STOP_GRACE_S = 15.0
#: The database of the ``--backend mongodb`` queue (the server is the run's own).
MONGODB_DATABASE = "zonemta_bench"
#: Where the generated config sends DNS queries: a loopback port where nothing answers (the
#: sink is an address, so no lookup is needed; one that happens fails at once).
NO_DNS = {"nameservers": ["127.0.0.1:1"], "timeout": "1s"}
#: The relay's INFO line once every interface listens: ``SMTP name=port, ...; HTTP API ...``.
READY_RE = re.compile(r"zonemta ready: SMTP (?P<smtp>[^;]*);")

_LAUNCHER = """\
import signal, sys
from zonemta.cli import main
def _term(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, _term)
sys.argv = ["zonemta", "run", "-c", {config!r}]
sys.exit(main())
"""


class ZonemtaError(Exception):
    """The relay executable is missing or the relay exited early."""


def find_tool(name: str) -> Path | None:
    """An executable beside this Python (the virtualenv), or on PATH; None when absent."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


def find_zonemta() -> Path | None:
    """The ``zonemta`` console script beside this Python, or on PATH; None when absent."""
    return find_tool("zonemta")


def build_config(
    *,
    queue_dir: Path,
    port: int,
    sink_port: int,
    delivery_processes: int = 1,
    intake_processes: int | str | None = None,
    mongodb_uri: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The relay config for one run, with ``extra`` (a parsed TOML file) merged over it.

    ``port`` 0 lets the relay bind a port the kernel picks (see :meth:`ZonemtaRelay.wait_ready`).
    ``[dns]`` goes to a loopback port where nothing answers: a ``--config`` that routes by
    host name must give its own. ``[intake] processes`` is written only when
    ``intake_processes`` is given, so the harness also runs a zonemta that does not know the
    setting. With ``mongodb_uri`` the
    queue is ``backend = "mongodb"`` in the database ``zonemta_bench`` of that server.
    """
    queue: dict[str, Any] = {"path": str(queue_dir)}
    if mongodb_uri is not None:
        queue.update(backend="mongodb", mongodb_uri=mongodb_uri, database=MONGODB_DATABASE)
    config: dict[str, Any] = {
        "hostname": "bench.local",
        "smtp": {"feeder": {"host": "127.0.0.1", "port": port, "max_size": "2GB"}},
        "api": {"host": "127.0.0.1", "port": 0},
        "queue": queue,
        "delivery": {"processes": delivery_processes},
        "dns": dict(NO_DNS),
        "zones": {
            "default": {"host": "127.0.0.1", "port": sink_port, "connections": 20},
        },
    }
    if intake_processes is not None:
        config["intake"] = {"processes": intake_processes}
    if extra:
        config = merge(config, extra)
    return config


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two TOML documents: tables merge key by key, anything else is replaced."""
    result = dict(base)
    for key, value in override.items():
        current = result.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            result[key] = merge(current, value)
        else:
            result[key] = value
    return result


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; raises tomllib.TOMLDecodeError or OSError."""
    with path.open("rb") as handle:
        return tomllib.load(handle)


def _toml_key(key: str) -> str:
    if key and all(ch.isalnum() or ch in "-_" for ch in key):
        return key
    return _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(document: Mapping[str, Any]) -> str:
    """Serialise nested tables of scalars and lists (all this harness needs) as TOML."""
    lines: list[str] = []

    def _table(path: list[str], table: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        if path and (scalars or not tables):
            lines.append(f"[{'.'.join(_toml_key(part) for part in path)}]")
        for key, value in scalars:
            lines.append(f"{_toml_key(str(key))} = {_toml_value(value)}")
        if scalars:
            lines.append("")
        for key, value in tables:
            _table([*path, str(key)], value)

    _table([], document)
    return "\n".join(lines).rstrip() + "\n"


class ZonemtaRelay:
    """One ``zonemta run`` subprocess. Owns its process group; always call :meth:`stop`."""

    def __init__(self, workdir: Path, config: Mapping[str, Any], *, profile: bool = False):
        self.workdir = workdir
        self.config_path = workdir / "zonemta.toml"
        self.config = config
        self.profile = profile
        self.profile_path: Path | None = None
        self.log_path = workdir / "zonemta.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._profiler: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """PID of the relay process itself (not of a profiler wrapping it)."""
        if self._proc is None:
            raise ZonemtaError("relay not started")
        return self._proc.pid

    def start(self) -> None:
        """Write the config and start the relay; raises ZonemtaError when it cannot."""
        executable = find_zonemta()
        if executable is None:
            raise ZonemtaError("no zonemta executable (pip install -e . first)")
        self.config_path.write_text(dump_toml(self.config))
        command = [str(executable), "run", "-c", str(self.config_path)]
        py_spy = find_tool("py-spy") if self.profile else None
        if self.profile and py_spy is None:
            launcher = self.workdir / "profile_launcher.py"
            launcher.write_text(_LAUNCHER.format(config=str(self.config_path)))
            self.profile_path = self.workdir / "zonemta.cprofile"
            command = [sys.executable, "-m", "cProfile", "-o", str(self.profile_path)]
            command.append(str(launcher))
        log = self.log_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            log.close()
        if py_spy is not None:
            # Collapsed stacks (one "frame;frame;... count" line each): text that
            # flamegraph tools read and that is easy to sum up by function.
            self.profile_path = self.workdir / "zonemta-profile.txt"
            self._profiler = subprocess.Popen(
                [
                    str(py_spy),
                    "record",
                    "--pid",
                    str(self._proc.pid),
                    "--format",
                    "raw",
                    "--threads",
                    "--subprocesses",  # the delivery processes ([delivery] processes)
                    "-o",
                    str(self.profile_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float) -> int:
        """Block until the relay logs ``zonemta ready``; returns the port of its ``feeder``
        interface as that line names it (the generated config asks for port 0).

        A configured non-zero ``[smtp.feeder] port`` is returned as it is, without the line
        (a ``--config`` whose ``[log] level`` hides INFO lines must name its port).
        Raises ZonemtaError when the relay exits first or has no ``feeder``, TimeoutError
        after ``timeout`` seconds.
        """
        feeder = self.config.get("smtp", {}).get("feeder", {})
        if feeder.get("port"):
            return int(feeder["port"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            try:
                found = READY_RE.search(self.log_path.read_text(errors="replace"))
            except OSError:
                found = None
            if found is not None:
                items = (item.partition("=") for item in found["smtp"].split(", "))
                ports = {name.strip(): port for name, _, port in items}
                if not ports.get("feeder", "").strip().isdigit():
                    raise ZonemtaError(f"no feeder port in {found[0]!r}")
                return int(ports["feeder"])
            time.sleep(0.05)  # the relay's log: nothing here can wake us
        raise TimeoutError(f"zonemta did not log 'zonemta ready' within {timeout} s")

    def check_running(self) -> None:
        """Raise ZonemtaError (with the log's tail) when the relay has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise ZonemtaError(f"zonemta exited with {self._proc.returncode}: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the relay's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the relay, SIGKILL its process group after 15 s. Never raises."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE_S)
        if proc is not None:
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        profiler = self._profiler
        if profiler is not None:
            try:
                profiler.wait(STOP_GRACE_S)  # py-spy writes its file when the target exits
            except subprocess.TimeoutExpired:
                _signal_group(profiler.pid, signal.SIGKILL)
                profiler.wait(5)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
