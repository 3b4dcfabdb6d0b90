"""Bounce classification: what a remote server's refusal means and what to do about it.

The rules are data (``zonemta/data/bounce-rules.txt``, plus an operator file tried first):
one rule per line, ``ACTION CATEGORY /PATTERN/ MESSAGE``; the reply is normalised to one
line (``"550 5.1.1 text ..."``) and the first rule whose pattern matches decides. The
action says whether the delivery is tried again (``defer``) or bounced now (``reject``);
the category (one of ``REPLY_CATEGORIES`` of the one
:class:`~zonemta.statemachine.FailureCategory`) goes on the delivery event, the DSN and the
webhook.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from pathlib import Path

import attrs

from zonemta.engine.rule_files import load_rule_files, rule_lines
from zonemta.statemachine import REPLY_CATEGORIES, FailureCategory

__all__ = [
    "REPLY_CATEGORIES",
    "BounceAction",
    "BounceClassifier",
    "BounceRule",
    "Classification",
    "FailureCategory",
    "RulesError",
    "builtin_rules",
    "normalize_response",
    "parse_rules",
]

_RULE_HEAD = re.compile(r"(\S+)\s+(\S+)\s+/")
_REPLY_PREFIX = re.compile(r"^(\d{3})(?:[ -]|$)\s*(?:([245]\.\d{1,3}\.\d{1,3})(?:\s+|$))?")
_WHITESPACE = re.compile(r"\s+")
_BUILTIN = "bounce-rules.txt"


class BounceAction(enum.StrEnum):
    DEFER = "defer"  # try the delivery again later
    REJECT = "reject"  # bounce it now


class RulesError(Exception):
    """A rules file cannot be used; the message names file and line."""


@attrs.frozen
class BounceRule:
    pattern: re.Pattern[str]
    action: BounceAction
    category: FailureCategory
    message: str
    source: str  # "file:line"


@attrs.frozen
class Classification:
    """What a reply means. ``data`` is the reply as given; ``line`` its normalised form;
    ``code`` and ``status`` its reply code and enhanced status code when it has them;
    ``rule`` the ``file:line`` of the rule that matched (None: nothing matched)."""

    data: str
    line: str
    action: BounceAction
    category: FailureCategory
    message: str
    code: int | None
    status: str | None
    rule: str | None = None

    @property
    def temporary(self) -> bool:
        return self.action is BounceAction.DEFER


def normalize_response(text: str) -> tuple[str, int | None, str | None]:
    """``(line, code, status)``: a (possibly multi-line) SMTP reply as one line
    ``"CODE STATUS text"``, the ``NNN-x.y.z`` prefixes of continuation lines removed and
    whitespace collapsed; ``code``/``status`` None when the reply has none."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "", None, None
    first = _REPLY_PREFIX.match(lines[0])
    if first is None:
        return _WHITESPACE.sub(" ", " ".join(lines)).strip(), None, None
    code, status = first.group(1), first.group(2)
    parts: list[str] = []
    for line in lines:
        match = _REPLY_PREFIX.match(line)
        if match is not None and match.group(1) == code:
            line = line[match.end() :]
        parts.append(line)
    text_part = _WHITESPACE.sub(" ", " ".join(parts)).strip()
    head = f"{code} {status}" if status else code
    line = f"{head} {text_part}" if text_part else head
    return line, int(code), status


def _split_pattern(rest: str) -> tuple[str, str] | None:
    """``(pattern, message)`` from the text after the opening slash, or None."""
    index = 0
    while index < len(rest):
        char = rest[index]
        if char == "\\":
            index += 2
            continue
        if char == "/":
            return rest[:index].replace("\\/", "/"), rest[index + 1 :].strip()
        index += 1
    return None


def _reply_category(name: str) -> FailureCategory | None:
    """The category a rule names, if a reply can have it (not dns, tls, internal, ...)."""
    try:
        category = FailureCategory(name.lower())
    except ValueError:
        return None
    return category if category in REPLY_CATEGORIES else None


def parse_rules(text: str, source: str) -> list[BounceRule]:
    """Parse a rules file. Blank lines and ``#`` comments are skipped. Raises
    :class:`RulesError` naming ``source:line`` for any bad line (unknown action or
    category, missing slashes, invalid regex, empty message)."""
    rules: list[BounceRule] = []
    for where, line in rule_lines(text, source):
        head = _RULE_HEAD.match(line)
        if head is None:
            raise RulesError(f"{where}: expected 'ACTION CATEGORY /PATTERN/ MESSAGE'")
        try:
            action = BounceAction(head.group(1).lower())
        except ValueError:
            raise RulesError(f"{where}: unknown action {head.group(1)!r}") from None
        category = _reply_category(head.group(2))
        if category is None:
            raise RulesError(f"{where}: unknown category {head.group(2)!r}")
        split = _split_pattern(line[head.end() :])
        if split is None:
            raise RulesError(f"{where}: the pattern has no closing '/'")
        pattern_text, message = split
        if not pattern_text or not message:
            raise RulesError(f"{where}: empty pattern or message")
        try:
            pattern = re.compile(pattern_text, re.IGNORECASE)
        except re.error as exc:
            raise RulesError(f"{where}: invalid pattern: {exc}") from exc
        rules.append(BounceRule(pattern, action, category, message, where))
    return rules


def builtin_rules() -> list[BounceRule]:
    """The rules shipped with zonemta."""
    return load_rule_files(parse_rules, None, _BUILTIN, RulesError, "bounce rules")


class BounceClassifier:
    """Classifies SMTP replies with an ordered rule list; first match wins."""

    def __init__(self, rules: Sequence[BounceRule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def load(cls, extra_file: str | Path | None = None) -> BounceClassifier:
        """The built-in rules, preceded by the operator's ``extra_file`` when given.
        Raises :class:`RulesError` (unreadable file or bad rule)."""
        return cls(load_rule_files(parse_rules, extra_file, _BUILTIN, RulesError, "bounce rules"))

    def classify(self, response: str) -> Classification:
        """What ``response`` (one or more reply lines) means. An empty reply or one that no
        rule matches is a permanent failure of category ``other``, unless it carries a 4xx
        code."""
        line, code, status = normalize_response(response)
        data = response.strip()
        if line:
            for rule in self.rules:
                if rule.pattern.search(line):
                    return Classification(
                        data,
                        line,
                        rule.action,
                        rule.category,
                        rule.message,
                        code,
                        status,
                        rule.source,
                    )
        temporary = code is not None and 400 <= code < 500
        return Classification(
            data,
            line,
            BounceAction.DEFER if temporary else BounceAction.REJECT,
            FailureCategory.OTHER,
            "Unrecognised response" if line else "Empty response",
            code,
            status,
        )

    def format(self, result: Classification) -> str:
        """The ``check-bounce`` report: ``data``, ``action``, ``message``, ``category``,
        ``code``, ``status`` and ``rule``, one ``name : value`` per line."""
        rows = [
            ("data", result.data),
            ("action", result.action.value),
            ("message", result.message),
            ("category", result.category.value),
            ("code", "" if result.code is None else str(result.code)),
            ("status", result.status or ""),
            ("rule", result.rule or "(none)"),
        ]
        return "".join(f"{name} : {value}".rstrip() + "\n" for name, value in rows)
