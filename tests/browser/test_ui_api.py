"""What the dashboard needs from the API, checked without a browser: its files served
without the token (and nothing else), the token as a websocket subprotocol, and the
per-domain queue counters."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.browser.support import TOKEN, dashboard_config
from tests.support.mx import TestMx
from tests.support.relay import api_url, relay_config, running_relay, submit_async
from zonemta.http.routes_ui import UI_FILES

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MESSAGE = b"From: s@origin.test\r\nTo: x@one.test\r\nSubject: hi\r\n\r\nhello\r\n"


def bearer_subprotocol(token: str) -> str:
    return "zonemta.bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


async def test_dashboard_files_are_served_without_the_token_and_nothing_else_is(
    tmp_path: Path, mx: TestMx
) -> None:
    async with (
        running_relay(dashboard_config(tmp_path / "q", mx)) as (_relay, info),
        httpx.AsyncClient(base_url=api_url(info)) as client,
    ):
        root = await client.get("/ui")
        assert root.status_code == 308 and root.headers["location"] == "ui/"
        page = await client.get("/ui/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<script type="module" src="app.js">' in page.text
        for name, content_type in UI_FILES.items():
            response = await client.get(f"/ui/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"] == content_type
        assert (await client.get("/ui/settings.json")).json() == {"token_required": True}
        # Only the shipped files are public: any other name needs the token, then is 404.
        assert (await client.get("/ui/secrets.txt")).status_code == 401
        missing = await client.get("/ui/secrets.txt", headers=AUTH)
        assert missing.status_code == 404 and "error" in missing.json()
        # The data behind the page still needs the token.
        for path in ("/zones", "/counter/domain/", "/suspend", "/ui/../zones"):
            assert (await client.get(path)).status_code == 401, path
        assert (await client.get("/counter/domain/", headers=AUTH)).status_code == 200


async def test_settings_say_when_no_token_is_needed(tmp_path: Path) -> None:
    async with (
        running_relay(relay_config(tmp_path / "q")) as (_relay, info),
        httpx.AsyncClient(base_url=api_url(info)) as client,
    ):
        assert (await client.get("/ui/settings.json")).json() == {"token_required": False}


async def test_ui_off_serves_no_dashboard_and_makes_nothing_public(tmp_path: Path) -> None:
    config = relay_config(tmp_path / "q", api={"port": 0, "token": TOKEN, "ui": False})
    async with (
        running_relay(config) as (_relay, info),
        httpx.AsyncClient(base_url=api_url(info)) as client,
    ):
        for path in ("/ui", "/ui/", "/ui/settings.json", "/ui/app.js"):
            refused = await client.get(path)
            assert refused.status_code == 401, path  # no longer public
            missing = await client.get(path, headers=AUTH)
            assert missing.status_code == 404 and "error" in missing.json(), path
        assert (await client.get("/zones", headers=AUTH)).status_code == 200


async def test_websocket_takes_the_token_as_a_subprotocol(tmp_path: Path, mx: TestMx) -> None:
    async with running_relay(dashboard_config(tmp_path / "q", mx)) as (_relay, info):
        url = api_url(info, "ws") + "/events"
        offered = ["zonemta.events", bearer_subprotocol(TOKEN)]
        async with open_websocket_url(url, subprotocols=offered) as ws:
            assert ws.subprotocol == "zonemta.events"  # never the token back
            assert json.loads(await ws.get_message())["type"] == "subscribed"
        for wrong in (bearer_subprotocol(TOKEN + "x"), "zonemta.bearer.!!", "zonemta.bearer."):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(url, subprotocols=["zonemta.events", wrong]):
                    pass
            assert rejected.value.status_code == 401, wrong
        # A client that offers no subprotocol (zonemta events) gets none.
        headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
        async with open_websocket_url(url, extra_headers=headers) as ws:
            assert ws.subprotocol is None


async def test_counter_by_domain(tmp_path: Path, mx: TestMx) -> None:
    config = dashboard_config(tmp_path / "q", mx)
    async with (
        running_relay(config) as (_relay, info),
        httpx.AsyncClient(base_url=api_url(info), headers=AUTH) as client,
    ):
        for domain in ("one.test", "two.test"):  # held: the deliveries stay queued
            response = await client.post("/suspend", json={"domain": domain})
            assert response.status_code == 201
        port = info.smtp_ports["feeder"]
        await submit_async(port, "s@origin.test", ["a@one.test", "b@one.test"], MESSAGE)
        await submit_async(port, "s@origin.test", ["c@two.test"], MESSAGE)
        with trio.fail_after(10):
            while True:
                counts = (await client.get("/counter/domain/")).json()
                if counts["scanned"] == 3:
                    break
                await trio.sleep(0.05)
        assert counts == {
            "zone": "all",
            "domains": [
                {"domain": "one.test", "active": 2, "deferred": 0, "zones": ["default"]},
                {"domain": "two.test", "active": 1, "deferred": 0, "zones": ["default"]},
            ],
            "total": 2,
            "scanned": 3,
            "complete": True,
        }
        first = (await client.get("/counter/domain/", params={"limit": 1})).json()
        assert [d["domain"] for d in first["domains"]] == ["one.test"] and first["total"] == 2
        bounces = (await client.get("/counter/domain/", params={"zone": "bounces"})).json()
        assert bounces["zone"] == "bounces" and bounces["domains"] == []
        assert (await client.get("/counter/domain/?zone=nope")).status_code == 404
        assert (await client.get("/counter/domain/?limit=0")).status_code == 400
