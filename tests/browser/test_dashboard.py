"""The dashboard in a real headless chromium (Debian's, driven by Playwright): it loads
without console errors, shows a message sent over SMTP live until it is delivered, and its
actions (suspend, resume, send now, delete) change the relay as the API then reports."""

from __future__ import annotations

import re

from playwright.sync_api import Dialog, Page, expect

from tests.browser.conftest import ConsoleProblems
from tests.browser.support import TOKEN, RelayThread, sign_in
from tests.support.mx import TestMx
from tests.support.relay import queue_id, submit

MESSAGE = (
    b"From: Sender <sender@origin.test>\r\n"
    b"To: {rcpt}\r\n"
    b"Subject: dashboard test\r\n"
    b"\r\n"
    b"hello from the dashboard tests\r\n"
)
FAST = "?interval=0.5"  # poll /metrics and the counters every 0.5 s


def send(relay: RelayThread, recipient: str) -> str:
    """One message over SMTP; its queue id."""
    message = MESSAGE.replace(b"{rcpt}", recipient.encode())
    return queue_id(submit(relay.smtp_port, "sender@origin.test", [recipient], message))


def unexpected(problems: ConsoleProblems, gone: str = "") -> list[str]:
    """The console problems, less chromium's report of a 404 from ``/message/<gone>`` (the
    message view asks for a message that has left the queue, and the API answers 404)."""
    return [
        p
        for p in problems.problems
        if not (gone and "status of 404" in p and f"/message/{gone}" in p)
    ]


def test_dashboard_loads_and_draws_without_console_errors(
    relay: RelayThread, page: tuple[Page, ConsoleProblems]
) -> None:
    tab, problems = page
    sign_in(tab, relay, FAST)
    expect(tab.locator("#stat-active")).to_have_text("0")
    expect(tab.locator("#stat-delivered")).to_have_text("0")
    expect(tab.locator("#zones-table tr[data-zone=bounces]")).to_be_visible()
    # Two scrapes of /metrics make the first point of each chart: its legend shows a rate.
    expect(tab.locator("#legend-throughput b[data-series=delivered]")).to_have_text("0/s")
    expect(tab.locator("#suspensions-empty")).to_be_visible()
    expect(tab.locator("#blacklist-empty")).to_be_visible()
    assert tab.evaluate("sessionStorage.getItem('zonemta.token')") == TOKEN
    # Reloading keeps the tab signed in (session storage), without a prompt.
    tab.reload()
    expect(tab.locator("#feed-status")).to_have_attribute("data-state", "live")
    expect(tab.locator("#login")).to_be_hidden()
    assert problems.problems == []


def test_a_message_sent_over_smtp_shows_live_until_delivered(
    relay: RelayThread, mx: TestMx, page: tuple[Page, ConsoleProblems]
) -> None:
    tab, problems = page
    sign_in(tab, relay, FAST)
    message_id = send(relay, "rcpt@one.test")
    row = f"#feed-table tr[data-id='{message_id}']"
    expect(tab.locator(f"{row}[data-type='message.queued']")).to_have_count(1)
    delivered = tab.locator(f"{row}[data-state=delivered]")
    expect(delivered).to_be_visible()
    expect(delivered).to_contain_text("rcpt@one.test")
    expect(delivered).to_contain_text("250")
    expect(tab.locator(f"{row}[data-state=sending]")).to_have_count(1)
    assert [m.recipients for m in mx.messages] == [("rcpt@one.test",)]
    # The counters follow /metrics.
    expect(tab.locator("#stat-delivered")).to_have_text("1")
    expect(tab.locator("#stat-received")).to_have_text("1")
    # The message view: gone from the queue, its history as the feed saw it.
    delivered.locator("button[data-message]").click()
    view = tab.locator("#message-view")
    expect(view).to_be_visible()
    expect(tab.locator("#mv-id")).to_have_text(message_id)
    expect(tab.locator("#mv-state")).to_have_text(re.compile("last delivery went delivered"))
    history = tab.locator("#mv-history tr.history-row")
    expect(history.first).to_have_attribute("data-state", "message.queued")
    expect(history.last).to_have_attribute("data-state", "delivered")
    expect(tab.locator("#mv-delete")).to_be_disabled()
    assert unexpected(problems, gone=message_id) == []


def test_suspend_a_domain_see_why_then_resume(
    relay: RelayThread, page: tuple[Page, ConsoleProblems]
) -> None:
    tab, problems = page
    sign_in(tab, relay, FAST)
    tab.select_option("#suspend-scope", "domain")
    tab.fill("#suspend-value", "held.test")
    tab.fill("#suspend-for", "2h")
    tab.fill("#suspend-reason", "provider outage")
    tab.click("#suspend-form button[type=submit]")
    entry = tab.locator("#suspensions-table tr[data-domain='held.test']")
    expect(entry).to_contain_text("provider outage")
    with relay.client() as api:
        (stored,) = api.get("/suspend").json()["suspensions"]
    assert stored["domain"] == "held.test" and stored["who"] == "dashboard"
    assert stored["reason"] == "provider outage" and "until" in stored

    message_id = send(relay, "rcpt@held.test")
    expect(tab.locator("#domains-table tr[data-domain='held.test']")).to_contain_text("1")
    tab.fill("#lookup-id", message_id)
    tab.click("#lookup button[type=submit]")
    reason = tab.locator("#mv-why li[data-code=suspended]")
    expect(reason).to_contain_text(stored["id"])
    expect(tab.locator("#mv-deliveries tr[data-seq='1']")).to_contain_text("QUEUED")
    tab.click("#mv-close")

    entry.get_by_role("button", name="Resume").click()
    expect(entry).to_have_count(0)
    with relay.client() as api:
        assert api.get("/suspend").json() == {"suspensions": []}
    delivered = tab.locator(f"#feed-table tr[data-id='{message_id}'][data-state=delivered]")
    expect(delivered).to_have_count(1)
    assert unexpected(problems) == []


def test_send_now_and_delete_from_the_message_view(
    relay: RelayThread, page: tuple[Page, ConsoleProblems]
) -> None:
    tab, problems = page
    with relay.client() as api:
        response = api.post("/suspend", json={"domain": "later.test", "reason": "keep it"})
        assert response.status_code == 201
    sign_in(tab, relay, FAST)
    message_id = send(relay, "rcpt@later.test")
    queued = tab.locator(f"#feed-table tr[data-id='{message_id}'][data-type='message.queued']")
    queued.locator("button[data-message]").click()
    expect(tab.locator("#mv-deliveries tr[data-seq='1']")).to_contain_text("rcpt@later.test")

    tab.click("#mv-send-now")
    expect(tab.locator(".toast")).to_contain_text(f"Rescheduled 1 delivery(ies) of {message_id}")

    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    tab.once("dialog", accept)
    tab.click("#mv-delete")
    expect(tab.locator("#mv-state")).to_contain_text("Not in the queue")
    assert dialogs and message_id in dialogs[0]
    with relay.client() as api:
        assert api.get(f"/message/{message_id}").status_code == 404
    expect(tab.locator("#stat-active")).to_have_text("0")
    assert unexpected(problems, gone=message_id) == []


def test_a_wrong_token_is_refused_at_the_prompt(
    relay: RelayThread, page: tuple[Page, ConsoleProblems]
) -> None:
    tab, _problems = page  # chromium reports the refused requests (401) on the console
    tab.goto(f"{relay.api_url}/ui/")
    tab.fill("#token", TOKEN + "-wrong")
    tab.click("#login-form button[type=submit]")
    expect(tab.locator("#login-error")).to_have_text("The relay refused the token.")
    expect(tab.locator("#dashboard")).to_be_hidden()
    assert tab.evaluate("sessionStorage.getItem('zonemta.token')") is None


def test_a_token_in_the_fragment_signs_in_and_leaves_the_address_bar(
    relay: RelayThread, page: tuple[Page, ConsoleProblems]
) -> None:
    tab, problems = page
    tab.goto(f"{relay.api_url}/ui/#token={TOKEN}")
    expect(tab.locator("#feed-status")).to_have_attribute("data-state", "live")
    expect(tab.locator("#login")).to_be_hidden()
    assert tab.url == f"{relay.api_url}/ui/"
    assert tab.evaluate("sessionStorage.getItem('zonemta.token')") == TOKEN
    tab.click("#signout")
    expect(tab.locator("#login")).to_be_visible()
    assert tab.evaluate("sessionStorage.getItem('zonemta.token')") is None
    assert problems.problems == []
