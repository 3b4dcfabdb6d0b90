from __future__ import annotations

from pathlib import Path

import pytest

from zonemta.statemachine import (
    TERMINAL_STATES,
    TRANSITIONS,
    DeliveryState,
    InvalidTransition,
    Persist,
    Trigger,
    transition,
)
from zonemta.statemachine.diagram import markdown, mermaid

S, T = DeliveryState, Trigger


def test_happy_path_through_every_phase() -> None:
    state = S.QUEUED
    for trigger in (T.LEASE, T.RESOLVE, T.RESOLVED, T.CONNECTED, T.ACCEPTED):
        state = transition(state, trigger).target
    assert state is S.DELIVERED


def test_reused_connection_skips_resolving_and_connecting() -> None:
    row = transition(S.LOCKED, T.REUSE_CONNECTION)
    assert row.target is S.SENDING
    assert transition(S.SENDING, T.RECONNECT).target is S.RESOLVING


@pytest.mark.parametrize("state", [S.LOCKED, S.RESOLVING, S.CONNECTING, S.SENDING])
def test_every_in_flight_state_can_defer_bounce_or_release(state: DeliveryState) -> None:
    assert transition(state, T.TRANSIENT_FAILURE).target is S.DEFERRED
    assert transition(state, T.TRANSIENT_FAILURE).persist is Persist.DEFER
    assert transition(state, T.PERMANENT_FAILURE).target is S.BOUNCED
    assert transition(state, T.RETRIES_EXHAUSTED).target is S.BOUNCED
    release = transition(state, T.RELEASE)
    assert (release.target, release.persist) == (S.QUEUED, Persist.RELEASE)


def test_terminal_states_have_no_way_out() -> None:
    for state in TERMINAL_STATES:
        for trigger in Trigger:
            with pytest.raises(InvalidTransition):
                transition(state, trigger)


def test_unknown_pair_names_state_and_trigger() -> None:
    with pytest.raises(InvalidTransition, match=r"'queued'.*'accepted'"):
        transition(S.QUEUED, T.ACCEPTED)


def test_only_leases_leave_the_waiting_states() -> None:
    for (state, trigger), _ in TRANSITIONS.items():
        if state in (S.QUEUED, S.DEFERRED):
            assert trigger is T.LEASE


def test_every_state_is_reachable_from_queued() -> None:
    reached = {S.QUEUED}
    frontier = [S.QUEUED]
    while frontier:
        state = frontier.pop()
        for (source, _), row in TRANSITIONS.items():
            if source is state and row.target not in reached:
                reached.add(row.target)
                frontier.append(row.target)
    assert reached == set(DeliveryState)


def test_outcomes_that_end_a_delivery_remove_its_row() -> None:
    for row in TRANSITIONS.values():
        if row.target in TERMINAL_STATES:
            assert row.persist is Persist.COMPLETE


def test_diagram_has_every_transition() -> None:
    text = mermaid()
    for row in TRANSITIONS.values():
        assert f"{row.source.value} --> {row.target.value}" in text


def test_docs_state_machine_page_is_generated_from_the_table() -> None:
    page = Path(__file__).parents[2] / "docs" / "state-machine.md"
    assert page.read_text() == markdown(), (
        "run: python -m zonemta.statemachine.diagram > docs/state-machine.md"
    )
