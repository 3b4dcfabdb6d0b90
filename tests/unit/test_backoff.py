"""Backoff rules: the file format, the built-in rules against provider texts, and the
decision (one backoff per zone and domain, only for temporary replies)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from zonemta.engine.bus import EventBus
from zonemta.engine.delivery.backoff import (
    Backoff,
    BackoffRulesError,
    load_backoff_rules,
    parse_backoff_rules,
)
from zonemta.engine.delivery.suspensions import Suspensions
from zonemta.store.sqlite import SqliteStore, open_sqlite_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "q") as opened:
        yield opened


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("suspend 10m /x/", "expected 'suspend|slow DURATION /PATTERN/ NAME'"),
        ("hold 10m /x/ name", "unknown action 'hold'"),
        ("suspend soon /x/ name", "rules.txt:1"),
        ("suspend 0s /x/ name", "longer than 0 s"),
        ("suspend 10m /(/ name", "bad pattern"),
    ],
)
def test_bad_rules_name_file_and_line(line: str, problem: str) -> None:
    with pytest.raises(BackoffRulesError, match=r"rules\.txt:1") as caught:
        parse_backoff_rules(line, "rules.txt")
    assert problem in str(caught.value)


def test_a_rule_pattern_may_hold_escaped_slashes() -> None:
    (rule,) = parse_backoff_rules("# comment\n\nsuspend 2h /a\\/b/ slashes\n", "f")
    assert rule.pattern.search("451 a/b") and rule.seconds == 7200 and rule.source == "f:3"


BUILTIN = Backoff(load_backoff_rules(), suspensions=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "rule"),
    [
        (
            "421-4.7.28 Our system has detected an unusual rate of\r\n"
            "421 4.7.28 unsolicited mail originating from your IP address. gsmtp",
            "gmail-rate-limited",
        ),
        (
            "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S3140)",
            "microsoft-rate-limited",
        ),
        ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred", "yahoo-deferred"),
        ("421 4.7.0 Temporarily rate limited, try again later", "rate-limited"),
        ("421 4.7.0 Too many concurrent connections from your host", "too-many-connections"),
        ("450 4.7.1 Too many messages from your IP, please slow down", "too-many-messages"),
    ],
)
def test_builtin_rules_know_provider_deferrals(reply: str, rule: str) -> None:
    matched = BUILTIN.match(reply)
    assert matched is not None and matched.name == rule


@pytest.mark.parametrize(
    "reply",
    ["451 4.7.1 greylisted, try again", "550 5.7.1 Temporarily rate limited", "250 OK"],
)
def test_other_replies_cause_no_backoff(reply: str) -> None:
    assert BUILTIN.match(reply) is None


async def test_one_backoff_per_zone_and_domain(tmp_path: Path, store: SqliteStore) -> None:
    rules_file = tmp_path / "backoff.txt"
    rules_file.write_text("suspend 1h /custom throttle/ ours\n")
    suspensions = Suspensions(store, bus=EventBus(), clock=trio.current_time)
    backoff = Backoff(load_backoff_rules(rules_file), suspensions)
    first = await backoff.consider("default", "x.test", "421 4.7.0 custom throttle")
    assert first is not None and first.rule == "ours" and first.who == "backoff"
    assert first.until == pytest.approx(trio.current_time() + 3600)
    assert first.response == "421 4.7.0 custom throttle"
    assert await backoff.consider("default", "x.test", "421 4.7.0 custom throttle") is None
    other = await backoff.consider("other", "x.test", "421 4.7.0 rate limit exceeded")
    assert other is not None and other.rule == "rate-limited"
    assert [e.id for e in await store.list_suspensions(0.0)] == [first.id, other.id]


async def test_a_slow_rule_slows_the_domain_to_one_at_a_time(store: SqliteStore) -> None:
    suspensions = Suspensions(store, bus=EventBus(), clock=trio.current_time)
    backoff = Backoff(parse_backoff_rules("slow 5m /busy/ busy\n", "f"), suspensions)
    entry = await backoff.consider("default", "x.test", "421 4.7.0 busy, too many connections")
    assert entry is not None and entry.max_connections == 1 and entry.rule == "busy"
    assert suspensions.held_domains("default") == {}  # slowed, not held
    assert suspensions.slowed("default", "x.test") == entry
    assert suspensions.slowed("other", "x.test") is None
    assert await backoff.consider("default", "x.test", "421 busy") is None  # one at a time


def test_operator_rules_come_first_and_an_unreadable_file_is_named(tmp_path: Path) -> None:
    rules_file = tmp_path / "backoff.txt"
    rules_file.write_text("# ours\n\nslow 10m /try again later/ ours\n")
    rules = load_backoff_rules(rules_file)
    assert (rules[0].name, rules[0].source) == ("ours", f"{rules_file}:3")
    assert rules[1:] == load_backoff_rules()
    missing = tmp_path / "missing.txt"
    with pytest.raises(BackoffRulesError, match=f"{missing}: cannot read backoff rules"):
        load_backoff_rules(missing)
