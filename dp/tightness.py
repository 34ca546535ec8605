"""How much more error the distributed discrete Gaussian costs than a central Gaussian at the same epsilon.

For each cell (target epsilon, sampling, clients n) this module

1. calibrates the *central* continuous Gaussian's noise multiplier for (epsilon, delta) over
   the rounds, once with the RDP accountant and once exactly (``"pld"``: the exact Gaussian
   profile unsampled, dp_accounting's PLD sampled);
2. plans the distributed discrete Gaussian at ``bits`` bits for ``n`` clients in ``dim``
   coordinates (:func:`dp.distributed.plan_distributed`, clip norm 1, no colluders, cohort
   floor n) and calibrates the per-client share with
   :func:`dp.tracker.calibrate_for_server` at the cohort floor: the other ``n - 1`` shares
   count (the library's share-counting rule), unsampled against the server, sampled against
   the release with Poisson amplification -- once with the published RDP bound (``"rdp"``,
   Kairouz-Liu-Steinke, generic amplification) and once with the Gaussian that dominates the
   lattice noise (``"pld"``, :mod:`dp.pld`);
3. compares mean squared errors per coordinate in model units: the distributed aggregate
   carries all ``n`` shares and the rounding, ``n (sigma_share^2 + 1/4) / scale^2`` (1/4
   bounds the variance of one conditional rounding), the central Gaussian
   ``z_central^2``.

The ratios are analytic (variances), not simulated.  ``python -m dp.tightness`` prints the
table that ``docs/accounting.md`` shows; a test recomputes one of its rows.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dp.calibration import calibrate_noise_multiplier
from dp.distributed import plan_distributed
from dp.tracker import calibrate_for_server

__all__ = [
    "EPSILONS",
    "TARGET_VS_PLD",
    "TARGET_VS_RDP",
    "TightnessRow",
    "format_row",
    "tightness_markdown",
    "tightness_row",
    "tightness_table",
]

#: Epsilon targets of the table.
EPSILONS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: Issue 23's targets for the MSE ratio against the RDP- and the exactly calibrated central Gaussian.
TARGET_VS_RDP = 1.05
TARGET_VS_PLD = 1.10


@dataclass(frozen=True)
class TightnessRow:
    """One cell of the tightness table (see the module docstring)."""

    epsilon: float
    clients: int
    sampling_rate: float
    rounds: int
    delta: float
    bits: int
    dim: int
    scale: float
    l2_sensitivity: float
    z_central_rdp: float
    z_central_pld: float
    share_sigma_rdp: float
    share_sigma_pld: float
    epsilon_pld: float

    def mse_ratio(self, share_sigma: float, z_central: float) -> float:
        """MSE of the distributed aggregate / MSE of the central Gaussian."""
        mse = self.clients * (share_sigma**2 + 0.25) / self.scale**2
        return mse / z_central**2

    @property
    def old_vs_rdp(self) -> float:
        """Published RDP bound for the DDG vs the RDP-calibrated central Gaussian."""
        return self.mse_ratio(self.share_sigma_rdp, self.z_central_rdp)

    @property
    def old_vs_pld(self) -> float:
        """Published RDP bound for the DDG vs the exactly calibrated central Gaussian."""
        return self.mse_ratio(self.share_sigma_rdp, self.z_central_pld)

    @property
    def new_vs_rdp(self) -> float:
        """Dominating-Gaussian bound for the DDG vs the RDP-calibrated central Gaussian."""
        return self.mse_ratio(self.share_sigma_pld, self.z_central_rdp)

    @property
    def new_vs_pld(self) -> float:
        """Dominating-Gaussian bound for the DDG vs the exactly calibrated central Gaussian."""
        return self.mse_ratio(self.share_sigma_pld, self.z_central_pld)

    @property
    def meets(self) -> bool:
        """Both of issue 23's targets met with the dominating-Gaussian bound."""
        return self.new_vs_rdp <= TARGET_VS_RDP and self.new_vs_pld <= TARGET_VS_PLD


def tightness_row(
    epsilon: float,
    clients: int,
    sampling_rate: float = 1.0,
    rounds: int = 1,
    *,
    delta: float = 1e-5,
    bits: int = 16,
    dim: int = 2**14,
) -> TightnessRow:
    """Compute one cell (module docstring)."""
    q = float(sampling_rate)
    z_rdp = calibrate_noise_multiplier(epsilon, delta, rounds, q, accountant="rdp")
    z_pld = calibrate_noise_multiplier(epsilon, delta, rounds, q, accountant="pld")
    # plan for a little more noise than the exact central answer: the calibrated shares below
    # carry at most that much, so the plan's modular-clipping bound covers them
    plan = plan_distributed(clients_expected=clients, min_clients=clients, colluders=0, dim=dim, clip_norm=1.0,
                            noise_multiplier=z_pld * 1.01, bits=bits)
    l2 = plan.l2_sensitivity
    kw: dict[str, object] = {} if q == 1.0 else {"against": "release", "sampling_rate": q}
    old = calibrate_for_server(epsilon, delta, rounds, l2_sensitivity=l2, dim=plan.padded_dim,
                               cohort_floor=clients, accountant="rdp", **kw)  # type: ignore[arg-type]
    new = calibrate_for_server(epsilon, delta, rounds, l2_sensitivity=l2, dim=plan.padded_dim,
                               cohort_floor=clients, accountant="pld", **kw)  # type: ignore[arg-type]
    return TightnessRow(float(epsilon), clients, q, rounds, delta, bits, plan.padded_dim, plan.scale, l2,
                        z_rdp, z_pld, old.share_sigma, new.share_sigma, new.epsilon)


#: (sampling rate, rounds) of the two columns of issue 23.
MODES: tuple[tuple[float, int], ...] = ((1.0, 1), (0.01, 1000))


def tightness_table(
    epsilons: tuple[float, ...] = EPSILONS,
    clients: tuple[int, ...] = (10, 100, 1000),
    modes: tuple[tuple[float, int], ...] = MODES,
) -> list[TightnessRow]:
    """Every cell of the table."""
    return [tightness_row(e, n, q, t) for q, t in modes for n in clients for e in epsilons]


HEADER = (
    "| epsilon | sampling | n | DDG bound | z central RDP / exact | MSE ratio vs RDP central | "
    "MSE ratio vs exact central | RDP bound (before): vs RDP / vs exact | targets met |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def format_row(r: TightnessRow) -> str:
    """The markdown line of one cell (what docs/accounting.md shows)."""
    mode = "none, T = 1" if r.sampling_rate == 1.0 else f"q = {r.sampling_rate:g}, T = {r.rounds}"
    bound = ("dominating Gaussian, exact profile" if r.sampling_rate == 1.0
             else "dominating Gaussian, PLD of the sampled Gaussian")
    met = "yes" if r.meets else ("no (" + ", ".join(
        x for x, bad in (("vs RDP", r.new_vs_rdp > TARGET_VS_RDP), ("vs exact", r.new_vs_pld > TARGET_VS_PLD))
        if bad) + ")")
    return (f"| {r.epsilon:g} | {mode} | {r.clients} | {bound} | {r.z_central_rdp:.4f} / {r.z_central_pld:.4f} | "
            f"{r.new_vs_rdp:.3f} | {r.new_vs_pld:.3f} | {r.old_vs_rdp:.3f} / {r.old_vs_pld:.3f} | {met} |")


def tightness_markdown(rows: list[TightnessRow]) -> str:
    """The table as markdown."""
    return "\n".join([HEADER, *(format_row(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    """Print the tightness table (markdown)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--unsampled-only", action="store_true")
    args = ap.parse_args(argv)
    modes = MODES[:1] if args.unsampled_only else MODES
    rows = tightness_table(tuple(args.epsilons), tuple(args.clients), modes)
    print(tightness_markdown(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
