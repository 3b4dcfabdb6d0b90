"""Fixtures of the dashboard tests: Debian's chromium (installed with apt when missing),
driven by Playwright's sync API, and a relay with its HTTP API running in a thread of its
own (the test's thread belongs to Playwright)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

from tests.browser.support import CHROMIUM, CHROMIUM_ARGS, RelayThread, dashboard_config
from tests.support.mx import TestMx


def install_chromium() -> None:
    """``apt-get install chromium`` when it is missing (CI runs as root with Debian's
    registry reachable). Fails the tests with the reason when that is impossible: a
    dashboard test that cannot run is a failure, not a skip."""
    if Path(CHROMIUM).exists():
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(
            f"{CHROMIUM} is missing and cannot be installed here (needs apt-get as root): "
            "install Debian's chromium package to run tests/browser",
            pytrace=False,
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} failed ({done.returncode}); chromium is needed by "
                f"tests/browser:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}",
                pytrace=False,
            )
    if not Path(CHROMIUM).exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing", pytrace=False)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    install_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class ConsoleProblems:
    """Console messages of type ``error`` and uncaught page errors, as text."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console.error: {message.text} at {message.location}")

    def on_page_error(self, error: Error) -> None:
        self.problems.append(f"page error: {error.message}")


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, ConsoleProblems]]:
    """A fresh page (its own context: empty session storage) and what went wrong in it."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    problems = ConsoleProblems()
    new_page = context.new_page()
    new_page.on("console", problems.on_console)
    new_page.on("pageerror", problems.on_page_error)
    new_page.set_default_timeout(20_000)
    try:
        yield new_page, problems
    finally:
        context.close()


@pytest.fixture
def mx() -> Iterator[TestMx]:
    with TestMx() as server:
        yield server


@pytest.fixture
def relay(tmp_path: Path, mx: TestMx) -> Iterator[RelayThread]:
    """A relay with a token, sending to the test MX."""
    running = RelayThread(dashboard_config(tmp_path / "q", mx))
    running.start()
    try:
        yield running
    finally:
        running.stop()
