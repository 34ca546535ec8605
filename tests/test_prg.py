"""Mask PRG: known answers from an independent computation, algebra, errors, speed.

Regenerate ``tests/vectors/prg.json`` with ``python tests/test_prg.py`` (it uses only
:func:`independent_words`, never :mod:`secagg.crypto.prg`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto.keys import LABEL_MASK, agree, derive, generate_keypair
from secagg.crypto.prg import Masker, expand, keystream, keystream_at
from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.ring import ring_dtype

VECTOR_FILE = Path(__file__).parent / "vectors" / "prg.json"

# NIST SP 800-38A, Appendix F.5.1 (CTR-AES128.Encrypt): key, initial counter block and the
# four plaintext / ciphertext blocks, copied from the publication.  With seed = key ||
# initial counter block, the PRG keystream is plaintext XOR ciphertext.
SP800_38A_F51 = {
    "key": "2b7e151628aed2a6abf7158809cf4f3c",
    "initial_counter": "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
    "plaintext": "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
    "ciphertext": "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
    "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
}


def independent_words(seed: bytes, d: int, bits: int, start: int, count: int) -> list[int]:
    """Reference PRG built from the AES-128 block cipher alone: counter block ``i`` is
    ``(int.from_bytes(seed[16:], "big") + i) mod 2**128`` written big-endian, encrypted
    with AES-128-ECB under ``seed[:16]``; the concatenated blocks are cut into little-endian
    words (4 bytes if bits <= 32 else 8), each ``& (2**bits - 1)``.  Only the blocks that
    hold words ``start .. start + count - 1`` are computed."""
    width = 4 if bits <= 32 else 8
    if count <= 0:
        return []
    assert start + count <= d
    first, last = start * width // 16, ((start + count) * width - 1) // 16
    base = int.from_bytes(seed[16:], "big")
    blocks = b"".join(((base + i) % 2**128).to_bytes(16, "big") for i in range(first, last + 1))
    stream = Cipher(algorithms.AES(seed[:16]), modes.ECB()).encryptor().update(blocks)
    offset = first * 16
    mask = (1 << bits) - 1
    return [
        int.from_bytes(stream[i * width - offset : (i + 1) * width - offset], "little") & mask
        for i in range(start, start + count)
    ]


def _seed(i: int) -> bytes:
    return hashlib.sha256(f"secagg prg vector {i}".encode()).digest()


def _vector_specs() -> list[tuple[bytes, int, int, int, int]]:
    f51 = bytes.fromhex(SP800_38A_F51["key"] + SP800_38A_F51["initial_counter"])
    wrap = bytes(range(16)) + b"\xff" * 15 + b"\xfe"  # counter wraps from 2**128 - 1 to 0
    specs: list[tuple[bytes, int, int, int, int]] = [(bytes(32), 32, 8, 0, 8), (f51, 32, 16, 0, 16)]
    specs += [(bytes(range(32)), b, 16, 0, 16) for b in (1, 7, 8, 20, 31, 32, 33, 52, 63, 64)]
    specs += [
        (wrap, 32, 16, 0, 16),
        (wrap, 64, 8, 0, 8),
        (_seed(1), 32, 70_000, 32_760, 12),  # crosses the 128 KiB Masker chunk boundary (uint32)
        (_seed(1), 32, 70_000, 65_530, 12),  # crosses the 256 KiB expand chunk boundary (uint32)
        (_seed(2), 64, 40_000, 16_376, 12),  # crosses the Masker chunk boundary (uint64)
        (_seed(2), 64, 40_000, 32_760, 12),  # crosses the expand chunk boundary (uint64)
        (_seed(3), 20, 131_080, 131_060, 20),  # a later boundary and the tail
        (_seed(4), 45, 5, 0, 5),
    ]
    return specs


def generate() -> dict[str, object]:
    return {
        "source": "# From tests/test_prg.py::independent_words: AES-128-CTR built by hand from the AES-128 block "
        "cipher (cryptography's modes.ECB), key = seed[:16], counter block i = (seed[16:32] as a big-endian "
        "integer + i) mod 2**128, each little-endian word (4 bytes if bits <= 32 else 8) converted with "
        "int.from_bytes and masked with 2**bits - 1; no secagg code involved. sp800_38a_f51: NIST SP 800-38A "
        "Appendix F.5.1 (CTR-AES128.Encrypt), copied from the publication.",
        "sp800_38a_f51": SP800_38A_F51,
        "vectors": [
            {"seed": s.hex(), "bits": b, "d": d, "start": a, "values": independent_words(s, d, b, a, c)}
            for s, b, d, a, c in _vector_specs()
        ],
    }


# A missing file fails test_vector_file_matches_the_independent_computation.
VECTORS = json.loads(VECTOR_FILE.read_text()) if VECTOR_FILE.exists() else {"vectors": []}


def test_vector_file_matches_the_independent_computation() -> None:
    assert VECTORS["source"].startswith("# From")
    assert json.loads(json.dumps(generate())) == VECTORS


@pytest.mark.parametrize("source", ["file", "module"])
def test_keystream_is_the_sp800_38a_aes128_ctr_known_answer(source: str) -> None:
    """seed = key || initial counter block of SP 800-38A F.5.1: the PRG's first four
    blocks XOR the published plaintext give the published ciphertext (the fourth block's
    counter crosses a byte boundary: the whole block is the counter)."""
    kat = VECTORS["sp800_38a_f51"] if source == "file" else SP800_38A_F51
    seed = bytes.fromhex(kat["key"] + kat["initial_counter"])
    plain, cipher = bytes.fromhex(kat["plaintext"]), bytes.fromhex(kat["ciphertext"])
    stream = expand(seed, 16, 32).astype("<u4").tobytes()
    assert bytes(p ^ s for p, s in zip(plain, stream, strict=True)) == cipher
    assert bytes(keystream(seed).update(plain)) == cipher  # the raw keystream benchmarks time


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: f"b{v['bits']}-d{v['d']}-at{v['start']}")
def test_known_answer_vectors(vec: dict[str, object]) -> None:
    seed, bits, d, start = (
        bytes.fromhex(str(vec["seed"])),
        int(str(vec["bits"])),
        int(str(vec["d"])),
        int(str(vec["start"])),
    )
    values = list(vec["values"])  # type: ignore[call-overload]
    out = expand(seed, d, bits)
    assert out.dtype == ring_dtype(bits) and out.shape == (d,)
    assert out[start : start + len(values)].tolist() == values
    acc = np.zeros(d, dtype=ring_dtype(bits))
    Masker(d, bits).add(acc, seed)
    assert np.array_equal(acc, out)


_BITS = st.integers(min_value=1, max_value=64)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=300), _BITS)
def test_expand_matches_reference_and_range(seed: bytes, d: int, bits: int) -> None:
    out = expand(seed, d, bits)
    assert out.tolist() == independent_words(seed, d, bits, 0, d)
    acc = np.zeros(d, dtype=ring_dtype(bits))
    Masker(d, bits).add(acc, seed)
    assert np.array_equal(acc, out)
    if d:
        assert int(out.max()) < 2**bits


@settings(max_examples=40, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.integers(min_value=1, max_value=2000),
    _BITS,
    st.integers(min_value=0, max_value=2**64 - 1),
)
def test_masker_algebra(s1: bytes, s2: bytes, d: int, bits: int, fill: int) -> None:
    dtype = ring_dtype(bits)
    mask = (1 << bits) - 1
    x = (np.arange(d, dtype=np.uint64) * np.uint64(fill | 1) & np.uint64(mask)).astype(dtype)
    m = Masker(d, bits)
    acc = x.copy()
    m.add(acc, s1)
    m.add(acc, s2, sign=-1)
    expected = [
        (int(v) + int(a) - int(b)) & mask for v, a, b in zip(x, expand(s1, d, bits), expand(s2, d, bits), strict=True)
    ]
    assert acc.tolist() == expected
    m.add_many(acc, [(s2, 1), (s1, -1)])
    assert np.array_equal(acc, x)


@pytest.mark.parametrize("bits", [20, 32, 64])
def test_add_many_over_several_chunks_equals_the_sum_of_masks(bits: int) -> None:
    """Chunk-outer application of five masks (mixed signs) across several 128 KiB chunks
    and a ragged tail equals adding each expanded mask, computed with Python ints."""
    d = 100_003
    seeds = [_seed(10 + i) for i in range(5)]
    signs = [1, -1, 1, 1, -1]
    x = expand(_seed(9), d, bits)
    acc = x.copy()
    Masker(d, bits).add_many(acc, list(zip(seeds, signs, strict=True)))
    mod = 1 << bits
    total = x.astype(object)
    for seed, sign in zip(seeds, signs, strict=True):
        total = total + sign * expand(seed, d, bits).astype(object)
    assert acc.dtype == ring_dtype(bits)
    assert acc.tolist() == [int(v) % mod for v in total]


def test_add_many_with_more_masks_than_open_streams_equals_one_by_one() -> None:
    """300 masks exceed the 256 AES contexts add_many keeps open: it takes two passes."""
    d, bits = 1000, 24
    masks = [(_seed(100 + i), 1 if i % 3 else -1) for i in range(300)]
    m = Masker(d, bits)
    acc, ref = np.zeros(d, dtype=np.uint32), np.zeros(d, dtype=np.uint32)
    m.add_many(acc, iter(masks))
    for seed, sign in masks:
        m.add(ref, seed, sign)
    assert np.array_equal(acc, ref) and acc.any()


def test_add_many_of_nothing_leaves_acc_alone() -> None:
    acc = np.arange(10, dtype=np.uint32)
    Masker(10, 32).add_many(acc, [])
    assert np.array_equal(acc, np.arange(10))


def test_expand_is_a_prefix_stream() -> None:
    seed = bytes(range(32))
    assert np.array_equal(expand(seed, 100_000, 20)[:1000], expand(seed, 1000, 20))
    assert expand(seed, 0, 7).shape == (0,)


def test_pairwise_masks_cancel() -> None:
    """Client 1 adds the pairwise mask, client 2 subtracts it: the sum is unmasked."""
    (p1, k1), (p2, k2) = generate_keypair(11), generate_keypair(12)
    seed_1 = derive(agree(p1, k2), LABEL_MASK, b"round", 1, 2)
    seed_2 = derive(agree(p2, k1), LABEL_MASK, b"round", 2, 1)
    d, bits = 5000, 24
    m = Masker(d, bits)
    x1 = np.arange(d, dtype=np.uint32)
    x2 = np.full(d, 7, dtype=np.uint32)
    y1, y2 = x1.copy(), x2.copy()
    m.add(y1, seed_1, +1)
    m.add(y2, seed_2, -1)
    assert not np.array_equal(y1, x1)
    assert np.array_equal((y1 + y2) & np.uint32(2**bits - 1), x1 + x2)


def test_masker_does_not_allocate_per_call() -> None:
    d = 200_000
    m = Masker(d, 32)
    acc = np.zeros(d, dtype=np.uint32)
    m.add(acc, bytes(32))
    tracemalloc.start()
    try:
        m.add(acc, bytes(range(32)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < acc.nbytes // 20


def test_keystream_is_uniform_chi_square() -> None:
    """Low byte of 2**18 words of one fixed seed against the uniform law.

    chi-square with 255 degrees of freedom; the threshold 376.1 is its 1 - 1e-6 quantile,
    so a correct PRG fails this with probability 1e-6 over the choice of seed (and the seed
    is fixed, so the test is deterministic).
    """
    out = expand(hashlib.sha256(b"chi-square").digest(), 1 << 18, 8)
    counts = np.bincount(out, minlength=256)
    expected = out.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 376.1


@pytest.mark.parametrize(
    ("call", "err"),
    [
        (lambda m, a: m.add(a, bytes(31)), SecAggValueError),
        (lambda m, a: m.add(a, "k" * 32), SecAggTypeError),
        (lambda m, a: m.add(a, bytes(32), 0), SecAggValueError),
        (lambda m, a: m.add(a, bytes(32), 2), SecAggValueError),
        (lambda m, a: m.add(a.astype(np.uint64), bytes(32)), SecAggTypeError),
        (lambda m, a: m.add(a[:-1], bytes(32)), SecAggValueError),
        (lambda m, a: m.add(a.reshape(2, -1), bytes(32)), SecAggValueError),
        (lambda m, a: m.add(list(a), bytes(32)), SecAggTypeError),
        (lambda m, a: m.add_many(a, [(bytes(32), 1), (bytes(5), 1)]), SecAggValueError),
        (lambda m, a: m.add_many(a, [(bytes(32), 1), (bytes(32), 0)]), SecAggValueError),
        (lambda m, a: m.add_many(a, [(bytes(32), 1), bytes(32)]), SecAggTypeError),
        (lambda m, a: m.add_many(a, [(bytes(32), 1, 1)]), SecAggTypeError),
        (lambda m, a: m.add_many(a, bytes(32)), SecAggTypeError),
        (lambda m, a: m.add_many(a, 5), SecAggTypeError),
    ],
)
def test_masker_rejects_bad_input_and_leaves_acc_unchanged(
    call: Callable[[Masker, np.ndarray], None], err: type[Exception]
) -> None:
    m = Masker(10, 20)
    acc = np.arange(10, dtype=np.uint32)
    with pytest.raises(err):
        call(m, acc)
    assert np.array_equal(acc, np.arange(10))


def test_masker_rejects_read_only_acc() -> None:
    acc = np.zeros(4, dtype=np.uint32)
    acc.flags.writeable = False
    with pytest.raises(SecAggValueError, match="read-only"):
        Masker(4, 32).add(acc, bytes(32))


@pytest.mark.parametrize(("d", "bits"), [(-1, 32), (10, 0), (10, 65)])
def test_bad_shapes_and_widths(d: int, bits: int) -> None:
    with pytest.raises(SecAggValueError):
        Masker(d, bits)
    with pytest.raises(SecAggValueError):
        expand(bytes(32), d, bits)


if __name__ == "__main__":
    VECTOR_FILE.write_text(json.dumps(generate(), indent=1) + "\n")
    print(f"wrote {VECTOR_FILE}", file=sys.stderr)


@pytest.mark.parametrize("bits", [7, 32, 33, 64])
def test_masker_pieces_equal_whole(bits: int) -> None:
    """Masks applied piece by piece (``start=``, any split, any order) equal the whole-vector
    result: AES-CTR is seeked, never regenerated from the start."""
    d = 10_007
    masker = Masker(d, bits)
    seeds = [(bytes([i + 1]) * 32, 1 if i % 2 else -1) for i in range(5)]
    whole = np.zeros(d, dtype=ring_dtype(bits))
    masker.add_many(whole, seeds)
    pieces = np.zeros(d, dtype=ring_dtype(bits))
    cuts = [0, 1, 3, 4096, 5000, 9999, d]
    for s, e in reversed(list(itertools.pairwise(cuts))):
        masker.add_many(pieces[s:e], seeds, start=s)
    assert np.array_equal(whole, pieces)


@given(st.integers(0, 1 << 20), st.binary(min_size=32, max_size=32))
@settings(max_examples=40, deadline=None)
def test_keystream_at_is_the_stream_from_offset(offset: int, seed: bytes) -> None:
    """keystream_at(seed, offset) continues exactly where keystream(seed) is after offset
    bytes (the counter wraps modulo 2^128)."""
    seed = seed[:16] + b"\xff" * 15 + seed[31:]  # counter near 2^128: the wrap is exercised
    full = keystream(seed).update(bytes(offset + 40))
    assert keystream_at(seed, offset).update(bytes(40)) == full[offset:]


def test_masker_start_errors() -> None:
    masker = Masker(10, 32)
    with pytest.raises(SecAggValueError):
        masker.add_many(np.zeros(5, dtype=np.uint32), [(bytes(32), 1)], start=6)
    with pytest.raises(SecAggValueError):
        masker.add_many(np.zeros(5, dtype=np.uint32), [(bytes(32), 1)], start=-1)
    with pytest.raises(SecAggTypeError):
        masker.add_many(np.zeros(5, dtype=np.uint32), [(bytes(32), 1)], start=1.0)  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError):
        masker.add_many(np.zeros(5, dtype=np.uint32), [(bytes(32), 1)])  # a piece needs start=
    with pytest.raises(SecAggValueError):
        keystream_at(bytes(32), -1)
