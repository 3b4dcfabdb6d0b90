"""Running the benchmark sink for the harness: in its own process (default) or in a thread.

Both expose the same surface: :meth:`start` (returns the port), :meth:`pump` (an async task
that keeps ``arrivals`` and ``connections`` current while the harness's trio loop runs) and
:meth:`stop`. ``arrivals`` maps ``X-Bench-Id`` to arrival time (``time.monotonic()``);
``total`` counts every message received, so duplicates show as ``total > len(arrivals)``.

A separate process is the default: the sink then does not share the harness's GIL with the
injector (measured: see README, "Where the sink runs").
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import trio

from benchmarks.sink import serve_sink

#: Seconds the harness waits for a sink to start or stop.
SINK_START_TIMEOUT_S = 10.0


class SinkError(Exception):
    """The sink did not start."""


class _Counts:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.total = 0
        self.connections = 0
        self.anonymous = 0

    def arrival(self, bench_id: str | None, when: float) -> None:
        self.total += 1
        if bench_id is None:
            self.anonymous += 1
        else:
            self.arrivals.setdefault(bench_id, when)

    def connection(self) -> None:
        self.connections += 1


class SinkProcess(_Counts):
    """``python -m benchmarks.sink`` as a child process; owns it and its pipes."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.requested_port = port
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> int:
        """Start the sink and return its port; raises SinkError when it does not listen."""
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sink", "--port", str(self.requested_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # unbuffered: reads exactly the first line
        if not line.startswith(b"listening "):
            self.stop()
            raise SinkError(f"sink did not start: {line!r}")
        self.port = int(line.split()[1])
        return self.port

    async def pump(self) -> None:
        """Apply the sink's reports as they come; returns when the sink's stdout closes."""
        assert self._proc is not None and self._proc.stdout is not None
        stream = trio.lowlevel.FdStream(os.dup(self._proc.stdout.fileno()))
        pending = b""
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                pending += data
                cut = pending.rfind(b"\n") + 1
                if not cut:
                    continue
                for line in pending[:cut].splitlines():
                    if line.startswith(b"a "):
                        _, bench_id, when = line.split()
                        self.arrival(None if bench_id == b"-" else bench_id.decode(), float(when))
                    elif line == b"c":
                        self.connection()
                pending = pending[cut:]

    def stop(self) -> None:
        """Close the sink's stdin (it exits), then SIGKILL its group if needed. Never raises."""
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


class SinkThread(_Counts):
    """The sink in a thread of the harness process, with its own trio loop."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.requested_port = port
        self.port = 0
        self.pid: int | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None

    def start(self) -> int:
        """Start the thread and return the port; raises SinkError when it does not listen."""

        async def _serve() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self.port = await nursery.start(
                        lambda task_status: serve_sink(
                            self.arrival,
                            self.connection,
                            port=self.requested_port,
                            task_status=task_status,
                        )
                    )
                    self._ready.set()

        def _run() -> None:
            try:
                trio.run(_serve)
            except BaseException as exc:
                self._error = exc
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=_run, name="bench-sink", daemon=True)
        self._thread.start()
        self._ready.wait(SINK_START_TIMEOUT_S)
        if not self.port:
            raise SinkError(f"sink thread did not start: {self._error!r}")
        return self.port

    async def pump(self) -> None:
        """Nothing to pump: the thread updates the counts directly. Sleeps until cancelled."""
        await trio.sleep_forever()

    def stop(self) -> None:
        """Cancel the sink's trio loop and join the thread. Never raises."""
        if self._token is not None and self._scope is not None:
            scope = self._scope
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(scope.cancel, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(SINK_START_TIMEOUT_S)
