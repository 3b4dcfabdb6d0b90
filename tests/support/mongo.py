"""A MongoDB-wire server for tests: SecantusDB (a test-only dependency) in a child process
on a loopback port it binds itself (port 0; the port is read from its log), or the real
MongoDB that ``ZONEMTA_TEST_MONGODB_URI`` points at.

Test modules wrap these in their own fixtures, e.g.::

    @pytest.fixture(scope="session")
    def mongo(tmp_path_factory) -> Iterator[MongoEndpoint]:
        with mongo_endpoint(tmp_path_factory.mktemp("mongo")) as endpoint:
            yield endpoint

and take a fresh database per test from :meth:`MongoEndpoint.fresh_database` (dropped
afterwards), so that tests never see each other's documents and stay small (SecantusDB's
queries cost time in proportion to the documents they match).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from pymongo import MongoClient

ENV_URI = "ZONEMTA_TEST_MONGODB_URI"

LISTENING_RE = re.compile(r"secantus listening on 127\.0\.0\.1:(?P<port>\d+)")

#: How long a starting server may take to answer.
START_SECONDS = 30.0


class SecantusServer:
    """``python -m secantus --standalone`` on ``port`` with its data in ``storage``. It can
    be killed and started again on the same port and storage (an outage)."""

    def __init__(self, storage: Path, port: int | None = None) -> None:
        self.storage = storage
        self.port = port if port is not None else 0  # 0: known once it has started
        self.log_path = storage.parent / f"{storage.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers. Raises RuntimeError if it does not."""
        if self.running:
            return
        self.storage.mkdir(parents=True, exist_ok=True)
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "secantus",
                    "--standalone",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),  # 0 the first time: the system picks a free port
                    "--storage-path",
                    str(self.storage),
                    "--log-level",
                    "INFO",  # for the "listening on" line
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if not self.port:
                self.port = self._listening_port(logged)
            wait_until_answering(self.uri, START_SECONDS)
        except Exception as exc:
            self.kill()
            log_text = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"secantus did not start on port {self.port}: {log_text}") from exc

    def _listening_port(self, offset: int) -> int:
        """The port from this start's "secantus listening on HOST:PORT" log line (the log
        is appended to across restarts: only what follows ``offset`` counts)."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                found = LISTENING_RE.search(log.read().decode(errors="replace"))
            if found is not None:
                return int(found["port"])
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError("secantus exited before it listened")
            time.sleep(0.05)  # a thread of the test's; the server cannot wake us
        raise RuntimeError(f"secantus did not say where it listens in {START_SECONDS} s")

    def kill(self) -> None:
        """SIGKILL: the database disappears at once (an outage or a crash)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it takes too long."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def wait_until_answering(uri: str, seconds: float) -> None:
    """Block until a server at ``uri`` answers ``ping`` (pymongo's own server selection
    does the waiting). Raises a pymongo error after ``seconds``."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=int(seconds * 1000)
    )
    try:
        client.admin.command("ping")
    finally:
        client.close()


@attrs.define
class MongoEndpoint:
    """Where the tests' MongoDB is; ``server`` is None for an external one."""

    uri: str
    server: SecantusServer | None

    @contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A database name nobody used before; dropped afterwards."""
        name = f"zonemta_test_{secrets.token_hex(6)}"
        try:
            yield name
        finally:
            client: MongoClient[dict[str, Any]] = MongoClient(
                self.uri, serverSelectionTimeoutMS=10000
            )
            try:
                client.drop_database(name)
            finally:
                client.close()


@contextmanager
def mongo_endpoint(storage: Path) -> Iterator[MongoEndpoint]:
    """The external MongoDB of ``ZONEMTA_TEST_MONGODB_URI`` if set, else a SecantusDB
    server with its data in ``storage``, always stopped afterwards."""
    external = os.environ.get(ENV_URI)
    if external:
        yield MongoEndpoint(external, None)
        return
    server = SecantusServer(storage)
    try:
        server.start()
        yield MongoEndpoint(server.uri, server)
    finally:
        server.kill()  # its data is thrown away: no need for a clean shutdown


@contextmanager
def secantus_server(storage: Path) -> Iterator[SecantusServer]:
    """A SecantusDB server of the test's own (one it may kill and restart), always stopped
    afterwards."""
    server = SecantusServer(storage)
    try:
        server.start()
        yield server
    finally:
        server.kill()
