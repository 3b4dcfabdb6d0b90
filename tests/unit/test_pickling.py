"""pickle_by_fields: what crosses the process pipe pickles as its class and field values."""

from __future__ import annotations

import copyreg
import enum
import inspect
import io
import pickle
import pickletools

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zonemta.engine.bus import Event
from zonemta.engine.delivery.outcome import Outcome, ReleaseReason
from zonemta.engine.processes import frames
from zonemta.engine.processes.pipe import Frame
from zonemta.pickling import pickle_by_fields, pickle_members_by_name, register_extension_codes
from zonemta.statemachine import DeliveryState, FailureCategory, Trigger
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


FRAME_ENUMS = (DeliveryState, Trigger, FailureCategory, ReleaseReason, RowState)


@pytest.mark.parametrize("cls", FRAME_ENUMS, ids=lambda cls: cls.__name__)
def test_frame_enums_pickle_as_references_to_their_members(cls: type[enum.Enum]) -> None:
    # frames.py registers them: a member is a global (no call of the class to load it).
    for member in cls:
        data = pickle.dumps(member, protocol=pickle.HIGHEST_PROTOCOL)
        assert pickle.loads(data) is member
        ops = {op.name for op, _arg, _pos in pickletools.genops(data)}
        assert "REDUCE" not in ops
        assert ops & {"EXT1", "EXT2", "EXT4"}  # its extension code (frames.EXTENDED)
        saved = dict(copyreg._extension_registry)  # type: ignore[attr-defined]
        copyreg._extension_registry.clear()  # type: ignore[attr-defined]
        try:  # without the code: the member's global name
            data = pickle.dumps(member, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            copyreg._extension_registry.update(saved)  # type: ignore[attr-defined]
        ops = {op.name for op, _arg, _pos in pickletools.genops(data)}
        assert "STACK_GLOBAL" in ops
        assert "REDUCE" not in ops
        assert f"{cls.__qualname__}.{member.name}".encode() in data
        assert pickle.loads(data) is member


@pytest.mark.parametrize("cls", FRAME_ENUMS, ids=lambda cls: cls.__name__)
def test_enum_pickles_of_either_kind_load_the_same_member(cls: type[enum.Enum]) -> None:
    # A pickle made the default way (the class called with the value: what a process
    # without the registration sends) loads the same member as one made by name.
    for member in cls:
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.dispatch_table = {}  # not copyreg's: the enum's own __reduce_ex__
        pickler.dump(member)
        default = buffer.getvalue()
        assert "REDUCE" in {op.name for op, _arg, _pos in pickletools.genops(default)}
        assert pickle.loads(default) is member
        by_name = pickle.dumps(member, protocol=pickle.HIGHEST_PROTOCOL)
        assert pickle.loads(by_name) is member


def test_pickle_members_by_name_registers_a_c_reducer() -> None:
    class Colour(enum.Enum):
        RED = "red"

    globals()["Colour"] = Colour  # a global, as the registered classes are
    Colour.__qualname__ = "Colour"
    try:
        pickle_members_by_name(Colour)
        data = pickle.dumps(Colour.RED, protocol=pickle.HIGHEST_PROTOCOL)
        assert b"Colour.RED" in data
        assert pickle.loads(data) is Colour.RED
        reducer = copyreg.dispatch_table[Colour]
        assert not inspect.isfunction(reducer)  # a bound dict method: no Python frame
    finally:
        copyreg.dispatch_table.pop(Colour, None)
        del globals()["Colour"]


def test_a_frame_with_enums_round_trips() -> None:
    frame = frames.Done(
        7,
        (
            frames.RowOutcome(
                Outcome(Trigger.TRANSIENT_FAILURE, "451 later", FailureCategory.HTTP), "mx", None
            ),
            frames.RowOutcome(
                Outcome(Trigger.RELEASE, "back", None, ReleaseReason.WARMUP), None, None
            ),
        ),
        {},
    )
    assert pickle.loads(pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)) == frame


def _opcodes(data: bytes) -> set[str]:
    return {op.name for op, _arg, _pos in pickletools.genops(data)}


@pytest.mark.parametrize("named", frames.EXTENDED, ids=repr)
def test_what_frames_name_pickles_as_an_extension_code(named: object) -> None:
    data = pickle.dumps(named, protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(data) is named
    assert _opcodes(data) & {"EXT1", "EXT2", "EXT4"}
    assert not _opcodes(data) & {"STACK_GLOBAL", "GLOBAL"}  # no module or name in it


def test_extension_codes_are_one_per_name_and_registering_again_is_harmless() -> None:
    keys = [
        (type(o).__module__, f"{type(o).__qualname__}.{o.name}")
        if isinstance(o, enum.Enum)
        else (o.__module__, o.__qualname__)
        for o in frames.EXTENDED
    ]
    assert len(set(keys)) == len(keys)
    codes = [copyreg._extension_registry[key] for key in keys]  # type: ignore[attr-defined]
    assert codes == list(range(frames.EXTENSION_BASE, frames.EXTENSION_BASE + len(keys)))
    assert codes[-1] <= 0xFFFF  # two-byte codes (EXT2)
    assert register_extension_codes(frames.EXTENSION_BASE, frames.EXTENDED) == codes


def test_a_frame_pickled_without_extension_codes_loads_the_same() -> None:
    # What a process without the codes sends (names, not numbers) still loads.
    frame = frames.Attempt(
        3,
        "default",
        (
            Delivery(
                "m1",
                0,
                "a@b.test",
                "b.test",
                "default",
                RowState.LOCKED,
                0,
                1.0,
                1.0,
                None,
                None,
                "me",
                2.0,
            ),
        ),
        MessageRecord("m1", "s@a.test", b"Subject: x\r\n", 3, 1.0, MessageMeta(helo="h")),
        b"abc",
        {"b.test": frozenset({"10.0.0.1"})},
        (DeliveryState.QUEUED,),
    )
    with_codes = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    saved = dict(copyreg._extension_registry)  # type: ignore[attr-defined]
    copyreg._extension_registry.clear()  # type: ignore[attr-defined]
    try:
        by_name = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        copyreg._extension_registry.update(saved)  # type: ignore[attr-defined]
    assert "STACK_GLOBAL" in _opcodes(by_name)
    assert "STACK_GLOBAL" not in _opcodes(with_codes)
    assert pickle.loads(by_name) == pickle.loads(with_codes) == frame
    assert len(with_codes) < len(by_name)


_text = st.text(max_size=12)
_opt_text = st.none() | _text
_times = st.floats(allow_nan=False, allow_infinity=False, width=64)
_rows = st.builds(
    Delivery,
    message_id=st.just("m1"),
    seq=st.integers(0, 999),
    recipient=_text,
    domain=_text,
    zone=st.just("default"),
    state=st.sampled_from(RowState),
    attempts=st.integers(0, 50),
    created=_times,
    next_attempt=_times,
    first_failure=st.none() | _times,
    last_response=_opt_text,
    lease_owner=_opt_text,
    lease_until=st.none() | _times,
    delay_notified=st.booleans(),
)
_metas = st.builds(
    MessageMeta,
    interface=_text,
    client_address=_text,
    helo=_text,
    transtype=_text,
    body_8bit=st.booleans(),
    smtputf8=st.booleans(),
    user=_opt_text,
    dkim_bh=_text,
    routes=st.dictionaries(
        st.integers(0, 99), st.builds(FixedRoute, mx=_text.map(lambda t: "mx" + t)), max_size=2
    ),
    extra=st.dictionaries(_text.map(lambda t: "x-" + t), st.integers() | _text, max_size=2),
)


@given(
    rows=st.lists(_rows, min_size=1, max_size=3),
    meta=_metas,
    body=st.none() | st.binary(max_size=64),
    blacklisted=st.dictionaries(_text, st.frozensets(_text, max_size=2), max_size=2),
    states=st.data(),
)
def test_an_attempt_pickles_as_plain_values_and_loads_equal(
    rows: list[Delivery],
    meta: MessageMeta,
    body: bytes | None,
    blacklisted: dict[str, frozenset[str]],
    states: st.DataObject,
) -> None:
    message = MessageRecord("m1", "s@a.test", b"Subject: x\r\n", 9, 5.0, meta)
    drawn = states.draw(
        st.lists(st.sampled_from(DeliveryState), min_size=len(rows), max_size=len(rows))
    )
    frame = frames.Attempt(7, "default", tuple(rows), message, body, blacklisted, tuple(drawn))
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    loaded = pickle.loads(data)
    assert loaded == frame
    assert type(loaded) is frames.Attempt
    assert all(type(row) is Delivery for row in loaded.rows)
    assert [row.state for row in loaded.rows] == [row.state for row in rows]
    assert loaded.states == tuple(drawn)
    assert loaded.message.meta == meta
    # Names in it: the function that rebuilds the attempt, and FixedRoute if there are
    # routes (by their extension codes).
    names = [op for op, _a, _p in pickletools.genops(data) if op.name.startswith("EXT")]
    assert len(names) == 1 + len(meta.routes)
    assert not _opcodes(data) & {"STACK_GLOBAL", "GLOBAL"}
