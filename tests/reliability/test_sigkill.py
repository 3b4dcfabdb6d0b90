"""SIGKILL the relay again and again under load, at random moments (during DATA, during the
commit, during deliveries): every message that got 250 is delivered, none twice except a
delivery in flight at a kill (the sink had it, the queue had not recorded it), none corrupted,
nothing refused is delivered, and nothing half-stored remains.

CI runs 20 kills; ``ZONEMTA_RELIABILITY_LONG=1`` runs the long variant (see
docs/reliability.md for its figures). Process counts: ``ZONEMTA_TEST_DELIVERY_PROCESSES``
(default 0, as in the rest of the suite) and ``ZONEMTA_TEST_INTAKE_PROCESSES`` (written into
the config only when set).
"""

from __future__ import annotations

import os
import random
import smtplib
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import attrs
import pytest
import trio

from tests.reliability.mail import check_intact, token_message
from tests.support.faulty_mx import FaultyMx
from tests.support.relay_process import RelayProcess
from zonemta.store.sqlite.schema import DB_FILENAME

LONG = os.environ.get("ZONEMTA_RELIABILITY_LONG") == "1"
KILLS = 100 if LONG else 20
SUBMITTERS = 8 if LONG else 4
# Run time of each relay before its kill, drawn uniformly: long enough to be mid-way through
# receptions, commits and deliveries, short enough for CI.
UP_SECONDS = (0.3, 2.0) if LONG else (0.1, 0.4)
SEED = int(os.environ.get("ZONEMTA_RELIABILITY_SEED", "0")) or random.randrange(1, 10**6)


def write_config(path: Path, queue: Path, sink_port: int) -> Path:
    delivery = int(os.environ.get("ZONEMTA_TEST_DELIVERY_PROCESSES", "0"))
    intake = os.environ.get("ZONEMTA_TEST_INTAKE_PROCESSES")
    path.write_text(
        f"""
hostname = "relay.test"
[smtp.feeder]
host = "127.0.0.1"
port = 0
[queue]
path = "{queue}"
retry_schedule = ["1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"]
body_chunk_size = "16KB"
[delivery]
processes = {delivery}
connect_timeout = "5s"
[dns]
nameservers = ["127.0.0.1:1"]
timeout = "1s"
[zones.default]
host = "127.0.0.1"
port = {sink_port}
connections = 4
[zones.bounces]
host = "127.0.0.1"
port = {sink_port}
connections = 1
[api]
enabled = false
"""
        + (f"[intake]\nprocesses = {int(intake)}\n" if intake is not None else "")
    )
    return path


class PhasedSMTP(smtplib.SMTP):
    """smtplib's client, telling where it is: "data" while it sends the message, "commit"
    from the end of data until the reply (the relay is storing and committing then)."""

    phase = "idle"

    def send(self, s: bytes | str) -> None:
        body = isinstance(s, bytes) and s.endswith(b"\r\n.\r\n")
        if body:
            self.phase = "data"
        super().send(s)
        if body:
            self.phase = "commit"


@attrs.define
class Load:
    """Submitters' shared state: outcomes by token, and what each one is doing."""

    port: int = 0
    up: threading.Event = attrs.field(factory=threading.Event)
    stop: threading.Event = attrs.field(factory=threading.Event)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    codes: dict[str, int] = attrs.field(factory=dict)
    clients: dict[int, PhasedSMTP] = attrs.field(factory=dict)

    def phases(self) -> Counter[str]:
        with self.lock:
            return Counter(client.phase for client in self.clients.values())


def submit_loop(load: Load, worker: int, rng: random.Random) -> None:
    """Runs in a thread: submit token messages until ``load.stop``; record each outcome
    (250, a refusal's code, or 0 when the connection died first)."""
    for seq in range(1_000_000):
        while not load.up.wait(0.05):
            if load.stop.is_set():
                return
        if load.stop.is_set():
            return
        token = f"t-{worker}-{seq}"
        message = token_message(token, rng.choice((500, 5_000, 40_000, 150_000)))
        code = 0
        try:
            with PhasedSMTP("127.0.0.1", load.port, timeout=30) as client:
                with load.lock:
                    load.clients[worker] = client
                client.ehlo("client.test")
                client.mail("s@origin.test")
                client.rcpt(f"{token}@one.test")
                code, _ = client.data(message)
        except smtplib.SMTPResponseException as exc:
            code = exc.smtp_code
        except (smtplib.SMTPException, OSError):
            code = 0
        finally:
            with load.lock:
                load.clients.pop(worker, None)
                load.codes[token] = code


def queued_recipients(queue: Path) -> set[str]:
    with sqlite3.connect(queue / DB_FILENAME) as db:
        return {row[0].split("@")[0] for row in db.execute("SELECT recipient FROM deliveries")}


def stored_rows(queue: Path) -> tuple[int, int, int]:
    with sqlite3.connect(queue / DB_FILENAME) as db:
        return tuple(  # type: ignore[return-value]
            db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("messages", "chunks", "deliveries")
        )


async def wait_until(predicate: object, seconds: float, what: str) -> None:
    """Poll state owned by other threads and processes (nothing there can wake us)."""
    assert callable(predicate)
    with trio.move_on_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within {seconds}s: {what}")


@pytest.mark.timeout(1800 if LONG else 120)
async def test_sigkill_under_load_loses_nothing_and_duplicates_only_in_flight(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    queue = tmp_path / "queue"
    load = Load()
    in_flight: Counter[str] = Counter()  # token -> kills it was in flight at
    kills_in_transaction = 0
    started = time.monotonic()
    with FaultyMx() as sink:
        config = write_config(tmp_path / "zonemta.toml", queue, sink.port)
        threads = [
            threading.Thread(target=submit_loop, args=(load, n, random.Random(SEED + n)))
            for n in range(SUBMITTERS)
        ]
        for thread in threads:
            thread.start()
        try:
            for kill in range(KILLS):
                relay = RelayProcess(config, tmp_path / f"relay-{kill}.log")
                async with relay:
                    load.port = relay.smtp_ports["feeder"]
                    load.up.set()
                    await trio.sleep(rng.uniform(*UP_SECONDS))  # the random moment
                    phases = load.phases()
                    await relay.kill()
                    load.up.clear()
                    kills_in_transaction += bool(phases["data"] + phases["commit"])
                    # Children notice the relay's death and exit (a survivor would go on
                    # delivering behind the next relay's back).
                    await relay.wait_group_gone(10)
                # In flight: the sink has it, the queue still holds its delivery row.
                delivered = {check_intact(m.content) for m in sink.received()}
                in_flight.update(queued_recipients(queue) & delivered)
            load.stop.set()
            for thread in threads:
                await trio.to_thread.run_sync(thread.join)
            # A last relay delivers what is left and stops gracefully.
            accepted = {token for token, code in load.codes.items() if code == 250}
            final = RelayProcess(config, tmp_path / "relay-final.log")
            async with final:

                def drained() -> bool:
                    tokens = {check_intact(m.content) for m in sink.received()}
                    return tokens >= accepted and stored_rows(queue)[2] == 0

                await wait_until(drained, 60, "every accepted message delivered")
                assert await final.terminate() == 0
                await final.wait_group_gone(10)
        finally:
            load.stop.set()
            for thread in threads:
                thread.join()
    received = Counter(check_intact(m.content) for m in sink.received())  # none corrupted
    codes = load.codes
    refused = {token for token, code in codes.items() if code not in (0, 250)}
    unacknowledged = {token for token, code in codes.items() if code == 0}
    duplicates = {token: n for token, n in received.items() if n > 1}
    figures = {
        "seed": SEED,
        "kills": KILLS,
        "kills_with_a_transaction_in_data_or_commit": kills_in_transaction,
        "submitted": len(codes),
        "accepted_250": len(accepted),
        "refused_4xx_5xx": len(refused),
        "connection_lost_unacknowledged": len(unacknowledged),
        "unacknowledged_but_delivered": len(unacknowledged & set(received)),
        "delivered_distinct": len(received),
        "delivered_total": sum(received.values()),
        "in_flight_at_a_kill": sum(in_flight.values()),
        "duplicates": sum(n - 1 for n in duplicates.values()),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"\nsigkill figures: {figures}")
    assert accepted <= set(received), f"lost: {sorted(accepted - set(received))[:10]}"
    assert not refused & set(received), "a refused message was delivered"
    for token, count in duplicates.items():
        assert count <= 1 + in_flight[token], f"{token} delivered {count} times, {figures}"
    assert set(received) <= set(codes), "the sink got a message nobody submitted"
    assert stored_rows(queue) == (0, 0, 0)  # nothing half-stored is left behind
    assert len(accepted) >= KILLS  # the load really ran between the kills
