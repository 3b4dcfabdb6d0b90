"""``[delivery] processes = 1``: the relay's schedulers hand attempts to a child process over
a pipe; a real aiosmtpd MX on loopback receives what the child sends."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from tests.e2e.test_relay import MESSAGE, smart_host, without_received
from tests.support.mx import TestMx
from tests.support.relay import (
    collect_until,
    relay_config,
    running_relay,
    states_of,
    submit_async,
    terminal,
)
from zonemta.app import Relay
from zonemta.cli import main as cli_main
from zonemta.conf import ConfigError
from zonemta.engine.processes.delivery_process import StartError

ONE_PROCESS = {"processes": 1}


async def test_the_child_sends_and_the_relay_publishes_every_transition(
    tmp_path: Path, mx: TestMx
) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), delivery=ONE_PROCESS)
    async with running_relay(config) as (relay, info):
        [process] = relay.engine.processes
        assert process.pid is not None and process.pid != os.getpid()
        events = relay.bus.subscribe()
        recipients = ["a@one.test", "b@two.test"]
        first = await submit_async(info.smtp_ports["feeder"], "s@origin.test", recipients, MESSAGE)
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 2)
        port = info.smtp_ports["feeder"]
        second = await submit_async(port, "s@origin.test", ["c@x.test"], MESSAGE)
        seen += await collect_until(events, lambda ev: len(terminal(ev)) == 1)
        pool = relay.engine.pools["default"]
        assert pool.reuses >= 1  # reported by the child with each outcome
        assert pool.open_connections >= 1
    assert process.exit_status == 0  # stopped by closing the pipe
    for seq in (1, 2):
        path = states_of(seen, first, seq)
        assert path[:2] == ["queued", "locked"] and path[-1] == "delivered", path
        assert "sending" in path and "connecting" in path, path
    assert states_of(seen, second, 1)[-1] == "delivered"
    delivered = [e for e in terminal(seen)]
    assert {e.mx for e in delivered} == {"127.0.0.1"}
    for recipient in (*recipients, "c@x.test"):
        [got] = mx.for_recipient(recipient)
        assert without_received(got.content) == MESSAGE


async def test_a_body_not_in_memory_is_pulled_chunk_by_chunk(tmp_path: Path, mx: TestMx) -> None:
    # 3 MB: larger than the bodies kept in memory, so the child asks for 4 KB chunk after chunk
    body = b"".join(b"line %07d " % i + b"x" * 60 + b"\r\n" for i in range(40_000))
    message = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    config = relay_config(
        tmp_path / "q",
        zones=smart_host(mx),
        delivery=ONE_PROCESS,
        queue={"path": str(tmp_path / "q"), "body_chunk_size": "4KB"},
    )
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        await submit_async(info.smtp_ports["feeder"], "s@origin.test", ["big@one.test"], message)
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 1, seconds=60)
    assert terminal(seen)[0].to_state == "delivered"
    [got] = mx.for_recipient("big@one.test")
    assert without_received(got.content) == message


async def test_a_killed_child_defers_its_attempts_and_is_started_again(
    tmp_path: Path, mx: TestMx
) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), delivery=ONE_PROCESS)
    async with running_relay(config) as (relay, info):
        [process] = relay.engine.processes
        first_pid = process.pid
        assert first_pid is not None
        events = relay.bus.subscribe()
        mx.stall_data.set()  # the attempt stays in DATA
        message_id = await submit_async(
            info.smtp_ports["feeder"], "s@origin.test", ["a@one.test"], MESSAGE
        )
        with trio.fail_after(20):
            while mx.stalled < 1:  # noqa: ASYNC110 - counted in the MX's thread
                await trio.sleep(0.02)
        os.kill(first_pid, signal.SIGKILL)
        seen = await collect_until(events, lambda ev: any(e.to_state == "deferred" for e in ev))
        mx.stall_data.clear()
        seen += await collect_until(events, lambda ev: len(terminal(ev)) == 1)
        assert process.restarts == 1
        assert process.pid is not None and process.pid != first_pid
    [deferred] = [e for e in seen if e.to_state == "deferred"]
    assert deferred.response == "delivery process exited during the attempt"
    assert deferred.category == "internal"
    assert states_of(seen, message_id, 1)[-1] == "delivered"
    assert len(mx.for_recipient("a@one.test")) == 1


async def test_plugins_with_intake_hooks_only_run_beside_a_delivery_process(
    tmp_path: Path, mx: TestMx
) -> None:
    # http-auth answers AUTH (an intake hook) and is the interface's only AUTH backend.
    config = relay_config(
        tmp_path / "q",
        zones=smart_host(mx),
        delivery=ONE_PROCESS,
        smtp={
            "feeder": {
                "host": "127.0.0.1",
                "port": 0,
                "authentication": True,
                "allow_insecure_auth": True,
            }
        },
        plugins={"http-auth": {"url": "http://127.0.0.1:1/check"}},
        intake={"processes": 0},  # an intake hook: the intake stays in the relay
    )
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        await submit_async(info.smtp_ports["feeder"], "s@origin.test", ["a@one.test"], MESSAGE)
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 1)
    assert terminal(seen)[0].to_state == "delivered"
    assert len(mx.for_recipient("a@one.test")) == 1


async def test_a_delivery_process_that_cannot_start_stops_the_start(
    tmp_path: Path, mx: TestMx, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the child exits at once
    config = relay_config(tmp_path / "q", zones=smart_host(mx), delivery=ONE_PROCESS)
    relay = Relay(config, shutdown_grace=1.0)
    with pytest.raises(BaseExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
    match = raised.value.subgroup(StartError)
    assert match is not None
    assert "delivery process 0 did not start: " in repr(match)  # reset or no "ready"


def plugin_config(tmp_path: Path, mx: TestMx) -> str:
    text = f"""
hostname = "relay.test"
[smtp.feeder]
host = "127.0.0.1"
port = 0
[api]
enabled = false
[queue]
path = "{tmp_path / "q"}"
[delivery]
processes = 1
[zones.default]
host = "127.0.0.1"
port = {mx.port}
[zones.bounces]
host = "127.0.0.1"
port = {mx.port}
[plugins.example]
module = "examples.example_plugin"
"""
    path = tmp_path / "zonemta.toml"
    path.write_text(text)
    return str(path)


async def test_plugins_that_hook_into_sending_need_the_relays_own_process(
    tmp_path: Path, mx: TestMx
) -> None:
    config = relay_config(
        tmp_path / "q",
        zones=smart_host(mx),
        delivery=ONE_PROCESS,
        plugins={"example": {"module": "examples.example_plugin"}},
    )
    relay = Relay(config, shutdown_grace=1.0)
    with pytest.raises(BaseExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
    match = raised.value.subgroup(ConfigError)
    assert match is not None
    assert "config.delivery.processes: plugins use the sending hooks" in repr(match)


def test_zonemta_run_reports_the_setting_and_exits_2(
    tmp_path: Path, mx: TestMx, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["run", "-c", plugin_config(tmp_path, mx)]) == 2
    error = capsys.readouterr().err
    assert "config.delivery.processes" in error and "send_headers" in error
