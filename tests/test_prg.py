"""Mask PRG: known answers from an independent computation, algebra, errors, speed.

Regenerate ``tests/vectors/prg.json`` with ``python tests/test_prg.py`` (it uses only
:func:`independent_words`, never :mod:`secagg.crypto.prg`).
"""

from __future__ import annotations

import hashlib
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
from secagg.crypto.prg import Masker, expand
from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.ring import ring_dtype

VECTOR_FILE = Path(__file__).parent / "vectors" / "prg.json"

# AES-256 encryption of the all-zero block under the all-zero key: the first keystream
# block of expand(bytes(32), ...).  Widely published known answer (AES test suites).
AES256_ZERO_BLOCK = "dc95c078a2408989ad48a21492842087"


def independent_words(seed: bytes, d: int, bits: int, start: int, count: int) -> list[int]:
    """Reference PRG: ``update(bytes(n))`` of a fresh AES-256-CTR encryptor (zero counter
    block), then each little-endian word as a Python int, ``& (2**bits - 1)``."""
    width = 4 if bits <= 32 else 8
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(d * width))
    mask = (1 << bits) - 1
    return [int.from_bytes(stream[i * width : (i + 1) * width], "little") & mask for i in range(start, start + count)]


def _seed(i: int) -> bytes:
    return hashlib.sha256(f"secagg prg vector {i}".encode()).digest()


def _vector_specs() -> list[tuple[bytes, int, int, int, int]]:
    specs: list[tuple[bytes, int, int, int, int]] = [(bytes(32), 32, 8, 0, 8)]
    specs += [(bytes(range(32)), b, 16, 0, 16) for b in (1, 7, 8, 20, 31, 32, 33, 52, 63, 64)]
    specs += [
        (_seed(1), 32, 70_000, 65_530, 12),  # crosses the 256 KiB chunk boundary (uint32)
        (_seed(2), 64, 40_000, 32_760, 12),  # crosses the chunk boundary (uint64)
        (_seed(3), 20, 131_080, 131_060, 20),  # second boundary and the tail
        (_seed(4), 45, 5, 0, 5),
    ]
    return specs


def generate() -> dict[str, object]:
    return {
        "source": "# From tests/test_prg.py::independent_words: cryptography's AES-256-CTR "
        "Cipher(...).encryptor().update(bytes(n)) with a zero 16-byte counter block, each "
        "little-endian word (4 bytes if bits <= 32 else 8) converted with int.from_bytes and "
        "masked with 2**bits - 1; no secagg code involved. aes256_zero_block: AES-256 of the zero "
        "block under the zero key (published known answer).",
        "aes256_zero_block": AES256_ZERO_BLOCK,
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


def test_first_block_is_the_aes256_known_answer() -> None:
    words = expand(bytes(32), 4, 32)
    assert words.astype("<u4").tobytes().hex() == VECTORS["aes256_zero_block"]


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
