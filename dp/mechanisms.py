"""Noise mechanisms as small frozen value objects.

Integer (exact) mechanisms, for distributed DP under secure aggregation and for any integer
query:

* :class:`DiscreteGaussian` -- ``P(k)`` proportional to ``exp(-k^2 / (2 sigma^2))``
  (Canonne, Kamath, Steinke 2020). For an integer query with L2 sensitivity ``Delta`` it
  gives ``Delta^2 / (2 sigma^2)``-zCDP, exactly like the continuous Gaussian.
* :class:`DiscreteLaplace` -- ``P(k)`` proportional to ``exp(-|k| / scale)``: ``Delta_1 / scale``-DP
  for an integer query with L1 sensitivity ``Delta_1``.
* :class:`Skellam` -- ``Poisson(mu) - Poisson(mu)``; closed under summation (the sum of ``n``
  independent Skellam(mu) is Skellam(``n mu``)), which suits noise shared among clients
  (Agarwal, Kairouz, Liu 2021).

Floating-point mechanisms, for central DP: :class:`Gaussian` and :class:`Laplace`.

.. warning::
   They default to ``secure=True``. With ``secure=False`` they draw textbook floating-point
   noise (Box-Muller; inverse-CDF Laplace). Mironov (CCS 2012) showed that the set of
   floating-point numbers such noise can produce depends on the true value, so an adversary
   can sometimes read the true value off the low-order bits of a single output, destroying
   the guarantee. Use ``secure=False`` only for simulations and utility studies. ``secure=True``
   removes the attack: the noise is an exact discrete Gaussian / Laplace on the grid
   ``grid Z`` (``grid`` a power of two about ``2^-grid_bits`` times sigma or scale),
   :meth:`Gaussian.add_noise` first rounds the query value to the same grid, and every
   output is an exactly representable grid point, so the set of possible outputs does not
   depend on the input. The privacy cost of the rounding: the sensitivity grows by at most
   one grid step per coordinate (L2: ``Delta + grid sqrt(d)``, L1: ``Delta + grid d`` for
   ``d`` coordinates).

Every ``sample``/``add_noise`` takes ``rng`` (default: a fresh AES-CTR CSPRNG, see
:mod:`dp.rand`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, overload

import numpy as np
import numpy.typing as npt

from dp._validate import check_bool, check_int
from dp.errors import DPTypeError, DPValueError
from dp.rand import RngLike, as_random_source
from dp.samplers import (
    MAX_MU,
    MAX_SCALE,
    MIN_MU,
    MIN_SCALE,
    Size,
    _check_param,
    _check_size,
    _poisson_logpmf,
    sample_discrete_gaussian,
    sample_discrete_laplace,
    sample_skellam,
)

__all__ = ["DiscreteGaussian", "DiscreteLaplace", "Gaussian", "Laplace", "Mechanism", "Skellam"]

_SQRT_2PI: Final = math.sqrt(2.0 * math.pi)
_MAX_GRID_BITS: Final = 30
_MAX_GRID_UNITS: Final = 2.0**52  # |value| / grid above this could make grid arithmetic inexact

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# ---------------------------------------------------------------------------- input helpers


def _int_points(k: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.bool_], bool]:
    """``k`` as float64 values, a mask of integral entries, and whether ``k`` was a scalar."""
    arr = np.asarray(k)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise DPTypeError(f"k must be integers (or integral floats), got dtype {arr.dtype}")
    vals = arr.astype(np.float64)
    if not np.all(np.isfinite(vals)):
        raise DPValueError("k must be finite")
    return vals, vals == np.round(vals), arr.ndim == 0


def _real_points(x: npt.ArrayLike, name: str = "x") -> tuple[FloatArray, bool]:
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise DPTypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    vals = arr.astype(np.float64)
    if np.any(np.isnan(vals)):
        raise DPValueError(f"{name} must not contain NaN")
    return vals, arr.ndim == 0


def _out(vals: FloatArray, scalar: bool) -> FloatArray | float:
    return float(vals) if scalar else vals


def _check_grid_bits(value: object) -> int:
    return check_int("grid_bits", value, low=0, high=_MAX_GRID_BITS)


def _grid_for(width: float, grid_bits: int) -> float:
    """The power of two ``2^(floor(log2 width) - grid_bits)``."""
    _, e = math.frexp(width)  # width = m 2^e, m in [0.5, 1)
    return math.ldexp(1.0, e - 1 - grid_bits)


def _check_integer_input(x: npt.ArrayLike) -> IntArray:
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise DPTypeError(f"x must be an integer array for an integer mechanism, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise DPValueError("x does not fit in int64")
    return arr.astype(np.int64)


# ---------------------------------------------------------------------- discrete Gaussian


def _dg_moments(sigma: float) -> tuple[float, float]:
    """``(Z, V)``: normaliser ``sum_k exp(-k^2/(2 sigma^2))`` and variance of N_Z(0, sigma^2).

    ``sigma < 1``: direct sum over ``|k| <= 40 sigma + 2`` (the rest is below 1e-300).
    ``sigma >= 1``: the dual series from Poisson summation,
    ``Z = sigma sqrt(2 pi) (1 + 2 sum_j e^(-a j^2))`` and
    ``V = sigma^2 (1 + 2 sum_j (1 - 2 a j^2) e^(-a j^2)) / (1 + 2 sum_j e^(-a j^2))``,
    ``a = 2 pi^2 sigma^2``; ``j <= 3`` already leaves less than ``e^-300``.
    """
    if sigma < 1.0:
        kmax = math.ceil(40.0 * sigma) + 2
        w = [math.exp(-(k * k) / (2.0 * sigma * sigma)) for k in range(1, kmax + 1)]
        z = 1.0 + 2.0 * math.fsum(w)
        s2 = 2.0 * math.fsum(k * k * wk for k, wk in zip(range(1, kmax + 1), w, strict=True))
        return z, s2 / z
    a = 2.0 * math.pi**2 * sigma * sigma
    e = [math.exp(-a * j * j) for j in (1, 2, 3)]
    num = 1.0 + 2.0 * math.fsum((1.0 - 2.0 * a * j * j) * ej for j, ej in zip((1, 2, 3), e, strict=True))
    den = 1.0 + 2.0 * math.fsum(e)
    return sigma * _SQRT_2PI * den, sigma * sigma * num / den


class _IntegerNoise:
    """Shared behaviour of the discrete mechanisms (they define ``sample``)."""

    def sample(self, size: Size, rng: RngLike = None) -> IntArray:  # pragma: no cover - overridden
        raise NotImplementedError

    def add_noise(self, x: npt.ArrayLike, rng: RngLike = None) -> IntArray:
        """``x + noise`` for an integer array ``x`` (``int64``, same shape)."""
        arr = _check_integer_input(x)
        return arr + self.sample(arr.shape, rng)


@dataclass(frozen=True)
class DiscreteGaussian(_IntegerNoise):
    """Discrete Gaussian N_Z(0, sigma^2): ``P(k) = exp(-k^2 / (2 sigma^2)) / Z``, ``k`` in Z.

    Args:
        sigma: scale parameter in ``[2^-40, 2^40]`` (integer units). The variance is slightly
            below ``sigma^2`` (see :attr:`variance`).

    Protects: an integer-valued query with L2 sensitivity ``Delta`` gets
    ``Delta^2 / (2 sigma^2)``-zCDP (Canonne, Kamath, Steinke 2020, Theorem 4), the same
    as the continuous Gaussian, with no floating-point leakage.
    """

    sigma: float
    _z: float = field(init=False, repr=False, compare=False)
    _var: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s = _check_param("sigma", self.sigma, MIN_SCALE, MAX_SCALE)
        object.__setattr__(self, "sigma", s)
        z, v = _dg_moments(s)
        object.__setattr__(self, "_z", z)
        object.__setattr__(self, "_var", v)

    def sample(self, size: Size, rng: RngLike = None) -> IntArray:
        """Exact samples, ``int64`` array of shape ``size``."""
        return sample_discrete_gaussian(self.sigma, size, rng)

    @overload
    def pmf(self, k: int) -> float: ...
    @overload
    def pmf(self, k: npt.ArrayLike) -> FloatArray | float: ...
    def pmf(self, k: npt.ArrayLike) -> FloatArray | float:
        """Exact pmf at ``k`` (0 at non-integers); float for a scalar, else an array."""
        vals, integral, scalar = _int_points(k)
        p = np.where(integral, np.exp(-(vals * vals) / (2.0 * self.sigma**2)) / self._z, 0.0)
        return _out(p, scalar)

    @property
    def normalizer(self) -> float:
        """``Z = sum_k exp(-k^2 / (2 sigma^2))``."""
        return self._z

    @property
    def variance(self) -> float:
        """Exact variance (from the series in :func:`_dg_moments`); at most ``sigma^2``."""
        return self._var


# ----------------------------------------------------------------------- discrete Laplace


@dataclass(frozen=True)
class DiscreteLaplace(_IntegerNoise):
    """Discrete Laplace: ``P(k) = tanh(1 / (2 scale)) exp(-|k| / scale)``, ``k`` in Z.

    Args:
        scale: in ``[2^-40, 2^40]`` (integer units).

    Protects: an integer query with L1 sensitivity ``Delta`` gets ``(Delta / scale)``-DP
    (pure DP).
    """

    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _check_param("scale", self.scale, MIN_SCALE, MAX_SCALE))

    def sample(self, size: Size, rng: RngLike = None) -> IntArray:
        """Exact samples, ``int64`` array of shape ``size``."""
        return sample_discrete_laplace(self.scale, size, rng)

    @overload
    def pmf(self, k: int) -> float: ...
    @overload
    def pmf(self, k: npt.ArrayLike) -> FloatArray | float: ...
    def pmf(self, k: npt.ArrayLike) -> FloatArray | float:
        """Exact pmf at ``k`` (0 at non-integers); float for a scalar, else an array."""
        vals, integral, scalar = _int_points(k)
        p = np.where(integral, math.tanh(0.5 / self.scale) * np.exp(-np.abs(vals) / self.scale), 0.0)
        return _out(p, scalar)

    @property
    def variance(self) -> float:
        """``2 q / (1 - q)^2`` with ``q = exp(-1/scale)``."""
        q = math.exp(-1.0 / self.scale)
        return 2.0 * q / math.expm1(-1.0 / self.scale) ** 2


# -------------------------------------------------------------------------------- Skellam


def _skellam_pmf_one(kabs: int, mu: float) -> float:
    """``sum_j P(j) P(j + |k|)`` over the window where the terms are not negligible."""
    w = int(40.0 * math.sqrt(mu) + 40.0)
    c = round(mu - kabs / 2.0)
    j = np.arange(max(0, c - w), max(0, c + w) + 1, dtype=np.int64)
    lp = _poisson_logpmf(j, mu) + _poisson_logpmf(j + kabs, mu)
    top = float(np.max(lp))
    if top == -math.inf:
        return 0.0
    return math.exp(top) * float(np.sum(np.exp(lp - top)))


@dataclass(frozen=True)
class Skellam(_IntegerNoise):
    """Symmetric Skellam: ``Poisson(mu) - Poisson(mu)``, mean 0, variance ``2 mu``.

    Args:
        mu: mean of each Poisson term, in ``[2^-40, 2^48]``.

    The sum of ``n`` independent Skellam(mu) is Skellam(``n mu``). Protects an integer
    query with sensitivities ``Delta_1``, ``Delta_2`` with the RDP bound of Agarwal, Kairouz,
    Liu (2021); accounting lives in :mod:`dp` accountants, not here.
    """

    mu: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "mu", _check_param("mu", self.mu, MIN_MU, MAX_MU))

    def sample(self, size: Size, rng: RngLike = None) -> IntArray:
        """Exact samples, ``int64`` array of shape ``size``."""
        return sample_skellam(self.mu, size, rng)

    @overload
    def pmf(self, k: int) -> float: ...
    @overload
    def pmf(self, k: npt.ArrayLike) -> FloatArray | float: ...
    def pmf(self, k: npt.ArrayLike) -> FloatArray | float:
        """pmf ``exp(-2 mu) I_|k|(2 mu)``, evaluated as the convolution
        ``sum_j P(j) P(j + |k|)`` of Poisson pmfs (cost ``O(sqrt(mu))`` per distinct ``|k|``)."""
        vals, integral, scalar = _int_points(k)
        out = np.zeros(vals.shape)
        flat_v, flat_i = vals.reshape(-1), integral.reshape(-1)
        flat_o = out.reshape(-1)
        cache: dict[int, float] = {}
        for idx in np.flatnonzero(flat_i):
            a = abs(int(flat_v[idx]))
            if a not in cache:
                cache[a] = _skellam_pmf_one(a, self.mu)
            flat_o[idx] = cache[a]
        return _out(out, scalar)

    @property
    def variance(self) -> float:
        """``2 mu``."""
        return 2.0 * self.mu


# ------------------------------------------------------------------ floating-point mechanisms


def _uniform_open(rng: RngLike, n: int) -> tuple[FloatArray, FloatArray]:
    """Two arrays of uniforms: ``(0, 1]`` and ``[0, 1)``, 53 bits each."""
    rs = as_random_source(rng)
    raw = rs.uint64(2 * n) >> np.uint64(11)
    u = raw.astype(np.float64) * 2.0**-53
    return u[:n] + 2.0**-53, u[n:]


@dataclass(frozen=True)
class Gaussian:
    """Gaussian noise N(0, sigma^2) for central DP.

    Args:
        sigma: standard deviation (same units as the query), in ``[2^-40, 2^40]``.
        secure: ``True`` (default): exact discrete Gaussian on the grid ``grid Z`` (see
            :attr:`grid`); outputs are grid points. ``False``: floating-point Box-Muller
            noise -- vulnerable to Mironov's floating-point attack, for simulation only.
        grid_bits: grid fineness in secure mode: ``grid = 2^(floor(log2 sigma) - grid_bits)``.

    Protects (secure mode): a query with L2 sensitivity ``Delta`` whose value is rounded to
    the grid by :meth:`add_noise` gets ``(Delta + grid sqrt(d))^2 / (2 sigma^2)``-zCDP for
    ``d`` coordinates (discrete Gaussian on a lattice; the rounding adds one grid step per
    coordinate). Without ``secure`` the nominal guarantee ``Delta^2 / (2 sigma^2)``-zCDP holds
    only for ideal real-valued noise.
    """

    sigma: float
    secure: bool = True
    grid_bits: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_param("sigma", self.sigma, MIN_SCALE, MAX_SCALE))
        object.__setattr__(self, "secure", check_bool("secure", self.secure))
        object.__setattr__(self, "grid_bits", _check_grid_bits(self.grid_bits))

    @property
    def grid(self) -> float | None:
        """Grid step (a power of two) in secure mode, else ``None``."""
        return _grid_for(self.sigma, self.grid_bits) if self.secure else None

    def _lattice(self) -> DiscreteGaussian:
        g = _grid_for(self.sigma, self.grid_bits)
        return DiscreteGaussian(self.sigma / g)  # exact: division by a power of two

    def sample(self, size: Size, rng: RngLike = None) -> FloatArray:
        """Noise samples (``float64``, shape ``size``); grid multiples in secure mode."""
        if self.secure:
            g = _grid_for(self.sigma, self.grid_bits)
            return self._lattice().sample(size, rng).astype(np.float64) * g
        shape, n = _check_size(size)
        half = (n + 1) // 2
        u1, u2 = _uniform_open(rng, half)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2.0 * np.pi * u2), r * np.sin(2.0 * np.pi * u2)])[:n]
        return (self.sigma * z).reshape(shape)

    def add_noise(self, x: npt.ArrayLike, rng: RngLike = None) -> FloatArray:
        """Noised copy of ``x`` (``float64``, same shape).

        Secure mode: ``x`` is first rounded to the nearest grid point, then an integer number
        of grid steps is added; every step is exact. ``|x|`` must stay below ``2^51`` grid
        steps (about ``2^(51 - grid_bits)`` sigma), else DPValueError.
        """
        vals = _finite_input(x)
        if not self.secure:
            return vals + self.sample(vals.shape, rng)
        g = _grid_for(self.sigma, self.grid_bits)
        return _grid_add(vals, g, self._lattice().sample(vals.shape, rng))

    @overload
    def pdf(self, x: float) -> float: ...
    @overload
    def pdf(self, x: npt.ArrayLike) -> FloatArray | float: ...
    def pdf(self, x: npt.ArrayLike) -> FloatArray | float:
        """Density of N(0, sigma^2) (``secure=False`` only: secure output is discrete, see :meth:`pmf`)."""
        if self.secure:
            raise DPValueError("secure mode draws discrete grid noise; use pmf() instead of pdf()")
        vals, scalar = _real_points(x)
        z = vals / self.sigma
        return _out(np.exp(-0.5 * z * z) / (self.sigma * _SQRT_2PI), scalar)

    @overload
    def pmf(self, x: float) -> float: ...
    @overload
    def pmf(self, x: npt.ArrayLike) -> FloatArray | float: ...
    def pmf(self, x: npt.ArrayLike) -> FloatArray | float:
        """Probability of each grid point ``x`` (``secure=True`` only; 0 off the grid)."""
        if not self.secure:
            raise DPValueError("the non-secure Gaussian is continuous; use pdf() instead of pmf()")
        vals, scalar = _real_points(x)
        g = _grid_for(self.sigma, self.grid_bits)
        units = vals / g
        p = self._lattice().pmf(np.where(np.isfinite(units), units, 0.5))
        return _out(np.asarray(p, dtype=np.float64), scalar)

    @property
    def variance(self) -> float:
        """``sigma^2``; in secure mode the exact variance of the grid discrete Gaussian (<= sigma^2)."""
        if self.secure:
            g = _grid_for(self.sigma, self.grid_bits)
            return self._lattice().variance * g * g
        return self.sigma**2


@dataclass(frozen=True)
class Laplace:
    """Laplace noise with density ``exp(-|x| / scale) / (2 scale)`` for central DP.

    Args:
        scale: in ``[2^-40, 2^40]`` (query units).
        secure: ``True`` (default): exact discrete Laplace on the grid ``grid Z`` (see
            :attr:`grid`). ``False``: textbook inverse-CDF floating-point noise, the exact
            construction Mironov (2012) attacked -- simulation only.
        grid_bits: grid fineness in secure mode: ``grid = 2^(floor(log2 scale) - grid_bits)``.

    Protects (secure mode): a query with L1 sensitivity ``Delta``, rounded to the grid by
    :meth:`add_noise`, gets ``((Delta + grid d) / scale)``-DP for ``d`` coordinates.
    """

    scale: float
    secure: bool = True
    grid_bits: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _check_param("scale", self.scale, MIN_SCALE, MAX_SCALE))
        object.__setattr__(self, "secure", check_bool("secure", self.secure))
        object.__setattr__(self, "grid_bits", _check_grid_bits(self.grid_bits))

    @property
    def grid(self) -> float | None:
        """Grid step (a power of two) in secure mode, else ``None``."""
        return _grid_for(self.scale, self.grid_bits) if self.secure else None

    def _lattice(self) -> DiscreteLaplace:
        return DiscreteLaplace(self.scale / _grid_for(self.scale, self.grid_bits))

    def sample(self, size: Size, rng: RngLike = None) -> FloatArray:
        """Noise samples (``float64``, shape ``size``); grid multiples in secure mode."""
        if self.secure:
            g = _grid_for(self.scale, self.grid_bits)
            return self._lattice().sample(size, rng).astype(np.float64) * g
        shape, n = _check_size(size)
        u1, u2 = _uniform_open(rng, n)
        sign = np.where(u2 < 0.5, -1.0, 1.0)
        return (-self.scale * sign * np.log(u1)).reshape(shape)

    def add_noise(self, x: npt.ArrayLike, rng: RngLike = None) -> FloatArray:
        """Noised copy of ``x`` (``float64``, same shape); secure mode rounds ``x`` to the grid first."""
        vals = _finite_input(x)
        if not self.secure:
            return vals + self.sample(vals.shape, rng)
        g = _grid_for(self.scale, self.grid_bits)
        return _grid_add(vals, g, self._lattice().sample(vals.shape, rng))

    @overload
    def pdf(self, x: float) -> float: ...
    @overload
    def pdf(self, x: npt.ArrayLike) -> FloatArray | float: ...
    def pdf(self, x: npt.ArrayLike) -> FloatArray | float:
        """Laplace density (``secure=False`` only)."""
        if self.secure:
            raise DPValueError("secure mode draws discrete grid noise; use pmf() instead of pdf()")
        vals, scalar = _real_points(x)
        return _out(np.exp(-np.abs(vals) / self.scale) / (2.0 * self.scale), scalar)

    @overload
    def pmf(self, x: float) -> float: ...
    @overload
    def pmf(self, x: npt.ArrayLike) -> FloatArray | float: ...
    def pmf(self, x: npt.ArrayLike) -> FloatArray | float:
        """Probability of each grid point ``x`` (``secure=True`` only; 0 off the grid)."""
        if not self.secure:
            raise DPValueError("the non-secure Laplace is continuous; use pdf() instead of pmf()")
        vals, scalar = _real_points(x)
        units = vals / _grid_for(self.scale, self.grid_bits)
        p = self._lattice().pmf(np.where(np.isfinite(units), units, 0.5))
        return _out(np.asarray(p, dtype=np.float64), scalar)

    @property
    def variance(self) -> float:
        """``2 scale^2``; in secure mode the exact variance of the grid discrete Laplace."""
        if self.secure:
            g = _grid_for(self.scale, self.grid_bits)
            return self._lattice().variance * g * g
        return 2.0 * self.scale**2


def _finite_input(x: npt.ArrayLike) -> FloatArray:
    vals, _ = _real_points(x)
    if not np.all(np.isfinite(vals)):
        raise DPValueError("x must be finite (no NaN or inf)")
    return vals


def _grid_add(vals: FloatArray, grid: float, noise: IntArray) -> FloatArray:
    """``round(vals / grid) + noise`` grid steps, as float64; exact arithmetic throughout."""
    units = vals / grid  # exact: grid is a power of two (no overflow below 2^52 grid)
    if units.size and float(np.max(np.abs(units))) > _MAX_GRID_UNITS / 2:
        raise DPValueError(
            f"|x| must be below 2^51 grid steps ({_MAX_GRID_UNITS / 2 * grid:g}); "
            "lower grid_bits or rescale the query"
        )
    total = np.rint(units).astype(np.int64) + noise
    if total.size and int(np.max(np.abs(total))) >= 1 << 53:  # pragma: no cover - needs a 2^51-sigma draw
        raise DPValueError("noised value left the exactly representable range; lower grid_bits")
    return total.astype(np.float64) * grid


Mechanism = DiscreteGaussian | DiscreteLaplace | Skellam | Gaussian | Laplace
"""Any of the noise mechanisms of this module."""
