"""A loopback HTTPS server for MTA-STS policies (RFC 8461 3.3), in the test's trio task tree.

It presents a trustme certificate (issue it for ``mta-sts.<domain>``), answers
``GET /.well-known/mta-sts.txt`` per ``Host`` header from ``policies`` and records every
request. One request per connection (``Connection: close``)::

    async with run_policy_server(ca.issue_cert("mta-sts.example.test")) as server:
        server.serve("mta-sts.example.test", "version: STSv1\\nmode: enforce\\n...")
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator

import attrs
import trio
import trustme

__all__ = ["PolicyServer", "Response", "run_policy_server"]

MAX_REQUEST = 16 * 1024


@attrs.frozen
class Response:
    status: int = 200
    content_type: str = "text/plain"
    body: str = ""
    location: str = ""  # a Location header (for redirect statuses)


class PolicyServer:
    """``serve(host, body)`` or ``respond(host, Response)`` sets what a host answers (404
    otherwise); ``requests`` lists (host, path) of every request received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.responses: dict[str, Response] = {}
        self.requests: list[tuple[str, str]] = []

    def serve(self, host: str, body: str) -> None:
        self.responses[host.lower()] = Response(body=body)

    def respond(self, host: str, response: Response) -> None:
        self.responses[host.lower()] = response

    def count(self, host: str) -> int:
        return sum(1 for seen, _path in self.requests if seen == host.lower())


async def _handle(server: PolicyServer, stream: trio.SSLStream[trio.SocketStream]) -> None:
    head = b""
    try:
        while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST:
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
    except trio.BrokenResourceError:  # a client that gave up on the handshake
        return
    lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    path = parts[1] if len(parts) > 1 else ""
    host = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "host":
            host = value.strip().lower().rsplit(":", 1)[0] if "]" not in value else value.strip()
    server.requests.append((host, path))
    response = server.responses.get(host, Response(status=404, body="not found"))
    if path != "/.well-known/mta-sts.txt":
        response = Response(status=404, body="not found")
    body = response.body.encode()
    headers = [
        f"HTTP/1.1 {response.status} X",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if response.location:
        headers.append(f"Location: {response.location}")
    try:
        await stream.send_all(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@contextlib.asynccontextmanager
async def run_policy_server(
    certificate: trustme.LeafCert, *, host: str = "127.0.0.1"
) -> AsyncIterator[PolicyServer]:
    """Serve HTTPS on a free port of ``host`` while the block runs."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    server = PolicyServer(0)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                trio.serve_ssl_over_tcp,
                functools.partial(_handle, server),
                0,
                context,
                host=host,
                https_compatible=True,
            )
        )
        server.port = listeners[0].transport_listener.socket.getsockname()[1]
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
