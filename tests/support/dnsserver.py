"""A real authoritative DNS server on loopback, answering from zone-file text.

Two front ends share one ``ZoneAnswerer`` (the answering logic, query log and failure knobs):

* ``run_dns_server(zone_text)``: trio tasks (UDP socket + ``trio.serve_tcp``) inside the
  caller's task tree, for async tests::

      async with run_dns_server(ZONE) as server:
          resolver = MxResolver(nameservers=[("127.0.0.1", server.port)])

* ``DnsServerThread(zone_text)``: ``start()``/``stop()``/``port`` with UDP and TCP served from
  threads, for synchronous processes (benchmarks, end-to-end tests running the relay as a
  subprocess). Also a context manager.

UDP replies larger than the client's limit (512 octets, or its EDNS payload size) are sent
truncated with the TC flag, so clients retry over TCP.

DNSSEC is simulated by the AD bit alone (no signatures): after ``set_authenticated(True)``
(the whole zone) or ``set_authenticated(True, name)`` (one owner name), answers to queries
that ask for DNSSEC (DO or AD set) carry AD, as a validating resolver's would. By default
nothing is authenticated.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import socketserver
import struct
import threading
from collections.abc import AsyncIterator
from typing import Literal

import attrs
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone
import trio

__all__ = ["DnsServer", "DnsServerThread", "QueryRecord", "ZoneAnswerer", "run_dns_server"]

Transport = Literal["udp", "tcp"]

# RFC 1035 4.2.1: UDP messages without EDNS are limited to 512 octets.
CLASSIC_UDP_LIMIT = 512
# Longest CNAME chain followed inside the zone.
MAX_CNAME_CHAIN = 8


@attrs.frozen
class QueryRecord:
    """One query as the server saw it: name without trailing dot, type text, transport."""

    name: str
    rdtype: str
    transport: Transport


def _absolute(name: str, origin: dns.name.Name) -> dns.name.Name:
    return dns.name.from_text(name, origin=origin)


class ZoneAnswerer:
    """Answers wire-format queries from one zone; thread-safe, shared by both front ends.

    Unknown names inside the zone get NXDOMAIN (NOERROR for empty non-terminals), existing
    names without the type get NOERROR with no answer, names outside the zone REFUSED. Names
    given to ``set_failure``/``drop`` are relative to the zone origin unless they end in a dot.
    """

    def __init__(self, zone_text: str) -> None:
        self.zone = dns.zone.from_text(zone_text, relativize=False, check_origin=False)
        if self.zone.origin is None:
            raise ValueError("zone text needs a $ORIGIN")
        self.origin: dns.name.Name = self.zone.origin
        self._names = frozenset(self.zone.nodes.keys())
        self._lock = threading.Lock()
        self._failures: dict[dns.name.Name, dns.rcode.Rcode] = {}
        self._drops: set[dns.name.Name] = set()
        self._log: list[QueryRecord] = []
        self._authenticated = False
        self._authenticated_names: dict[dns.name.Name, bool] = {}

    # -- knobs and observations ---------------------------------------------------------------

    def set_failure(self, name: str, rcode: int | None = dns.rcode.SERVFAIL) -> None:
        """Answer every query for ``name`` with ``rcode`` (None restores normal answers)."""
        key = _absolute(name, self.origin)
        with self._lock:
            if rcode is None:
                self._failures.pop(key, None)
            else:
                self._failures[key] = dns.rcode.Rcode(rcode)

    def drop(self, name: str, dropped: bool = True) -> None:
        """Never answer queries for ``name`` (to provoke client timeouts)."""
        key = _absolute(name, self.origin)
        with self._lock:
            if dropped:
                self._drops.add(key)
            else:
                self._drops.discard(key)

    def set_authenticated(self, authenticated: bool, name: str | None = None) -> None:
        """Set AD on answers for ``name`` (or, without a name, for the whole zone; a name's
        own setting wins over the zone's)."""
        with self._lock:
            if name is None:
                self._authenticated = authenticated
            else:
                self._authenticated_names[_absolute(name, self.origin)] = authenticated

    @property
    def queries(self) -> list[QueryRecord]:
        """A copy of every query received so far, in arrival order."""
        with self._lock:
            return list(self._log)

    def count(
        self, name: str | None = None, rdtype: str | None = None, transport: str | None = None
    ) -> int:
        """How many queries matched (name without trailing dot, type text, transport)."""
        want = name.rstrip(".").lower() if name is not None else None
        return sum(
            1
            for q in self.queries
            if (want is None or q.name == want)
            and (rdtype is None or q.rdtype == rdtype.upper())
            and (transport is None or q.transport == transport)
        )

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- answering ----------------------------------------------------------------------------

    def handle(self, wire: bytes, transport: Transport) -> bytes | None:
        """The reply to one query message, or None to send nothing (dropped or unparsable)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        qname: dns.name.Name = question.name
        rdtype = question.rdtype
        with self._lock:
            self._log.append(
                QueryRecord(
                    qname.to_text(omit_final_dot=True).lower(),
                    dns.rdatatype.to_text(rdtype),
                    transport,
                )
            )
            dropped = qname in self._drops
            failure = self._failures.get(qname)
            authenticated = self._authenticated_names.get(qname, self._authenticated)
        if dropped:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        asks_dnssec = bool(query.flags & dns.flags.AD) or bool(query.ednsflags & dns.flags.DO)
        if authenticated and asks_dnssec:
            response.flags |= dns.flags.AD
        if failure is not None:
            response.set_rcode(failure)
        elif question.rdclass != dns.rdataclass.IN or not qname.is_subdomain(self.origin):
            response.set_rcode(dns.rcode.REFUSED)
        else:
            self._fill(response, qname, rdtype)
        limit = 65535
        if transport == "udp":
            limit = max(CLASSIC_UDP_LIMIT, query.payload) if query.edns >= 0 else CLASSIC_UDP_LIMIT
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire(max_size=limit)

    def _fill(
        self, response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> None:
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            node = self.zone.get_node(name)
            if node is None:
                if not response.answer and not any(n.is_subdomain(name) for n in self._names):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if rdataset is not None:
                response.answer.append(_rrset(name, rdataset))
                return
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.CNAME:
                break
            response.answer.append(_rrset(name, cname))
            name = cname[0].target
            if not name.is_subdomain(self.origin):
                return
        soa = self.zone.get_rdataset(self.origin, dns.rdatatype.SOA)
        if soa is not None:
            response.authority.append(_rrset(self.origin, soa))


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


# -- trio front end ---------------------------------------------------------------------------


class _AnswererKnobs:
    """The knobs and query log both server handles expose, passed to their answerer."""

    answerer: ZoneAnswerer
    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def set_failure(self, name: str, rcode: int | None = dns.rcode.SERVFAIL) -> None:
        self.answerer.set_failure(name, rcode)

    def drop(self, name: str, dropped: bool = True) -> None:
        self.answerer.drop(name, dropped)

    def set_authenticated(self, authenticated: bool, name: str | None = None) -> None:
        self.answerer.set_authenticated(authenticated, name)

    @property
    def queries(self) -> list[QueryRecord]:
        return self.answerer.queries

    def count(
        self, name: str | None = None, rdtype: str | None = None, transport: str | None = None
    ) -> int:
        return self.answerer.count(name, rdtype, transport)


class DnsServer(_AnswererKnobs):
    """The trio server's handle: its port and the answerer's knobs and query log."""

    def __init__(self, answerer: ZoneAnswerer, host: str, port: int) -> None:
        self.answerer = answerer
        self.host = host
        self.port = port


async def _serve_udp(sock: trio.socket.SocketType, answerer: ZoneAnswerer) -> None:
    while True:
        data, peer = await sock.recvfrom(65535)
        reply = answerer.handle(data, "udp")
        if reply is not None:
            await sock.sendto(reply, peer)


async def _serve_tcp_client(answerer: ZoneAnswerer, stream: trio.SocketStream) -> None:
    buffer = bytearray()
    async with stream:
        while True:
            while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack("!H", buffer[:2])[0]:
                size = struct.unpack("!H", buffer[:2])[0]
                message = bytes(buffer[2 : 2 + size])
                del buffer[: 2 + size]
                reply = answerer.handle(message, "tcp")
                if reply is not None:
                    await stream.send_all(struct.pack("!H", len(reply)) + reply)
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            buffer += data


@contextlib.asynccontextmanager
async def run_dns_server(zone_text: str, *, host: str = "127.0.0.1") -> AsyncIterator[DnsServer]:
    """Serve ``zone_text`` over UDP and TCP on one free port of ``host`` while the block runs."""
    answerer = ZoneAnswerer(zone_text)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _attempt in range(20):
        udp = trio.socket.socket(family, socket.SOCK_DGRAM)
        await udp.bind((host, 0))
        port: int = udp.getsockname()[1]
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError:
            udp.close()
            continue
        break
    else:  # pragma: no cover - twenty port collisions in a row
        raise OSError("could not bind UDP and TCP to one free port")
    with udp:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_udp, udp, answerer)
            nursery.start_soon(
                trio.serve_listeners, functools.partial(_serve_tcp_client, answerer), listeners
            )
            try:
                yield DnsServer(answerer, host, port)
            finally:
                nursery.cancel_scope.cancel()


# -- thread front end -------------------------------------------------------------------------


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpServer

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.answerer.handle(data, "udp")
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.StreamRequestHandler):
    server: _TcpServer
    timeout = 10.0

    def handle(self) -> None:
        while True:
            try:
                head = self.rfile.read(2)
                if len(head) < 2:
                    return
                message = self.rfile.read(struct.unpack("!H", head)[0])
            except OSError:
                return
            reply = self.server.answerer.handle(message, "tcp")
            if reply is not None:
                self.wfile.write(struct.pack("!H", len(reply)) + reply)


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], answerer: ZoneAnswerer) -> None:
        self.answerer = answerer
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _UdpHandler)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], answerer: ZoneAnswerer) -> None:
        self.answerer = answerer
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _TcpHandler)


class DnsServerThread(_AnswererKnobs):
    """The same server for synchronous code: UDP and TCP served from background threads."""

    def __init__(self, zone_text: str, *, host: str = "127.0.0.1") -> None:
        self.answerer = ZoneAnswerer(zone_text)
        self.host = host
        self.port = 0
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Bind one free port for UDP and TCP and start serving; returns once bound."""
        if self._servers:
            raise RuntimeError("DnsServerThread already started")
        for _attempt in range(20):
            udp = _UdpServer((self.host, 0), self.answerer)
            port = udp.server_address[1]
            try:
                tcp = _TcpServer((self.host, port), self.answerer)
            except OSError:
                udp.server_close()
                continue
            break
        else:  # pragma: no cover - twenty port collisions in a row
            raise OSError("could not bind UDP and TCP to one free port")
        self.port = int(port)
        self._servers = [udp, tcp]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"dns-server-{self.port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop serving and close the sockets; waits for the serving threads."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> DnsServerThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
