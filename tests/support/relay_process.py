"""The relay as a real subprocess (``python -m zonemta run -c FILE``), for tests that kill it.

The relay binds port 0 and the test reads the port it got from its ``zonemta ready`` log
line, so no port is picked by binding, closing and hoping it stays free. The relay runs in a
process group of its own, so a test can wait until every process it started (delivery and
intake children included) is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import trio

__all__ = ["RelayProcess"]

READY_RE = re.compile(r"zonemta ready: SMTP (?P<smtp>[^;]*); HTTP API (?P<api>\S+)")
POLL = 0.05  # polling step for state owned by other processes (nothing there can wake us)


class RelayProcess:
    """One run of the relay; ``async with RelayProcess(config, log) as relay:`` starts it,
    waits until it is ready, and on the way out kills whatever of its group is left."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: trio.Process | None = None
        self.smtp_ports: dict[str, int] = {}

    async def start(self, seconds: float = 30) -> None:
        """Start the relay and wait for its ready line. Raises AssertionError if it exits or
        is not ready within ``seconds``."""
        with self.log.open("wb") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "zonemta", "run", "-c", str(self.config)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        with trio.fail_after(seconds):
            while (match := READY_RE.search(self.log.read_text(errors="replace"))) is None:
                if self.process.poll() is not None:
                    raise AssertionError(f"relay exited early:\n{self.log.read_text()}")
                await trio.sleep(POLL)
        self.smtp_ports = {
            name: int(port)
            for name, _, port in (item.partition("=") for item in match["smtp"].split(", "))
        }

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def group(self) -> list[int]:
        """Live processes (not zombies) of the relay's process group."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
            state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == self.pid and state != "Z":
                pids.append(int(entry.name))
        return pids

    async def kill(self) -> None:
        """SIGKILL the relay's main process only and reap it; its children must notice."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def wait_group_gone(self, seconds: float) -> None:
        """Wait until no process of the group is left. Raises AssertionError naming the
        survivors after ``seconds``."""
        with trio.move_on_after(seconds):
            while self.group():  # noqa: ASYNC110 - other processes' lifetimes
                await trio.sleep(POLL)
            return
        raise AssertionError(f"processes outlived the relay: {self.group()}")

    async def terminate(self, seconds: float = 30) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(seconds):
            return await self.process.wait()

    async def __aenter__(self) -> RelayProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            with trio.CancelScope(shield=True):
                await self.process.wait()
        if self.process is not None:
            for pid in self.group():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
