"""pickle_by_fields: what crosses the process pipe pickles as its class and field values."""

from __future__ import annotations

import pickle

import attrs
import pytest

from zonemta.engine.bus import Event
from zonemta.engine.delivery.outcome import Outcome, ReleaseReason
from zonemta.engine.processes import frames
from zonemta.engine.processes.pipe import Frame
from zonemta.pickling import pickle_by_fields
from zonemta.statemachine import FailureCategory, Trigger
from zonemta.store import Delivery, MessageRecord, NewDelivery, RowState
from zonemta.store.meta import FixedRoute, MessageMeta


@pickle_by_fields
@attrs.frozen
class Point:
    x: int
    y: list[int] = attrs.field(factory=list, converter=list)


@attrs.frozen
class PlainPoint:
    x: int
    y: list[int] = attrs.field(factory=list, converter=list)


def test_round_trip_and_smaller_than_attrs_own_state() -> None:
    point = Point(3, [1, 2])
    data = pickle.dumps(point, protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(data) == point
    assert b"x" not in data.replace(b"Point", b"")  # no field names in the pickle
    plain = pickle.dumps(PlainPoint(3, [1, 2]), protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < len(plain)


def test_classes_that_cannot_be_rebuilt_positionally_are_refused() -> None:
    with pytest.raises(TypeError, match="y is not a positional"):

        @pickle_by_fields
        @attrs.frozen
        class KeywordOnly:
            x: int
            y: int = attrs.field(kw_only=True)

    with pytest.raises(TypeError, match="_y is not a positional"):

        @pickle_by_fields
        @attrs.frozen
        class Private:
            _y: int


FRAME_CLASSES = [
    value
    for value in vars(frames).values()
    if isinstance(value, type) and attrs.has(value) and value.__module__ == frames.__name__
]


@pytest.mark.parametrize(
    "cls",
    [*FRAME_CLASSES, Event, Outcome, MessageRecord, NewDelivery, Delivery, MessageMeta],
    ids=lambda cls: cls.__name__,
)
def test_everything_that_crosses_the_pipe_pickles_by_fields(cls: type) -> None:
    assert "__reduce__" in vars(cls), f"{cls.__name__} lacks @pickle_by_fields"


def test_a_commit_and_its_records_survive_the_pipe() -> None:
    meta = MessageMeta(helo="client.test", user="alice", routes={2: FixedRoute(mx="mx.test")})
    record = MessageRecord("m1", "a@b.test", b"Subject: x\r\n", 10, 1.5, meta)
    commit = frames.Commit(1, record, (NewDelivery(2, "u@d.test", "d.test", "z", 2.0),), b"t")
    row = Delivery("m1", 2, "u@d.test", "d.test", "z", RowState.LOCKED, 1, 1.0, 2.0, None, "x")
    outcome = Outcome(Trigger.TRANSIENT_FAILURE, "451 later", FailureCategory.NETWORK)
    released = Outcome(Trigger.RELEASE, "held by suspension 0a1b", None, ReleaseReason.SUSPENDED)
    for obj in (commit, row, outcome, released, Event("delivery", "m1", 3.0, seq=2)):
        copy = pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        assert copy == obj
    assert isinstance(commit, Frame)
