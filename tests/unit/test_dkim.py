"""DKIM: the streamed body hash against dkimpy's canonicalisation, signatures verified by
dkimpy, key loading and its errors, header hygiene at intake."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import CanonicalizationPolicy, Relaxed
from dkim.crypto import parse_pem_private_key
from hypothesis import given, settings
from hypothesis import strategies as st

from zonemta.conf import DkimAlgorithm, DkimConfig, DkimKey, config_from_dict
from zonemta.conf.loader import ConfigError
from zonemta.dkim import (
    DkimKeyError,
    DkimSigner,
    RelaxedBodyHasher,
    SigningKey,
    dns_record,
    load_key,
    relaxed_body_hash,
)
from zonemta.headers import (
    HeaderPolicy,
    HopLimitExceeded,
    count_fields,
    first_value,
    from_domain,
)

# ------------------------------------------------------------------------------ body hash


def expected_bh(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest()).decode()


def hash_in_pieces(body: bytes, cuts: list[int]) -> str:
    hasher = RelaxedBodyHasher()
    start = 0
    for cut in sorted(set(cuts)):
        hasher.update(body[start:cut])
        start = cut
    hasher.update(body[start:])
    return hasher.b64digest()


EDGE_BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"abc",
    b"abc  ",
    b"abc \t \r\n",
    b"a  b\t\tc\r\n\r\n\r\n",
    b"\r\n  ",
    b"x\r\r\n\r\n",
    b"line\r\n.dot\r\n..two\r\n",
    b" \t \r\n \r\n",
    "8-bit caf\u00e9  \r\n".encode(),
    b"bare\nlf and bare\rcr  \r\n",
]


@pytest.mark.parametrize("body", EDGE_BODIES)
def test_body_hash_matches_dkimpy_whole_and_byte_by_byte(body: bytes) -> None:
    want = expected_bh(body)
    assert relaxed_body_hash(body) == want
    assert hash_in_pieces(body, list(range(len(body)))) == want


_PIECES = st.sampled_from([b"\r", b"\n", b"\r\n", b" ", b"\t", b"a", b"Z", b".", b"\xc3\xa9"])


@settings(max_examples=400, deadline=None)
@given(
    body=st.lists(_PIECES, max_size=60).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
)
def test_body_hash_matches_dkimpy_in_any_chunking(body: bytes, cuts: list[int]) -> None:
    assert hash_in_pieces(body, [c for c in cuts if c <= len(body)]) == expected_bh(body)


def test_body_hash_of_a_long_blank_run_is_linear() -> None:
    # Megabytes of blanks without a line end must not be rescanned per chunk (dkimpy's own
    # regexes are quadratic here, so the expected value is written out).
    body = b" " * (4 << 20) + b"x  \r\n" + b"\t" * (1 << 20) + b"\r\n\r\n"
    want = base64.b64encode(hashlib.sha256(b" x\r\n").digest()).decode()
    assert hash_in_pieces(body, list(range(0, len(body), 65536))) == want


def test_body_hash_cannot_be_fed_after_digest() -> None:
    hasher = RelaxedBodyHasher()
    hasher.update(b"a\r\n")
    first = hasher.digest()
    assert hasher.digest() == first
    with pytest.raises(RuntimeError):
        hasher.update(b"more")


# ------------------------------------------------------------------------------ keys

# A 768-bit RSA key (cryptography refuses to generate one): too short for DKIM.
SHORT_RSA_PEM = (
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MIIB5QIBADANBgkqhkiG9w0BAQEFAASCAc8wggHLAgEAAmEAtsyLJRAdE5PkXYCD\n"
    b"XcX2esL7FC53/LGmhh7NKrfff7swICBMUi3u/LRNTkDKQFBWrh0QOe1v8QaRcTt6\n"
    b"IlkvBosV5vFsP0CfGt/HNrf4iLYEqRf7pfi70+Gl9KI9+f5ZAgMBAAECYD/DIVYQ\n"
    b"RNQrZiDnTutKviscEBB+FQRjwz5NSCt6b89SL/tEyNpxg0dKbRy6pNHCM6MRiaHy\n"
    b"0Jw0V4nC9BEzvJXGhFM4iaRUwCpgwTF7Ua0OLW1MNC/Flq3Q+2RZTmLJwQIxAN90\n"
    b"Suha1sWC4GSPj5GJeQQ8T99IBwmi7+tY325HyE9TQurdEVq2OLNxgQu+DMmlDQIx\n"
    b"ANFsYUxqkXnwUibCP4n1xCWpGa+4ez0R4Bxjs6l6xO/4KcL1x+RkWW4GmFR6zhpD\n"
    b"fQIxAJPr8AqQ18w4L0Nipa+6SZo8MsOkcsQ2UIyDcKUYb8nTXGENpwddyXtAkCSt\n"
    b"0tlJoQIwK9k/fhqKHzf8W3UsjJxS13fSkwJTe3P0sr0FbyTvezdAtztzARUpzGnB\n"
    b"F18nLESZAjEAxOT3ksx6/TnriSoJKe8bauqWaktCQUf23mDEWeHSYx7IILG0jOiI\n"
    b"yd+p3YxKyn8p\n"
    b"-----END PRIVATE KEY-----\n"
)


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@pytest.fixture
def keys(tmp_path: Path, rsa_pem: bytes) -> tuple[SigningKey, SigningKey]:
    (tmp_path / "rsa.pem").write_bytes(rsa_pem)
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    (tmp_path / "ed.key").write_bytes(base64.b64encode(seed) + b"\n")  # dkimpy's format
    rsa_key = load_key(
        "example.com", DkimKey(selector="rsa", private_key=str(tmp_path / "rsa.pem"))
    )
    ed_key = load_key(
        "example.com-ed",
        DkimKey(
            selector="ed",
            private_key=str(tmp_path / "ed.key"),
            algorithm=DkimAlgorithm.ED25519_SHA256,
            domain="example.com",
        ),
    )
    return rsa_key, ed_key


def dns_for(*keys: SigningKey) -> dict[bytes, bytes]:
    return {f"{k.selector}._domainkey.{k.domain}.".encode(): dns_record(k).encode() for k in keys}


def dnsfunc_for(records: dict[bytes, bytes]):  # type: ignore[no-untyped-def]
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name if name.endswith(b".") else name + b".")

    return dnsfunc


HEADERS = (
    b"From: Alice <alice@news.example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject:   hello\r\n\t  folded  there\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@news.example.com>\r\n"
)
BODY = b"Hello  \r\n.leading dot\r\n\r\ncaf\xc3\xa9\r\n\r\n"


def verify_all(message: bytes, records: dict[bytes, bytes], count: int) -> None:
    verifier = dkim.DKIM(message)
    for index in range(count):
        assert verifier.verify(idx=index, dnsfunc=dnsfunc_for(records)), index


def test_rsa_and_ed25519_signatures_verify_with_dkimpy(
    keys: tuple[SigningKey, SigningKey],
) -> None:
    signer = DkimSigner(keys, headers=["from", "to", "subject", "date", "message-id", "cc"])
    signatures = signer.sign(HEADERS, body_hash=relaxed_body_hash(BODY))
    assert signatures.count(b"DKIM-Signature:") == 2
    assert signatures.index(b"a=rsa-sha256") < signatures.index(b"a=ed25519-sha256")
    message = signatures + HEADERS + b"\r\n" + BODY
    verify_all(message, dns_for(*keys), 2)
    first = signatures.split(b"DKIM-Signature:")[1]
    tags = dkim.util.parse_tag_value(first.replace(b"\r\n", b"").strip())
    signed = tags[b"h"].replace(b" ", b"")
    assert signed == b"from:to:subject:date:message-id"  # present ones only: no cc
    assert tags[b"c"] == b"relaxed/relaxed" and tags[b"d"] == b"example.com"
    # The body as signed must be the body as sent: changing it breaks the signature.
    tampered = signatures + HEADERS + b"\r\n" + BODY.replace(b"Hello", b"Jello")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc_for(dns_for(*keys)))


def test_openssl_signature_is_identical_to_dkimpys_own(
    keys: tuple[SigningKey, SigningKey], rsa_pem: bytes
) -> None:
    rsa_key = keys[0]
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/relaxed"),
        (b"d", b"example.com"),
        (b"s", b"rsa"),
        (b"h", b"from:to"),
        (b"bh", relaxed_body_hash(BODY).encode()),
        (b"b", b"0" * 60),
    ]
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    results = []
    for private in (rsa_key.private, parse_pem_private_key(rsa_pem)):
        signer = dkim.DKIM(HEADERS + b"\r\n")
        signer.hasher = hashlib.sha256
        results.append(
            signer.gen_header(list(fields), [b"from", b"to"], policy, b"DKIM-Signature", private)
        )
    assert results[0] == results[1]


def test_key_of_the_parent_domain_signs_and_transport_domain_optionally(
    keys: tuple[SigningKey, SigningKey], tmp_path: Path, rsa_pem: bytes
) -> None:
    (tmp_path / "other.pem").write_bytes(rsa_pem)
    bounce_key = load_key(
        "bounces.example.org",
        DkimKey(selector="b", private_key=str(tmp_path / "other.pem")),
    )
    plain = DkimSigner([keys[0], bounce_key], headers=["from"])
    assert plain.keys_for(HEADERS, "x@bounces.example.org") == [keys[0]]
    both = DkimSigner([keys[0], bounce_key], headers=["from"], sign_transport_domain=True)
    assert both.keys_for(HEADERS, "x@bounces.example.org") == [keys[0], bounce_key]
    assert both.keys_for(b"From: a@unrelated.test\r\n", "x@nowhere.test") == []
    # No key for the From domain or its parents: no signature, nothing raised.
    assert plain.sign(b"From: a@example.net\r\n", body_hash=relaxed_body_hash(b"")) == b""
    assert plain.sign(b"Subject: no from\r\n", body_hash=relaxed_body_hash(b"")) == b""


def test_timestamp_expiry_and_the_per_message_cache(keys: tuple[SigningKey, SigningKey]) -> None:
    now = [1_700_000_000.0]
    signer = DkimSigner(
        keys[:1], headers=["from", "subject"], expire_after=3600.0, clock=lambda: now[0]
    )
    bh = relaxed_body_hash(BODY)
    first = signer.sign(HEADERS, body_hash=bh, cache_key="m1")
    unfolded = first.replace(b"\r\n ", b" ")
    assert b"t=1700000000;" in unfolded and b"x=1700003600;" in unfolded
    now[0] += 5
    assert signer.sign(HEADERS, body_hash=bh, cache_key="m1") is first  # same message, reused
    assert b"t=1700000005" in signer.sign(HEADERS, body_hash=bh, cache_key="m2")
    now[0] += 120
    assert b"t=1700000125" in signer.sign(HEADERS, body_hash=bh, cache_key="m1")  # stale


def test_unparseable_header_block_is_sent_unsigned(keys: tuple[SigningKey, SigningKey]) -> None:
    signer = DkimSigner(keys[:1], headers=["from"])
    assert signer.sign(b"From: a@example.com\r\nBad Header\r\n", body_hash="x") == b""


def test_load_key_errors_name_the_key(tmp_path: Path, rsa_pem: bytes) -> None:
    def load(text: bytes | None, algorithm: DkimAlgorithm = DkimAlgorithm.RSA_SHA256) -> None:
        path = tmp_path / "k"
        if text is not None:
            path.write_bytes(text)
        else:
            path.unlink(missing_ok=True)
        load_key("example.com", DkimKey(selector="s", private_key=str(path), algorithm=algorithm))

    cases: list[tuple[bytes | None, DkimAlgorithm, str]] = [
        (None, DkimAlgorithm.RSA_SHA256, "cannot read"),
        (b"not a key", DkimAlgorithm.RSA_SHA256, "not an unencrypted PEM private key"),
        (rsa_pem, DkimAlgorithm.ED25519_SHA256, "not an Ed25519 key"),
        (base64.b64encode(b"x" * 31), DkimAlgorithm.ED25519_SHA256, "32 bytes"),
        (b"%%%", DkimAlgorithm.ED25519_SHA256, "neither PEM nor"),
    ]
    cases.append((SHORT_RSA_PEM, DkimAlgorithm.RSA_SHA256, "has 768 bits, at least 1024"))
    ed_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cases.append((ed_pem, DkimAlgorithm.RSA_SHA256, "not an RSA key"))
    for text, algorithm, problem in cases:
        with pytest.raises(DkimKeyError) as info:
            load(text, algorithm)
        assert "config.dkim.keys.example.com.private_key" in str(info.value)
        assert problem in str(info.value)
    # An Ed25519 PEM key is as good as a seed.
    (tmp_path / "ed.pem").write_bytes(ed_pem)
    key = load_key(
        "example.com",
        DkimKey(
            selector="s",
            private_key=str(tmp_path / "ed.pem"),
            algorithm=DkimAlgorithm.ED25519_SHA256,
        ),
    )
    assert dns_record(key).startswith("v=DKIM1; k=ed25519; p=")


def test_dkim_config_is_checked() -> None:
    good = config_from_dict(
        {
            "dkim": {
                "keys": {"example.com": {"selector": "s1", "private_key": "/k.pem"}},
                "headers": ["From", "Subject", "from"],
                "expire_after": "7d",
            }
        }
    )
    assert good.dkim.headers == ("from", "subject")
    assert good.dkim.keys["example.com"].selector == "s1"
    bad = [
        ({"headers": ["subject"]}, "must include 'from'"),
        ({"headers": ["from", "Received"]}, "must not be signed"),
        ({"keys": {"example.com": {"private_key": "/k"}}}, "'selector' is required"),
        ({"keys": {"not_a_domain!": {"selector": "s", "private_key": "/k"}}}, "not a domain"),
        ({"keys": {"example.com": {"selector": "s", "private_key": "/k", "algo": "x"}}}, "algo"),
        (
            {
                "keys": {
                    "example.com": {"selector": "s", "private_key": "/k", "algorithm": "rsa-sha1"}
                }
            },
            "rsa-sha1",
        ),
    ]
    for table, problem in bad:
        with pytest.raises(ConfigError) as info:
            config_from_dict({"dkim": table})
        assert "config.dkim" in str(info.value)
        assert problem in str(info.value)


def test_signer_from_config_loads_every_key(tmp_path: Path, rsa_pem: bytes) -> None:
    (tmp_path / "k.pem").write_bytes(rsa_pem)
    config = DkimConfig(
        keys={"example.com": DkimKey(selector="s", private_key=str(tmp_path / "k.pem"))}
    )  # type: ignore[dict-item]
    signer = DkimSigner.from_config(config)
    assert signer.has_keys
    missing = DkimConfig(
        keys={"example.com": DkimKey(selector="s", private_key=str(tmp_path / "no"))}
    )  # type: ignore[dict-item]
    with pytest.raises(DkimKeyError, match=r"config\.dkim\.keys\.example\.com\.private_key"):
        DkimSigner.from_config(missing)


# ------------------------------------------------------------------------------ headers


def test_header_helpers() -> None:
    headers = b'From: "A, B" <a@Sub.Example.COM>\r\nReceived: x\r\nreceived : y\r\n\tz\r\n'
    assert from_domain(headers) == "sub.example.com"
    assert count_fields(headers, "received") == 2
    assert first_value(headers, "RECEIVED") == "x"
    assert from_domain(b"Subject: none\r\n") is None


def test_policy_adds_message_id_and_date_only_when_missing() -> None:
    policy = HeaderPolicy("relay.test")
    out = policy.apply(b"Subject: x\r\n", mail_from="s@origin.test", now=0.0)
    assert out.startswith(b"Subject: x\r\n")
    assert b"\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\n" in out
    assert (first_value(out, "message-id") or "").endswith("@origin.test>")
    present = b"message-id: <a@b>\r\nDATE : Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    assert policy.apply(present, mail_from="", now=0.0) == present
    bounce = policy.apply(b"", mail_from="", now=0.0)
    assert b"@relay.test>" in bounce
    quiet = HeaderPolicy("relay.test", add_message_id=False, add_date=False)
    assert quiet.apply(b"Subject: x\r\n", mail_from="", now=0.0) == b"Subject: x\r\n"


def test_policy_refuses_a_loop() -> None:
    policy = HeaderPolicy("relay.test", max_hops=3)
    three = b"Received: a\r\n" * 3 + b"X-Received-Count: mentions received received\r\n"
    policy.apply(three, mail_from="", now=0.0)
    with pytest.raises(HopLimitExceeded) as info:
        policy.apply(b"Received: a\r\n" * 4, mail_from="", now=0.0)
    assert info.value.reply.code == 554
    assert info.value.reply.enhanced == "5.4.6"
