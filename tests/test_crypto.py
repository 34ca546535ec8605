"""Key agreement (X25519), HKDF-SHA256 derivation and AES-256-GCM share encryption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto import aead, keys
from secagg.crypto.aead import OVERHEAD, associated_data, decrypt, encrypt
from secagg.crypto.keys import (
    HKDF_SALT,
    LABEL_MASK,
    LABEL_SHARE,
    PROTOCOL_VERSION,
    agree,
    agree_many,
    derive,
    derive_info,
    generate_keypair,
    generate_private_key,
    hkdf_expand,
    hkdf_extract,
    hkdf_sha256,
    public_key,
)
from secagg.errors import CryptoError, SecAggError, SecAggTypeError, SecAggValueError

VECTORS = Path(__file__).parent / "vectors"
X25519 = json.loads((VECTORS / "x25519.json").read_text())
HKDF_VECTORS = json.loads((VECTORS / "hkdf.json").read_text())
H = bytes.fromhex

# ---------------------------------------------------------------------------------------
# Independent X25519: the RFC 7748 section 5 Montgomery ladder in pure Python.
# ---------------------------------------------------------------------------------------
_P = 2**255 - 19
_A24 = 121665


def _ladder(k: bytes, u: bytes) -> bytes:
    scalar = bytearray(k)
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    kk = int.from_bytes(scalar, "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (kk >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def test_vector_files_name_their_source() -> None:
    for name in ("x25519.json", "hkdf.json"):
        assert json.loads((VECTORS / name).read_text())["source"].startswith("# From RFC")


@pytest.mark.parametrize("vec", X25519["scalar_mult"], ids=["5.2-1", "5.2-2"])
def test_rfc7748_section_5_2_scalar_mult(vec: dict[str, str]) -> None:
    assert agree(H(vec["scalar"]), H(vec["u"])).hex() == vec["output"]
    assert _ladder(H(vec["scalar"]), H(vec["u"])).hex() == vec["output"]


def test_rfc7748_iterated_1_and_1000() -> None:
    k = u = H(X25519["iterated"]["start"])
    for i in range(1, 1001):
        k, u = agree(k, u), k
        if i == 1:
            assert k.hex() == X25519["iterated"]["after_1"]
    assert k.hex() == X25519["iterated"]["after_1000"]


def test_rfc7748_section_6_1_diffie_hellman() -> None:
    dh = X25519["diffie_hellman"]
    assert public_key(H(dh["alice_private"])).hex() == dh["alice_public"]
    assert public_key(H(dh["bob_private"])).hex() == dh["bob_public"]
    assert agree(H(dh["alice_private"]), H(dh["bob_public"])).hex() == dh["shared"]
    assert agree(H(dh["bob_private"]), H(dh["alice_public"])).hex() == dh["shared"]


@pytest.mark.parametrize("point", X25519["low_order"])
def test_low_order_points_are_rejected(point: str) -> None:
    private = generate_private_key(7)
    assert _ladder(private, H(point)) == bytes(32)  # independent: they really give 0
    with pytest.raises(CryptoError, match="small-order"):
        agree(private, H(point))


@settings(max_examples=10, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_agreement_matches_independent_ladder_and_is_symmetric(a: bytes, b: bytes) -> None:
    pa, pb = public_key(a), public_key(b)
    assert pa == _ladder(a, (9).to_bytes(32, "little"))
    assert agree(a, pb) == agree(b, pa) == _ladder(a, pb)


@settings(max_examples=10, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.lists(st.binary(min_size=32, max_size=32), max_size=6))
def test_agree_many_is_agree_for_each_peer(a: bytes, peers_private: list[bytes]) -> None:
    peers = [public_key(p) for p in peers_private]
    assert agree_many(a, peers) == [_ladder(a, p) for p in peers]
    assert agree_many(a, tuple(peers)) == [agree(a, p) for p in peers]


@pytest.mark.parametrize("point", X25519["low_order"])
def test_agree_many_rejects_a_low_order_peer_by_position(point: str) -> None:
    private = generate_private_key(7)
    good = public_key(generate_private_key(8))
    with pytest.raises(CryptoError, match="#1 is a small-order"):
        agree_many(private, [good, H(point), good])


@pytest.mark.parametrize(
    ("private", "peers", "err"),
    [
        (bytes(31), [bytes(32)], SecAggValueError),
        (bytes(32), [bytes(32), bytes(33)], SecAggValueError),
        (bytes(32), [bytes(32), None], SecAggTypeError),
        ("x" * 32, [bytes(32)], SecAggTypeError),
        (bytes(32), bytes(32), SecAggTypeError),  # one key, not a sequence of keys
        (bytes(32), {bytes(32)}, SecAggTypeError),
    ],
)
def test_agree_many_rejects_bad_arguments(private: object, peers: object, err: type[Exception]) -> None:
    with pytest.raises(err):
        agree_many(private, peers)  # type: ignore[arg-type]


def test_keys_are_raw_32_bytes_and_rng_is_injectable() -> None:
    priv, pub = generate_keypair()
    assert isinstance(priv, bytes) and isinstance(pub, bytes)
    assert len(priv) == len(pub) == 32
    assert generate_private_key(b"seed") == generate_private_key(b"seed")
    assert generate_private_key() != generate_private_key()
    assert not pub.startswith(b"-----")


@pytest.mark.parametrize(
    ("private", "peer", "err"),
    [
        (bytes(31), bytes(32), SecAggValueError),
        (bytes(32), bytes(33), SecAggValueError),
        ("x" * 32, bytes(32), SecAggTypeError),
        (bytes(32), None, SecAggTypeError),
    ],
)
def test_agree_rejects_bad_keys(private: object, peer: object, err: type[Exception]) -> None:
    with pytest.raises(err):
        agree(private, peer)  # type: ignore[arg-type]


def test_public_key_rejects_pem_and_wrong_length() -> None:
    with pytest.raises(SecAggValueError, match="32 raw bytes"):
        public_key(b"-----BEGIN PRIVATE KEY-----\n")
    assert issubclass(CryptoError, SecAggError)


# ---------------------------------------------------------------------------------------
# HKDF
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", HKDF_VECTORS["cases"], ids=lambda c: f"case{c['case']}")
def test_rfc5869_hkdf_sha256(case: dict[str, object]) -> None:
    ikm, salt, info = H(str(case["ikm"])), H(str(case["salt"])), H(str(case["info"]))
    length = int(str(case["length"]))
    prk = hkdf_extract(salt, ikm)
    assert prk.hex() == case["prk"]
    assert hkdf_expand(prk, info, length).hex() == case["okm"]
    assert hkdf_sha256(ikm, salt=salt, info=info, length=length).hex() == case["okm"]
    if not salt:
        assert hkdf_sha256(ikm, salt=None, info=info, length=length).hex() == case["okm"]


@settings(max_examples=30, deadline=None)
@given(
    st.binary(min_size=1, max_size=64),
    st.binary(max_size=40),
    st.binary(max_size=80),
    st.integers(min_value=1, max_value=200),
)
def test_hkdf_matches_cryptography_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> None:
    ref = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
    assert hkdf_sha256(ikm, salt=salt, info=info, length=length) == ref


def test_derive_is_the_hkdf_of_the_canonical_info() -> None:
    shared = bytes(range(32))
    info = derive_info(LABEL_MASK, b"round-1", 5, 3)
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=info).derive(shared)
    assert derive(shared, LABEL_MASK, b"round-1", 5, 3) == expected
    assert derive(shared, LABEL_MASK, b"round-1", 3, 5) == expected
    assert info.startswith(b"\x00\x00\x00\x06secagg" + PROTOCOL_VERSION.to_bytes(2, "big"))
    assert info.endswith((3).to_bytes(8, "big") + (5).to_bytes(8, "big"))
    assert len(derive(shared, LABEL_SHARE, b"r", 1, 2, length=64)) == 64


def test_derive_binds_label_round_and_pair() -> None:
    s = bytes(range(32))
    base = derive(s, LABEL_MASK, b"round-1", 1, 2)
    others = [
        derive(s, LABEL_SHARE, b"round-1", 1, 2),
        derive(s, LABEL_MASK, b"round-2", 1, 2),
        derive(s, LABEL_MASK, b"round-1", 1, 3),
        derive(bytes(32), LABEL_MASK, b"round-1", 1, 2),
    ]
    assert all(o != base for o in others)
    assert len(set(others)) == len(others)


_ID = st.integers(min_value=0, max_value=2**64 - 1)
_TUPLE = st.tuples(st.text(min_size=1, max_size=8), st.binary(min_size=1, max_size=8), _ID, _ID).filter(
    lambda t: t[2] != t[3]
)


@settings(max_examples=50, deadline=None)
@given(_TUPLE, _TUPLE)
def test_derive_info_is_canonical_and_unambiguous(
    x: tuple[str, bytes, int, int], y: tuple[str, bytes, int, int]
) -> None:
    def key(t: tuple[str, bytes, int, int]) -> tuple[str, bytes, int, int]:
        return (t[0], t[1], min(t[2], t[3]), max(t[2], t[3]))

    same = key(x) == key(y)
    assert (derive_info(*x) == derive_info(*y)) == same


@pytest.mark.parametrize(
    ("args", "err"),
    [
        ((bytes(31), LABEL_MASK, b"r", 1, 2), SecAggValueError),
        ((bytes(32), "", b"r", 1, 2), SecAggValueError),
        ((bytes(32), LABEL_MASK, b"", 1, 2), SecAggValueError),
        ((bytes(32), LABEL_MASK, "r", 1, 2), SecAggTypeError),
        ((bytes(32), LABEL_MASK, b"r", 1, 1), SecAggValueError),
        ((bytes(32), LABEL_MASK, b"r", -1, 2), SecAggValueError),
        ((bytes(32), LABEL_MASK, b"r", 1, 2**64), SecAggValueError),
        ((bytes(32), LABEL_MASK, b"r", True, 2), SecAggTypeError),
        ((bytes(32), 7, b"r", 1, 2), SecAggTypeError),
    ],
)
def test_derive_rejects_bad_input(args: tuple[object, ...], err: type[Exception]) -> None:
    with pytest.raises(err):
        derive(*args)  # type: ignore[arg-type]


def test_hkdf_length_limits() -> None:
    with pytest.raises(SecAggValueError):
        hkdf_sha256(b"k", salt=None, info=b"", length=0)
    with pytest.raises(SecAggValueError):
        hkdf_sha256(b"k", salt=None, info=b"", length=255 * 32 + 1)
    assert len(hkdf_sha256(b"k", salt=None, info=b"", length=255 * 32)) == 255 * 32


# ---------------------------------------------------------------------------------------
# AEAD
# ---------------------------------------------------------------------------------------
KEY = bytes(range(32))
CTX = {"sender": 3, "receiver": 9, "round_id": b"round-7", "stage": "share-keys"}


def test_aead_round_trip_and_layout() -> None:
    ct = encrypt(KEY, b"secret share", **CTX)  # type: ignore[arg-type]
    assert len(ct) == len(b"secret share") + OVERHEAD == len(b"secret share") + aead.NONCE_SIZE + aead.TAG_SIZE
    assert decrypt(KEY, ct, **CTX) == b"secret share"  # type: ignore[arg-type]
    # Independent check: plain AESGCM with the documented nonce || ct || tag layout.
    ad = associated_data(**CTX)  # type: ignore[arg-type]
    assert AESGCM(KEY).decrypt(ct[:12], ct[12:], ad) == b"secret share"
    assert encrypt(KEY, b"", **CTX) != encrypt(KEY, b"", **CTX)  # type: ignore[arg-type]  # random nonces
    assert encrypt(KEY, b"x", rng=1, **CTX) == encrypt(KEY, b"x", rng=1, **CTX)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"sender": 9, "receiver": 3},  # reflected
        {"sender": 4},
        {"receiver": 8},
        {"round_id": b"round-8"},
        {"stage": "unmask"},
        {"stage": 1},
    ],
)
def test_aead_binds_associated_data(change: dict[str, object]) -> None:
    ct = encrypt(KEY, b"payload", **CTX)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="authentication failed"):
        decrypt(KEY, ct, **{**CTX, **change})  # type: ignore[arg-type]


def test_aead_detects_tampering_truncation_and_wrong_key() -> None:
    ct = encrypt(KEY, b"payload", **CTX)  # type: ignore[arg-type]
    for i in range(len(ct)):
        bad = bytearray(ct)
        bad[i] ^= 0x01
        with pytest.raises(CryptoError):
            decrypt(KEY, bytes(bad), **CTX)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="shorter"):
        decrypt(KEY, ct[: OVERHEAD - 1], **CTX)  # type: ignore[arg-type]
    with pytest.raises(CryptoError):
        decrypt(bytes(32), ct, **CTX)  # type: ignore[arg-type]


def test_aead_rejects_bad_arguments() -> None:
    with pytest.raises(SecAggValueError, match="32 bytes"):
        encrypt(bytes(16), b"x", **CTX)  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError, match="32 bytes"):
        decrypt(bytes(16), bytes(40), **CTX)  # type: ignore[arg-type]
    with pytest.raises(SecAggTypeError):
        encrypt(KEY, "text", **CTX)  # type: ignore[arg-type]
    with pytest.raises(SecAggTypeError):
        encrypt(KEY, b"x", **{**CTX, "stage": 1.5})  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError):
        encrypt(KEY, b"x", **{**CTX, "sender": -1})  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError):
        encrypt(KEY, b"x", **{**CTX, "round_id": b""})  # type: ignore[arg-type]


def test_associated_data_distinguishes_str_and_int_stage() -> None:
    a = associated_data(sender=1, receiver=2, round_id=b"r", stage="1")
    b = associated_data(sender=1, receiver=2, round_id=b"r", stage=1)
    assert a != b


def test_end_to_end_pairwise_share_encryption() -> None:
    (a_priv, a_pub), (b_priv, b_pub) = generate_keypair(1), generate_keypair(2)
    k_ab = derive(agree(a_priv, b_pub), LABEL_SHARE, b"r1", 1, 2)
    k_ba = derive(agree(b_priv, a_pub), LABEL_SHARE, b"r1", 2, 1)
    assert k_ab == k_ba
    assert k_ab != derive(agree(a_priv, b_pub), LABEL_MASK, b"r1", 1, 2)
    ct = encrypt(k_ab, b"share for 2", sender=1, receiver=2, round_id=b"r1", stage="shares")
    assert decrypt(k_ba, ct, sender=1, receiver=2, round_id=b"r1", stage="shares") == b"share for 2"


def test_module_exports() -> None:
    import secagg.crypto as c

    for name in c.__all__:
        assert hasattr(c, name)
    assert keys.KEY_SIZE == 32
