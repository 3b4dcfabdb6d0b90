"""Automatic backoff: a remote reply that says "you are sending too fast" suspends the
(zone, site) for a while: the recipient domain's site (``[domains."*.provider"]`` or MX
rollup) once the relay has learned it, else the domain itself.

The rules are data (``zonemta/data/backoff-rules.txt``, plus an operator file tried
first): one rule per line, ``suspend|slow DURATION /PATTERN/ NAME``. A temporary failure
whose reply (normalised as the bounce rules see it) matches a rule adds a suspension of the
delivery's site in its zone for ``DURATION`` (``slow``: an entry that lets one delivery
to the site go at a time instead of none), naming the rule and the reply, unless one of
the same kind made by a rule is already there. The decision is taken in the relay, where
the outcome arrives (also with delivery processes), and the suspension is shared through
the store like an operator's.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import attrs

from zonemta.conf.units import parse_duration
from zonemta.engine.bounces.classifier import normalize_response
from zonemta.engine.delivery.suspensions import Suspensions
from zonemta.engine.rule_files import load_rule_files, rule_lines
from zonemta.store import StoreError, Suspension

log = logging.getLogger(__name__)

_BUILTIN = "backoff-rules.txt"
_RULE = re.compile(r"(\S+)\s+(\S+)\s+/((?:\\.|[^\\/])*)/\s+(\S+)\s*$")
ACTIONS = ("suspend", "slow")


class BackoffRulesError(Exception):
    """A backoff rules file cannot be used; the message names file and line."""


@attrs.frozen
class BackoffRule:
    name: str
    pattern: re.Pattern[str]
    seconds: float
    source: str  # "file:line"
    action: str = "suspend"  # or "slow": one delivery at a time


def parse_backoff_rules(text: str, source: str) -> list[BackoffRule]:
    """Parse a rules file (blank lines and ``#`` comments skipped). Raises
    :class:`BackoffRulesError` naming ``source:line`` for a bad line."""
    rules: list[BackoffRule] = []
    for where, line in rule_lines(text, source):
        match = _RULE.fullmatch(line)
        if match is None:
            raise BackoffRulesError(f"{where}: expected 'suspend|slow DURATION /PATTERN/ NAME'")
        action, duration, pattern, name = match.groups()
        if action not in ACTIONS:
            raise BackoffRulesError(
                f"{where}: unknown action {action!r} (expected suspend or slow)"
            )
        try:
            seconds = parse_duration(duration).total_seconds()
        except ValueError as exc:
            raise BackoffRulesError(f"{where}: {exc}") from None
        if seconds <= 0:
            raise BackoffRulesError(f"{where}: the duration must be longer than 0 s")
        try:
            compiled = re.compile(pattern.replace("\\/", "/"), re.IGNORECASE)
        except re.error as exc:
            raise BackoffRulesError(f"{where}: bad pattern: {exc}") from None
        rules.append(BackoffRule(name, compiled, seconds, where, action))
    return rules


def load_backoff_rules(extra: str | Path | None = None) -> list[BackoffRule]:
    """The operator's rules (``extra``, tried first) and the built-in ones. Raises
    :class:`BackoffRulesError`."""
    return load_rule_files(parse_backoff_rules, extra, _BUILTIN, BackoffRulesError, "backoff rules")


class Backoff:
    def __init__(self, rules: list[BackoffRule], suspensions: Suspensions) -> None:
        self.rules = rules
        self.suspensions = suspensions

    def match(self, response: str) -> BackoffRule | None:
        line = normalize_response(response)[0]
        if not line.startswith("4"):
            return None
        for rule in self.rules:
            if rule.pattern.search(line):
                return rule
        return None

    def _active(self, zone: str, domain: str, rule: BackoffRule) -> Suspension | None:
        if rule.action == "slow":
            found = self.suspensions.slowed(zone, domain)
        else:
            found = self.suspensions.held_domains(zone).get(domain)
        return found if found is not None and found.rule is not None else None

    async def consider(self, zone: str, domain: str, response: str) -> Suspension | None:
        """After a temporary failure with a remote ``response``: suspend (zone, the domain's
        site) when a rule matches and no backoff holds it yet. Returns the new suspension, if
        any. A store failure is logged (the delivery's own retry goes on)."""
        rule = self.match(response)
        site = self.suspensions.site_of(domain)
        if rule is None or self._active(zone, site, rule) is not None:
            return None
        try:
            return await self.suspensions.add(
                zone=zone,
                domain=site,
                until=self.suspensions.clock() + rule.seconds,
                reason=f"backoff for {rule.seconds:g} s",
                who="backoff",
                rule=rule.name,
                response=response,
                max_connections=1 if rule.action == "slow" else None,
            )
        except StoreError as exc:
            log.error("storing the backoff of %s in zone %s failed: %s", site, zone, exc)
            return None
