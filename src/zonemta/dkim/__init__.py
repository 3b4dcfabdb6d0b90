"""DKIM: the body hash computed while a message streams in, and the signature made at
delivery time over the final headers (the header-block helpers are in ``zonemta.headers``)."""

from zonemta.dkim.bodyhash import RelaxedBodyHasher, relaxed_body_hash
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
