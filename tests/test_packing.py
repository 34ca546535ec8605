"""Bit-packing: independent oracle, round trips for every width, format, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import MessageError, SecAggTypeError, SecAggValueError
from secagg.packing import pack, packed_size, plane_widths, unpack
from secagg.ring import ring_dtype


def oracle_pack(values: list[int], bits: int) -> bytes:
    """The documented wire format with Python ints only (no numpy, no secagg code)."""
    out = b""
    offset = 0
    left = bits
    widths = [64] if bits == 64 else []
    if bits != 64:
        for w in (32, 16, 8):
            if left >= w:
                widths.append(w)
                left -= w
    for w in widths:
        out += b"".join(((v >> offset) & ((1 << w) - 1)).to_bytes(w // 8, "little") for v in values)
        offset += w
    r = bits - offset
    if r:
        stream = 0
        for i, v in enumerate(values):
            stream |= (v >> offset) << (i * r)
        out += stream.to_bytes((len(values) * r + 7) // 8, "little")
    return out


def _values(bits: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=0, max_value=2**bits - 1), max_size=200)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=64).flatmap(lambda b: st.tuples(st.just(b), _values(b))))
def test_round_trip_every_width(case: tuple[int, list[int]]) -> None:
    bits, vals = case
    v = np.array(vals, dtype=ring_dtype(bits))
    data = pack(v, bits)
    assert len(data) == packed_size(len(vals), bits) == -(-len(vals) * bits // 8)
    assert data == oracle_pack(vals, bits)
    out = unpack(data, bits, len(vals))
    assert out.dtype == ring_dtype(bits)
    assert out.tolist() == vals


@pytest.mark.parametrize("bits", range(1, 65))
def test_each_width_at_a_size_that_is_not_a_multiple_of_8(bits: int) -> None:
    rng = np.random.default_rng(bits)
    d = 1003
    v = (rng.integers(0, 2**63, size=d, dtype=np.uint64, endpoint=True) >> np.uint64(64 - bits)).astype(
        ring_dtype(bits)
    )
    v[:2] = [0, 2**bits - 1]
    data = pack(v, bits)
    assert data == oracle_pack(v.tolist(), bits)
    assert np.array_equal(unpack(data, bits, d), v)


def test_known_answers_of_the_format() -> None:
    # 4 bits: one LSB-first stream; 1 | 2<<4, then 3 and four zero padding bits.
    assert pack(np.array([1, 2, 3], dtype=np.uint32), 4) == bytes([0x21, 0x03])
    # 20 bits: low 16 bits little-endian, then the top nibbles 0x1 and 0xA in one byte.
    assert pack(np.array([0x12345, 0xABCDE], dtype=np.uint32), 20) == bytes([0x45, 0x23, 0xDE, 0xBC, 0xA1])
    assert packed_size(1000, 20) == 2500  # 2.5 bytes a value
    assert plane_widths(20) == ((16,), 4)
    assert plane_widths(63) == ((32, 16, 8), 7)
    assert plane_widths(64) == ((64,), 0)


@pytest.mark.parametrize(("bits", "le"), [(8, "<u1"), (16, "<u2"), (32, "<u4"), (64, "<u8")])
def test_byte_widths_are_the_little_endian_array(bits: int, le: str) -> None:
    rng = np.random.default_rng(bits)
    v = (rng.integers(0, 2**63, size=1000, dtype=np.uint64) >> np.uint64(63 - bits + 1 if bits < 64 else 0)).astype(
        ring_dtype(bits)
    )
    v[0] = 2**bits - 1
    data = pack(v, bits)
    assert data == v.astype(le).tobytes()
    out = unpack(data, bits, v.size)
    assert np.array_equal(out, v)
    if bits in (32, 64):
        assert np.shares_memory(out, np.frombuffer(data, dtype=np.uint8))  # zero-copy view


def test_results_are_read_only_unless_copied() -> None:
    for bits in (20, 32):
        data = pack(np.arange(10, dtype=np.uint32), bits)
        assert not unpack(data, bits, 10).flags.writeable
        out = unpack(data, bits, 10, copy=True)
        assert out.flags.writeable
        out[0] = 5
        assert unpack(data, bits, 10)[0] == 0


def test_empty_vector() -> None:
    assert pack(np.zeros(0, dtype=np.uint32), 20) == b""
    assert unpack(b"", 20, 0).shape == (0,)


def test_signed_and_narrow_inputs_are_accepted_in_range() -> None:
    assert pack(np.array([1, 2, 3], dtype=np.int64), 20) == pack(np.array([1, 2, 3], dtype=np.uint32), 20)
    assert pack(np.array([1, 2, 3], dtype=np.uint8), 33) == pack(np.array([1, 2, 3], dtype=np.uint64), 33)


@pytest.mark.parametrize(
    ("values", "bits", "err"),
    [
        (np.array([1 << 20], dtype=np.uint32), 20, SecAggValueError),
        (np.array([-1], dtype=np.int32), 20, SecAggValueError),
        (np.array([256], dtype=np.uint32), 8, SecAggValueError),
        (np.array([1.0]), 20, SecAggTypeError),
        (np.zeros((2, 2), dtype=np.uint32), 20, SecAggValueError),
        ([1, 2], 20, SecAggTypeError),
        (np.array([1], dtype=np.uint32), 0, SecAggValueError),
    ],
)
def test_pack_rejects_bad_values(values: object, bits: int, err: type[Exception]) -> None:
    with pytest.raises(err):
        pack(values, bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [1, 7, 20, 32, 33, 64])
def test_unpack_rejects_wrong_length(bits: int) -> None:
    data = pack(np.ones(10, dtype=ring_dtype(bits)), bits)
    with pytest.raises(MessageError, match="expected"):
        unpack(data[:-1], bits, 10)
    with pytest.raises(MessageError, match="expected"):
        unpack(data + b"\x00", bits, 10)


@pytest.mark.parametrize(("bits", "d"), [(1, 3), (4, 3), (20, 1), (20, 3), (7, 5), (33, 7), (63, 9)])
def test_unpack_rejects_nonzero_padding(bits: int, d: int) -> None:
    data = bytearray(pack(np.ones(d, dtype=ring_dtype(bits)), bits))
    pad = (-d * bits) % 8
    assert pad  # these sizes leave padding bits in the last byte
    data[-1] |= 0x80
    with pytest.raises(MessageError, match="padding"):
        unpack(bytes(data), bits, d)


def test_unpack_rejects_bad_types() -> None:
    with pytest.raises(SecAggTypeError):
        unpack("abc", 8, 3)  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError):
        unpack(b"", 8, -1)
