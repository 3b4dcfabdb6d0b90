"""Helpers to run a relay in-process in a trio test, submit mail to it and wait for
outcomes."""

from __future__ import annotations

import os
import smtplib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from zonemta.app import Relay, RelayInfo
from zonemta.conf import Config, config_from_dict
from zonemta.engine.bus import Event, Subscription


def relay_config(queue_path: Path, **tables: Any) -> Config:
    """A config for tests: SMTP on a free loopback port, sqlite in ``queue_path``, a short
    retry schedule; ``tables`` are merged over it (one level deep).

    DNS goes to a loopback port where nothing answers unless the test gives nameservers, so a
    test never queries a resolver outside this machine (lookups fail fast instead)."""
    data: dict[str, Any] = {
        "hostname": "relay.test",
        "smtp": {"feeder": {"host": "127.0.0.1", "port": 0}},
        "queue": {"path": str(queue_path), "retry_schedule": ["1s", "1s", "1s"]},
        "delivery": {
            "connect_timeout": "5s",
            "command_timeout": "10s",
            "data_timeout": "60s",
            # The suite again with delivery processes: ZONEMTA_TEST_DELIVERY_PROCESSES=1.
            "processes": int(os.environ.get("ZONEMTA_TEST_DELIVERY_PROCESSES", "0")),
        },
        # The suite again with SMTP intake processes: ZONEMTA_TEST_INTAKE_PROCESSES=2.
        "intake": {"processes": int(os.environ.get("ZONEMTA_TEST_INTAKE_PROCESSES", "0"))},
        "api": {"port": 0},
        "dns": {"nameservers": ["127.0.0.1:1"], "timeout": "2s"},
    }
    for key, value in tables.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_dict(data)


@asynccontextmanager
async def running_relay(config: Config) -> AsyncIterator[tuple[Relay, RelayInfo]]:
    relay = Relay(config, shutdown_grace=2.0)
    async with trio.open_nursery() as nursery:
        info: RelayInfo = await nursery.start(relay.run)
        try:
            yield relay, info
        finally:
            relay.request_stop()


def submit(
    port: int,
    mail_from: str,
    recipients: list[str],
    message: bytes,
    *,
    options: tuple[str, ...] = (),
) -> str:
    """Send one message with smtplib; returns the text of the reply to the end of data
    (``2.0.0 Message queued as <id>``). Raises AssertionError on any refusal."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        code, text = client.mail(mail_from, list(options))
        assert code == 250, (code, text)
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            assert code == 250, (code, text)
        code, text = client.data(message)
        assert code == 250, (code, text)
        return text.decode()


def queue_id(reply_text: str) -> str:
    return reply_text.rsplit(" ", 1)[-1]


async def submit_async(port: int, mail_from: str, recipients: list[str], message: bytes) -> str:
    """:func:`submit` in a worker thread; returns the queue id."""
    text = await trio.to_thread.run_sync(submit, port, mail_from, recipients, message)
    return queue_id(text)


async def collect_until(
    subscription: Subscription, done: Callable[[list[Event]], bool], *, seconds: float = 20
) -> list[Event]:
    """Read events until ``done(events)`` holds; fails after ``seconds``."""
    events: list[Event] = []
    with trio.fail_after(seconds):
        async for event in subscription.receive:
            events.append(event)
            if done(events):
                return events
    raise AssertionError(f"event stream ended early: {events}")


def terminal(events: list[Event]) -> list[Event]:
    return [e for e in events if e.type == "delivery" and e.to_state in ("delivered", "bounced")]


def states_of(events: list[Event], message_id: str, seq: int) -> list[str]:
    """The sequence of states one delivery went through, starting from its first state."""
    path: list[str] = []
    for event in events:
        if event.type == "delivery" and event.id == message_id and event.seq == seq:
            if not path:
                path.append(event.from_state or "")
            path.append(event.to_state or "")
    return path


def api_url(info: RelayInfo, scheme: str = "http") -> str:
    """Base URL of a running relay's HTTP API (``scheme="ws"`` for websockets)."""
    assert info.api_port is not None, "the relay runs without its HTTP API"
    return f"{scheme}://127.0.0.1:{info.api_port}"
