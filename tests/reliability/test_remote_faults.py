"""Remote faults: MX hosts that misbehave, DNS that fails. Every fault defers (and the
message is then delivered once, intact, when the MX behaves) or bounces when the domain does
not exist; MX failover reaches the next preference on another address."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from tests.reliability.mail import check_intact, token_message
from tests.support.dnsserver import run_dns_server
from tests.support.faulty_mx import Fault, FaultyMx, bind_same_port
from tests.support.relay import collect_until, relay_config, running_relay, submit_async
from zonemta.engine.bus import Event

# Outbound timeouts short enough that a silent MX defers within a test's budget.
FAST = {
    "connect_timeout": "2s",
    "greeting_timeout": "1s",
    "command_timeout": "1s",
    "data_timeout": "2s",
}


def outcomes(kind: str) -> Callable[[list[Event]], bool]:
    """Stop collecting once a delivery reached ``kind`` (deferred, delivered, bounced)."""
    return lambda events: any(e.type == "delivery" and e.to_state == kind for e in events)


def of_state(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == "delivery" and e.to_state == kind]


@pytest.mark.parametrize(
    ("fault", "explanation"),
    [
        (Fault.DROP_MID_DATA, "connection closed"),
        (Fault.NO_GREETING, "timeout waiting for the greeting"),
        (Fault.TRICKLE, "timeout waiting for the greeting"),
        (Fault.GARBAGE, "malformed reply line"),
        (Fault.LONG_LINE, "reply line longer than 4096 octets"),
        (Fault.REFUSE_GREETING, "421"),
    ],
)
async def test_a_misbehaving_mx_defers_then_the_message_arrives_once_intact(
    tmp_path: Path, fault: Fault, explanation: str
) -> None:
    # TRICKLE: one byte every 0.1 s keeps the socket busy but never ends a reply in time.
    with FaultyMx(fault, trickle_delay=0.1) as mx:
        await defer_then_deliver(tmp_path, mx, f"t-{fault.value}", explanation)
    if fault is Fault.DROP_MID_DATA:
        assert mx.dropped == 1


@pytest.mark.parametrize(
    ("fault", "command", "explanation"),
    [
        (Fault.GARBAGE, "MAIL", "malformed reply line"),
        (Fault.GARBAGE, "RCPT", "malformed reply line"),
        (Fault.LONG_LINE, "MAIL", "reply line longer than 4096 octets"),
        (Fault.LONG_LINE, "RCPT", "reply line longer than 4096 octets"),
    ],
)
async def test_garbage_or_a_long_line_mid_session_defers_then_the_message_arrives_once(
    tmp_path: Path, fault: Fault, command: str, explanation: str
) -> None:
    # The MX greets and answers EHLO properly, then answers MAIL FROM (or RCPT TO) with bytes
    # that are not SMTP, or with a reply line of 1 MB that never ends.
    with FaultyMx(fault, fault_at=command) as mx:
        await defer_then_deliver(tmp_path, mx, f"t-{fault.value}-{command.lower()}", explanation)
    assert mx.faulted == 1


async def test_a_slow_mx_that_answers_in_time_gets_the_message(tmp_path: Path) -> None:
    # Every reply comes one byte every 30 ms: the longest (EHLO's, 43 bytes) takes about
    # 1.3 s of the 3 s each reply may take, while the whole session takes longer than 3 s.
    timeouts = {name: "3s" for name in FAST}
    with FaultyMx(Fault.TRICKLE, trickle_delay=0.03) as mx:
        config = config_for(tmp_path, mx, timeouts)
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            message = token_message("t-slow", 20_000)
            await submit_async(info.smtp_ports["feeder"], "s@origin.test", ["a@one.test"], message)
            seen = await collect_until(events, outcomes("delivered"), seconds=60)
    assert of_state(seen, "deferred") == []  # delivered on the first attempt
    assert [check_intact(m.content) for m in mx.received()] == ["t-slow"]
    # The replies to this one transaction, byte by byte, took longer than any one timeout.
    assert mx.trickled * mx.trickle_delay > 3.0


def config_for(tmp_path: Path, mx: FaultyMx, delivery: dict[str, Any]) -> Any:
    """A relay whose zones (bounces too) send to ``mx`` with these ``[delivery]`` settings."""
    target: dict[str, Any] = {"host": "127.0.0.1", "port": mx.port}
    return relay_config(
        tmp_path / "q",
        delivery=delivery,
        zones={"default": target, "bounces": {**target, "connections": 1}},
    )


async def defer_then_deliver(tmp_path: Path, mx: FaultyMx, token: str, explanation: str) -> None:
    """Relay one message to ``mx`` (misbehaving): it must be deferred with ``explanation``
    in the reply; then the MX recovers and the retry delivers it once, intact."""
    config = config_for(tmp_path, mx, FAST)
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        message = token_message(token, 20_000)
        await submit_async(info.smtp_ports["feeder"], "s@origin.test", ["a@one.test"], message)
        seen = await collect_until(events, outcomes("deferred"), seconds=30)
        [deferred] = of_state(seen, "deferred")
        assert explanation in (deferred.response or ""), deferred.response
        mx.fault = Fault.NONE  # the MX recovers: the retry (1 s later) delivers
        seen += await collect_until(events, outcomes("delivered"), seconds=30)
    assert of_state(seen, "bounced") == []
    assert [check_intact(m.content) for m in mx.received()] == [token]


def first_outcome(events: list[Event], recipient: str) -> str | None:
    for event in events:
        outcome = event.to_state in ("deferred", "delivered", "bounced")
        if event.type == "delivery" and event.recipient == recipient and outcome:
            return event.to_state
    return None


ZONE = """
$ORIGIN test.
$TTL 60
@            IN SOA ns.test. admin.test. 1 60 60 60 60
ok           IN MX 10 mx.ok
mx.ok        IN A 127.0.0.3
slow         IN MX 10 mx.ok
broken       IN MX 10 mx.ok
two          IN MX 5 mx1.two
two          IN MX 10 mx2.two
mx1.two      IN A 127.0.0.2
mx2.two      IN A 127.0.0.3
refused      IN MX 5 mx1.refused
refused      IN MX 10 mx2.refused
mx1.refused  IN A 127.0.0.4
mx2.refused  IN A 127.0.0.3
"""


async def test_dns_timeout_and_servfail_defer_nxdomain_bounces(tmp_path: Path) -> None:
    [sink] = bind_same_port(("127.0.0.3",), (Fault.NONE,))
    with sink:
        async with run_dns_server(ZONE) as dns_server:
            dns_server.drop("slow.test.")
            dns_server.set_failure("broken.test.", dns.rcode.SERVFAIL)
            config = relay_config(
                tmp_path / "q",
                delivery=FAST,
                dns={"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": "1s"},
                zones={"default": {"port": sink.port}},
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                port = info.smtp_ports["feeder"]
                recipients = ["a@slow.test", "b@broken.test", "c@gone.test", "d@ok.test"]
                for n, recipient in enumerate(recipients):
                    message = token_message(f"t-dns-{n}", 2000)
                    await submit_async(port, "s@origin.test", [recipient], message)

                def settled(events: list[Event]) -> bool:
                    return {r: first_outcome(events, r) for r in recipients} == {
                        "a@slow.test": "deferred",
                        "b@broken.test": "deferred",
                        "c@gone.test": "bounced",
                        "d@ok.test": "delivered",
                    }

                seen = await collect_until(events, settled, seconds=40)
                # The failures came back as the server's answers, not as a test artefact.
                assert dns_server.count("slow.test", "MX") >= 1
                assert dns_server.count("broken.test", "MX") >= 1
                # Recovered DNS: the deferred ones go out on their retry.
                dns_server.drop("slow.test.", False)
                dns_server.set_failure("broken.test.", None)
                seen += await collect_until(
                    events, lambda ev: len(of_state(ev, "delivered")) >= 2, seconds=30
                )
    by_recipient = {e.recipient: e for e in seen if e.type == "delivery"}
    assert "c@gone.test" in {e.recipient for e in of_state(seen, "bounced")}
    assert by_recipient["a@slow.test"].to_state == "delivered"
    assert by_recipient["b@broken.test"].to_state == "delivered"
    tokens = sorted(check_intact(m.content) for m in sink.received())
    # The bounce notice for c@ goes to s@origin.test, whose domain is not in the zone.
    assert tokens == ["t-dns-0", "t-dns-1", "t-dns-3"]


@pytest.mark.parametrize(
    ("domain", "primary_fault"),
    [
        ("two.test", Fault.REFUSE_GREETING),
        ("two.test", Fault.NO_GREETING),
        ("refused.test", None),
    ],
)
async def test_mx_failover_reaches_the_next_preference_on_another_address(
    tmp_path: Path, domain: str, primary_fault: Fault | None
) -> None:
    if primary_fault is None:  # mx1.refused (127.0.0.4): nothing listens there
        servers = bind_same_port(("127.0.0.3",), (Fault.NONE,))
    else:
        servers = bind_same_port(("127.0.0.2", "127.0.0.3"), (primary_fault, Fault.NONE))
    sink = servers[-1]
    with contextlib.ExitStack() as running:
        for server in servers:
            running.enter_context(server)
        async with run_dns_server(ZONE) as dns_server:
            config = relay_config(
                tmp_path / "q",
                delivery=FAST,
                dns={"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": "1s"},
                zones={"default": {"port": sink.port}},
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                message = token_message("t-failover", 2000)
                await submit_async(
                    info.smtp_ports["feeder"], "s@origin.test", [f"x@{domain}"], message
                )
                seen = await collect_until(events, outcomes("delivered"), seconds=30)
    [delivered] = of_state(seen, "delivered")
    assert delivered.mx == f"mx2.{domain}"
    assert of_state(seen, "deferred") == []  # in the same attempt, not on a retry
    assert [check_intact(m.content) for m in sink.received()] == ["t-failover"]
    if primary_fault is not None:
        assert servers[0].connections >= 1  # the primary was tried first
