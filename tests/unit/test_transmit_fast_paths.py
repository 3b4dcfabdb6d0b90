"""Sender.transmit with one delivery takes a path of its own (no parts, no hosts, no
closure): the same outcomes as the general path, including the internal-error deferral of a
part that raises."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from zonemta.engine.delivery.machine import MachineGroup
from zonemta.engine.delivery.outcome import Outcome
from zonemta.engine.delivery.pools import PoolAddress
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.delivery.transmit import Sender
from zonemta.engine.hooks import Hooks
from zonemta.statemachine import FailureCategory, Trigger

SOURCE = PoolAddress("", "mta.test")


def sender(transmit_on: Any) -> tuple[Sender, list[list[int]]]:
    """A Sender whose preparation is trivial and whose transaction is ``transmit_on``;
    records the row seqs of each part sent."""
    made = Sender.__new__(Sender)
    parts: list[list[int]] = []

    async def prepare(machine: Any, message: Any, body: Any, rows: Any) -> Any:
        if machine.row.seq == 99:
            return Outcome(Trigger.SUPPRESSED, "suppressed", FailureCategory.SUPPRESSED)
        return SOURCE, None

    async def on(group: MachineGroup, *args: Any) -> list[Outcome]:
        parts.append([m.row.seq for m in group.machines])
        return await transmit_on(group)

    made.hooks = Hooks()
    made.zone = SimpleNamespace(smart_host=None)  # type: ignore[assignment]
    made.retry = RetryPolicy((60.0,), 3600.0)
    made.clock = lambda: 0.0
    made._prepare = prepare  # type: ignore[method-assign]
    made._transmit_on = on  # type: ignore[method-assign]
    return made, parts


def machine(seq: int) -> Any:
    row = SimpleNamespace(seq=seq, domain="dest.test", attempts=0, created=0.0)
    return SimpleNamespace(row=row, mx=None, local_address=None)


MESSAGE = SimpleNamespace(id="m1")


async def accept(group: MachineGroup) -> list[Outcome]:
    return [Outcome(Trigger.ACCEPTED, f"250 ok {m.row.seq}") for m in group.machines]


async def crash(group: MachineGroup) -> list[Outcome]:
    raise RuntimeError("boom")


@pytest.mark.parametrize("transmit_on", [accept, crash])
@pytest.mark.parametrize("seqs", [[1], [99], [1, 2], [99, 2]])
async def test_one_delivery_and_several_give_the_same_outcomes(
    transmit_on: Any, seqs: list[int]
) -> None:
    made, parts = sender(transmit_on)
    outcomes = await made.transmit([machine(s) for s in seqs], MESSAGE, lambda: None)  # type: ignore[arg-type]
    expected = []
    for seq in seqs:
        if seq == 99:
            expected.append(Outcome(Trigger.SUPPRESSED, "suppressed", FailureCategory.SUPPRESSED))
        elif transmit_on is accept:
            expected.append(Outcome(Trigger.ACCEPTED, f"250 ok {seq}"))
        else:
            expected.append(
                Outcome(
                    Trigger.TRANSIENT_FAILURE,
                    "internal error: RuntimeError('boom')",
                    FailureCategory.INTERNAL,
                )
            )
    assert outcomes == expected
    assert parts == ([[s for s in seqs if s != 99]] if any(s != 99 for s in seqs) else [])
