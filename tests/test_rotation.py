"""Randomized Hadamard rotation in power-of-two blocks (dp.rotation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.errors import DPError, DPTypeError, DPValueError
from dp.rotation import (
    DEFAULT_MAX_PADDING,
    BlockLayout,
    HadamardRotation,
    block_layouts,
    choose_layout,
    fwht,
    rotate,
    unrotate,
)


def sylvester(n: int) -> np.ndarray:
    """Normalised Sylvester-Hadamard matrix built by the textbook recursion (independent of fwht)."""
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(n)


@pytest.mark.parametrize("block", [1, 2, 4, 8, 64, 256])
def test_fwht_matches_explicit_hadamard_matrix(block: int) -> None:
    rng = np.random.default_rng(block)
    a = rng.normal(size=(3, 2 * block))  # two blocks per row
    got = a.copy()
    fwht(got, block)
    h = sylvester(block)
    want = np.concatenate([a[:, :block] @ h.T, a[:, block:] @ h.T], axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_fwht_known_answer() -> None:
    # H_4 / 2 applied to e_0 and to (1, 1, 1, 1): textbook values.
    a = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    fwht(a, 4)
    np.testing.assert_array_equal(a, [0.5, 0.5, 0.5, 0.5, 2.0, 0.0, 0.0, 0.0])


def test_rotation_is_sign_flip_then_hadamard() -> None:
    # Rotating the basis vectors gives M = H diag(s); so H M must be diagonal with entries +-1.
    lay = BlockLayout(16, 16)
    rot = HadamardRotation(lay, b"kat")
    m = rot.rotate(np.eye(16))  # row i = rotate(e_i) = column i of M
    prod = sylvester(16) @ m.T
    np.testing.assert_allclose(np.abs(np.diag(prod)), 1.0, atol=1e-12)
    np.testing.assert_allclose(prod - np.diag(np.diag(prod)), 0.0, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    dim=st.integers(min_value=1, max_value=5000),
    seed=st.binary(min_size=1, max_size=32),
    max_padding=st.sampled_from([0.0, 0.05, DEFAULT_MAX_PADDING, 1.0]),
    data_seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_orthogonal_and_exact_inverse(dim: int, seed: bytes, max_padding: float, data_seed: int) -> None:
    lay = choose_layout(dim, max_padding)
    assert lay.padding <= max_padding * dim
    assert lay.padded_dim % lay.block_size == 0 and lay.padded_dim >= dim
    x = np.random.default_rng(data_seed).normal(size=dim) * 10.0
    before = x.copy()
    rot = HadamardRotation(lay, seed)
    y = rot.rotate(x)
    assert y.shape == (lay.padded_dim,)
    np.testing.assert_array_equal(x, before)  # input untouched
    norm = float(np.linalg.norm(x))
    assert abs(float(np.linalg.norm(y)) - norm) <= 1e-12 * max(1.0, norm) * math.log2(2 * lay.block_size)
    back = rot.inverse(y)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-12 * max(1.0, norm))
    # the functional shorthands agree with the object
    np.testing.assert_array_equal(rotate(x, seed, lay), y)
    np.testing.assert_array_equal(unrotate(y, seed, lay), back)


@settings(max_examples=50, deadline=None)
@given(dim=st.integers(min_value=1, max_value=10**7), max_padding=st.sampled_from([0.01, 0.05, 0.25, 1.0]))
def test_layout_is_largest_block_within_padding(dim: int, max_padding: float) -> None:
    layouts = block_layouts(dim, max_padding)
    lay = layouts[0]
    assert lay == choose_layout(dim, max_padding)
    assert lay.padding <= max_padding * dim
    assert lay.padding_fraction == lay.padding / dim
    sizes = [la.block_size for la in layouts]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    # every larger power of two up to the one covering dim pads too much
    b = lay.block_size * 2
    while b < 2 * dim:
        assert BlockLayout(dim, b).padding > max_padding * dim
        b *= 2


def test_padding_small_for_awkward_dimensions() -> None:
    # Padding to one power of two would nearly double these; blocks keep it within the default.
    for dim in (65537, 100_000, 1_100_000, 3 * 2**15 + 1):
        lay = choose_layout(dim)
        assert lay.padding_fraction <= DEFAULT_MAX_PADDING
        assert (1 << (dim - 1).bit_length()) / dim > 1.25  # single power of two is worse
        assert lay.block_size >= 2**13


def test_signs_public_deterministic_and_balanced() -> None:
    lay = BlockLayout(2**16, 2**16)
    x = np.zeros(2**16)
    x[123] = 1.0
    a = HadamardRotation(lay, b"round-7").rotate(x)
    b = HadamardRotation(lay, b"round-7").rotate(x)
    c = HadamardRotation(lay, b"round-8").rotate(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # A basis vector flattens perfectly within its block: every coordinate is +-1/sqrt(block).
    np.testing.assert_allclose(np.abs(a), 2.0**-8, rtol=1e-12)
    # Signs balanced: rotate(ones) = H s, and H is its own inverse, so H rotate(ones) = s.
    rot = HadamardRotation(lay, b"balance")
    d_vec = rot.rotate(np.ones(2**16))  # = H s; so H of it gives the signs
    fwht(d_vec, 2**16)
    s = np.rint(d_vec)
    assert set(np.unique(s)) <= {-1.0, 1.0}
    # sum of 65536 fair signs ~ N(0, 256); |z| > 5.5 has false-alarm probability ~4e-8
    assert abs(float(s.sum())) < 5.5 * 256


def test_rows_rotate_independently_with_same_signs() -> None:
    lay = choose_layout(300)
    rot = HadamardRotation(lay, b"rows")
    xs = np.random.default_rng(1).normal(size=(4, 300))
    ys = rot.rotate(xs)
    assert ys.shape == (4, lay.padded_dim)
    for i in range(4):
        np.testing.assert_array_equal(ys[i], rot.rotate(xs[i]))
    np.testing.assert_allclose(rot.inverse(ys), xs, atol=1e-12)


def test_block_flattening_worst_case_is_per_block() -> None:
    # The whole norm in one block: that block's coordinates carry ||x|| / sqrt(block_size),
    # the others zero -- the reason dp.distributed uses block_size, not padded_dim.
    lay = BlockLayout(4096, 1024)
    x = np.zeros(4096)
    x[2048:3072] = np.random.default_rng(2).normal(size=1024)
    y = HadamardRotation(lay, b"blk").rotate(x)
    assert np.all(y[:2048] == 0) and np.all(y[3072:] == 0)
    assert math.isclose(float(np.mean(y[2048:3072] ** 2)), float(x @ x) / 1024, rel_tol=1e-9)


def test_typed_errors() -> None:
    with pytest.raises(DPValueError):
        BlockLayout(0, 1)
    with pytest.raises(DPValueError):
        choose_layout(0)
    with pytest.raises(DPValueError):
        BlockLayout(10, 12)
    with pytest.raises(DPTypeError):
        BlockLayout(10, 2.0)  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        block_layouts(10, -0.1)
    with pytest.raises(DPValueError):
        block_layouts(10, float("nan"))
    lay = BlockLayout(5, 4)
    with pytest.raises(DPTypeError):
        HadamardRotation(lay, "seed")  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        HadamardRotation(lay, b"")
    rot = HadamardRotation(lay, b"s")
    with pytest.raises(DPValueError, match="NaN"):
        rot.rotate(np.array([1.0, np.nan, 0, 0, 0]))
    with pytest.raises(DPValueError):
        rot.rotate(np.ones(6))
    with pytest.raises(DPValueError):
        rot.inverse(np.ones(5))
    with pytest.raises(DPTypeError):
        rot.rotate(np.array(["a"] * 5))
    with pytest.raises(DPTypeError):
        fwht(np.ones(8, dtype=np.float32), 8)
    with pytest.raises(DPValueError):
        fwht(np.ones(12), 8)
    assert issubclass(DPValueError, DPError)


@pytest.mark.parametrize(
    ("dim", "err"), [(10**400, DPValueError), (2**41, DPValueError), (4.0, DPTypeError), (True, DPTypeError)]
)
def test_absurd_dims_are_typed_errors(dim: object, err: type[DPError]) -> None:
    from dp.rotation import block_layouts, choose_layout

    with pytest.raises(err):
        block_layouts(dim)  # type: ignore[arg-type]
    with pytest.raises(err):
        choose_layout(dim)  # type: ignore[arg-type]
