"""Randomized Hadamard rotation in power-of-two blocks (flattening before quantisation).

Distributed DP quantises every client's update to integers and sums them modulo ``2**bits``
(Kairouz, Liu, Steinke, ICML 2021). A vector whose L2 norm sits in a few coordinates would
need a wide ring; a *randomized Hadamard rotation* ``y = H D x`` spreads the norm over all
coordinates first. ``D`` is a diagonal of random signs drawn from a public seed and ``H``
the normalised Walsh-Hadamard matrix, so the rotation is orthogonal (norm preserving) and
its inverse is ``x = D H y``.

``H`` only exists for power-of-two sizes, and padding ``d`` up to the next power of two can
almost double what each client uploads. Here ``H`` is block diagonal: the padded vector is
cut into ``num_blocks`` blocks of ``block_size = 2**m`` coordinates and each block is
transformed on its own (:class:`BlockLayout`), with ``m`` chosen so that the padding stays
below a fraction of ``d``.

Flattening is per block. After the sign flip, every coordinate of a block is a Rademacher
sum over that block, hence sub-Gaussian with variance proxy ``||x_block||^2 / block_size``.
The worst case (the whole norm in one block) is therefore ``||x||^2 / block_size``, not
``||x||^2 / padded_dim``. That is the figure :mod:`dp.distributed` feeds into its
modular-clipping bound.

The transform is O(d log d) and vectorised: ``log2(block_size)`` butterfly passes over
reshaped numpy views, in place, with no Python loop over elements.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dp._validate import check_int, check_nonnegative
from dp.errors import DPTypeError, DPValueError
from dp.rand import RandomSource

__all__ = [
    "DEFAULT_MAX_PADDING",
    "MAX_COUNT",
    "BlockLayout",
    "HadamardRotation",
    "block_layouts",
    "choose_layout",
    "fwht",
    "rotate",
    "unrotate",
]

#: Default bound on padding, as a fraction of ``dim`` (upload overhead of the rotation).
DEFAULT_MAX_PADDING = 0.25

_SIGN_LABEL = b"secagg/dp/rotation/signs/v1|"


#: Largest dimension, block size or client count accepted (2**40): beyond it the float
#: arithmetic of the layout and noise planning is no longer exact, and no model is that big.
MAX_COUNT = 1 << 40


def _check_int(name: str, value: object, minimum: int) -> int:
    return check_int(name, value, low=minimum, high=MAX_COUNT)


def _check_fraction(name: str, value: object) -> float:
    return check_nonnegative(name, value)


@dataclass(frozen=True)
class BlockLayout:
    """How a ``dim``-vector is padded and cut into Hadamard blocks.

    Attributes:
        dim: the model dimension ``d`` (>= 1).
        block_size: ``2**m``, the size of each Hadamard block.

    The padded vector has ``padded_dim = num_blocks * block_size >= dim`` coordinates; the
    last ``padding`` ones are zeros before the rotation.
    """

    dim: int
    block_size: int

    def __post_init__(self) -> None:
        _check_int("dim", self.dim, 1)
        b = _check_int("block_size", self.block_size, 1)
        if b & (b - 1):
            raise DPValueError(f"block_size must be a power of two, got {b}")

    @property
    def num_blocks(self) -> int:
        """Number of blocks, ``ceil(dim / block_size)``."""
        return -(-self.dim // self.block_size)

    @property
    def padded_dim(self) -> int:
        """Length of the rotated vector (what a client uploads), ``num_blocks * block_size``."""
        return self.num_blocks * self.block_size

    @property
    def padding(self) -> int:
        """Zero coordinates appended before rotating, ``padded_dim - dim``."""
        return self.padded_dim - self.dim

    @property
    def padding_fraction(self) -> float:
        """``padding / dim``: the upload overhead of the layout."""
        return self.padding / self.dim


def block_layouts(dim: int, max_padding: float = DEFAULT_MAX_PADDING) -> list[BlockLayout]:
    """Every power-of-two block layout of ``dim`` with ``padding <= max_padding * dim``.

    Sorted by decreasing ``block_size`` (better flattening first). ``block_size`` runs from
    the smallest power of two ``>= dim`` (one block) down; ``block_size = 1`` (no padding,
    no flattening) is always feasible, so the list is never empty.
    """
    dim = _check_int("dim", dim, 1)
    max_padding = _check_fraction("max_padding", max_padding)
    out: list[BlockLayout] = []
    b = 1 << max(0, (dim - 1).bit_length())
    while b >= 1:
        layout = BlockLayout(dim, b)
        if layout.padding <= max_padding * dim:
            out.append(layout)
        b >>= 1
    return out


def choose_layout(dim: int, max_padding: float = DEFAULT_MAX_PADDING, block_size: int | None = None) -> BlockLayout:
    """The layout with the largest block whose padding is at most ``max_padding * dim``.

    With ``block_size`` given, that block size is used as is (``max_padding`` is ignored).
    """
    if block_size is not None:
        return BlockLayout(_check_int("dim", dim, 1), block_size)
    return block_layouts(dim, max_padding)[0]


def fwht(a: npt.NDArray[np.float64], block_size: int) -> None:
    """Normalised fast Walsh-Hadamard transform of each ``block_size`` block of ``a``, in place.

    ``a`` must be a C-contiguous ``float64`` array whose size is a multiple of
    ``block_size`` (a power of two). Each block ``v`` becomes ``H v / sqrt(block_size)``
    (Sylvester ordering). The normalised ``H`` is symmetric and orthogonal, so applying
    :func:`fwht` twice gives back the input up to rounding.
    """
    if not isinstance(a, np.ndarray) or a.dtype != np.float64 or not a.flags.c_contiguous:
        raise DPTypeError("fwht needs a C-contiguous float64 numpy array")
    if not a.flags.writeable:
        raise DPValueError("fwht works in place: the array must be writeable")
    block_size = BlockLayout(1, block_size).block_size
    if a.size % block_size:
        raise DPValueError(f"array size {a.size} is not a multiple of block_size {block_size}")
    rows = a.size // block_size
    if rows == 0 or block_size == 1:
        return
    flat = a.reshape(rows, block_size)
    tmp = np.empty(rows * (block_size // 2), dtype=np.float64)
    h = 1
    while h < block_size:
        v = flat.reshape(rows, block_size // (2 * h), 2, h)
        lo = v[:, :, 0, :]
        hi = v[:, :, 1, :]
        t = tmp.reshape(rows, block_size // (2 * h), h)
        np.subtract(lo, hi, out=t)
        np.add(lo, hi, out=lo)
        hi[...] = t
        h *= 2
    flat *= 1.0 / math.sqrt(block_size)


def _signs(seed: bytes, n: int) -> npt.NDArray[np.float64]:
    """``n`` public random signs (+1.0/-1.0) from ``seed`` (AES-CTR through RandomSource)."""
    src = RandomSource(hashlib.sha256(_SIGN_LABEL + seed).digest())
    raw = np.empty(-(-n // 8), dtype=np.uint8)
    src.fill(raw)
    bits = np.unpackbits(raw)[:n]
    return 1.0 - 2.0 * bits.astype(np.float64)


def _check_seed(seed: object) -> bytes:
    if not isinstance(seed, (bytes, bytearray)):
        raise DPTypeError(f"the rotation seed must be bytes (the public round seed), got {type(seed).__name__}")
    if len(seed) == 0:
        raise DPValueError("the rotation seed must not be empty")
    return bytes(seed)


@dataclass(frozen=True)
class HadamardRotation:
    """The orthogonal map ``x -> H D x`` for one layout and one public seed.

    ``D`` is ``padded_dim`` random signs derived from ``seed`` (the public round seed; every
    client of a round and the server must use the same seed), ``H`` the block-diagonal
    normalised Walsh-Hadamard matrix of ``layout``. No secret is involved: the rotation
    protects nothing by itself, it only flattens the vector so that modular clipping is
    unlikely.
    """

    layout: BlockLayout
    seed: bytes
    _signs: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.layout, BlockLayout):
            raise DPTypeError(f"layout must be a BlockLayout, got {type(self.layout).__name__}")
        object.__setattr__(self, "seed", _check_seed(self.seed))
        signs = _signs(self.seed, self.layout.padded_dim)
        signs.setflags(write=False)
        object.__setattr__(self, "_signs", signs)

    def _check_input(self, x: npt.ArrayLike, n: int, what: str) -> npt.NDArray[np.float64]:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
            raise DPTypeError(f"{what} must be a real numeric array, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2) or arr.shape[-1] != n:
            raise DPValueError(f"{what} must have shape ({n},) or (rows, {n}), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise DPValueError(f"{what} contains NaN or infinity; rotate finite values only")
        return arr.astype(np.float64, copy=False)

    def rotate(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``H D [x, 0]``: shape ``(dim,)`` -> ``(padded_dim,)`` (or row-wise for ``(rows, dim)``).

        The input is not modified. Norms are preserved up to float rounding.
        """
        lay = self.layout
        arr = self._check_input(x, lay.dim, "x")
        out = np.zeros((*arr.shape[:-1], lay.padded_dim), dtype=np.float64)
        out[..., : lay.dim] = arr
        out *= self._signs
        fwht(out, lay.block_size)
        return out

    def inverse(self, y: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``D H y`` with the padding dropped: ``(padded_dim,)`` -> ``(dim,)`` (or row-wise).

        Exact inverse of :meth:`rotate` up to float rounding; the input is not modified.
        """
        lay = self.layout
        out = np.array(self._check_input(y, lay.padded_dim, "y"), dtype=np.float64, order="C", copy=True)
        fwht(out, lay.block_size)
        out *= self._signs
        return np.ascontiguousarray(out[..., : lay.dim])


def rotate(x: npt.ArrayLike, seed: bytes, layout: BlockLayout) -> npt.NDArray[np.float64]:
    """Shorthand for ``HadamardRotation(layout, seed).rotate(x)``."""
    return HadamardRotation(layout, seed).rotate(x)


def unrotate(y: npt.ArrayLike, seed: bytes, layout: BlockLayout) -> npt.NDArray[np.float64]:
    """Shorthand for ``HadamardRotation(layout, seed).inverse(y)``."""
    return HadamardRotation(layout, seed).inverse(y)
