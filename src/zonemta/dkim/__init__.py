"""DKIM: the body hash computed while a message streams in, and the signature made at
delivery time over the final headers (the header-block helpers are in ``zonemta.headers``).

The signer (dkimpy, dnspython) is imported on first use, so a process that only receives
mail (an intake process) needs only the body hash."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zonemta.dkim.bodyhash import RelaxedBodyHasher, relaxed_body_hash

if TYPE_CHECKING:
    from zonemta.dkim.signer import (
        DkimKeyError,
        DkimSigner,
        SigningKey,
        dns_record,
        load_key,
        load_signer,
    )

__all__ = [
    "DkimKeyError",
    "DkimSigner",
    "RelaxedBodyHasher",
    "SigningKey",
    "dns_record",
    "load_key",
    "load_signer",
    "relaxed_body_hash",
]

_FROM_SIGNER = {"DkimKeyError", "DkimSigner", "SigningKey", "dns_record", "load_key", "load_signer"}


def __getattr__(name: str) -> Any:
    if name in _FROM_SIGNER:
        return getattr(importlib.import_module("zonemta.dkim.signer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
