"""The state machines' enums hash by identity, and still behave as enums everywhere."""

from __future__ import annotations

import pickle

import pytest

from zonemta.identity_enum import IdentityEnum
from zonemta.statemachine.states import DeliveryState, Trigger
from zonemta.transport.smtp.client_events import Stage, Wait
from zonemta.transport.smtp.client_states import ClientState, ClientTrigger
from zonemta.transport.smtp.server_states import SessionState, Verb
from zonemta.transport.smtp.server_states import Trigger as ServerTrigger

HOT_ENUMS = [DeliveryState, Trigger, Stage, Wait, ClientState, ClientTrigger, SessionState, Verb]
HOT_ENUMS.append(ServerTrigger)


@pytest.mark.parametrize("kind", HOT_ENUMS, ids=lambda kind: kind.__qualname__)
def test_the_state_tables_enums_hash_by_identity(kind: type[IdentityEnum]) -> None:
    for member in kind:
        assert hash(member) == object.__hash__(member)
        assert {member: 1}[kind(member.value)] == 1  # lookup by value finds the same key
        assert pickle.loads(pickle.dumps(member)) is member


def test_members_stay_distinct_from_their_values() -> None:
    assert DeliveryState.QUEUED != "queued"
    assert "queued" not in {DeliveryState.QUEUED}
    assert DeliveryState("queued") is DeliveryState.QUEUED
