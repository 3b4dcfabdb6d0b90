"""Helpers of the dashboard tests and the screenshot script: the browser's settings, a
relay running in a thread, and signing in to the dashboard."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import trio
from playwright.sync_api import Page, expect

from tests.support.mx import TestMx
from tests.support.relay import relay_config, running_relay
from zonemta.app import Relay, RelayInfo
from zonemta.conf import Config

CHROMIUM = "/usr/bin/chromium"
#: Debian's chromium, headless, with nothing that reaches beyond this machine.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-test-token"
START_TIMEOUT = 60.0


def dashboard_config(queue_path: Path, mx: TestMx, **tables: Any) -> Config:
    """A relay with an API token, whose zones (bounces too) send to the test MX."""
    zones = {
        "default": {"host": "127.0.0.1", "port": mx.port},
        "bounces": {"host": "127.0.0.1", "port": mx.port, "connections": 1},
    }
    return relay_config(queue_path, zones=zones, api={"port": 0, "token": TOKEN}, **tables)


class RelayThread:
    """:func:`running_relay` in a thread with its own trio loop, so that a synchronous test
    (Playwright's sync API owns the test's thread) can use it. :meth:`start` returns once
    the relay is serving; :meth:`stop` stops it and waits."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.relay: Relay | None = None
        self.info: RelayInfo | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with running_relay(self.config) as (relay, info):
            self.relay, self.info = relay, info
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise AssertionError("the relay did not start in time")
        if self._error is not None or self.info is None:
            raise AssertionError(f"the relay did not start: {self._error!r}") from self._error

    def stop(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(START_TIMEOUT)
        assert not self._thread.is_alive(), "the relay did not stop in time"
        if self._error is not None:
            raise AssertionError(f"the relay failed: {self._error!r}") from self._error

    @property
    def api_url(self) -> str:
        assert self.info is not None and self.info.api_port is not None
        return f"http://127.0.0.1:{self.info.api_port}"

    @property
    def smtp_port(self) -> int:
        assert self.info is not None
        return self.info.smtp_ports["feeder"]

    def client(self) -> httpx.Client:
        """An API client with the token (to check what the dashboard did)."""
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )


def sign_in(page: Page, relay: RelayThread, query: str = "") -> None:
    """Open the dashboard, give the token at its prompt, and wait until the feed is live
    and the zone counters are shown."""
    page.goto(f"{relay.api_url}/ui/{query}")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#feed-status")).to_have_attribute("data-state", "live")
    expect(page.locator("#zones-table tr[data-zone=default]")).to_be_visible()
