"""Several relays on one MongoDB queue, as processes: shared work delivered exactly once, a
relay killed with SIGKILL whose work the other one finishes after the lease time, and a
database outage that submitters see as temporary failures and that loses nothing."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trio
from pymongo import MongoClient

from tests.support.mongo import ENV_URI, MongoEndpoint, mongo_endpoint, secantus_server
from tests.support.mx import TestMx
from tests.support.relay import submit
from tests.support.relay_process import READY_RE

RELAY = [sys.executable, "-m", "zonemta"]
LEASE_SECONDS = 10.0


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoEndpoint]:
    with mongo_endpoint(tmp_path_factory.mktemp("mongo")) as endpoint:
        yield endpoint


def with_options(uri: str, options: str) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}{options}"


def write_config(
    path: Path, *, smtp_port: int, mx_port: int, uri: str, database: str, instance: str
) -> Path:
    # Each relay sends from its own loopback address, so the MX can tell who delivered.
    path.write_text(
        f"""
hostname = "{instance}.relay.test"
[smtp.feeder]
host = "127.0.0.1"
port = {smtp_port}
[api]
enabled = false
[queue]
backend = "mongodb"
mongodb_uri = "{uri}"
database = "{database}"
instance_id = "{instance}"
retry_schedule = ["1s", "1s", "1s", "1s", "1s", "1s"]
lease_time = "{LEASE_SECONDS:.0f}s"
[delivery]
connect_timeout = "5s"
[dns]
nameservers = ["127.0.0.1:1"]
timeout = "1s"
[zones.default]
host = "127.0.0.1"
port = {mx_port}
connections = 4
local_address = "{source_address(instance)}"
"""
    )
    return path


def source_address(instance: str) -> str:
    return {"a": "127.0.0.2", "b": "127.0.0.3"}[instance]


def log_file(path: Path) -> BinaryIO:
    return path.open("ab")


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def ready_line(log: Path) -> re.Match[str] | None:
    return READY_RE.search(log.read_text(errors="replace"))


async def start_relay(config: Path, log: Path) -> tuple[trio.Process, int]:
    """Start ``zonemta run`` (output in ``log``, SMTP on port 0) and wait for its ready line;
    returns the process and the SMTP port it bound."""
    with log_file(log) as out:
        process = await trio.lowlevel.open_process(
            [*RELAY, "run", "-c", str(config)], stdout=out, stderr=out
        )
    with trio.fail_after(30):
        while (ready := ready_line(log)) is None:
            assert process.returncode is None, f"relay exited early: {tail(log)}"
            await trio.sleep(0.05)
    port = int(ready["smtp"].partition("=")[2])
    await trio.to_thread.run_sync(submit_probe, port)
    return process, port


def submit_probe(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.noop()


async def stop_relay(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()


async def wait_until(predicate: Any, seconds: float) -> None:
    """Poll state owned by another thread or process (nothing here can signal us)."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.1)


def message(n: int) -> bytes:
    return f"From: s@origin.test\r\nSubject: shared {n}\r\n\r\nbody {n}\r\n".encode()


async def submit_all(jobs: list[tuple[int, int]]) -> None:
    """Submit message ``n`` to SMTP port ``port`` for each ``(port, n)``, four at a time."""
    limiter = trio.CapacityLimiter(4)

    async def one(port: int, n: int) -> None:
        async with limiter:
            await trio.to_thread.run_sync(
                submit, port, "s@origin.test", [f"r{n}@one.test"], message(n)
            )

    async with trio.open_nursery() as nursery:
        for port, n in jobs:
            nursery.start_soon(one, port, n)


def queued(uri: str, database: str) -> int:
    """Delivery rows still in the queue, in any state."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        return client[database]["deliveries"].count_documents({})
    finally:
        client.close()


def locked_by(uri: str, database: str, owner: str) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        return list(client[database]["deliveries"].find({"state": "locked", "lease_owner": owner}))
    finally:
        client.close()


async def test_two_relays_share_the_queue_and_survive_a_sigkill(
    mongo: MongoEndpoint, tmp_path: Path
) -> None:
    total = 200
    with TestMx() as mx, mongo.fresh_database() as database:
        configs = {
            name: write_config(
                tmp_path / f"{name}.toml",
                smtp_port=0,
                mx_port=mx.port,
                uri=mongo.uri,
                database=database,
                instance=name,
            )
            for name in "ab"
        }
        relays: dict[str, trio.Process] = {}
        ports: dict[str, int] = {}
        for name, config in configs.items():
            relays[name], ports[name] = await start_relay(config, tmp_path / f"{name}.log")
        try:
            # Half the messages while both run: both relays deliver.
            await submit_all([(ports["ab"[n % 2]], n) for n in range(total // 2)])
            await wait_until(lambda: len(mx.received()) >= total // 2, 60)
            # The other half with the MX holding every DATA open: relay a gets some in
            # flight, and is killed there.
            mx.stall_data.set()
            await submit_all([(ports["ab"[n % 2]], n) for n in range(total // 2, total)])
            await wait_until(lambda: len(locked_by(mongo.uri, database, "a")) >= 2, 30)
            held = locked_by(mongo.uri, database, "a")
            relays["a"].kill()
            await relays["a"].wait()
            assert relays["a"].returncode == -signal.SIGKILL
            mx.stall_data.clear()
            await wait_until(lambda: len(mx.received()) >= total, 90)
            # Nothing left in the queue: no attempt is pending, so no duplicate can follow.
            await wait_until(lambda: queued(mongo.uri, database) == 0, 30)
        finally:
            for process in relays.values():
                await stop_relay(process)
        assert relays["b"].returncode == 0
    counts = Counter(r for m in mx.received() for r in m.recipients)
    assert counts == Counter(f"r{n}@one.test" for n in range(total))  # each exactly once
    by_recipient = {m.recipients[0]: m for m in mx.received()}
    peers = Counter(m.peer for m in by_recipient.values())
    assert peers[source_address("a")] > 0 and peers[source_address("b")] > 0
    # What a held when it died came back to b once the lease ran out.
    for doc in held:
        late = by_recipient[doc["recipient"]]
        assert late.peer == source_address("b")
        assert late.time >= doc["lease_until"] - 1.0
    for n in range(total):
        assert f"body {n}\r\n".encode() in by_recipient[f"r{n}@one.test"].content


def try_submit(port: int, n: int) -> int:
    """Submit one message; the first reply code that is not a success (or 250)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        for code, _ in (client.mail("s@origin.test"), client.rcpt(f"r{n}@one.test")):
            if code != 250:
                return code
        code, _ = client.data(message(n))
        return code


@pytest.mark.skipif(bool(os.environ.get(ENV_URI)), reason="needs a database it can stop")
async def test_database_outage_gives_temporary_failures_and_loses_nothing(
    tmp_path: Path,
) -> None:
    with TestMx() as mx, secantus_server(tmp_path / "db") as server:
        uri = with_options(server.uri, "timeoutMS=1500&serverSelectionTimeoutMS=1500")
        config = write_config(
            tmp_path / "a.toml",
            smtp_port=0,
            mx_port=mx.port,
            uri=uri,
            database="queue",
            instance="a",
        )
        relay, port = await start_relay(config, tmp_path / "a.log")
        try:
            for n in range(10):
                assert await trio.to_thread.run_sync(try_submit, port, n) == 250
            await wait_until(lambda: len(mx.received()) >= 10, 30)
            # Messages queued and in the middle of delivery when the database goes away.
            mx.stall_data.set()
            for n in range(10, 20):
                assert await trio.to_thread.run_sync(try_submit, port, n) == 250
            await wait_until(lambda: mx.stalled >= 2, 30)
            await trio.to_thread.run_sync(server.kill)
            mx.stall_data.clear()
            # Each refusal comes within the client's 1.5 s database timeouts, far inside
            # the 60 s smtplib timeout of try_submit (a hang fails there, not on a stopwatch).
            codes = [await trio.to_thread.run_sync(try_submit, port, n) for n in range(20, 23)]
            assert codes == [451, 451, 451]
            await trio.to_thread.run_sync(server.start)
            for n in range(23, 26):
                assert await trio.to_thread.run_sync(try_submit, port, n) == 250
            expected = {f"r{n}@one.test" for n in [*range(20), *range(23, 26)]}
            await wait_until(
                lambda: {r for m in mx.received() for r in m.recipients} >= expected, 60
            )
        finally:
            await stop_relay(relay)
        assert relay.returncode == 0
    received = {r for m in mx.received() for r in m.recipients}
    assert received == expected  # nothing refused was delivered, nothing accepted lost
