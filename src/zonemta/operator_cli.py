"""``zonemta suspend | resume | why``: operator control over the relay's HTTP API."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

import httpx

DEFAULT_URL = "http://127.0.0.1:12080"
TIMEOUT = 30.0


def add_api_arguments(parser: Any) -> None:
    parser.add_argument("--url", default=None, help=f"API base URL (default {DEFAULT_URL})")
    parser.add_argument("-c", "--config", help="read [api] host, port and token from this file")
    parser.add_argument("--token", default="", help="Bearer token (default: from --config)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def add_suspend_arguments(parser: Any) -> None:
    add_api_arguments(parser)
    parser.add_argument("--list", action="store_true", help="list the suspensions instead")
    parser.add_argument("--zone", help="hold a sending zone (or, with --domain, the domain in it)")
    parser.add_argument("--domain", help="hold a recipient domain")
    parser.add_argument("--source", help="take a local (source) address out of every pool")
    parser.add_argument("--message", help="hold one message (queue id)")
    parser.add_argument("--for", dest="duration", help='expire after a duration ("2h", "30m")')
    parser.add_argument(
        "--max-connections", type=int, help="slow the --domain to this many at once, not hold it"
    )
    parser.add_argument("--until", help="expire at an ISO 8601 time (e.g. 2026-12-05T08:00Z)")
    parser.add_argument("--reason", default="", help="why (shown by GET /suspend and why)")
    parser.add_argument("--who", default=None, help="who suspends (default: the login name)")


def add_resume_arguments(parser: Any) -> None:
    add_api_arguments(parser)
    parser.add_argument("id", help="the suspension's id (from zonemta suspend --list)")


def add_why_arguments(parser: Any) -> None:
    add_api_arguments(parser)
    parser.add_argument("id", help="the message's queue id")


def _base(args: Any, load: Callable[[str | None], Any]) -> tuple[str, str]:
    url, token = args.url, args.token
    if args.config:
        api = load(args.config).api
        host = f"[{api.host}]" if ":" in api.host else api.host
        url = url or f"http://{host}:{api.port}"
        token = token or api.token
    return (url or DEFAULT_URL).rstrip("/"), token


def _call(
    args: Any,
    load: Callable[[str | None], Any],
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """The answer's status and JSON body; (0, {"error": ...}) when the API is unreachable."""
    url, token = _base(args, load)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            response = client.request(method, path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        return 0, {"error": f"cannot reach {url}: {exc}"}
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text.strip() or f"HTTP {response.status_code}"}
    return response.status_code, data if isinstance(data, dict) else {"answer": data}


def _fail(command: str, status: int, data: dict[str, Any], err: TextIO) -> int:
    told = f"HTTP {status}: " if status else ""
    print(f"zonemta {command}: {told}{data.get('error', data)}", file=err)
    return 1


def format_suspension(entry: dict[str, Any]) -> str:
    scope = " ".join(
        f"{key}={entry[key]}" for key in ("zone", "domain", "source", "message_id") if key in entry
    )
    extras = " ".join(
        f"{key}={entry[key]!r}"
        for key in ("max_connections", "until", "who", "reason", "rule", "response")
        if key in entry
    )
    return " ".join(part for part in (entry["id"], scope, extras) if part)


def cmd_suspend(
    args: Any, load: Callable[[str | None], Any], out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    if args.list:
        status, data = _call(args, load, "GET", "/suspend")
        if status != 200:
            return _fail("suspend", status, data, err)
        for entry in data["suspensions"]:
            print(json.dumps(entry) if args.json else format_suspension(entry), file=out)
        return 0
    body: dict[str, Any] = {
        key: value
        for key, value in (
            ("zone", args.zone),
            ("domain", args.domain),
            ("source", args.source),
            ("message", args.message),
            ("for", args.duration),
            ("until", args.until),
            ("reason", args.reason),
            ("max_connections", args.max_connections),
        )
        if value
    }
    body["who"] = args.who or getpass.getuser()
    status, data = _call(args, load, "POST", "/suspend", body)
    if status != 201:
        return _fail("suspend", status, data, err)
    entry = data["suspension"]
    print(json.dumps(entry) if args.json else f"suspended: {format_suspension(entry)}", file=out)
    return 0


def cmd_resume(
    args: Any, load: Callable[[str | None], Any], out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    status, data = _call(args, load, "DELETE", f"/suspend/{args.id}")
    if status != 200:
        return _fail("resume", status, data, err)
    entry = data["suspension"]
    print(json.dumps(entry) if args.json else f"resumed: {format_suspension(entry)}", file=out)
    return 0


def cmd_why(
    args: Any, load: Callable[[str | None], Any], out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    status, data = _call(args, load, "GET", f"/message/{args.id}/why")
    if status != 200:
        return _fail("why", status, data, err)
    if args.json:
        print(json.dumps(data), file=out)
        return 0
    for recipient in data["recipients"]:
        print(
            f"{data['id']}.{recipient['seq']} <{recipient['recipient']}> "
            f"zone={recipient['zone']} {recipient['status']}",
            file=out,
        )
        for reason in recipient["reasons"]:
            extras = " ".join(
                f"{key}={value}" for key, value in reason.items() if key not in ("code", "text")
            )
            print(
                f"  {reason['code']}: {reason['text']}" + (f" ({extras})" if extras else ""),
                file=out,
            )
    return 0
