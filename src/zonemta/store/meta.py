"""A message's metadata: what the intake knew about its submission, and how it is stored.

:class:`MessageMeta` is written once, at commit, and read by every delivery attempt (the
``Received`` field, DKIM's ``bh=``, ``8BITMIME``/``SMTPUTF8``, a route hook's fixed target),
the DSN builder and the HTTP API. Backends store it as one flat JSON object (sqlite) or BSON
document (MongoDB) whose keys are the field names, the shape the previous ``meta`` dict had;
:func:`meta_to_document` and :func:`meta_from_document` convert, through one cattrs converter.

Reading is strict (cattrs' defaults are lax, see dependencies.md §6): a known key holding
the wrong type (``"false"`` for a bool, ``1`` for a str) is a :class:`StoreError` naming the
key, never coerced. A key this version does not know (written by a newer or an older
version sharing the store) is kept, unchanged, in :attr:`MessageMeta.extra` and written back
with the rest, so nothing is lost. A missing key takes its field's default: documents
written before ``dkim_bh`` or ``routes`` existed load as they did.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Any, Final

import attrs
import cattrs
from cattrs.errors import (
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from zonemta.pickling import pickle_by_fields
from zonemta.store.errors import StoreError

__all__ = ["FixedRoute", "MessageMeta", "meta_from_document", "meta_to_document"]


@pickle_by_fields
@attrs.frozen
class FixedRoute:
    """Where a ``route`` hook sent one delivery: a fixed ``mx`` (``host`` or ``host:port``)
    and/or an ``http_url`` (HTTP delivery). At least one is set."""

    mx: str | None = None
    http_url: str | None = None

    def __attrs_post_init__(self) -> None:
        if not (self.mx or self.http_url):
            raise ValueError("a fixed route names an mx or an http_url")


def _copy_routes(routes: Mapping[int, FixedRoute]) -> dict[int, FixedRoute]:
    return dict(routes)


def _copy_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    return dict(extra)


@pickle_by_fields
@attrs.frozen
class MessageMeta:
    """Facts about a message's submission, kept with the message.

    ``interface`` is the SMTP interface (or ``api``, ``bounce``) it came in on;
    ``client_address`` and ``helo`` name the client ("" when unknown); ``transtype`` is the
    ``with`` of the ``Received`` field (``ESMTP``, ``ESMTPSA``, ``HTTP``...); ``user`` the
    authenticated submitter; ``body_8bit`` and ``smtputf8`` what the content needs from the
    next hop; ``dkim_bh`` the body hash (relaxed, sha256, base64) computed while the body
    was received ("" when none was); ``routes`` the fixed targets a ``route`` hook chose, by
    delivery seq; ``extra`` every stored key this version does not know (see the module
    docstring), never one of the field names."""

    interface: str = ""
    client_address: str = ""
    helo: str = ""
    transtype: str = "ESMTP"
    body_8bit: bool = False
    smtputf8: bool = False
    user: str | None = None
    dkim_bh: str = ""
    routes: Mapping[int, FixedRoute] = attrs.field(factory=dict, converter=_copy_routes)
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_copy_extra)

    def __attrs_post_init__(self) -> None:
        # Most metas have neither (one is built for every message received and unpickled
        # for every message relayed): no checks to run then.
        if self.extra:
            clash = sorted(set(self.extra) & STORED_KEYS)
            if clash:
                raise ValueError(f"extra meta keys shadow fields: {', '.join(clash)}")
        if self.routes and any(type(seq) is not int or seq < 0 for seq in self.routes):
            raise ValueError("routes are keyed by delivery seq (an int >= 0)")


#: The document keys the fields are stored under (their names; ``extra`` is spread out).
STORED_KEYS: Final = frozenset(f.name for f in attrs.fields(MessageMeta)) - {"extra"}

_SEQ_KEY = re.compile(r"[0-9]+")


# --------------------------------------------------------------------------- the converter


def _expected(kind: str, value: Any) -> TypeError:
    return TypeError(f"expected {kind}, got {type(value).__name__} {value!r}")


def _structure_str(value: Any, _typ: type) -> str:
    if type(value) is not str:
        raise _expected("str", value)
    return value


def _structure_bool(value: Any, _typ: type) -> bool:
    if type(value) is not bool:
        raise _expected("bool", value)
    return value


def _is_routes(typ: Any) -> bool:
    return typing.get_origin(typ) is Mapping and typing.get_args(typ) == (int, FixedRoute)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)

    route_hook = make_dict_structure_fn(FixedRoute, conv, _cattrs_forbid_extra_keys=True)

    def structure_route(value: Any, typ: type) -> FixedRoute:
        if not isinstance(value, Mapping):
            raise _expected("object", value)
        return route_hook(value, typ)

    def structure_routes(value: Any, _typ: Any) -> dict[int, FixedRoute]:
        if not isinstance(value, Mapping):
            raise _expected("object", value)
        routes: dict[int, FixedRoute] = {}
        errors: list[Exception] = []
        for key, item in value.items():
            try:
                if not isinstance(key, str) or _SEQ_KEY.fullmatch(key) is None:
                    raise ValueError(f"route key {key!r} is not a delivery seq")
                routes[int(key)] = structure_route(item, FixedRoute)
            except Exception as exc:
                note = IterableValidationNote(f"Structuring route {key!r}", key, FixedRoute)
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)
        if errors:
            raise IterableValidationError("While structuring routes", errors, _typ)
        return routes

    conv.register_structure_hook_func(_is_routes, structure_routes)
    conv.register_unstructure_hook(
        FixedRoute,
        make_dict_unstructure_fn(FixedRoute, conv, _cattrs_omit_if_default=True),
    )
    conv.register_unstructure_hook_func(
        _is_routes,
        lambda routes: {str(seq): conv.unstructure(route) for seq, route in routes.items()},
    )
    return conv


_converter: Final = _make_converter()
_structure_fields = make_dict_structure_fn(
    MessageMeta, _converter, _cattrs_forbid_extra_keys=True, extra=override(omit=True)
)
_unstructure_fields = make_dict_unstructure_fn(
    MessageMeta, _converter, extra=override(omit=True), routes=override(omit_if_default=True)
)


def _format_exception(exc: BaseException, _typ: object) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        return "unknown key(s): " + ", ".join(sorted(exc.extra_fields))
    return str(exc) or type(exc).__name__


def _error_text(exc: BaseException) -> str:
    return "; ".join(cattrs.transform_error(exc, path="meta", format_exception=_format_exception))


def meta_to_document(meta: MessageMeta) -> dict[str, Any]:
    """The stored shape: every field under its name (``routes`` only when there are any,
    keyed by ``str(seq)``, a route without its unset half), then the ``extra`` keys."""
    document: dict[str, Any] = _unstructure_fields(meta)
    document.update(meta.extra)
    return document


def meta_from_document(document: Any, *, message_id: str) -> MessageMeta:
    """A stored document back as :class:`MessageMeta`; unknown keys go to ``extra``.

    Raises :class:`StoreError` naming the key when a known key holds a value of the wrong
    type (or the document is not an object at all)."""
    if not isinstance(document, Mapping):
        raise StoreError(f"stored meta of {message_id} is not an object: {document!r}")
    known = {key: value for key, value in document.items() if key in STORED_KEYS}
    extra = {key: value for key, value in document.items() if key not in STORED_KEYS}
    try:
        fields: MessageMeta = _structure_fields(known, MessageMeta)
    except Exception as exc:
        raise StoreError(f"stored meta of {message_id} is invalid: {_error_text(exc)}") from exc
    return attrs.evolve(fields, extra=extra) if extra else fields
