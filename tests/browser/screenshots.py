"""Screenshots of the dashboard for docs/screenshots/: ``python -m tests.browser.screenshots``.

Runs a relay and a test MX on loopback, sends a stream of messages over SMTP (some
recipients deferred with 451, some refused with 550, one domain held by a suspension),
opens the dashboard in headless chromium and saves the sign-in page, the dashboard and the
message view.
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from tests.browser.conftest import install_chromium
from tests.browser.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TOKEN,
    RelayThread,
    dashboard_config,
    sign_in,
)
from tests.support.mx import TestMx
from tests.support.relay import queue_id, submit

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DOMAINS = ["example.net", "mail.example.org", "customers.example.com", "news.example.io"]
POINTS = 40  # chart points before the dashboard is shot


def mx_reply(address: str) -> str | None:
    if address.startswith("busy"):
        return "451 4.7.1 Greylisted, try again later"
    if address.startswith("gone"):
        return "550 5.1.1 No such user"
    return None


def message(recipient: str, number: int) -> bytes:
    return (
        f"From: Newsletter <news@origin.example>\r\nTo: {recipient}\r\n"
        f"Subject: Weekly update #{number}\r\n\r\nHello, this is update {number}.\r\n"
    ).encode()


def traffic(relay: RelayThread, stop: threading.Event) -> None:
    """A steady flow of mail until ``stop``: mostly delivered, some deferred or refused."""
    rng = random.Random(5)
    number = 0
    while not stop.wait(rng.uniform(0.05, 0.35)):
        number += 1
        kind = rng.choices(["ok", "busy", "gone"], weights=[85, 10, 5])[0]
        local = {"ok": f"user{number}", "busy": f"busy{number}", "gone": f"gone{number}"}[kind]
        recipient = f"{local}@{rng.choice(DOMAINS)}"
        submit(relay.smtp_port, "news@origin.example", [recipient], message(recipient, number))


def shoot(page: Page, relay: RelayThread, mx: TestMx) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    page.goto(f"{relay.api_url}/ui/")
    expect(page.locator("#login")).to_be_visible()
    page.screenshot(
        path=str(OUT / "sign-in.png"), clip={"x": 0, "y": 0, "width": 1440, "height": 420}
    )

    with relay.client() as api:
        api.post(
            "/suspend",
            json={"domain": "held.example", "for": "2h", "reason": "provider outage", "who": "ops"},
        )
    held = queue_id(
        submit(
            relay.smtp_port,
            "billing@origin.example",
            ["invoices@held.example"],
            message("invoices@held.example", 0),
        )
    )
    stop = threading.Event()
    sender = threading.Thread(target=traffic, args=(relay, stop), daemon=True)
    sign_in(page, relay, "?interval=0.5")
    sender.start()
    try:
        page.wait_for_function(  # the charts fill: POINTS scrapes 0.5 s apart
            "n => Number(document.querySelector('#chart-latency').dataset.points) >= n && "
            "document.querySelectorAll('#feed-table tbody tr').length > 60",
            arg=POINTS,
            timeout=120_000,
        )
        page.select_option("#queue-zone", "default")
        page.select_option("#queue-kind", "deferred")
        expect(page.locator("#queue-table tbody tr").first).to_be_visible()
        page.screenshot(path=str(OUT / "dashboard.png"), full_page=True)
    finally:
        stop.set()
        sender.join()

    # A deferred message, seen by the page from its reception: its history and its "why".
    page.locator("#queue-table tbody tr button[data-message]").first.click()
    expect(page.locator("#mv-why li[data-code=retry]")).to_be_visible()
    expect(page.locator("#mv-history tr[data-state=deferred]")).to_be_visible()
    page.screenshot(path=str(OUT / "message.png"))
    page.click("#mv-close")
    page.fill("#lookup-id", held)
    page.click("#lookup button[type=submit]")
    expect(page.locator("#mv-why li[data-code=suspended]")).to_be_visible()
    page.screenshot(path=str(OUT / "message-held.png"))


def main() -> int:
    install_chromium()
    with tempfile.TemporaryDirectory() as folder, TestMx(rcpt_reply=mx_reply) as mx:
        mx.data_delay = lambda _rcpt: random.uniform(0.02, 0.25)
        relay = RelayThread(
            dashboard_config(Path(folder) / "q", mx, queue={"retry_schedule": ["10m", "30m", "1h"]})
        )
        relay.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context(
                    viewport={"width": 1440, "height": 900}, device_scale_factor=1
                )
                shoot(context.new_page(), relay, mx)
                browser.close()
        finally:
            relay.stop()
    print(f"screenshots in {OUT} (token {TOKEN!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
