"""DKIM-Signature fields made at delivery time over the final header block, with the body
hash (``bh=``) that the intake computed while the body streamed in.

dkimpy does the header work (parsing, relaxed header canonicalisation, the ``h=`` selection,
the signature field's folding: ``DKIM.gen_header``); the private-key operation is OpenSSL's
through ``cryptography``. dkimpy's own RSA is pure Python (~7 ms a signature, blocking the
event loop); OpenSSL gives the identical PKCS#1 v1.5 signature in well under a millisecond.
dkimpy calls the module global ``dkim.RSASSA_PKCS1_v1_5_sign``; we replace it once with a
function that hands our key objects to OpenSSL and everything else to the original, so
other users of dkimpy in the process see no change. dkimpy is pinned exactly for this.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from zonemta.conf.dkim import DkimAlgorithm, DkimConfig, DkimKey
from zonemta.headers import field_names, from_domain

__all__ = ["DkimKeyError", "DkimSigner", "SigningKey", "dns_record", "load_key", "load_signer"]

log = logging.getLogger(__name__)

#: RFC 8301 3.2: verifiers must accept RSA keys of 1024 bits or more; shorter ones fail.
MIN_RSA_BITS = 1024
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
# Reuse a message's signatures across its recipients for this long (x= stays meaningful).
_CACHE_SECONDS = 60.0


class DkimKeyError(Exception):
    """A configured key cannot be used; the message names the key and the problem."""


class _RsaKey:
    """An RSA private key whose PKCS#1 v1.5 signatures OpenSSL makes."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key

    def sign_digest(self, digest: bytes) -> bytes:
        return self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


@attrs.frozen
class _Signature:
    signature: bytes


class _Ed25519Key:
    """An Ed25519 private key in the shape dkimpy's ``gen_header`` calls (PyNaCl's:
    ``sign(data).signature``). RFC 8463 signs the sha256 of the header hash input."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self.key = key

    def sign(self, data: bytes) -> _Signature:
        return _Signature(self.key.sign(data))


_original_rsa_sign: Callable[[Any, Any], bytes] = dkim.RSASSA_PKCS1_v1_5_sign


def _rsa_sign(hash_obj: Any, private_key: Any) -> bytes:
    if isinstance(private_key, _RsaKey):
        return private_key.sign_digest(hash_obj.digest())
    return _original_rsa_sign(hash_obj, private_key)


if getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None) is _original_rsa_sign:
    dkim.RSASSA_PKCS1_v1_5_sign = _rsa_sign


@attrs.frozen
class SigningKey:
    """A loaded key: who signs (``domain``, ``selector``) and with what."""

    name: str
    domain: str
    selector: str
    algorithm: DkimAlgorithm
    private: _RsaKey | _Ed25519Key = attrs.field(repr=False)

    def public_bytes(self) -> bytes:
        """What the DNS record's ``p=`` holds (before base64): DER SubjectPublicKeyInfo for
        RSA, the raw 32-byte public key for Ed25519 (RFC 8463)."""
        if isinstance(self.private, _RsaKey):
            return self.private.key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return self.private.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )


def dns_record(key: SigningKey) -> str:
    """The TXT record to publish at ``<selector>._domainkey.<domain>``."""
    kind = "rsa" if key.algorithm is DkimAlgorithm.RSA_SHA256 else "ed25519"
    return f"v=DKIM1; k={kind}; p={base64.b64encode(key.public_bytes()).decode('ascii')}"


def load_key(name: str, config: DkimKey) -> SigningKey:
    """Read and parse the key file of ``[dkim.keys.<name>]``. RSA: PEM (PKCS#1 or PKCS#8),
    at least 1024 bits. Ed25519: PEM (PKCS#8) or base64 of the 32-byte seed (dkimpy's
    format). Raises :class:`DkimKeyError`."""
    where = f"config.dkim.keys.{name}.private_key"
    path = Path(config.private_key)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
    domain = (config.domain or name).lower().rstrip(".")
    if config.algorithm is DkimAlgorithm.RSA_SHA256:
        private: _RsaKey | _Ed25519Key = _RsaKey(_load_rsa(data, where, path))
    else:
        private = _Ed25519Key(_load_ed25519(data, where, path))
    return SigningKey(name, domain, config.selector, config.algorithm, private)


def _load_pem(data: bytes, where: str, path: Path) -> object:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DkimKeyError(f"{where}: {path} is not an unencrypted PEM private key") from exc


def _load_rsa(data: bytes, where: str, path: Path) -> rsa.RSAPrivateKey:
    key = _load_pem(data, where, path)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DkimKeyError(f"{where}: {path} is not an RSA key (algorithm is rsa-sha256)")
    if key.key_size < MIN_RSA_BITS:
        raise DkimKeyError(f"{where}: {path} has {key.key_size} bits, at least 1024 needed")
    return key


def _load_ed25519(data: bytes, where: str, path: Path) -> ed25519.Ed25519PrivateKey:
    if b"-----BEGIN" in data:
        key = _load_pem(data, where, path)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise DkimKeyError(f"{where}: {path} is not an Ed25519 key (algorithm is ed25519)")
        return key
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DkimKeyError(f"{where}: {path} is neither PEM nor a base64 Ed25519 seed") from exc
    if len(seed) != 32:
        raise DkimKeyError(f"{where}: {path}: an Ed25519 seed has 32 bytes, not {len(seed)}")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


class DkimSigner:
    """Signs header blocks at delivery time. Thread-compatible, no I/O after construction.

    Which keys sign a message: every key of the From header's domain, or of its nearest
    parent domain that has keys (``d=example.com`` for ``news.example.com`` aligns under
    relaxed DMARC); with ``sign_transport_domain``, also the keys found the same way for
    the envelope sender's domain when they are other keys. The first key's signature comes
    first (on top).
    """

    def __init__(
        self,
        keys: Sequence[SigningKey],
        *,
        headers: Sequence[str],
        timestamp: bool = False,
        expire_after: float = 0.0,
        sign_transport_domain: bool = False,
        clock: Callable[[], float] = time.time,
        cache_size: int = 1024,
    ) -> None:
        self._by_domain: dict[str, list[SigningKey]] = {}
        for key in keys:
            self._by_domain.setdefault(key.domain, []).append(key)
        self._headers = tuple(name.lower() for name in headers)
        self.timestamp = timestamp or expire_after > 0
        self.expire_after = expire_after
        self.sign_transport_domain = sign_transport_domain
        self.clock = clock
        self._cache: OrderedDict[str, tuple[bytes, float, bytes]] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def from_config(
        cls, config: DkimConfig, *, clock: Callable[[], float] = time.time
    ) -> DkimSigner:
        """Load every configured key once. Raises :class:`DkimKeyError` naming the key."""
        keys = [load_key(str(name), key) for name, key in config.keys.items()]
        return cls(
            keys,
            headers=config.headers,
            timestamp=config.timestamp,
            expire_after=config.expire_after.total_seconds(),
            sign_transport_domain=config.sign_transport_domain,
            clock=clock,
        )

    @property
    def has_keys(self) -> bool:
        return bool(self._by_domain)

    def keys_for(self, headers: bytes, mail_from: str) -> list[SigningKey]:
        """The keys that sign this message, in signature order (first on top)."""
        chosen: list[SigningKey] = []
        domain = from_domain(headers)
        if domain:
            chosen.extend(self._lookup(domain))
        if self.sign_transport_domain and "@" in mail_from:
            for key in self._lookup(mail_from.rpartition("@")[2].lower().rstrip(".")):
                if key not in chosen:
                    chosen.append(key)
        return chosen

    def _lookup(self, domain: str) -> list[SigningKey]:
        labels = domain.split(".")
        for start in range(len(labels) - 1):
            found = self._by_domain.get(".".join(labels[start:]))
            if found:
                return found
        return []

    def sign(
        self, headers: bytes, *, body_hash: str, mail_from: str = "", cache_key: str = ""
    ) -> bytes:
        """The ``DKIM-Signature`` fields (CRLF-terminated, to put on top of ``headers``) for
        the header block ``headers`` and the body whose relaxed sha256 hash (base64) is
        ``body_hash``; ``b""`` when no key applies. Never raises for a message dkimpy cannot
        parse: it is then sent unsigned and a warning logged. ``cache_key`` (the queue id)
        lets the recipients of one message share one signature for a minute."""
        if not self._by_domain or not body_hash:
            return b""
        now = self.clock()
        if cache_key:
            cached = self._cache.get(cache_key)
            if cached is not None and cached[0] == headers and now - cached[1] < _CACHE_SECONDS:
                self._cache.move_to_end(cache_key)
                return cached[2]
        keys = self.keys_for(headers, mail_from)
        if not keys:
            return b""
        try:
            result = b"".join(self._sign_one(headers, body_hash, key, now) for key in keys)
        except (dkim.DKIMException, ValueError, IndexError) as exc:
            log.warning("DKIM signing failed, sending unsigned: %s", exc)
            return b""
        if cache_key:
            self._cache[cache_key] = (headers, now, result)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def _sign_one(self, headers: bytes, body_hash: str, key: SigningKey, now: float) -> bytes:
        present = field_names(headers)
        include = [name.encode("ascii") for name in self._headers if name in present]
        algorithm = key.algorithm.value.encode("ascii")
        fields: list[tuple[bytes, bytes]] = [
            (b"v", b"1"),
            (b"a", algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", key.domain.encode("ascii")),
            (b"q", b"dns/txt"),
            (b"s", key.selector.encode("ascii")),
        ]
        if self.timestamp:
            fields.append((b"t", str(int(now)).encode("ascii")))
        if self.expire_after > 0:
            fields.append((b"x", str(int(now + self.expire_after)).encode("ascii")))
        fields += [
            (b"h", b" : ".join(include)),  # spaces: fold may only break between names
            (b"bh", body_hash.encode("ascii")),
            # Force b= onto its own line so that folding after signing keeps the other tags.
            (b"b", b"0" * 60),
        ]
        signer = dkim.DKIM(headers + b"\r\n", signature_algorithm=algorithm, linesep=b"\r\n")
        signer.hasher = dkim.HASH_ALGORITHMS[algorithm]
        value: bytes = signer.gen_header(fields, include, _RELAXED, b"DKIM-Signature", key.private)
        return b"DKIM-Signature: " + value


def load_signer(config: DkimConfig, *, clock: Callable[[], float] = time.time) -> DkimSigner | None:
    """The signer for ``[dkim]``, or None when signing is off or there are no keys.
    Raises :class:`DkimKeyError`."""
    if not config.enabled or not config.keys:
        return None
    return DkimSigner.from_config(config, clock=clock)
