"""Distributed differential privacy that composes with secure aggregation.

Under secure aggregation the server only ever sees the modular sum of the clients' vectors,
so it cannot be trusted, or even asked, to add the DP noise after unmasking. Instead every
client adds a share of *integer* noise before masking, and the sum carries the whole noise
(Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation", ICML 2021; Agarwal, Kairouz, Liu, "The Skellam Mechanism for
Differentially Private Federated Learning", NeurIPS 2021).

Client pipeline (:meth:`DistributedPlan.encode`), for an update of ``dim`` floats::

    flatten -> L2 clip to clip_norm -> randomized Hadamard rotation (public round seed,
    power-of-two blocks, see dp.rotation) -> multiply by scale -> conditional stochastic
    rounding (resample until ||rounded||_2 <= l2_sensitivity) -> + this client's noise share
    (discrete Gaussian or Skellam, integers) -> wrap into Z_{2^bits}

Server (:meth:`DistributedPlan.decode`), on the unmasked modular sum::

    centred lift to [-2^(bits-1), 2^(bits-1)) -> divide by scale -> inverse rotation
    -> drop padding  =  (sum of survivors' clipped updates) + noise, in model units

Who is protected against whom. Only survivors' noise reaches the sum, and clients that
collude with the server know (and can subtract) their own shares. With ``m`` survivors and
``c`` colluders, the noise that protects one honest client is the ``m - 1 - c`` shares of the
*other* honest survivors (add/remove adjacency: the protected client's own share leaves with
its data). :func:`plan_distributed` calibrates each share so that this guaranteed noise meets
``noise_multiplier * l2_sensitivity`` at the cohort floor ``m = min_clients``, the fewest
survivors the protocol will unmask. :meth:`DistributedPlan.noise_report` states, for a
finished round, the noise present and the noise guaranteed, for the accountants.

Units. "Integer units" are those of the scaled, rounded vectors in the ring; dividing by
:attr:`DistributedPlan.scale` gives model units. The L2 sensitivity is the conditional
rounding norm bound (integer units), so the noise multiplier is the same in both units.

Modular clipping. The sum is correct unless some coordinate of the integer sum leaves
``[-2^(bits-1), 2^(bits-1))``. The planner bounds that probability with a Chernoff bound
over (a) the rotated, scaled signal of all ``clients_expected`` clients: their clipped
updates sum to norm at most ``clients_expected * clip_norm * scale``, and after the random
sign flip each coordinate of a Hadamard block is sub-Gaussian with variance proxy
``norm^2 / block_size`` (the whole norm in one block is the worst case); (b) the rounding
errors (each in (-1, 1): either deterministically ``< clients_expected`` in total, or
sub-Gaussian with proxy ``1/4`` each, inflated by ``1/(1 - rounding_beta)`` per client for
the conditioning); (c) the noise shares of all expected clients (discrete Gaussian:
sub-Gaussian with proxy ``sigma^2``, Canonne, Kamath, Steinke 2020; Skellam: its exact
moment generating function). A union bound over the ``padded_dim`` coordinates gives
:attr:`DistributedPlan.modular_clip_prob`. The bound is over the rotation's signs, which
are public: it assumes the updates do not depend on the round seed (honest clients), so
reveal the round seed only after the updates are fixed when that matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dp._ring import centered_lift, check_bits, ring_dtype
from dp._validate import check_int, check_real
from dp.clipping import clip_l2
from dp.errors import DPError, DPTypeError, DPValueError
from dp.mechanisms import DiscreteGaussian, Skellam
from dp.rand import RandomSource, RngLike, as_random_source
from dp.rotation import DEFAULT_MAX_PADDING, MAX_COUNT, BlockLayout, HadamardRotation, block_layouts, choose_layout
from dp.samplers import MAX_MU, MAX_SCALE

__all__ = [
    "AUTO_BITS_RANGE",
    "DEFAULT_ROUNDING_BETA",
    "DistributedPlan",
    "Mechanism",
    "NoiseReport",
    "conditional_round",
    "modular_clip_probability",
    "plan_distributed",
    "rounded_norm_bound",
    "wrap",
]

Mechanism = Literal["discrete_gaussian", "skellam"]
_MECHANISMS: tuple[str, ...] = ("discrete_gaussian", "skellam")

#: Bit widths :func:`plan_distributed` searches when ``bits=None``.
AUTO_BITS_RANGE = (8, 32)
#: Default ``beta`` of the conditional rounding bound (Kairouz et al. use exp(-1/2)).
DEFAULT_ROUNDING_BETA = math.exp(-0.5)
_MAX_EXPLICIT_BITS = 64
_MIN_EXPLICIT_BITS = 2
#: Relative slack when comparing a float64 squared norm with the bound (rounding of the sum).
_NORM_SLACK = 1e-12


# ----------------------------------------------------------------------------- validation


def _check_float(name: str, value: object, *, low: float = 0.0, high: float = math.inf, open_low: bool = True) -> float:
    """``value`` as a float in ``(low, high)`` (``[low, high)`` when not ``open_low``)."""
    return check_real(name, value, low=low, high=high, low_open=open_low, high_open=True)


def _check_mechanism(mechanism: object) -> str:
    if not isinstance(mechanism, str):
        raise DPTypeError(f"mechanism must be a str, got {type(mechanism).__name__}")
    if mechanism not in _MECHANISMS:
        raise DPValueError(f"mechanism must be one of {', '.join(_MECHANISMS)}; got {mechanism!r}")
    return mechanism


# ------------------------------------------------------------------------- building blocks


def rounded_norm_bound(scaled_clip: float, dim: int, beta: float) -> float:
    """L2 bound enforced by conditional randomized rounding (Kairouz, Liu, Steinke 2021).

    For ``y`` in R^dim with ``||y||_2 <= scaled_clip`` (integer units), unbiased randomized
    rounding ``r`` satisfies ``||r||_2 <= bound`` with probability at least ``1 - beta``,
    where ``bound^2 = min(scaled_clip^2 + dim/4 + sqrt(2 ln(1/beta)) (scaled_clip + sqrt(dim)/2),
    (scaled_clip + sqrt(dim))^2)``. The second term holds always (each coordinate moves by
    less than 1), so ``beta = 0`` gives the deterministic bound.
    """
    c = _check_float("scaled_clip", scaled_clip, open_low=False)
    d = check_int("dim", dim, low=1, high=MAX_COUNT)
    b = _check_float("beta", beta, high=1.0, open_low=False)
    det = (c + math.sqrt(d)) ** 2
    if b == 0.0:
        return math.sqrt(det)
    prob = c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / b)) * (c + math.sqrt(d) / 2.0)
    return math.sqrt(min(prob, det))


def _gauss_tail_log(threshold: float, var: float) -> float:
    """``min_t -t T + t^2 V / 2`` = ``-T^2 / (2 V)``."""
    if threshold <= 0.0:
        return 0.0
    if var <= 0.0:
        return -math.inf
    return -threshold * threshold / (2.0 * var)


def _skellam_tail_log(threshold: float, var: float, total_mu: float) -> float:
    """``min_t -t T + t^2 V / 2 + 2 M (cosh t - 1)`` (Chernoff with the Skellam(M) MGF)."""
    if threshold <= 0.0:
        return 0.0

    def f(t: float) -> float:
        return -t * threshold + t * t * var / 2.0 + 4.0 * total_mu * math.sinh(t / 2.0) ** 2

    hi = math.asinh(threshold / (2.0 * total_mu)) if total_mu > 0 else math.inf
    if var > 0.0:
        hi = min(hi, threshold / var)
    if not math.isfinite(hi):
        return -math.inf
    lo = 0.0
    for _ in range(200):  # bisection on the (increasing) derivative
        mid = (lo + hi) / 2.0
        if -threshold + mid * var + 2.0 * total_mu * math.sinh(mid) < 0.0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return min(f(lo), f(hi))


def modular_clip_probability(
    *,
    bits: int,
    clients: int,
    scaled_clip: float,
    block_size: int,
    padded_dim: int,
    mechanism: Mechanism,
    noise: float,
    rounding_beta: float,
) -> float:
    """Upper bound on ``P(some coordinate of the integer sum leaves [-2^(bits-1), 2^(bits-1)))``.

    Args:
        bits: ring width ``b`` (modulus ``2^b``).
        clients: number of vectors summed (use the most that can take part).
        scaled_clip: ``clip_norm * scale`` (integer units).
        block_size: Hadamard block size (worst-case flattening ``norm^2 / block_size``).
        padded_dim: number of coordinates (union bound).
        mechanism: ``"discrete_gaussian"`` (``noise`` = sigma of one share) or ``"skellam"``
            (``noise`` = mu of one share, variance ``2 mu``).
        rounding_beta: conditional-rounding ``beta`` (for the conditioning penalty).

    Returns:
        The bound, in [0, 1]; see the module docstring for its derivation.
    """
    b = check_int("bits", bits, low=1, high=MAX_COUNT)
    n = check_int("clients", clients, low=1, high=MAX_COUNT)
    c = _check_float("scaled_clip", scaled_clip, open_low=False)
    bs = check_int("block_size", block_size, low=1, high=MAX_COUNT)
    dd = check_int("padded_dim", padded_dim, low=1, high=MAX_COUNT)
    mech = _check_mechanism(mechanism)
    nz = _check_float("noise", noise, open_low=False)
    beta = _check_float("rounding_beta", rounding_beta, high=1.0, open_low=False)
    threshold = float(2 ** (b - 1))
    sig_a2 = (n * c) ** 2 / bs
    cond_penalty = -n * math.log1p(-beta)
    if mech == "discrete_gaussian":
        var_noise = n * nz * nz
        det = _gauss_tail_log(threshold - n, sig_a2 + var_noise)
        sub = _gauss_tail_log(threshold, sig_a2 + n / 4.0 + var_noise) + cond_penalty
    else:
        det = _skellam_tail_log(threshold - n, sig_a2, n * nz)
        sub = _skellam_tail_log(threshold, sig_a2 + n / 4.0, n * nz) + cond_penalty
    log_p = math.log(2.0 * dd) + min(det, sub)
    return 1.0 if log_p >= 0.0 else math.exp(log_p)


def conditional_round(
    y: npt.NDArray[np.float64], bound: float, rng: RngLike = None, max_attempts: int = 100
) -> npt.NDArray[np.int64]:
    """Unbiased randomized rounding of ``y``, resampled until ``||rounded||_2 <= bound``.

    Each coordinate rounds up with probability equal to its fractional part. If the rounded
    vector's L2 norm exceeds ``bound`` the whole vector is rounded again, at most
    ``max_attempts`` times; then :class:`~dp.errors.DPError` is raised (with the bound of
    :func:`rounded_norm_bound` an attempt fails with probability at most ``beta``).
    The norm test keeps a relative slack of 1e-12 on the safe side for float rounding.

    Returns:
        ``int64`` array of ``y``'s shape.
    """
    arr = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise DPValueError("conditional_round: y contains NaN or infinity")
    bnd = _check_float("bound", bound, open_low=False)
    attempts = check_int("max_attempts", max_attempts, low=1, high=MAX_COUNT)
    if np.max(np.abs(arr), initial=0.0) >= 2.0**62:
        raise DPValueError("conditional_round: |y| >= 2^62 does not fit int64; lower the scale")
    src = as_random_source(rng)
    floor = np.floor(arr)
    frac = arr - floor
    limit = bnd * bnd * (1.0 - _NORM_SLACK)
    out = np.empty(arr.shape, dtype=np.int64)
    for _ in range(attempts):
        up = src.random(arr.shape) < frac
        rounded = floor + up
        if float(np.dot(rounded.ravel(), rounded.ravel())) <= limit:
            np.copyto(out, rounded, casting="unsafe")
            return out
    raise DPError(
        f"conditional rounding exceeded the norm bound {bnd:.6g} in {attempts} attempts; the plan's bound or "
        "scale is inconsistent with this vector (was it clipped and scaled by the same plan?)"
    )


def wrap(values: npt.NDArray[np.int64], bits: int) -> npt.NDArray[np.uint32] | npt.NDArray[np.uint64]:
    """Reduce signed integers into Z_{2^bits} (two's complement), in ``ring_dtype(bits)``."""
    b = check_bits(bits)
    v = np.asarray(values)
    if v.dtype.kind not in "iu":
        raise DPTypeError(f"wrap needs an integer array, got dtype {v.dtype}")
    u = v.astype(np.int64, copy=False).view(np.uint64)
    if b < 64:
        u = u & np.uint64((1 << b) - 1)
    if b <= 32:
        return u.astype(np.uint32)
    return u.copy() if np.shares_memory(u, v) else u


# ---------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class NoiseReport:
    """Noise of one finished round, for the accountants (:mod:`dp.events`).

    Integer-unit figures (``l2_sensitivity``, ``sigma_*``) are the ones to account with: for
    the sum of ``n`` discrete Gaussians (Kairouz et al.) use ``l2_sensitivity``, ``sigma``
    (per coordinate, of the sum), ``dim`` and ``n = shares``; for Skellam, ``mu = sigma^2 / 2``
    and ``l1_sensitivity``.

    Attributes:
        mechanism: ``"discrete_gaussian"`` or ``"skellam"``.
        dim: padded dimension (number of noised coordinates).
        l2_sensitivity: L2 norm bound of one client's scaled, rounded vector (integer units).
        l1_sensitivity: its L1 bound, ``min(sqrt(dim) * l2, l2^2)`` (integer vectors).
        sigma_client: std per coordinate of one client's share (integer units; discrete
            Gaussian: its sigma parameter).
        shares_present: survivors, whose shares all reach the sum.
        shares_guaranteed: ``survivors - 1 - colluders``: shares that protect a client
            against the server colluding with ``colluders`` clients.
        sigma_present: std per coordinate of the noise in the sum, ``sqrt(shares_present) *
            sigma_client`` (integer units): protects against anyone who sees only the release.
        sigma_guaranteed: ``sqrt(shares_guaranteed) * sigma_client`` (integer units).
        sigma_present_model / sigma_guaranteed_model: the same divided by ``scale``.
        noise_multiplier_release: ``sigma_present / l2_sensitivity``.
        noise_multiplier_server: ``sigma_guaranteed / l2_sensitivity``.
        colluders: colluding clients assumed; scale: integer units per model unit.
    """

    mechanism: str
    dim: int
    l2_sensitivity: float
    l1_sensitivity: float
    sigma_client: float
    shares_present: int
    shares_guaranteed: int
    sigma_present: float
    sigma_guaranteed: float
    sigma_present_model: float
    sigma_guaranteed_model: float
    noise_multiplier_release: float
    noise_multiplier_server: float
    colluders: int
    scale: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class DistributedPlan:
    """Parameters of one distributed-DP configuration; build it with :func:`plan_distributed`.

    Attributes:
        clients_expected: most clients whose vectors are summed (the modular-clipping bound
            covers this many).
        min_clients: cohort floor, the fewest survivors the protocol will unmask.
        colluders: clients assumed to collude with the server.
        dim: model dimension ``d``; ``layout`` its Hadamard block layout.
        clip_norm: L2 clip of each update (model units).
        noise_multiplier: target guaranteed noise / L2 sensitivity at the cohort floor.
        mechanism: ``"discrete_gaussian"`` or ``"skellam"``.
        bits: ring width; vectors live in Z_{2^bits}.
        scale: integer units per model unit.
        rounding_beta: ``beta`` of the conditional rounding bound.
        l2_sensitivity: conditional rounding norm bound (integer units).
        sigma_client: std per coordinate of one client's noise share (integer units).
        mu_client: Skellam parameter of one share (``sigma_client^2 / 2``), None otherwise.
        modular_clip_prob: achieved bound on the probability that the sum wraps.
        modular_clip_target: the allowed probability the plan was made for.
        max_rounding_attempts: cap on conditional rounding retries.
    """

    clients_expected: int
    min_clients: int
    colluders: int
    dim: int
    layout: BlockLayout
    clip_norm: float
    noise_multiplier: float
    mechanism: str
    bits: int
    scale: float
    rounding_beta: float
    l2_sensitivity: float
    sigma_client: float
    mu_client: float | None
    modular_clip_prob: float
    modular_clip_target: float
    max_rounding_attempts: int = 100
    _noise: DiscreteGaussian | Skellam = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = check_int("clients_expected", self.clients_expected, low=2, high=MAX_COUNT)
        m = check_int("min_clients", self.min_clients, low=2, high=MAX_COUNT)
        c = check_int("colluders", self.colluders, low=0, high=MAX_COUNT)
        if not (c + 2 <= m <= n):
            raise DPValueError(f"need colluders + 2 <= min_clients <= clients_expected, got {c}, {m}, {n}")
        dim = check_int("dim", self.dim, low=1, high=MAX_COUNT)
        if not isinstance(self.layout, BlockLayout) or self.layout.dim != dim:
            raise DPValueError("layout must be a BlockLayout for dim")
        _check_float("clip_norm", self.clip_norm, high=math.inf)
        _check_float("noise_multiplier", self.noise_multiplier)
        mech = _check_mechanism(self.mechanism)
        check_int("bits", self.bits, low=_MIN_EXPLICIT_BITS, high=MAX_COUNT)
        if self.bits > _MAX_EXPLICIT_BITS:
            raise DPValueError(f"bits must be <= {_MAX_EXPLICIT_BITS}, got {self.bits}")
        _check_float("scale", self.scale)
        beta = _check_float("rounding_beta", self.rounding_beta, high=1.0, open_low=False)
        l2 = _check_float("l2_sensitivity", self.l2_sensitivity)
        if l2 < rounded_norm_bound(self.clip_norm * self.scale, self.layout.padded_dim, beta) * (1 - 1e-9):
            raise DPValueError("l2_sensitivity is below the conditional rounding bound for this scale")
        sig = _check_float("sigma_client", self.sigma_client)
        if math.sqrt(m - 1 - c) * sig < self.noise_multiplier * l2 * (1 - 1e-9):
            raise DPValueError("sigma_client does not meet noise_multiplier at the cohort floor")
        if mech == "skellam":
            mu = _check_float("mu_client", self.mu_client)
            if not math.isclose(2.0 * mu, sig * sig, rel_tol=1e-9):
                raise DPValueError("mu_client must equal sigma_client^2 / 2")
            noise: DiscreteGaussian | Skellam = Skellam(mu)
        else:
            if self.mu_client is not None:
                raise DPValueError("mu_client is only for the skellam mechanism")
            noise = DiscreteGaussian(sig)
        _check_float("modular_clip_prob", self.modular_clip_prob, high=1.0 + 1e-12, open_low=False)
        _check_float("modular_clip_target", self.modular_clip_target, high=1.0)
        if self.modular_clip_prob > self.modular_clip_target:
            raise DPValueError("modular_clip_prob exceeds modular_clip_target")
        check_int("max_rounding_attempts", self.max_rounding_attempts, low=1, high=MAX_COUNT)
        object.__setattr__(self, "_noise", noise)

    # -- derived figures ------------------------------------------------------------------

    @property
    def padded_dim(self) -> int:
        """Length of each uploaded vector (``dim`` plus the rotation's padding)."""
        return self.layout.padded_dim

    @property
    def block_size(self) -> int:
        """Hadamard block size of the rotation."""
        return self.layout.block_size

    @property
    def upload_bytes(self) -> int:
        """Bytes of one bit-packed client vector, ``ceil(padded_dim * bits / 8)``."""
        return -(-self.padded_dim * self.bits // 8)

    @property
    def rounding_inflation(self) -> float:
        """``l2_sensitivity / (clip_norm * scale) - 1``: how much rounding inflates the sensitivity
        (and so the noise needed) relative to a central mechanism with sensitivity ``clip_norm``."""
        return self.l2_sensitivity / (self.clip_norm * self.scale) - 1.0

    @property
    def noise(self) -> DiscreteGaussian | Skellam:
        """The mechanism sampling one client's share (integer units)."""
        return self._noise

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the plan; :meth:`from_dict` rebuilds an equal plan from it.

        The layout is flattened to ``block_size`` (with ``dim``); ``padded_dim`` and
        ``rounding_inflation`` are included for readers (ledger headers, logs) and checked
        against the other fields on the way back.
        """
        out: dict[str, Any] = {k: getattr(self, k) for k in _PLAN_FIELDS}
        out["block_size"] = self.block_size
        out["padded_dim"] = self.padded_dim
        out["rounding_inflation"] = self.rounding_inflation
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DistributedPlan:
        """Rebuild a plan from :meth:`to_dict` output (e.g. after a JSON round trip), validated.

        Raises:
            DPTypeError: ``d`` is not a mapping.
            DPValueError: missing or unknown keys, a field of the wrong type or out of range,
                inconsistent fields (as the constructor checks them), or ``padded_dim`` /
                ``rounding_inflation`` that do not follow from the others.
        """
        if not isinstance(d, Mapping):
            raise DPTypeError(f"a distributed-DP plan dict must be a mapping, got {type(d).__name__}")
        want = {*_PLAN_FIELDS, *_PLAN_DERIVED}
        missing, unknown = sorted(want - set(d)), sorted(set(d) - want)
        if missing or unknown:
            raise DPValueError(
                f"not a DistributedPlan.to_dict() document: missing keys {missing}, unknown keys {unknown}"
            )
        try:
            layout = BlockLayout(
                check_int("dim", d["dim"], low=1, high=MAX_COUNT),
                check_int("block_size", d["block_size"], low=1, high=MAX_COUNT),
            )
            plan = cls(layout=layout, **{k: d[k] for k in _PLAN_FIELDS})
        except DPTypeError as exc:
            raise DPValueError(f"invalid distributed-DP plan: {exc}") from exc
        padded, inflation = d["padded_dim"], d["rounding_inflation"]
        if (
            isinstance(padded, bool)
            or not isinstance(padded, int)
            or padded != plan.padded_dim
            or isinstance(inflation, bool)
            or not isinstance(inflation, (int, float))
            or not math.isclose(inflation, plan.rounding_inflation, rel_tol=1e-9, abs_tol=1e-15)
        ):
            raise DPValueError(
                f"padded_dim ({d['padded_dim']!r}) or rounding_inflation ({d['rounding_inflation']!r}) does not "
                f"follow from the plan's fields ({plan.padded_dim}, {plan.rounding_inflation}); the document was edited"
            )
        return plan

    # -- client ---------------------------------------------------------------------------

    def _rotation(self, round_seed: bytes) -> HadamardRotation:
        return HadamardRotation(self.layout, round_seed)

    def encode(
        self, update: npt.ArrayLike, round_seed: bytes, rng: RngLike = None
    ) -> npt.NDArray[np.uint32] | npt.NDArray[np.uint64]:
        """Client side: turn one update into its noised vector in Z_{2^bits}.

        Args:
            update: any-shape real array with ``dim`` elements (model units); flattened.
            round_seed: the round's public seed (same for every client and the server).
            rng: randomness for rounding and noise (default: a fresh CSPRNG; the noise must
                stay secret from the server, so never pass a guessable seed in production).

        Returns:
            ``(padded_dim,)`` array of ``ring_dtype(bits)`` with values in [0, 2^bits), ready
            for masking.

        Raises:
            DPValueError: wrong size, NaN or infinity in ``update``.
            DPError: conditional rounding hit ``max_rounding_attempts``.
        """
        arr = np.asarray(update)
        if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
            raise DPTypeError(f"update must be a real numeric array, got dtype {arr.dtype}")
        if arr.size != self.dim:
            raise DPValueError(f"update has {arr.size} elements, the plan is for dim={self.dim}")
        flat = arr.astype(np.float64).reshape(-1)
        bad = ~np.isfinite(flat)
        if bad.any():
            n_nan = int(np.isnan(flat).sum())
            n_inf = int(bad.sum()) - n_nan
            first = int(np.flatnonzero(bad)[0])
            raise DPValueError(
                f"update contains {n_nan} NaN and {n_inf} infinite value(s) (first at flat index {first}); "
                "repair or drop this client's update before encoding"
            )
        rotation = self._rotation(round_seed)  # validates the seed before any randomness is drawn
        src: RandomSource = as_random_source(rng)
        clipped, _ = clip_l2(flat, self.clip_norm)
        y = rotation.rotate(clipped)
        y *= self.scale
        rounded = conditional_round(y, self.l2_sensitivity, src, self.max_rounding_attempts)
        noise = np.asarray(self._noise.sample(self.padded_dim, rng=src), dtype=np.int64)
        rounded += noise
        return wrap(rounded, self.bits)

    # -- server ---------------------------------------------------------------------------

    def decode(self, total: npt.ArrayLike, round_seed: bytes) -> npt.NDArray[np.float64]:
        """Server side: the unmasked modular sum -> noised SUM of the clipped updates.

        Args:
            total: ``(padded_dim,)`` integers in [0, 2^bits), the sum mod 2^bits of the
                survivors' :meth:`encode` outputs.
            round_seed: the round's public seed.

        Returns:
            ``(dim,)`` float64, model units: sum of the survivors' clipped updates plus their
            noise. Divide by the (public) number of survivors for a mean.
        """
        arr = np.asarray(total)
        if arr.dtype.kind not in "iu":
            raise DPTypeError(f"total must be an integer array, got dtype {arr.dtype}")
        if arr.shape != (self.padded_dim,):
            raise DPValueError(f"total must have shape ({self.padded_dim},), got {arr.shape}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > (1 << self.bits) - 1):
            raise DPValueError(f"total must hold values in [0, 2^{self.bits}); reduce the sum modulo 2^{self.bits}")
        rotation = self._rotation(round_seed)
        lifted = centered_lift(arr.astype(ring_dtype(self.bits)), self.bits)
        y = np.asarray(lifted, dtype=np.float64) / self.scale
        return rotation.inverse(y)

    # -- accounting -----------------------------------------------------------------------

    def noise_report(self, survivors: int) -> NoiseReport:
        """Noise present and guaranteed for a round with ``survivors`` clients in the sum.

        Raises:
            DPValueError: ``survivors`` below ``min_clients`` (the protocol must not unmask) or
                above ``clients_expected`` (outside the modular-clipping bound).
        """
        m = check_int("survivors", survivors, low=1, high=MAX_COUNT)
        if not self.min_clients <= m <= self.clients_expected:
            raise DPValueError(
                f"survivors={m} is outside [min_clients={self.min_clients}, clients_expected={self.clients_expected}]: "
                "the protocol must not unmask below the cohort floor, and the plan does not cover more clients"
            )
        k = m - 1 - self.colluders
        sig = self.sigma_client
        present = math.sqrt(m) * sig
        guaranteed = math.sqrt(k) * sig
        l2 = self.l2_sensitivity
        return NoiseReport(
            mechanism=self.mechanism,
            dim=self.padded_dim,
            l2_sensitivity=l2,
            l1_sensitivity=min(math.sqrt(self.padded_dim) * l2, l2 * l2),
            sigma_client=sig,
            shares_present=m,
            shares_guaranteed=k,
            sigma_present=present,
            sigma_guaranteed=guaranteed,
            sigma_present_model=present / self.scale,
            sigma_guaranteed_model=guaranteed / self.scale,
            noise_multiplier_release=present / l2,
            noise_multiplier_server=guaranteed / l2,
            colluders=self.colluders,
            scale=self.scale,
        )


#: The constructor arguments of :class:`DistributedPlan` stored by :meth:`DistributedPlan.to_dict`
#: (besides ``block_size``, which with ``dim`` gives the layout).
_PLAN_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(DistributedPlan) if f.init and f.name != "layout"
)
#: Derived figures :meth:`DistributedPlan.to_dict` adds (``block_size`` is stored, the rest checked).
_PLAN_DERIVED: tuple[str, ...] = ("block_size", "padded_dim", "rounding_inflation")


# --------------------------------------------------------------------------- the planner


@dataclass(frozen=True)
class _Candidate:
    layout: BlockLayout
    bits: int
    scale: float
    l2: float
    sigma: float
    prob: float


def _noise_for(l2: float, z: float, shares: int, mechanism: str) -> tuple[float, float]:
    """(sigma_client, noise parameter) meeting ``sqrt(shares) * sigma >= z * l2``."""
    sigma = z * l2 / math.sqrt(shares)
    if mechanism == "skellam":
        return sigma, sigma * sigma / 2.0
    return sigma, sigma


class _Problem:
    def __init__(
        self, *, n: int, shares: int, clip: float, z: float, mechanism: str, beta: float, target: float
    ) -> None:
        self.n, self.shares, self.clip, self.z = n, shares, clip, z
        self.mechanism, self.beta, self.target = mechanism, beta, target

    def evaluate(self, layout: BlockLayout, bits: int, scale: float) -> tuple[float, float, float]:
        """(l2, sigma_client, modular-clip bound) at this scale."""
        l2 = rounded_norm_bound(self.clip * scale, layout.padded_dim, self.beta)
        sigma, param = _noise_for(l2, self.z, self.shares, self.mechanism)
        prob = modular_clip_probability(
            bits=bits,
            clients=self.n,
            scaled_clip=self.clip * scale,
            block_size=layout.block_size,
            padded_dim=layout.padded_dim,
            mechanism=self.mechanism,  # type: ignore[arg-type]
            noise=param,
            rounding_beta=self.beta,
        )
        return l2, sigma, prob

    def feasible(self, layout: BlockLayout, bits: int, scale: float) -> bool:
        """Meets the clipping target, with a share the samplers accept (sigma <= 2^40, mu <= 2^48)."""
        _, sigma, prob = self.evaluate(layout, bits, scale)
        in_range = sigma * sigma / 2.0 <= MAX_MU if self.mechanism == "skellam" else sigma <= MAX_SCALE
        return prob <= self.target and in_range

    def max_scale(self, layout: BlockLayout, bits: int) -> float | None:
        """Largest scale meeting the clipping target at ``bits`` (None: not even scale -> 0)."""
        if not self.feasible(layout, bits, 0.0):
            return None
        lo, hi = 0.0, float(2 ** (bits - 1)) / self.clip
        for _ in range(2100):
            if not self.feasible(layout, bits, hi):
                break
            lo, hi = hi, hi * 2.0
        for _ in range(200):
            mid = (lo + hi) / 2.0
            if mid <= lo or mid >= hi:
                break
            if self.feasible(layout, bits, mid):
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-12 * hi:
                break
        return lo if lo > 0.0 else None

    def min_scale_for_overhead(self, layout: BlockLayout, overhead: float) -> float:
        """Smallest scale with ``l2(scale) <= (1 + overhead) * clip * scale``."""

        def ok(s: float) -> bool:
            return rounded_norm_bound(self.clip * s, layout.padded_dim, self.beta) <= (1.0 + overhead) * self.clip * s

        hi = 1.0 / self.clip
        while not ok(hi):
            hi *= 2.0
        lo = hi
        while ok(lo) and lo > 1e-300:
            lo /= 2.0
        for _ in range(200):
            mid = (lo + hi) / 2.0
            if ok(mid):
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-12 * hi:
                break
        return hi


def plan_distributed(
    *,
    clients_expected: int,
    min_clients: int,
    colluders: int,
    dim: int,
    clip_norm: float,
    noise_multiplier: float,
    mechanism: Mechanism = "discrete_gaussian",
    bits: int | None = None,
    modular_clip_prob: float = 1e-6,
    rounding_beta: float = DEFAULT_ROUNDING_BETA,
    rounding_overhead: float = 0.01,
    max_padding: float = DEFAULT_MAX_PADDING,
    block_size: int | None = None,
    max_rounding_attempts: int = 100,
) -> DistributedPlan:
    """Choose bits, scale, rounding bound and per-client noise for distributed DP.

    Args:
        clients_expected: most clients whose vectors can be summed (cohort size); the
            modular-clipping bound covers all of their signal, rounding and noise.
        min_clients: cohort floor ``m_min``: the fewest survivors the protocol will unmask.
        colluders: clients ``c`` assumed to collude with the server (they can subtract their
            own shares).
        dim: model dimension ``d`` (number of floats in an update).
        clip_norm: L2 clip of each update, model units.
        noise_multiplier: target ``z``: guaranteed noise std / L2 sensitivity against the
            server with ``c`` colluders at ``m_min`` survivors, i.e. ``m_min - 1 - c`` shares
            (add/remove adjacency).
        mechanism: ``"discrete_gaussian"`` (Kairouz et al. 2021) or ``"skellam"`` (Agarwal et
            al. 2021).
        bits: ring width. ``None``: the smallest width in :data:`AUTO_BITS_RANGE` (8 to 32)
            that meets ``modular_clip_prob`` with the rounding inflation of the sensitivity at
            most ``rounding_overhead``. Explicit: 2 to 64; the scale is then the largest
            meeting ``modular_clip_prob``.
        modular_clip_prob: allowed probability that some coordinate of the sum wraps.
        rounding_beta: ``beta`` of the conditional rounding bound (each rounding attempt
            fails with probability at most ``beta``).
        rounding_overhead: for ``bits=None``, largest allowed ``l2_sensitivity / (clip_norm *
            scale) - 1``, i.e. extra noise std relative to central DP with the same clip.
        max_padding: largest padding of the rotation, as a fraction of ``dim``; among the
            allowed power-of-two block layouts the planner takes the one with the smallest
            upload (``padded_dim * bits``), then the largest scale.
        block_size: force this Hadamard block size (power of two) instead.
        max_rounding_attempts: cap on conditional rounding retries per encode.

    Returns:
        A frozen :class:`DistributedPlan`.

    Raises:
        DPValueError: invalid arguments, or no bit width can hold the sum (the message says
            which width would).
    """
    n = check_int("clients_expected", clients_expected, low=2, high=MAX_COUNT)
    m = check_int("min_clients", min_clients, low=2, high=MAX_COUNT)
    c = check_int("colluders", colluders, low=0, high=MAX_COUNT)
    if m > n:
        raise DPValueError(f"min_clients={m} exceeds clients_expected={n}")
    if m - 1 - c < 1:
        raise DPValueError(
            f"with min_clients={m} and colluders={c} no honest client's noise protects another "
            "(need min_clients >= colluders + 2); raise min_clients or lower colluders"
        )
    d = check_int("dim", dim, low=1, high=MAX_COUNT)
    clip = _check_float("clip_norm", clip_norm)
    z = _check_float("noise_multiplier", noise_multiplier)
    mech = _check_mechanism(mechanism)
    if bits is not None:
        bits = check_int("bits", bits, low=_MIN_EXPLICIT_BITS, high=MAX_COUNT)
        if bits > _MAX_EXPLICIT_BITS:
            raise DPValueError(f"bits must be <= {_MAX_EXPLICIT_BITS}, got {bits}")
    target = _check_float("modular_clip_prob", modular_clip_prob, high=1.0)
    beta = _check_float("rounding_beta", rounding_beta, high=1.0, open_low=False)
    overhead = _check_float("rounding_overhead", rounding_overhead)
    attempts = check_int("max_rounding_attempts", max_rounding_attempts, low=1, high=MAX_COUNT)
    layouts = [choose_layout(d, block_size=block_size)] if block_size is not None else block_layouts(d, max_padding)
    layouts = layouts[:8]  # smaller blocks flatten worse and are never chosen in practice

    prob = _Problem(n=n, shares=m - 1 - c, clip=clip, z=z, mechanism=mech, beta=beta, target=target)
    candidates: list[_Candidate] = []
    for layout in layouts:
        if bits is not None:
            s = prob.max_scale(layout, bits)
            if s is None:
                continue
            chosen_bits = bits
        else:
            s_min = prob.min_scale_for_overhead(layout, overhead)
            lo_b, hi_b = AUTO_BITS_RANGE
            found = next((b for b in range(lo_b, hi_b + 1) if prob.feasible(layout, b, s_min)), None)
            if found is None:
                continue
            s_found = prob.max_scale(layout, found)
            if s_found is None:  # pragma: no cover - feasible at s_min implies feasible at 0
                continue
            s, chosen_bits = s_found, found
        l2, sigma, p = prob.evaluate(layout, chosen_bits, s)
        candidates.append(_Candidate(layout, chosen_bits, s, l2, sigma, p))

    if not candidates:
        layout = layouts[0]
        need = next((b for b in range(2, _MAX_EXPLICIT_BITS + 1) if prob.feasible(layout, b, 0.0)), None)
        hint = (
            f"at least {need} bits are needed for any scale (more for a useful one)"
            if need is not None
            else "no bit width up to 64 can hold it"
        )
        where = f"bits={bits}" if bits is not None else f"no bit width in {AUTO_BITS_RANGE[0]}..{AUTO_BITS_RANGE[1]}"
        raise DPValueError(
            f"{where} cannot hold the sum of {n} clients (dim={d}, noise_multiplier={z}, "
            f"modular_clip_prob={target}{'' if bits is not None else f', rounding_overhead={overhead}'}): {hint}; "
            "pass more bits, fewer clients_expected, a larger modular_clip_prob or rounding_overhead"
        )
    # Smallest upload among the candidates whose rounding inflation is within the overhead
    # (all of them when bits=None); if none is (explicit bits), the best utility.
    good = [k for k in candidates if k.l2 <= (1.0 + overhead) * clip * k.scale]
    if good:
        best = min(good, key=lambda k: (k.layout.padded_dim * k.bits, -k.scale))
    else:
        best = max(candidates, key=lambda k: k.scale)
    sigma_c, param = _noise_for(best.l2, z, m - 1 - c, mech)
    return DistributedPlan(
        clients_expected=n,
        min_clients=m,
        colluders=c,
        dim=d,
        layout=best.layout,
        clip_norm=clip,
        noise_multiplier=z,
        mechanism=mech,
        bits=best.bits,
        scale=best.scale,
        rounding_beta=beta,
        l2_sensitivity=best.l2,
        sigma_client=sigma_c,
        mu_client=param if mech == "skellam" else None,
        modular_clip_prob=best.prob,
        modular_clip_target=target,
        max_rounding_attempts=attempts,
    )
