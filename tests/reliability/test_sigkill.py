"""SIGKILL the relay again and again under load: a quarter of the kills while a client is
inside DATA (after the 354, half its body sent), a quarter while a client has sent the final
dot and waits for the reply (the relay is storing and committing), the rest at a random
moment (during receptions, commits and deliveries). Every message that got 250 is delivered,
none twice except a delivery in flight at a kill (the sink had it, the queue had not recorded
it), none corrupted, nothing refused or cut short in DATA is delivered, and nothing
half-stored remains.

CI runs 20 kills; ``ZONEMTA_RELIABILITY_LONG=1`` runs the long variant (see
docs/reliability.md for its figures). Process counts: ``ZONEMTA_TEST_DELIVERY_PROCESSES``
(default 0, as in the rest of the suite; any other number becomes at least 2, so several
delivery processes are killed with the relay, one per zone) and
``ZONEMTA_TEST_INTAKE_PROCESSES`` (written into the config only when set).
"""

from __future__ import annotations

import os
import random
import signal
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
# Kills timed on purpose: this many while a client is inside DATA, as many while a client
# waits for the reply to its final dot; the others at a random moment. Drawn in random order.
PLANNED = KILLS // 4
# Recipients alternate between two domains, routed to two zones: with delivery processes
# each zone has its own (zones are dealt out in configuration order: default and bounces to
# the first, second to the second), so both send.
DOMAINS = ("one.test", "two.test")


def delivery_processes() -> int:
    """``[delivery] processes``: 0 unless the run asks for delivery processes, then at least
    2 (one per zone that sends)."""
    requested = int(os.environ.get("ZONEMTA_TEST_DELIVERY_PROCESSES", "0"))
    return max(requested, 2) if requested else 0


def write_config(path: Path, queue: Path, sink_port: int) -> Path:
    delivery = delivery_processes()
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
[zones.second]
host = "127.0.0.1"
port = {sink_port}
connections = 4
recipient_domains = ["{DOMAINS[1]}"]
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


@attrs.define
class Load:
    """Submitters' shared state: outcomes by token, what each one is doing, and the kill a
    client is to fire when it gets to the moment the test armed ("data" or "commit")."""

    port: int = 0
    relay_pid: int = 0
    up: threading.Event = attrs.field(factory=threading.Event)
    stop: threading.Event = attrs.field(factory=threading.Event)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    codes: dict[str, int] = attrs.field(factory=dict)
    clients: dict[int, PhasedSMTP] = attrs.field(factory=dict)
    armed: str | None = None
    fired: threading.Event = attrs.field(factory=threading.Event)
    cut_in_data: set[str] = attrs.field(factory=set)  # tokens killed with half a body sent
    killed_waiting: set[str] = attrs.field(factory=set)  # killed just after the final dot

    def phases(self) -> Counter[str]:
        with self.lock:
            return Counter(client.phase for client in self.clients.values())

    def arm(self, moment: str) -> None:
        """The next client to reach ``moment`` kills the relay (see :class:`PhasedSMTP`)."""
        with self.lock:
            self.fired.clear()
            self.armed = moment

    def fire_at(self, moment: str, token: str, relay_pid: int) -> None:
        """SIGKILL the relay's main process if a kill is armed for ``moment`` (the first
        client of that relay, ``relay_pid``, to get there takes it); the test reaps the
        process once ``fired`` is set."""
        with self.lock:
            if self.armed != moment or relay_pid != self.relay_pid:
                return
            self.armed = None
            os.kill(self.relay_pid, signal.SIGKILL)
            self.up.clear()  # no new connections to the dead relay's port
            (self.cut_in_data if moment == "data" else self.killed_waiting).add(token)
        self.fired.set()


class PhasedSMTP(smtplib.SMTP):
    """smtplib's client, telling where it is: "data" while it sends the message, "commit"
    from the end of data until the reply (the relay is storing and committing then). A kill
    armed for "data" fires after the first half of the body is sent (the 354 has come, the
    final dot has not been sent); one armed for "commit" right after the final dot."""

    phase = "idle"

    def __init__(self, load: Load, token: str) -> None:
        self.load = load
        self.token = token
        self.relay_pid = load.relay_pid  # read before the port: a stale pair never fires
        super().__init__("127.0.0.1", load.port, timeout=30)

    def send(self, s: bytes | str) -> None:
        if not (isinstance(s, bytes) and s.endswith(b"\r\n.\r\n")):
            super().send(s)
            return
        self.phase = "data"  # smtplib sends the body (with the dot) only after the 354
        half = len(s) // 2
        super().send(s[:half])
        self.load.fire_at("data", self.token, self.relay_pid)
        super().send(s[half:])  # after such a kill: fails, or the relay must refuse it
        self.phase = "commit"
        self.load.fire_at("commit", self.token, self.relay_pid)


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
            with PhasedSMTP(load, token) as client:
                with load.lock:
                    load.clients[worker] = client
                client.ehlo("client.test")
                client.mail("s@origin.test")
                client.rcpt(f"{token}@{DOMAINS[seq % 2]}")
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


def delivery_workers(relay: RelayProcess) -> int:
    """How many delivery processes of ``relay`` are running."""
    count = 0
    for pid in relay.group():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        count += b"zonemta.engine.processes.delivery_worker" in cmdline
    return count


@pytest.mark.timeout(1800 if LONG else 120)
async def test_sigkill_under_load_loses_nothing_and_duplicates_only_in_flight(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    queue = tmp_path / "queue"
    load = Load()
    in_flight: Counter[str] = Counter()  # token -> kills it was in flight at
    moments = ["data"] * PLANNED + ["commit"] * PLANNED + ["random"] * (KILLS - 2 * PLANNED)
    rng.shuffle(moments)
    random_in_transaction = 0  # random kills that found a client in DATA or its commit
    most_delivery_workers = 0
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
            for kill, moment in enumerate(moments):
                relay = RelayProcess(config, tmp_path / f"relay-{kill}.log")
                async with relay:
                    load.port = relay.smtp_ports["feeder"]
                    load.relay_pid = relay.pid
                    load.up.set()
                    await trio.sleep(rng.uniform(*UP_SECONDS))  # receptions and deliveries
                    most_delivery_workers = max(most_delivery_workers, delivery_workers(relay))
                    if moment == "random":
                        phases = load.phases()
                        await relay.kill()
                        load.up.clear()
                        random_in_transaction += bool(phases["data"] + phases["commit"])
                    else:  # the next client to reach the moment kills the relay
                        load.arm(moment)
                        fired = await trio.to_thread.run_sync(load.fired.wait, 60)
                        assert fired, f"kill {kill}: no client reached {moment} in 60 s"
                        await relay.kill()  # already dead: reap it
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
    # A commit kill counts when no 250 had come before it: the relay died with the message
    # received and its reply not sent (one that came back 250 had been answered already).
    mid_commit = {token for token in load.killed_waiting if codes[token] != 250}
    domains = Counter(r.split("@")[1] for m in sink.received() for r in m.recipients)
    figures = {
        "seed": SEED,
        "kills": KILLS,
        "kills_mid_data": len(load.cut_in_data),
        "kills_mid_commit": len(mid_commit),
        "kills_after_the_dot_too_late": len(load.killed_waiting) - len(mid_commit),
        "kills_random": moments.count("random"),
        "random_kills_with_a_client_in_data_or_commit": random_in_transaction,
        "delivery_processes": most_delivery_workers,
        "submitted": len(codes),
        "accepted_250": len(accepted),
        "refused_4xx_5xx": len(refused),
        "connection_lost_unacknowledged": len(unacknowledged),
        "unacknowledged_but_delivered": len(unacknowledged & set(received)),
        "mid_commit_but_delivered": len(mid_commit & set(received)),
        "delivered_distinct": len(received),
        "delivered_total": sum(received.values()),
        "delivered_by_domain": dict(domains),
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
    # The deliberate moments happened: kills inside DATA and kills during the commit.
    assert len(load.cut_in_data) >= 1, figures
    assert len(mid_commit) >= 1, figures
    # A body cut short by a kill is never accepted, and never delivered.
    cut_accepted = {token for token in load.cut_in_data if codes[token] == 250}
    assert not cut_accepted, f"cut short in DATA yet answered 250: {sorted(cut_accepted)}"
    assert not load.cut_in_data & set(received), "a message cut short in DATA was delivered"
    # Each zone sent (each from its own delivery process when there are processes).
    assert set(domains) == set(DOMAINS), figures
    assert most_delivery_workers == delivery_processes(), figures
