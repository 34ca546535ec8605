"""Benchmarks of the primitives layer A: key agreement, HKDF, AEAD, mask PRG, packing,
fixed-point encoding.

Run ``pytest bench/bench_primitives_a.py`` for timings; CI runs it with
``--benchmark-disable`` (each benchmark body once, as a smoke test).  The pair
``test_raw_aes_ctr_update_into_4mb`` / ``test_masker_add_1e6_uint32`` is issue 10's
bound: masking a 4 MB vector must run at >= 1/2 of the raw keystream speed.  The bound
is the mask PRG's own cipher (:func:`secagg.crypto.keystream`: AES-128-CTR, key and
initial counter block from the 32-byte seed).  ``test_raw_aes_ctr_21x4mb`` /
``test_masker_add_many_21x1e6`` compare one client's masking at d = 10^6 with k = 20
(self mask plus 20 pairwise masks) against the keystream for the same 84 MB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from secagg.crypto import (
    LABEL_MASK,
    Masker,
    agree,
    agree_many,
    decrypt,
    derive,
    encrypt,
    expand,
    generate_keypair,
    keystream,
)
from secagg.encoding import FixedPointEncoder
from secagg.packing import pack, unpack

D = 1_000_000
SEED = bytes(range(32))
MASKS = 21  # one client's masks at k = 20: the self mask and 20 pairwise masks


def test_x25519_agree(benchmark: Any) -> None:
    (a, _), (_, pb) = generate_keypair(1), generate_keypair(2)
    assert len(benchmark(agree, a, pb)) == 32


def test_x25519_agree_many_20(benchmark: Any) -> None:
    a, _ = generate_keypair(1)
    peers = [generate_keypair(i)[1] for i in range(2, 22)]
    assert len(benchmark(agree_many, a, peers)) == 20


def test_hkdf_derive(benchmark: Any) -> None:
    assert len(benchmark(derive, SEED, LABEL_MASK, b"round-1", 3, 7)) == 32


def test_aead_encrypt_decrypt_share(benchmark: Any) -> None:
    ctx: dict[str, Any] = {"sender": 1, "receiver": 2, "round_id": b"round-1", "stage": "shares"}

    def run() -> bytes:
        return decrypt(SEED, encrypt(SEED, bytes(80), **ctx), **ctx)

    assert benchmark(run) == bytes(80)


def test_raw_aes_ctr_update_into_4mb(benchmark: Any) -> None:
    """The bound: the mask cipher (OpenSSL AES-128-CTR) ``update_into`` a preallocated 4 MB buffer."""
    zeros = np.zeros(4 * D, dtype=np.uint8)
    out = np.empty(4 * D + 15, dtype=np.uint8)

    def run() -> None:
        keystream(SEED).update_into(zeros.data, out.data)

    benchmark(run)


def test_raw_aes_ctr_21x4mb(benchmark: Any) -> None:
    """The bound for one client's masking at d = 10^6, k = 20: 21 keystreams of 4 MB,
    written 256 KiB at a time into one preallocated buffer (no allocation)."""
    chunk = 1 << 18
    zeros = memoryview(bytes(chunk))
    out = memoryview(bytearray(chunk + 15))
    seeds = [bytes([i]) * 32 for i in range(MASKS)]

    def run() -> None:
        for seed in seeds:
            enc = keystream(seed)
            for _ in range(4 * D // chunk):
                enc.update_into(zeros, out)
            enc.update_into(zeros[: 4 * D % chunk], out[: 4 * D % chunk + 15])

    benchmark(run)


def test_masker_add_many_21x1e6(benchmark: Any) -> None:
    """One client's masking at d = 10^6, k = 20 (compare with test_raw_aes_ctr_21x4mb)."""
    m = Masker(D, 32)
    acc = np.zeros(D, dtype=np.uint32)
    masks = [(bytes([i]) * 32, 1 if i % 2 else -1) for i in range(MASKS)]
    benchmark(m.add_many, acc, masks)


def test_masker_add_1e6_uint32(benchmark: Any) -> None:
    m = Masker(D, 32)
    acc = np.zeros(D, dtype=np.uint32)
    benchmark(m.add, acc, SEED)


def test_masker_add_1e6_20bit(benchmark: Any) -> None:
    m = Masker(D, 20)
    acc = np.zeros(D, dtype=np.uint32)
    benchmark(m.add, acc, SEED)


def test_expand_1e6_uint32(benchmark: Any) -> None:
    assert benchmark(expand, SEED, D, 32).shape == (D,)


def test_pack_1e6_20bit(benchmark: Any) -> None:
    v = expand(SEED, D, 20)
    assert len(benchmark(pack, v, 20)) == D * 20 // 8


def test_unpack_1e6_20bit(benchmark: Any) -> None:
    data = pack(expand(SEED, D, 20), 20)
    assert benchmark(unpack, data, 20, D).shape == (D,)


def test_encode_1e6(benchmark: Any) -> None:
    enc = FixedPointEncoder(bits=32, scale=2.0**20, clip=1.0)
    x = np.linspace(-2, 2, D)
    assert benchmark(enc.encode, x, b"seed").shape == (D,)


def test_decode_1e6(benchmark: Any) -> None:
    enc = FixedPointEncoder(bits=32, scale=2.0**20, clip=1.0)
    v = enc.encode(np.linspace(-2, 2, D), b"seed")
    assert benchmark(enc.decode, v, 10).shape == (D,)
