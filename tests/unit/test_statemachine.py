from __future__ import annotations

from pathlib import Path

import pytest

from zonemta.statemachine import (
    TERMINAL_STATES,
    TRANSITIONS,
    BlacklistSource,
    BounceWebhook,
    ConsiderBackoff,
    DeferRow,
    DeliveryState,
    DsnKind,
    InvalidTransition,
    LeaseRow,
    NotifySender,
    ReleaseRow,
    RemoveRow,
    Report,
    ReportHook,
    Transition,
    Trigger,
    release_trigger,
    transition,
    waiting_state,
)
from zonemta.statemachine.diagram import markdown, mermaid

S, T = DeliveryState, Trigger
IN_FLIGHT = [S.LOCKED, S.RESOLVING, S.CONNECTING, S.SENDING]


def test_happy_path_through_every_phase() -> None:
    state = S.QUEUED
    for trigger in (T.LEASE, T.RESOLVE, T.RESOLVED, T.CONNECTED, T.ACCEPTED):
        state = transition(state, trigger).target
    assert state is S.DELIVERED


def test_reused_connection_skips_resolving_and_connecting() -> None:
    row = transition(S.LOCKED, T.REUSE_CONNECTION)
    assert row.target is S.SENDING
    assert transition(S.SENDING, T.RECONNECT).target is S.RESOLVING


@pytest.mark.parametrize("state", IN_FLIGHT)
def test_every_in_flight_state_can_defer_bounce_or_release(state: DeliveryState) -> None:
    assert transition(state, T.TRANSIENT_FAILURE).target is S.DEFERRED
    assert transition(state, T.TRANSIENT_FAILURE).row_write == DeferRow()
    assert transition(state, T.PERMANENT_FAILURE).target is S.BOUNCED
    assert transition(state, T.RETRIES_EXHAUSTED).target is S.BOUNCED
    release = transition(state, T.RELEASE)
    assert (release.target, release.row_write) == (S.QUEUED, ReleaseRow(S.QUEUED))
    again = transition(state, T.RELEASE_DEFERRED)
    assert (again.target, again.row_write) == (S.DEFERRED, ReleaseRow(S.DEFERRED))


@pytest.mark.parametrize("attempts", [0, 1, 7])
def test_a_release_returns_the_row_to_the_state_it_waited_in(attempts: int) -> None:
    start = waiting_state(attempts)
    assert start is (S.DEFERRED if attempts else S.QUEUED)
    leased = transition(start, T.LEASE)
    assert leased.row_write == LeaseRow()
    for state in IN_FLIGHT:
        row = transition(state, release_trigger(attempts))
        assert row.target is start
        assert row.row_write == ReleaseRow(start)  # what the store is told to write
        assert row.effects == (ReleaseRow(start),)  # no notice, report or blacklist


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
            assert row.row_write == RemoveRow()
        else:
            assert row.row_write != RemoveRow()


def test_the_steps_of_an_attempt_have_no_effects() -> None:
    for trigger in (T.RESOLVE, T.RESOLVED, T.CONNECTED, T.REUSE_CONNECTION, T.RECONNECT):
        for (_, row_trigger), row in TRANSITIONS.items():
            if row_trigger is trigger:
                assert row.effects == ()


def test_bounces_notify_the_sender_and_the_webhook_except_suppressions() -> None:
    for row in TRANSITIONS.values():
        if row.target is not S.BOUNCED:
            assert NotifySender(DsnKind.FAILED) not in row.effects
            continue
        notified = row.trigger is not T.SUPPRESSED
        assert (NotifySender(DsnKind.FAILED) in row.effects) is notified
        assert (BounceWebhook() in row.effects) is notified
        assert Report(ReportHook.BOUNCE) in row.effects


def test_deferrals_may_send_a_delay_notice_and_report() -> None:
    for state in IN_FLIGHT:
        effects = transition(state, T.TRANSIENT_FAILURE).effects
        assert NotifySender(DsnKind.DELAYED) in effects
        assert Report(ReportHook.DELAYED) in effects
    accepted = transition(S.SENDING, T.ACCEPTED)
    assert accepted.effects == (Report(ReportHook.DELIVERED), RemoveRow())


def test_only_a_remote_reply_blacklists_or_backs_off() -> None:
    for row in TRANSITIONS.values():
        remote = row.source in (S.RESOLVING, S.CONNECTING, S.SENDING)
        if BlacklistSource() in row.effects or ConsiderBackoff() in row.effects:
            assert remote, row
    for state in (S.RESOLVING, S.CONNECTING, S.SENDING):
        assert BlacklistSource() in transition(state, T.PERMANENT_FAILURE).effects
        assert ConsiderBackoff() in transition(state, T.TRANSIENT_FAILURE).effects
        assert ConsiderBackoff() not in transition(state, T.PERMANENT_FAILURE).effects


def test_a_transition_writes_the_row_once_and_last() -> None:
    with pytest.raises(ValueError, match="two row writes"):
        Transition(S.SENDING, T.ACCEPTED, S.DELIVERED, (RemoveRow(), RemoveRow()))
    with pytest.raises(ValueError, match="writes the row last"):
        Transition(S.SENDING, T.ACCEPTED, S.DELIVERED, (RemoveRow(), BounceWebhook()))
    with pytest.raises(ValueError, match="target state"):
        Transition(S.LOCKED, T.RELEASE, S.QUEUED, (ReleaseRow(S.DEFERRED),))
    with pytest.raises(ValueError, match="queued or deferred"):
        ReleaseRow(S.LOCKED)


def test_diagram_has_every_transition() -> None:
    text = mermaid()
    for row in TRANSITIONS.values():
        assert f"{row.source.value} --> {row.target.value}" in text


def test_docs_state_machine_page_is_generated_from_the_table() -> None:
    page = Path(__file__).parents[2] / "docs" / "state-machine.md"
    assert page.read_text() == markdown(), (
        "run: python -m zonemta.statemachine.diagram > docs/state-machine.md"
    )
