"""The MongoDB-wire server for ``--backend mongodb``: SecantusDB on a loopback port.

SecantusDB (``python -m secantus``, in the project's dev extras; the tests use it too, see
``tests/support/mongo.py``) is an emulator of MongoDB written in Python over WiredTiger, not
MongoDB: figures measured against it say how zonemta's MongoDB path behaves, not what it
would do against a real ``mongod``. The harness starts one per run with its data in the run's
work directory (from that directory, so that no ``secantusd.toml`` elsewhere is picked up)
and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import ports

#: How long a starting server may take to answer ``ping``.
START_TIMEOUT_S = 30.0
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
    """``python -m secantus --standalone`` on ``127.0.0.1:port``; always call :meth:`stop`."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port if port is not None else ports.free_port()
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
            "WARNING",
        ]

    def start(self) -> None:
        """Start the server and wait until it answers; raises MongoError when it does not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
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
            _wait_until_answering(self.uri, START_TIMEOUT_S)
        except Exception as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise MongoError(f"secantus did not start on port {self.port}: {tail}") from exc

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
