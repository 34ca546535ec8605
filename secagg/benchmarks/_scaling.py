"""Least-squares scaling fits ``cost ~ n^a d^b`` over groups of benchmark rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.benchmarks._row import BenchRow

__all__ = ["ScalingFit", "fit_scaling"]


@dataclass(frozen=True)
class ScalingFit:
    """Least-squares fit ``log y = c + a log n + b log d`` over one group of rows.

    Attributes:
        quantity: the row field fitted (seconds).
        group: ``graph``, ``dropout``, ``stage`` and ``bits`` shared by the rows.
        exponent_n: ``a`` (None when n did not vary); cost grows like n^a.
        exponent_d: ``b`` (None when d did not vary).
        coefficient: ``exp(c)``.
        r2: coefficient of determination on the log scale.
        points: rows used.
    """

    quantity: str
    group: dict[str, Any]
    exponent_n: float | None
    exponent_d: float | None
    coefficient: float
    r2: float
    points: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


_FIT_QUANTITIES = ("client_per_client_s", "server_s", "total_s", "flower_total_s")


def fit_scaling(rows: Iterable[BenchRow], quantities: Sequence[str] = _FIT_QUANTITIES) -> list[ScalingFit]:
    """Fit how each quantity grows with ``n`` and ``d``, per (graph, dropout, stage, bits)
    group with at least three measured rows.  With k fixed (``flower-k20``) the exponent of
    ``n`` is the per-client growth; with ``auto`` it includes k's growth with n."""
    groups: dict[tuple[str, float, str, int], list[BenchRow]] = {}
    for r in rows:
        groups.setdefault((r.graph, r.dropout, r.stage, r.bits), []).append(r)
    out: list[ScalingFit] = []
    for (graph, dropout, stage, bits), members in sorted(groups.items()):
        for q in quantities:
            pts = [(r.n, r.d, getattr(r, q)) for r in members if isinstance(getattr(r, q), (int, float))]
            pts = [(n, d, float(y)) for n, d, y in pts if y is not None and y > 0]
            if len(pts) < 3:
                continue
            ns = {p[0] for p in pts}
            ds = {p[1] for p in pts}
            cols: list[npt.NDArray[np.float64]] = [np.ones(len(pts))]
            if len(ns) > 1:
                cols.append(np.log([p[0] for p in pts]))
            if len(ds) > 1:
                cols.append(np.log([p[1] for p in pts]))
            if len(cols) == 1:
                continue
            a = np.column_stack(cols)
            y = np.log([p[2] for p in pts])
            coef, *_ = np.linalg.lstsq(a, y, rcond=None)
            resid = y - a @ coef
            ss_tot = float(np.sum((y - y.mean()) ** 2))
            r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
            j = 1
            e_n = e_d = None
            if len(ns) > 1:
                e_n, j = float(coef[j]), j + 1
            if len(ds) > 1:
                e_d = float(coef[j])
            group = {"graph": graph, "dropout": dropout, "stage": stage, "bits": bits}
            out.append(ScalingFit(q, group, e_n, e_d, float(math.exp(coef[0])), r2, len(pts)))
    return out
