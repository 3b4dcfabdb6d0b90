"""The HTTP API fuzzed from its own OpenAPI document (schemathesis), and token bypass
attempts: no 5xx, no traceback, every error a JSON body, no protected route without the
token."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.support.relay import api_url, relay_config, running_relay
from zonemta import __version__
from zonemta.http.openapi import openapi_document

TOKEN = "fuzz-token-1"
LONG = os.environ.get("ZONEMTA_RELIABILITY_LONG") == "1"
EXAMPLES = 200 if LONG else 8  # per operation and generation mode
# /events is a websocket; schemathesis speaks plain HTTP to it (covered by test_http_events).
SKIPPED = {("GET", "/events")}


# /send-raw takes message/rfc822: sent as the generated text (or bytes), as text/plain is.
schemathesis.serializer.alias("message/rfc822", "text/plain")


def check_response(label: str, response: Any) -> None:
    """The API's promise for any request: below 500, and an error is JSON ``{"error": ...}``."""
    status = response.status_code
    assert status < 500, f"{label}: {status} {response.text[:300]}"
    assert "Traceback" not in response.text, f"{label}: traceback in the body"
    if status >= 400:
        content_type = response.headers.get("content-type", "")
        if isinstance(content_type, list):  # schemathesis keeps every value of a header
            content_type = content_type[0] if content_type else ""
        assert content_type.startswith("application/json"), f"{label}: {status} {content_type}"
        assert isinstance(response.json().get("error"), str), f"{label}: {response.text[:300]}"


def fuzz_every_operation(base_url: str, statuses: Counter[int]) -> list[str]:
    """Run the generated cases of every operation, counting the answers' statuses; returns
    the operations fuzzed."""
    schema = schemathesis.openapi.from_dict(openapi_document(__version__))
    fuzzed: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        label = f"{operation.method.upper()} {operation.path}"
        run_cases(operation.as_strategy(), base_url, f"{label} valid", statuses)
        try:
            strategy = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
            run_cases(strategy, base_url, f"{label} invalid", statuses)
        except Unsatisfiable:
            pass  # nothing in the operation can be made invalid (no parameters, no body)
        fuzzed.append(label)
    return fuzzed


def run_cases(strategy: Any, base_url: str, label: str, statuses: Counter[int]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not LONG,  # CI runs the same cases every time
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one_case(case: Any) -> None:
        headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        check_response(f"{label} {case.method} {case.formatted_path}", response)
        statuses[response.status_code] += 1

    one_case()


@pytest.mark.timeout(900 if LONG else 120)
async def test_fuzzed_requests_never_get_a_5xx_or_a_non_json_error(tmp_path: Path) -> None:
    config = relay_config(tmp_path / "q", api={"token": TOKEN})
    statuses: Counter[int] = Counter()
    async with running_relay(config) as (_relay, info):
        with trio.fail_after(600 if LONG else 90):
            fuzzed = await trio.to_thread.run_sync(fuzz_every_operation, api_url(info), statuses)
    print(f"\nfuzz figures: {len(fuzzed)} operations, {statuses.total()} requests, {statuses}")
    assert "POST /send" in fuzzed and "GET /message/{id}" in fuzzed
    assert len(fuzzed) >= 15
    assert statuses[200] > 0 and sum(n for code, n in statuses.items() if code >= 400) > 0


# Paths that must not reach a protected route without the token, whatever the spelling.
PROTECTED_SPELLINGS = [
    "/zones",
    "//zones",
    "/zones/",
    "/%7Aones",
    "/%7aones",
    "/./zones",
    "/metrics/../zones",
    "/metrics/%2e%2e/zones",
    "/metrics%2F..%2Fzones",
    "/ZONES",
    "/counter/zone/",
    "/counter/zone/default",
    "/queued/deferred/default",
    "/metrics/",
    "//metrics",
    "/%6Detrics",
    "/metrics;x",
    "/metrics%00",
]
BAD_AUTHORIZATIONS = [
    None,
    "",
    "Bearer",
    f"Basic {TOKEN}",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    "Bearer fuzz-tokén-1",  # non-ASCII: compare_digest raised TypeError on str
    "Bearer \u00ff\u00fe",
    "Bearer " + "é" * 3,
]


def request_raw(
    client: httpx.Client, base_url: str, path: str, authorization: str | None
) -> httpx.Response:
    """GET ``path`` exactly as spelled (no normalisation), with ``authorization`` as UTF-8."""
    headers = {} if authorization is None else {"Authorization": authorization.encode("utf-8")}
    url = httpx.URL(base_url).copy_with(raw_path=path.encode("ascii"))
    return client.get(url, headers=headers)


def bypass_attempts(base_url: str, on: Callable[[httpx.Client, str, str | None], None]) -> None:
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        for path in PROTECTED_SPELLINGS:
            for authorization in BAD_AUTHORIZATIONS:
                on(client, path, authorization)


def is_public_metrics(response: httpx.Response) -> bool:
    """The answer of the metrics route itself (Prometheus text), not of a protected one."""
    content_type = response.headers.get("content-type", "")
    return content_type.startswith("text/plain") and "zonemta_" in response.text


@pytest.mark.parametrize("public", [[], ["/metrics"]], ids=["nothing-public", "metrics-public"])
async def test_no_spelling_of_a_path_or_token_bypasses_the_token(
    tmp_path: Path, public: list[str]
) -> None:
    """With ``/metrics`` public (the default), a spelling may reach the metrics, never a
    protected route (``/metrics/../zones`` and its encodings among them)."""
    config = relay_config(tmp_path / "q", api={"token": TOKEN, "public": public})
    outcomes: Counter[int] = Counter()

    def allowed(response: httpx.Response) -> bool:
        if not 200 <= response.status_code < 300:
            return True
        return bool(public) and is_public_metrics(response)

    def on(client: httpx.Client, path: str, authorization: str | None) -> None:
        label = f"GET {path} with {authorization!r}"
        response = request_raw(client, base_url, path, authorization)
        check_response(label, response)
        assert allowed(response), f"{label}: {response.text[:200]}"
        if 300 <= response.status_code < 400:  # a redirect is followed without the token
            target = httpx.URL(response.headers["location"]).raw_path.decode()
            again = request_raw(client, base_url, target, authorization)
            check_response(f"{label} -> {target}", again)
            assert allowed(again), label
        outcomes[response.status_code] += 1

    async with running_relay(config) as (_relay, info):
        base_url = api_url(info)
        await trio.to_thread.run_sync(bypass_attempts, base_url, on)

        def with_token(authorization: str) -> httpx.Response:
            with httpx.Client(timeout=10) as client:
                return request_raw(client, base_url, "/zones", authorization)

        good = await trio.to_thread.run_sync(with_token, f"Bearer {TOKEN}")
        lowercase = await trio.to_thread.run_sync(with_token, f"bearer {TOKEN}")
    # The token itself works, so the refusals above mean something.
    assert good.status_code == lowercase.status_code == 200
    assert outcomes[401] >= len(BAD_AUTHORIZATIONS)


async def test_a_non_ascii_token_is_refused_with_401(tmp_path: Path) -> None:
    # hmac.compare_digest raised TypeError on a non-ASCII str: the API answered 500.
    config = relay_config(tmp_path / "q", api={"token": TOKEN})
    async with running_relay(config) as (_relay, info):

        def refused(authorization: str) -> httpx.Response:
            with httpx.Client(timeout=10) as client:
                return request_raw(client, api_url(info), "/zones", authorization)

        for authorization in ("Bearer fuzz-tokén-1", "Bearer ÿ", "Bearer " + "\u00e9" * 3):
            response = await trio.to_thread.run_sync(refused, authorization)
            assert response.status_code == 401, authorization
            assert response.json() == {"error": "authentication required"}
