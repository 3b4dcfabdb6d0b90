"""DKIM: the body hash computed while a message streams in, the signature made at delivery
time over the final headers, and the header-block helpers both use."""

from zonemta.dkim.bodyhash import RelaxedBodyHasher, relaxed_body_hash
from zonemta.dkim.headers import HeaderPolicy, HopLimitExceeded
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
    "HeaderPolicy",
    "HopLimitExceeded",
    "RelaxedBodyHasher",
    "SigningKey",
    "dns_record",
    "load_key",
    "load_signer",
    "relaxed_body_hash",
]
