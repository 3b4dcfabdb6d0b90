"""``zonemta events``: follow the relay's ``/events`` websocket and print each event as a
readable line or as a JSON line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

DEFAULT_URL = "ws://127.0.0.1:12080/events"
_SKIP = {"type", "id", "seq", "time", "from_state", "to_state", "zone", "recipient"}


@attrs.frozen
class EventsOptions:
    url: str = DEFAULT_URL
    zones: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    json_lines: bool = False
    token: str = ""
    count: int = 0  # stop after this many events; 0 = follow until interrupted


def stream_url(options: EventsOptions) -> str:
    """The websocket URL with the filters as query parameters (``http`` becomes ``ws``)."""
    parts = urlsplit(options.url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path or "/events"
    query = [
        (k, v)
        for k, values in (("zone", options.zones), ("id", options.ids), ("type", options.types))
        for v in values
    ]
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def format_event(event: dict[str, Any]) -> str:
    """One readable line, e.g. ``12:00:01.250 019a...c0.1 default sending→delivered
    to=<a@b> mx=mx.b response='250 OK'``."""
    when = event.get("time")
    stamp = (
        datetime.fromtimestamp(when, UTC).strftime("%H:%M:%S.%f")[:-3]
        if isinstance(when, int | float)
        else "--:--:--.---"
    )
    kind = str(event.get("type", "?"))
    ident = str(event.get("id", ""))
    if event.get("seq") is not None:
        ident += f".{event['seq']}"
    if kind == "delivery":
        head = f"{event.get('zone', '-')} {event.get('from_state')}→{event.get('to_state')}"
        head += f" to=<{event.get('recipient', '')}>"
    else:
        head = kind
    extras = " ".join(
        f"{key}={value!r}" if isinstance(value, str) and " " in value else f"{key}={value}"
        for key, value in event.items()
        if key not in _SKIP and value is not None
    )
    return " ".join(part for part in (stamp, ident, head, extras) if part)


async def follow(options: EventsOptions, out: TextIO = sys.stdout) -> int:
    """Print events until interrupted, the server closes the stream or ``count`` events
    were printed. Returns the exit status (1 when the connection failed or was closed by
    the server)."""
    headers = [(b"authorization", f"Bearer {options.token}".encode())] if options.token else []
    printed = 0
    try:
        async with open_websocket_url(
            stream_url(options), extra_headers=headers, max_message_size=16 * 1024 * 1024
        ) as ws:
            while True:
                event = json.loads(await ws.get_message())
                if event.get("type") in ("subscribed", "heartbeat"):
                    continue
                line = json.dumps(event) if options.json_lines else format_event(event)
                print(line, file=out, flush=True)
                printed += 1
                if options.count and printed >= options.count:
                    return 0
    except ConnectionRejected as exc:
        print(f"zonemta events: refused with HTTP {exc.status_code}", file=sys.stderr)
    except ConnectionClosed as exc:
        reason = exc.reason
        told = f"{reason.code} {reason.reason or ''}".strip() if reason else "no close code"
        print(f"zonemta events: closed by the server: {told}", file=sys.stderr)
    except (HandshakeError, OSError) as exc:
        print(f"zonemta events: cannot connect to {options.url}: {exc}", file=sys.stderr)
    return 1


def run_events(options: EventsOptions, runner: Callable[..., int] = trio.run) -> int:
    try:
        return runner(follow, options)
    except KeyboardInterrupt:
        return 0


def add_arguments(parser: Any) -> None:
    parser.add_argument("--url", default=None, help=f"websocket URL (default {DEFAULT_URL})")
    parser.add_argument("-c", "--config", help="read [api] host, port and token from this file")
    parser.add_argument("--zone", action="append", default=[], help="only this zone (repeat)")
    parser.add_argument("--id", action="append", default=[], help="only this message (repeat)")
    parser.add_argument("--type", action="append", default=[], help="only this event type")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    parser.add_argument("--token", default="", help="Bearer token (default: from --config)")
    parser.add_argument("--count", type=int, default=0, help="exit after this many events")


def options_from_args(args: Any, load: Callable[[str | None], Any]) -> EventsOptions:
    """Options from parsed arguments; ``load`` reads a config file (for URL and token)."""
    url, token = args.url, args.token
    if args.config:
        api = load(args.config).api
        host = f"[{api.host}]" if ":" in api.host else api.host
        url = url or f"ws://{host}:{api.port}/events"
        token = token or api.token
    return EventsOptions(
        url=url or DEFAULT_URL,
        zones=tuple(args.zone),
        ids=tuple(args.id),
        types=tuple(args.type),
        json_lines=args.json,
        token=token,
        count=args.count,
    )
