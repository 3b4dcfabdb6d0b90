"""MTA-STS (RFC 8461): TXT and policy parsing, MX patterns, and the policy cache against the
loopback DNS server and a loopback HTTPS policy server (time from an injected clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import dns.rdataset
import pytest
import trio
import trustme
from hypothesis import given
from hypothesis import strategies as st

from tests.support.dnsserver import DnsServer, run_dns_server
from tests.support.policy_server import PolicyServer, Response, run_policy_server
from zonemta.transport.dns import MxResolver
from zonemta.transport.mta_sts import (
    MtaStsMode,
    MtaStsPolicies,
    Policy,
    PolicyError,
    mx_matches,
    parse_policy,
    parse_txt_id,
)
from zonemta.transport.policy_dns import PolicyDns
from zonemta.transport.tls import CertificateCheck, client_context

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.example.test\r\n"


# -- parsing -----------------------------------------------------------------------------------


def test_a_policy_parses_with_crlf_or_lf() -> None:
    expected = Policy(MtaStsMode.ENFORCE, ("mx1.example.test", "*.example.test"), 86400, "7")
    text = POLICY + "max_age: 86400\r\n"
    assert parse_policy(text, policy_id="7") == expected
    assert parse_policy(text.replace("\r\n", "\n"), policy_id="7") == expected
    assert parse_policy(text + "future_key: ignored\r\n", policy_id="7") == expected


def test_max_age_is_capped_at_one_year() -> None:
    assert parse_policy(POLICY + "max_age: 9999999999\n").max_age == 31_557_600
    with pytest.raises(PolicyError, match="max_age"):
        parse_policy(POLICY + "max_age: 99999999999\n")  # 1*10DIGIT


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -5\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 10\n", "without mx"),
        ("version: STSv1\nmode enforce\n", "bad policy line"),
    ],
)
def test_bad_policies_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        parse_policy(text)


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 60\n").mode is MtaStsMode.NONE


@given(st.text(max_size=300))
def test_any_policy_text_parses_or_is_refused(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError:
        return
    assert policy.max_age >= 0


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ((), None),
        (("v=spf1 -all",), None),
        (("v=STSv1; id=20261204T01",), "20261204T01"),
        (("v=STSv1;id=abc;",), "abc"),
        (("v=STSv1; id=abc; ext=1", "unrelated"), "abc"),
    ],
)
def test_the_txt_record_gives_the_policy_id(texts: tuple[str, ...], expected: str | None) -> None:
    assert parse_txt_id(texts) == expected


@pytest.mark.parametrize(
    "texts",
    [("v=STSv1; id=1", "v=STSv1; id=2"), ("v=STSv1; id=",), ("v=STSv1; id=bad-chars",)],
)
def test_bad_or_several_txt_records_are_refused(texts: tuple[str, ...]) -> None:
    with pytest.raises(PolicyError):
        parse_txt_id(texts)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mx.example.test", "mx.example.test", True),
        ("mx.example.test", "MX.Example.Test.", True),
        ("mx.example.test", "mx2.example.test", False),
        ("*.example.test", "mx.example.test", True),
        ("*.example.test", "example.test", False),
        ("*.example.test", "a.b.example.test", False),
        ("*.example.test", ".example.test", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


# -- the cache ---------------------------------------------------------------------------------

ZONE = """
$ORIGIN test.
$TTL 0
@ IN SOA ns.test. admin.test. 1 0 0 0 0
mta-sts.example IN A 127.0.0.1
mta-sts.other IN A 127.0.0.1
"""
HOST = "mta-sts.example.test"


@attrs.define
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class Setup:
    dns: DnsServer
    server: PolicyServer
    policies: MtaStsPolicies
    clock: Clock

    def publish(self, policy_id: str | None) -> None:
        """Set the TXT record (None: remove it) by swapping the zone's node."""
        node = self.dns.answerer.zone.find_node("_mta-sts.example.test.", create=True)
        node.rdatasets.clear()
        if policy_id is not None:
            node.rdatasets.append(
                dns.rdataset.from_text("IN", "TXT", 0, f'"v=STSv1; id={policy_id}"')
            )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def setup(tmp_path: Path, ca: trustme.CA, cert_for: str = HOST) -> AsyncIterator[Setup]:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with (
        run_dns_server(ZONE) as dns,
        run_policy_server(ca.issue_cert(cert_for, "mta-sts.other.test")) as server,
    ):
        clock = Clock()
        policies = MtaStsPolicies(
            dns=PolicyDns(nameservers=[dns.address], timeout=2, cache_size=0),
            resolver=MxResolver(nameservers=[dns.address], timeout=2, cache_size=0),
            ssl_context=client_context(CertificateCheck.CA_AND_NAME, str(ca_file)),
            port=server.port,
            timeout=5,
            clock=clock,
        )
        yield Setup(dns, server, policies, clock)


async def test_a_policy_is_fetched_once_and_kept_for_its_max_age(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with setup(tmp_path, ca) as s:
        s.publish("1")
        s.server.serve(HOST, POLICY + "max_age: 600\r\n")
        first = await s.policies.policy_for("example.test")
        assert first is not None and first.mode is MtaStsMode.ENFORCE and first.policy_id == "1"
        assert first.allows("mx7.example.test") and not first.allows("mx.elsewhere.test")
        assert await s.policies.policy_for("Example.Test.") == first
        assert s.server.requests == [(HOST, "/.well-known/mta-sts.txt")]
        s.clock.now += 601  # max_age over: fetched again
        assert await s.policies.policy_for("example.test") == first
        assert s.server.count(HOST) == 2


async def test_a_new_id_fetches_again_and_a_failed_fetch_keeps_the_cached_policy(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with setup(tmp_path, ca) as s:
        s.publish("1")
        s.server.serve(HOST, POLICY + "max_age: 600\r\n")
        old = await s.policies.policy_for("example.test")
        s.publish("2")
        s.server.serve(HOST, POLICY.replace("enforce", "testing") + "max_age: 600\r\n")
        new = await s.policies.policy_for("example.test")
        assert new is not None and (new.mode, new.policy_id) == (MtaStsMode.TESTING, "2")
        s.publish("3")
        s.server.respond(HOST, Response(status=500, body="oops"))
        assert await s.policies.policy_for("example.test") == new
        assert await s.policies.policy_for("example.test") == new  # no new fetch for 5 min
        assert s.server.count(HOST) == 3
        assert old != new


async def test_a_removed_txt_record_keeps_the_cached_policy(tmp_path: Path, ca: trustme.CA) -> None:
    async with setup(tmp_path, ca) as s:
        s.publish("1")
        s.server.serve(HOST, POLICY + "max_age: 600\r\n")
        cached = await s.policies.policy_for("example.test")
        s.publish(None)
        assert await s.policies.policy_for("example.test") == cached
        s.clock.now += 601
        assert await s.policies.policy_for("example.test") is None


async def test_no_txt_record_means_no_policy_and_no_fetch(tmp_path: Path, ca: trustme.CA) -> None:
    async with setup(tmp_path, ca) as s:
        assert await s.policies.policy_for("example.test") is None
        assert s.policies.fetches == 0


@pytest.mark.parametrize(
    "response",
    [
        Response(status=404, body="nothing here"),
        Response(status=301, location="https://elsewhere.test/"),
        Response(content_type="text/html", body=POLICY + "max_age: 60\n"),
        Response(body="version: STSv1\nmode: enforce\n"),
        Response(body="x" * 70_000),
    ],
    ids=["404", "redirect", "html", "incomplete", "too-big"],
)
async def test_unusable_answers_give_no_policy(
    tmp_path: Path, ca: trustme.CA, response: Response
) -> None:
    async with setup(tmp_path, ca) as s:
        s.publish("1")
        s.server.respond(HOST, response)
        assert await s.policies.policy_for("example.test") is None
        assert s.server.count(HOST) == 1


async def test_a_certificate_for_another_name_gives_no_policy(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with setup(tmp_path, ca, cert_for="mta-sts.wrong.test") as s:
        s.publish("1")
        s.server.serve(HOST, POLICY + "max_age: 60\n")
        assert await s.policies.policy_for("example.test") is None
        assert s.policies.fetches == 1


async def test_mode_none_is_no_policy(tmp_path: Path, ca: trustme.CA) -> None:
    async with setup(tmp_path, ca) as s:
        s.publish("1")
        s.server.serve(HOST, "version: STSv1\nmode: none\nmax_age: 600\n")
        assert await s.policies.policy_for("example.test") is None
        assert await s.policies.policy_for("example.test") is None
        assert s.policies.fetches == 1  # cached like any policy


async def test_concurrent_deliveries_share_one_fetch(tmp_path: Path, ca: trustme.CA) -> None:
    async with setup(tmp_path, ca) as s:
        s.publish("1")
        s.server.serve(HOST, POLICY + "max_age: 600\r\n")
        results: list[Policy | None] = []

        async def look_up() -> None:
            results.append(await s.policies.policy_for("example.test"))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(look_up)
        assert len(results) == 5 and all(r is not None for r in results)
        assert s.policies.fetches == 1
