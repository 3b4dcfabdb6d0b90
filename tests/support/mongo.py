"""A MongoDB-wire server for tests: SecantusDB (a test-only dependency) in a child process
on a loopback port it binds itself (port 0; the port is read from its output), or the real
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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

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
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        listening = _LogCopier(self._process, self.log_path)
        try:
            port = listening.port(START_SECONDS)
            if not self.port:
                self.port = port
            wait_until_answering(self.uri, START_SECONDS)
        except Exception as exc:
            self.kill()
            log_text = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"secantus did not start on port {self.port}: {log_text}") from exc

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


class _LogCopier:
    """Copies a server's output to its log file (appended to across restarts) in a thread,
    and tells :meth:`port` the port of its "secantus listening on HOST:PORT" line as soon as
    that line is read: the reading thread wakes the test, nothing polls."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self._port: int | None = None
        self._seen = threading.Event()  # the listening line, or the end of the output
        assert process.stdout is not None
        thread = threading.Thread(target=self._copy, args=(process.stdout, log_path))
        thread.daemon = True
        thread.start()

    def _copy(self, output: IO[bytes], log_path: Path) -> None:
        with output, open(log_path, "ab") as log:
            for line in output:
                log.write(line)
                log.flush()
                found = LISTENING_RE.search(line.decode(errors="replace"))
                if found is not None and not self._seen.is_set():
                    self._port = int(found["port"])
                    self._seen.set()
        self._seen.set()  # the server exited (or closed its output) without the line

    def port(self, seconds: float) -> int:
        if not self._seen.wait(seconds):
            raise RuntimeError(f"secantus did not say where it listens in {seconds} s")
        if self._port is None:
            raise RuntimeError("secantus exited before it listened")
        return self._port


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
