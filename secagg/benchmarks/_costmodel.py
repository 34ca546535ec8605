"""A cost model of a round fitted on measured rounds, extrapolated to n = 10^6.

:func:`measure_scale` runs single-process rounds at growing ``n`` (the threat model's
``k`` and ``t`` from :func:`secagg.simulate.make_config`, 10 % dropout after share-keys)
and records, in CPU seconds, the mean per-client protocol time and the server time.
:func:`fit_cost_model` fits, by non-negative least squares,

* per client:  ``a * k + b * (k + 1) * d + c``  (key agreement, share encryption and
  Shamir per neighbour; one self and ``k`` pairwise masks of ``d`` words; constant), and
* server:      ``e * n + f * n * t + g * (n + m * k) * d``  (per-client messages; Shamir
  reconstruction of ``t``-share secrets per client; the survivors' self masks and the
  ``m`` dropped clients' ``k`` pairwise masks expanded over ``d`` words),

and :func:`predict` evaluates it for any ``(n, d)`` with the chooser's ``k`` and ``t``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.simulate import make_config, simulate_round

__all__ = ["CostModel", "fit_cost_model", "measure_scale", "predict"]

_DROPOUT = 0.1


@dataclass(frozen=True)
class CostModel:
    """Coefficients of the fitted model (seconds per unit; see the module docstring)."""

    client_per_neighbour: float
    client_per_mask_word: float
    client_constant: float
    server_per_client: float
    server_per_client_share: float
    server_per_mask_word: float
    points: int
    client_r2: float
    server_r2: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _same(vec: npt.NDArray[np.uint32], i: int) -> npt.NDArray[np.uint32]:
    return vec


def _kt(n: int) -> tuple[int, int]:
    cfg, _ = make_config(n, 1, 32, dropout_fraction=_DROPOUT, rng=0)
    return (n - 1 if cfg.complete else cfg.degree), cfg.t


def measure_scale(ns: Sequence[int] = (50, 100, 200, 500, 1000, 2000), ds: Sequence[int] = (10**3, 10**5),
                  *, seed: int = 0, budget: float = 300.0) -> list[dict[str, Any]]:
    """Measured rounds for every ``(n, d)`` (CPU seconds), cheapest first, until
    ``budget`` CPU seconds are spent."""
    rows: list[dict[str, Any]] = []
    spent = 0.0
    for n in sorted(ns):
        for d in sorted(ds):
            if spent > budget:
                break
            vec = np.ones(d, dtype=np.uint32)
            m = max(1, round(_DROPOUT * n))
            drop = {"masked_input": list(range(0, n, max(1, n // m)))[:m]}
            c0 = time.process_time()
            res = simulate_round(functools.partial(_same, vec), 32, None, None, drop, seed, n=n, d=d,
                                 dropout_fraction=_DROPOUT)
            total = time.process_time() - c0
            spent += total
            client = res.timings["total"]["client"]
            rows.append({"n": n, "d": d, "k": res.k, "t": res.t, "dropped": len(drop["masked_input"]),
                         "client_per_client_s": client / n, "server_s": total - client, "total_s": total,
                         "correct": int(res.aggregate[0]) == len(res.survivors)})
    return rows


def _design(n: int, d: int, k: int, t: int, m: int) -> tuple[list[float], list[float]]:
    return [k, (k + 1) * d, 1.0], [n, n * t, (n - m + m * k) * d]


def _r2(a: np.ndarray, y: np.ndarray, coef: np.ndarray) -> float:
    resid = np.log(np.maximum(a @ coef, 1e-12)) - np.log(y)
    tot = float(np.sum((np.log(y) - np.log(y).mean()) ** 2))
    return 1.0 - float(np.sum(resid**2)) / tot if tot > 0 else 1.0


def fit_cost_model(rows: Sequence[dict[str, Any]]) -> CostModel:
    """Non-negative least squares on relative errors (each row weighted by 1/y)."""
    from scipy.optimize import nnls

    ac, yc, as_, ys = [], [], [], []
    for r in rows:
        c, s = _design(r["n"], r["d"], r["k"], r["t"], r["dropped"])
        ac.append(c)
        yc.append(r["client_per_client_s"])
        as_.append(s)
        ys.append(r["server_s"])
    a1, y1, a2, y2 = np.array(ac), np.array(yc), np.array(as_), np.array(ys)
    c1, _ = nnls(a1 / y1[:, None], np.ones(len(y1)))
    c2, _ = nnls(a2 / y2[:, None], np.ones(len(y2)))
    return CostModel(float(c1[0]), float(c1[1]), float(c1[2]), float(c2[0]), float(c2[1]), float(c2[2]),
                     points=len(rows), client_r2=_r2(a1, y1, c1), server_r2=_r2(a2, y2, c2))


def predict(model: CostModel, n: int, d: int) -> dict[str, Any]:
    """Predicted per-client and server CPU seconds at ``(n, d)`` with the chooser's k, t."""
    k, t = _kt(n)
    m = max(1, round(_DROPOUT * n))
    c, s = _design(n, d, k, t, m)
    client = model.client_per_neighbour * c[0] + model.client_per_mask_word * c[1] + model.client_constant * c[2]
    server = model.server_per_client * s[0] + model.server_per_client_share * s[1] + model.server_per_mask_word * s[2]
    return {"n": n, "d": d, "k": k, "t": t, "client_per_client_s": client, "server_s": server}
