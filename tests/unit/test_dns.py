"""MxResolver against a real DNS server on 127.0.0.1 (UDP and TCP), see tests/support/dnsserver."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import dns.nameserver
import dns.rcode
import dns.resolver
import pytest
import trio
import trio.testing

from tests.support.dnsserver import DnsServer, DnsServerThread, run_dns_server
from zonemta.transport.dns import MxResolver
from zonemta.transport.dns_results import (
    Destination,
    DnsFailureKind,
    InvalidDomain,
    MxHost,
    NoAddresses,
    NoSuchDomain,
    NullMx,
    ServerFailure,
    Timeout,
)

MANY = "\n".join(f"many.big IN A 127.0.1.{i}" for i in range(1, 121))

ZONE = f"""
$ORIGIN test.
$TTL 60
@             IN SOA ns.test. admin.test. 1 60 60 60 60
example       IN MX 20 mx2.example
example       IN MX 10 mx1.example
mx1.example   IN A 127.0.0.1
mx2.example   IN A 127.0.0.2
mx2.example   IN AAAA ::1
equal         IN MX 5 first.equal
equal         IN MX 10 a.equal
equal         IN MX 10 b.equal
equal         IN MX 10 c.equal
equal         IN MX 10 d.equal
first.equal   IN A 127.0.2.1
a.equal       IN A 127.0.2.2
b.equal       IN A 127.0.2.3
c.equal       IN A 127.0.2.4
d.equal       IN A 127.0.2.5
implicit      IN A 127.0.0.3
implicit      IN AAAA ::1
nullmx        IN MX 0 .
servfail      IN MX 10 mx1.example
slow          IN MX 10 mx1.example
noaddr        IN MX 10 nowhere.noaddr
noaddr        IN MX 20 also-nowhere.noaddr
partial       IN MX 10 nowhere.partial
partial       IN MX 20 mx1.example
v6only        IN MX 10 mx6.v6only
mx6.v6only    IN AAAA ::1
big           IN MX 10 many.big
{MANY}
smart         IN A 127.0.0.9
smart         IN AAAA ::1
xn--bcher-kva IN MX 10 mx1.example
alias         IN MX 10 cname.alias
cname.alias   IN CNAME mx1.example
nothing       IN TXT "no mail here"
"""


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    async with run_dns_server(ZONE) as running:
        yield running


def make_resolver(server: DnsServer, **kwargs: object) -> MxResolver:
    return MxResolver(nameservers=[server.address], **kwargs)  # type: ignore[arg-type]


async def test_mx_hosts_sorted_by_preference(server: DnsServer) -> None:
    destination = await make_resolver(server).resolve("example.test")
    assert destination == Destination(
        "example.test",
        (
            MxHost("mx1.example.test", 10, ("127.0.0.1",)),
            MxHost("mx2.example.test", 20, ("127.0.0.2",)),
        ),
    )
    assert destination.hosts[0].port == 25


async def test_equal_preferences_are_shuffled_reproducibly(server: DnsServer) -> None:
    orders = set()
    for seed in range(12):
        resolver = make_resolver(server, rng=random.Random(seed))
        names = tuple(h.name for h in (await resolver.resolve("equal.test")).hosts)
        assert names[0] == "first.equal.test"  # lower preference always first
        assert sorted(names[1:]) == [f"{x}.equal.test" for x in "abcd"]
        orders.add(names)
        again = make_resolver(server, rng=random.Random(seed))
        assert tuple(h.name for h in (await again.resolve("equal.test")).hosts) == names
    assert len(orders) > 1


async def test_max_hosts_limits_lookups(server: DnsServer) -> None:
    destination = await make_resolver(server).resolve("equal.test", max_hosts=2)
    assert len(destination.hosts) == 2
    assert destination.hosts[0].name == "first.equal.test"
    assert server.count(rdtype="A") == 2


async def test_no_mx_uses_implicit_mx(server: DnsServer) -> None:
    resolver = make_resolver(server)
    assert await resolver.resolve("implicit.test") == Destination(
        "implicit.test", (MxHost("implicit.test", 0, ("127.0.0.3",)),)
    )
    both = await resolver.resolve("implicit.test", ipv6=True, prefer_ipv6=True)
    assert both.hosts[0].addresses == ("::1", "127.0.0.3")


async def test_name_without_mx_or_address_has_no_addresses(server: DnsServer) -> None:
    with pytest.raises(NoAddresses) as info:
        await make_resolver(server).resolve("nothing.test")
    assert info.value.temporary
    assert info.value.kind is DnsFailureKind.NO_ADDRESSES


async def test_null_mx_is_permanent_556(server: DnsServer) -> None:
    with pytest.raises(NullMx) as info:
        await make_resolver(server).resolve("nullmx.test")
    assert not info.value.temporary
    assert (info.value.reply.code, info.value.reply.enhanced) == (556, "5.1.10")
    assert server.count(rdtype="A") == 0


async def test_nxdomain_is_permanent(server: DnsServer) -> None:
    with pytest.raises(NoSuchDomain) as info:
        await make_resolver(server).resolve("missing.test")
    assert not info.value.temporary
    assert info.value.reply.is_permanent


async def test_servfail_is_temporary(server: DnsServer) -> None:
    server.set_failure("servfail", dns.rcode.SERVFAIL)
    with pytest.raises(ServerFailure) as info:
        await make_resolver(server).resolve("servfail.test")
    assert info.value.temporary
    assert info.value.reply.is_transient


async def test_unanswered_query_times_out_at_the_deadline(
    server: DnsServer, autojump_clock: trio.testing.MockClock
) -> None:
    # On trio's mock clock the call ends exactly at the resolver's deadline (a trio deadline),
    # however loaded the machine. dnspython's own per-query timeout and lifetime run on
    # time.time(): had the resolver left the deadline to them, dnspython would try again and
    # again, each wait jumping the mock clock by a timeout, until real time ran out.
    server.drop("slow")
    resolver = make_resolver(server, timeout=0.5)
    start = trio.current_time()
    with pytest.raises(Timeout) as info:
        await resolver.resolve("slow.test")
    elapsed = trio.current_time() - start
    assert info.value.temporary
    assert elapsed == pytest.approx(0.5, abs=1e-9)
    assert server.count("slow.test", "MX") >= 1  # the query went out and was not answered


async def test_mx_hosts_without_addresses_are_skipped(server: DnsServer) -> None:
    resolver = make_resolver(server)
    partial = await resolver.resolve("partial.test")
    assert [h.name for h in partial.hosts] == ["mx1.example.test"]
    with pytest.raises(NoAddresses) as info:
        await resolver.resolve("noaddr.test")
    assert info.value.temporary
    assert "nowhere.noaddr.test" in str(info.value)


async def test_ipv6_switch(server: DnsServer) -> None:
    resolver = make_resolver(server)
    with pytest.raises(NoAddresses):
        await resolver.resolve("v6only.test")
    assert server.count(rdtype="AAAA") == 0
    v6 = await resolver.resolve("v6only.test", ipv6=True)
    assert v6.hosts == (MxHost("mx6.v6only.test", 10, ("::1",)),)
    mixed = await resolver.resolve("example.test", ipv6=True)
    assert mixed.hosts[1].addresses == ("127.0.0.2", "::1")
    preferred = await resolver.resolve("example.test", ipv6=True, prefer_ipv6=True)
    assert preferred.hosts[1].addresses == ("::1", "127.0.0.2")
    only6 = await resolver.resolve("example.test", ipv4=False, ipv6=True)
    assert only6.hosts == (MxHost("mx2.example.test", 20, ("::1",)),)


async def test_idn_domain_is_punycoded(server: DnsServer) -> None:
    destination = await make_resolver(server).resolve("Bücher.test.")
    assert destination.domain == "xn--bcher-kva.test"
    assert destination.hosts[0].addresses == ("127.0.0.1",)


async def test_cname_at_mx_target_is_followed(server: DnsServer) -> None:
    destination = await make_resolver(server).resolve("alias.test")
    assert destination.hosts == (MxHost("cname.alias.test", 10, ("127.0.0.1",)),)


async def test_invalid_domain_is_permanent(server: DnsServer) -> None:
    resolver = make_resolver(server)
    for bad in ("a..test", "x" * 64 + ".test", "", "[1.2.3]", "[IPv6:1.2.3.4]"):
        with pytest.raises(InvalidDomain) as info:
            await resolver.resolve(bad)
        assert not info.value.temporary
    assert server.queries == []


async def test_address_literal_domains_need_no_dns(server: DnsServer) -> None:
    resolver = make_resolver(server)
    assert await resolver.resolve("[127.0.0.7]") == Destination(
        "[127.0.0.7]", (MxHost("127.0.0.7", 0, ("127.0.0.7",)),)
    )
    v6 = await resolver.resolve("[IPv6:0:0::1]", ipv6=True)
    assert v6.hosts == (MxHost("::1", 0, ("::1",)),)
    with pytest.raises(NoAddresses):
        await resolver.resolve("[IPv6:::1]")  # IPv6 disabled
    assert server.queries == []


async def test_smart_host_ip_literal_and_name(server: DnsServer) -> None:
    resolver = make_resolver(server)
    literal = await resolver.resolve_host("127.0.0.5", port=2525)
    assert literal.hosts == (MxHost("127.0.0.5", 0, ("127.0.0.5",), 2525),)
    bracketed = await resolver.resolve_host("[::1]", port=587, ipv6=True)
    assert bracketed.hosts[0].addresses == ("::1",)
    assert server.queries == []
    named = await resolver.resolve_host("smart.test", port=2525, ipv6=True)
    assert named == Destination(
        "smart.test", (MxHost("smart.test", 0, ("127.0.0.9", "::1"), 2525),)
    )
    assert server.count(rdtype="MX") == 0
    with pytest.raises(NoSuchDomain):
        await resolver.resolve_host("gone.test", port=25)
    local = await resolver.resolve_host("localhost", port=2525)
    assert local.hosts[0].addresses == ("127.0.0.1",)


async def test_concurrent_resolves_share_one_query(server: DnsServer) -> None:
    resolver = make_resolver(server)
    results: list[Destination] = []

    async def one() -> None:
        results.append(await resolver.resolve("example.test"))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert len(results) == 50
    assert all(r == results[0] for r in results)
    assert server.count("example.test", "MX") == 1
    assert server.count("mx1.example.test", "A") == 1
    assert server.count("mx2.example.test", "A") == 1


async def test_follower_survives_cancelled_leader(server: DnsServer) -> None:
    server.drop("example")
    resolver = make_resolver(server, timeout=5.0)
    results: list[Destination] = []

    async def follower() -> None:
        results.append(await resolver.resolve("example.test"))

    leader_scope = trio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await resolver.resolve("example.test")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader)
        await trio.testing.wait_all_tasks_blocked()  # the leader's query is in flight
        nursery.start_soon(follower)
        await trio.testing.wait_all_tasks_blocked()
        server.drop("example", dropped=False)
        leader_scope.cancel()
    assert results and results[0].hosts[0].name == "mx1.example.test"
    assert server.count("example.test", "MX") == 2  # the dropped query, then the follower's


async def test_large_answer_falls_back_to_tcp(server: DnsServer) -> None:
    destination = await make_resolver(server).resolve("big.test")
    assert len(destination.hosts[0].addresses) == 120
    assert server.count("many.big.test", "A", transport="udp") == 1
    assert server.count("many.big.test", "A", transport="tcp") == 1


async def test_thread_server_answers_udp_and_tcp() -> None:
    with DnsServerThread(ZONE) as thread_server:
        resolver = MxResolver(nameservers=[thread_server.address])
        assert (await resolver.resolve("example.test")).hosts[0].name == "mx1.example.test"
        big = await resolver.resolve("big.test")
        assert len(big.hosts[0].addresses) == 120
        assert thread_server.count(transport="tcp") == 1
        thread_server.set_failure("servfail")
        with pytest.raises(ServerFailure):
            await resolver.resolve("servfail.test")


def test_thread_server_serves_synchronous_clients() -> None:
    server = DnsServerThread(ZONE)
    server.start()
    try:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", server.port)]
        answer = resolver.resolve("mx1.example.test.", "A", search=False)
        assert [r.address for r in answer] == ["127.0.0.1"]
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("missing.test.", "MX", search=False)
        tcp = resolver.resolve("example.test.", "MX", tcp=True, search=False)
        assert sorted(r.preference for r in tcp) == [10, 20]
        assert server.count(transport="tcp") == 1
    finally:
        server.stop()
