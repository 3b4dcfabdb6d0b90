"""log_outcome: the delivery log line, made without logging's search of the stack."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from zonemta.engine.delivery import attempt
from zonemta.engine.delivery.attempt import OUTCOME_FORMAT, log, log_outcome


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[_Keep]:
    handler = _Keep()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)
    log.setLevel(level)


def _pieces(tls: str | None) -> tuple[SimpleNamespace, SimpleNamespace, SimpleNamespace]:
    row = SimpleNamespace(message_id="m1", seq=0x1F, recipient="a@b.test", zone="default")
    machine = SimpleNamespace(state=SimpleNamespace(value="delivered"), mx=None, tls=tls)
    outcome = SimpleNamespace(response="250 2.0.0 queued as 'x'")
    return row, machine, outcome


ATTRIBUTES = (
    "name",
    "msg",
    "args",
    "levelno",
    "levelname",
    "pathname",
    "filename",
    "module",
    "funcName",
    "exc_info",
    "exc_text",
    "stack_info",
    "thread",
    "threadName",
    "process",
    "processName",
)


@pytest.mark.parametrize("tls", [None, "TLSv1.3"])
@pytest.mark.parametrize("first", [True, False])
def test_the_record_is_the_one_log_info_makes(
    kept: _Keep, monkeypatch: pytest.MonkeyPatch, tls: str | None, first: bool
) -> None:
    if first:  # the call that asks findCaller, and the ones that reuse its answer
        monkeypatch.setattr(attempt, "_outcome_caller", None)
    row, machine, outcome = _pieces(tls)
    log_outcome(row, machine, outcome)  # type: ignore[arg-type]
    fast = kept.records.pop()

    def slow() -> None:  # log.info from a function of the same name, as it was ...
        log.info(
            OUTCOME_FORMAT,
            row.message_id,
            row.seq,
            machine.state.value.upper(),
            row.recipient,
            row.zone,
            machine.mx or "-",
            machine.tls or "-",
            outcome.response,
        )

    # ... in the same file (the record's pathname, filename and module come from there).
    slow.__code__ = slow.__code__.replace(
        co_name="log_outcome", co_filename=log_outcome.__code__.co_filename
    )
    slow()
    reference = kept.records.pop()
    for name in ATTRIBUTES:
        assert getattr(fast, name) == getattr(reference, name), name
    assert fast.pathname == inspect.getsourcefile(log_outcome)
    assert fast.getMessage() == reference.getMessage()
    assert fast.getMessage() == (
        "m1.01f DELIVERED to=<a@b.test> zone=default mx=- tls=%s"
        " response=\"250 2.0.0 queued as 'x'\"" % (tls or "-")
    )
    lines, start = inspect.getsourcelines(log_outcome)
    assert start <= fast.lineno < start + len(lines)
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    assert formatter.format(fast) == formatter.format(reference)


def test_nothing_is_made_below_the_level(kept: _Keep) -> None:
    log.setLevel(logging.WARNING)
    log_outcome(*_pieces(None))  # type: ignore[arg-type]
    assert kept.records == []
