"""The relay as a real process: crash recovery after SIGKILL, graceful SIGTERM, CLI errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

from tests.support.mx import TestMx
from tests.support.relay import submit
from tests.support.relay_process import RelayProcess

RELAY = [sys.executable, "-m", "zonemta"]


def write_config(path: Path, smtp_port: int, mx_port: int, queue: Path) -> Path:
    path.write_text(
        f"""
hostname = "relay.test"
[smtp.feeder]
host = "127.0.0.1"
port = {smtp_port}
[queue]
path = "{queue}"
retry_schedule = ["1s", "1s", "1s", "1s"]
lease_time = "30s"
[delivery]
connect_timeout = "5s"
[dns]
nameservers = ["127.0.0.1:1"]
timeout = "1s"
[zones.default]
host = "127.0.0.1"
port = {mx_port}
connections = 2
[api]
port = 0
"""
    )
    return path


async def wait_until(predicate: object, seconds: float) -> None:
    """Poll state owned by another thread or process (nothing here can signal us)."""
    assert callable(predicate)
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.05)


def message(n: int) -> bytes:
    return f"From: s@origin.test\r\nSubject: crash {n}\r\n\r\nbody {n}\r\n".encode()


async def test_sigkill_loses_no_accepted_message(tmp_path: Path) -> None:
    with TestMx() as mx:
        mx.stall_data.set()
        # Port 0: the relay says which port it got in its ready line.
        config = write_config(tmp_path / "zonemta.toml", 0, mx.port, tmp_path / "queue")
        async with RelayProcess(config, tmp_path / "first.log") as first:
            smtp_port = first.smtp_ports["feeder"]
            for n in range(20):
                await trio.to_thread.run_sync(
                    submit, smtp_port, "s@origin.test", [f"r{n}@one.test"], message(n)
                )
            # Two deliveries are in the middle of DATA, the rest wait in the queue.
            await wait_until(lambda: mx.stalled >= 2, 20)
            await first.kill()
            assert first.process is not None and first.process.returncode == -signal.SIGKILL
            await first.wait_group_gone(10)
        mx.stall_data.clear()

        async with RelayProcess(config, tmp_path / "second.log") as second:
            await wait_until(
                lambda: (
                    {m.recipients[0] for m in mx.received()}
                    >= {f"r{n}@one.test" for n in range(20)}
                ),
                60,
            )
            assert await second.terminate() == 0
    bodies = {m.recipients[0]: m.content for m in mx.received()}
    for n in range(20):
        assert f"body {n}\r\n".encode() in bodies[f"r{n}@one.test"]


def test_config_errors_exit_2_and_name_every_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[smtp.feeder]\nport = "twenty"\nmax_sise = 1\n[zones.default]\nconnections = 0\n'
    )
    result = subprocess.run(
        [*RELAY, "run", "-c", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "config.smtp.feeder" in result.stderr
    assert "max_sise" in result.stderr
    assert "port" in result.stderr
    assert "config.zones.default" in result.stderr


def test_a_port_in_use_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "z.toml", port, 1, tmp_path / "q")  # never used
        result = subprocess.run(
            [*RELAY, "run", "-c", str(config)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert "cannot start: [Errno 98] Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_command_prints_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "z.toml"
    path.write_text('[zones.default]\nconnections = 3\n[queue]\nretry_schedule = ["90s", "2h"]\n')
    result = subprocess.run(
        [*RELAY, "config", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "connections = 3" in result.stdout
    assert '"90s"' in result.stdout or "90s" in result.stdout
    echoed = tmp_path / "echo.toml"
    echoed.write_text(result.stdout)
    again = subprocess.run(
        [*RELAY, "config", "-c", str(echoed)], capture_output=True, text=True, timeout=60
    )
    assert again.stdout == result.stdout
