"""MessageMeta and its stored document: the previous dict shape loads, unknown keys are
kept, known keys are structured strictly (a wrong type is a StoreError naming the key)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from zonemta.store import FixedRoute, MessageMeta, StoreError
from zonemta.store.meta import STORED_KEYS, meta_from_document, meta_to_document

#: What the first release wrote (before ``dkim_bh`` and ``routes`` existed).
FIRST_RELEASE = {
    "interface": "feeder",
    "client_address": "192.0.2.5",
    "helo": "client.test",
    "transtype": "ESMTPSA",
    "body_8bit": True,
    "smtputf8": False,
    "user": "alice",
}


def test_a_document_of_the_first_release_loads_with_defaults() -> None:
    meta = meta_from_document(FIRST_RELEASE, message_id="m")
    assert meta == MessageMeta(
        interface="feeder",
        client_address="192.0.2.5",
        helo="client.test",
        transtype="ESMTPSA",
        body_8bit=True,
        user="alice",
    )
    assert (meta.dkim_bh, meta.routes, meta.extra) == ("", {}, {})


def test_the_document_keeps_the_previous_dict_shape() -> None:
    meta = MessageMeta(
        interface="api",
        client_address="192.0.2.7",
        helo="h",
        transtype="HTTP",
        user=None,
        dkim_bh="bh=",
        routes={2: FixedRoute(mx="10.0.0.5:2525"), 3: FixedRoute(http_url="http://x/")},
    )
    document = meta_to_document(meta)
    assert list(document) == [
        "interface",
        "client_address",
        "helo",
        "transtype",
        "body_8bit",
        "smtputf8",
        "user",
        "dkim_bh",
        "routes",
    ]
    assert document["routes"] == {"2": {"mx": "10.0.0.5:2525"}, "3": {"http_url": "http://x/"}}
    assert "routes" not in meta_to_document(MessageMeta())
    assert meta_from_document(document, message_id="m") == meta


def test_unknown_keys_are_kept_in_extra_and_written_back() -> None:
    document = {**FIRST_RELEASE, "dkim_bh": "", "queue_hint": {"a": [1, None]}, "x": 1}
    meta = meta_from_document(document, message_id="m")
    assert meta.extra == {"queue_hint": {"a": [1, None]}, "x": 1}
    assert meta_to_document(meta) == document


def test_a_meta_pickles_for_the_process_pipes() -> None:
    meta = MessageMeta(routes={1: FixedRoute(mx="m")}, extra={"k": [1]})
    assert pickle.loads(pickle.dumps(meta)) == meta


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"body_8bit": "false"}, "expected bool, got str 'false' @ meta.body_8bit"),
        ({"smtputf8": 1}, "expected bool, got int 1 @ meta.smtputf8"),
        ({"helo": 1}, "expected str, got int 1 @ meta.helo"),
        ({"user": 5}, "expected str, got int 5 @ meta.user"),
        ({"interface": None}, "expected str, got NoneType None @ meta.interface"),
        ({"routes": []}, "expected object, got list [] @ meta.routes"),
        ({"routes": {"two": {"mx": "a"}}}, "route key 'two' is not a delivery seq"),
        ({"routes": {"2": {"mx": 3}}}, "expected str, got int 3 @ meta.routes['2'].mx"),
        ({"routes": {"2": {"mx": "a", "tls": 1}}}, "unknown key(s): tls @ meta.routes['2']"),
        ({"routes": {"2": {}}}, "names an mx or an http_url @ meta.routes['2']"),
    ],
)
def test_known_keys_are_structured_strictly(document: dict[str, Any], problem: str) -> None:
    with pytest.raises(StoreError, match="stored meta of m1 is invalid") as info:
        meta_from_document(document, message_id="m1")
    assert problem in str(info.value)


def test_every_problem_is_named() -> None:
    with pytest.raises(StoreError) as info:
        meta_from_document({"helo": 1, "body_8bit": "no"}, message_id="m1")
    assert "@ meta.helo" in str(info.value) and "@ meta.body_8bit" in str(info.value)


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(StoreError, match="not an object"):
        meta_from_document(["interface"], message_id="m1")


def test_extra_never_shadows_a_field_and_routes_are_keyed_by_seq() -> None:
    assert "extra" not in STORED_KEYS
    with pytest.raises(ValueError, match="shadow fields: helo"):
        MessageMeta(extra={"helo": "x"})
    with pytest.raises(ValueError, match="delivery seq"):
        MessageMeta(routes={"2": FixedRoute(mx="m")})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="mx or an http_url"):
        FixedRoute()
