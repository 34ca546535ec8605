"""Benchmarks of the primitives layer A: key agreement, HKDF, AEAD, mask PRG, packing,
fixed-point encoding.

Run ``pytest bench/bench_primitives_a.py`` for timings; CI runs it with
``--benchmark-disable`` (each benchmark body once, as a smoke test).  The pair
``test_raw_aes_ctr_update_into_4mb`` / ``test_masker_add_1e6_uint32`` is issue 10's
bound: masking a 4 MB vector must run at >= 1/2 of the raw keystream speed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.crypto import LABEL_MASK, Masker, agree, decrypt, derive, encrypt, expand, generate_keypair
from secagg.encoding import FixedPointEncoder
from secagg.packing import pack, unpack

D = 1_000_000
SEED = bytes(range(32))


def test_x25519_agree(benchmark: Any) -> None:
    (a, _), (_, pb) = generate_keypair(1), generate_keypair(2)
    assert len(benchmark(agree, a, pb)) == 32


def test_hkdf_derive(benchmark: Any) -> None:
    assert len(benchmark(derive, SEED, LABEL_MASK, b"round-1", 3, 7)) == 32


def test_aead_encrypt_decrypt_share(benchmark: Any) -> None:
    ctx: dict[str, Any] = {"sender": 1, "receiver": 2, "round_id": b"round-1", "stage": "shares"}

    def run() -> bytes:
        return decrypt(SEED, encrypt(SEED, bytes(80), **ctx), **ctx)

    assert benchmark(run) == bytes(80)


def test_raw_aes_ctr_update_into_4mb(benchmark: Any) -> None:
    """The bound: OpenSSL AES-256-CTR ``update_into`` a preallocated 4 MB buffer."""
    zeros = np.zeros(4 * D, dtype=np.uint8)
    out = np.empty(4 * D + 15, dtype=np.uint8)

    def run() -> None:
        Cipher(algorithms.AES(SEED), modes.CTR(bytes(16))).encryptor().update_into(zeros.data, out.data)

    benchmark(run)


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
