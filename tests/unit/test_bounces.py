"""Bounce classification: the built-in rules against a corpus of real-world replies, the
rules file format, operator rules, and ``zonemta check-bounce``."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path
from typing import Any

import pytest

from zonemta.cli import main
from zonemta.engine.bounces.classifier import (
    REPLY_CATEGORIES,
    BounceAction,
    BounceClassifier,
    FailureCategory,
    RulesError,
    builtin_rules,
    normalize_response,
    parse_rules,
)

CORPUS = tomllib.loads((Path(__file__).parent / "bounce_corpus.toml").read_text("utf-8"))["reply"]


@pytest.fixture(scope="module")
def classifier() -> BounceClassifier:
    return BounceClassifier.load()


def test_builtin_rules_are_many_and_cover_every_category() -> None:
    rules = builtin_rules()
    assert len(rules) >= 150
    assert {rule.category for rule in rules} == REPLY_CATEGORIES
    assert {rule.action for rule in rules} == set(BounceAction)


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("case", CORPUS, ids=[case["source"] for case in CORPUS])
def test_real_world_replies_are_classified(
    classifier: BounceClassifier, case: dict[str, Any]
) -> None:
    result = classifier.classify(case["text"])
    assert (result.action.value, result.category.value) == (case["action"], case["category"]), (
        result.rule,
        result.line,
    )
    assert result.rule is not None
    assert result.code == case.get("code", int(case["text"][:3]))
    if "status" in case:
        assert result.status == case["status"]


def test_normalisation_joins_continuation_lines() -> None:
    text = "\r\n550-5.1.1 first line\r\n550-5.1.1   second\r\n550 5.1.1 third  \r\n"
    assert normalize_response(text) == ("550 5.1.1 first line second third", 550, "5.1.1")
    assert normalize_response("421 busy") == ("421 busy", 421, None)
    assert normalize_response("no code here") == ("no code here", None, None)
    assert normalize_response("   ") == ("", None, None)


def test_unmatched_and_empty_replies(classifier: BounceClassifier) -> None:
    empty = classifier.classify("")
    assert (empty.action, empty.category, empty.message) == (
        BounceAction.REJECT,
        FailureCategory.OTHER,
        "Empty response",
    )
    odd = BounceClassifier([]).classify("451 whatever")
    assert odd.action is BounceAction.DEFER and odd.rule is None


def test_rules_file_errors_name_file_and_line() -> None:
    bad = {
        "defer other": "expected 'ACTION CATEGORY /PATTERN/ MESSAGE'",
        "bounce other /x/ msg": "unknown action 'bounce'",
        "defer weather /x/ msg": "unknown category 'weather'",
        "defer internal /x/ msg": "unknown category 'internal'",  # no reply is ours
        "defer other /x msg": "no closing '/'",
        "defer other /(/ msg": "invalid pattern",
        "defer other /x/": "empty pattern or message",
    }
    for line, problem in bad.items():
        with pytest.raises(RulesError) as info:
            parse_rules(f"# comment\n\n{line}\n", "ops.txt")
        assert str(info.value).startswith("ops.txt:3: ")
        assert problem in str(info.value)


def test_slashes_are_escaped_in_patterns() -> None:
    [rule] = parse_rules(r"reject block /https?:\/\/blocked\.example\/x/ Listed, sorry", "f")
    assert rule.pattern.search("550 see http://blocked.example/x")
    assert rule.message == "Listed, sorry"


def test_operator_rules_come_first(tmp_path: Path) -> None:
    extra = tmp_path / "rules.txt"
    extra.write_text("defer greylist /no such user here/ Our MX greylists this way\n")
    classifier = BounceClassifier.load(extra)
    result = classifier.classify("550 No such user here")
    assert (result.action, result.category) == (BounceAction.DEFER, FailureCategory.GREYLIST)
    assert result.rule == f"{extra}:1"
    assert BounceClassifier.load().classify("550 No such user here").action is BounceAction.REJECT
    with pytest.raises(RulesError, match="cannot read"):
        BounceClassifier.load(tmp_path / "missing.txt")


README_EXAMPLE = (
    "552-5.7.0 This message was blocked because its content presents a potential\n"
    "552-5.7.0 security issue. Please visit\n"
    "552-5.7.0 http://support.google.com/mail/bin/answer.py?answer=6590 to review our\n"
    "552 5.7.0 message content and attachment content guidelines. "
    "cp3si16622595oec.101 - gsmtp\n"
)


def test_check_bounce_prints_like_the_reference(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(README_EXAMPLE))
    assert main(["check-bounce"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("data : " + README_EXAMPLE.rstrip("\n") + "\n")
    fields = dict(line.split(" : ", 1) for line in out.splitlines() if " : " in line)
    assert fields["action"] == "reject"
    assert fields["category"] == "virus"
    assert fields["code"] == "552"
    assert fields["status"] == "5.7.0"
    assert fields["message"]


@pytest.mark.parametrize("case", CORPUS[:12], ids=[case["source"] for case in CORPUS[:12]])
def test_check_bounce_on_corpus_replies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: dict[str, Any]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(case["text"]))
    assert main(["check-bounce"]) == 0
    fields = dict(
        line.split(" : ", 1) for line in capsys.readouterr().out.splitlines() if " : " in line
    )
    assert (fields["action"], fields["category"]) == (case["action"], case["category"])


def test_check_bounce_with_a_bad_rules_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "r.txt"
    rules.write_text("defer nonsense /x/ y\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("550 x"))
    assert main(["check-bounce", "--rules", str(rules)]) == 2
    assert "unknown category 'nonsense'" in capsys.readouterr().err
