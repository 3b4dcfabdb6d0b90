"""The MongoDB-wire server for ``--backend mongodb``: SecantusDB on a loopback port.

SecantusDB (``python -m secantus``, in the project's dev extras; the tests use it too, see
``tests/support/mongo.py``) is an emulator of MongoDB written in Python over WiredTiger, not
MongoDB: figures measured against it say how zonemta's MongoDB path behaves, not what it
would do against a real ``mongod``. The harness starts one per run with its data in the run's
work directory (from that directory, so that no ``secantusd.toml`` elsewhere is picked up)
and stops it afterwards. It binds port 0 and the harness reads the port it got from its
``secantus listening on`` log line (logged at INFO, the level it runs at; SecantusDB logs
nothing per request at INFO).
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import ports

#: How long a starting server may take to say where it listens, then to answer ``ping``.
START_TIMEOUT_S = 30.0
LISTENING_RE = re.compile(r"secantus listening on 127\.0\.0\.1:(?P<port>\d+)")
#: Grace between SIGTERM and SIGKILL when stopping it.
STOP_GRACE_S = 15.0
#: What the output says about this backend.
EMULATOR_NOTE = (
    "queue backend: mongodb against SecantusDB, a MongoDB emulator in Python "
    "(not mongod): its figures are the emulator's, not MongoDB's"
)


class MongoError(Exception):
    """The server did not start."""


class SecantusServer:
    """``python -m secantus --standalone`` on ``127.0.0.1:port`` (by default a port it binds
    itself, known once :meth:`start` returns); always call :meth:`stop`."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port if port is not None else 0
        self.storage = workdir / "secantus-data"
        self.log_path = workdir / "secantus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "secantus",
            "--standalone",
            "--host",
            ports.LOOPBACK,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.storage),
            "--log-level",
            "INFO",  # for the "listening on" line
        ]

    def start(self) -> None:
        """Start the server and wait until it answers; raises MongoError when it does not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            if not self.port:
                self.port = self._listening_port(logged)
            _wait_until_answering(self.uri, START_TIMEOUT_S)
        except Exception as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise MongoError(f"secantus did not start on port {self.port}: {tail}") from exc

    def _listening_port(self, offset: int) -> int:
        """The port in this start's ``secantus listening on`` line (what follows ``offset``
        in the log). Raises MongoError when the server exits or says nothing in time."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                found = LISTENING_RE.search(log.read().decode(errors="replace"))
            if found is not None:
                return int(found["port"])
            if self._proc is None or self._proc.poll() is not None:
                raise MongoError("secantus exited before it listened")
            time.sleep(0.05)  # the server's log: nothing here can wake us
        raise MongoError(f"secantus did not say where it listens within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 15 s. Never raises."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _wait_until_answering(uri: str, seconds: float) -> None:
    """Block until ``uri`` answers ``ping``; raises a pymongo error after ``seconds``."""
    from pymongo import MongoClient  # only this backend needs it

    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=int(seconds * 1000)
    )
    try:
        client.admin.command("ping")
    finally:
        client.close()
