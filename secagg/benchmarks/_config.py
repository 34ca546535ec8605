"""The workload of one benchmark cell (:class:`BenchConfig`) and the grid of them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from secagg.benchmarks._validate import check_choice, check_fraction, check_int
from secagg.simulate import STAGES

__all__ = ["GRAPHS", "BenchConfig", "grid"]

#: ``"flower-k20"`` = SecAgg+ with ``k = min(20, n - 1)`` neighbours (Flower's examples),
#: ``"auto"`` = SecAgg+ with ``k`` and ``t`` from the threat model
#: (:func:`secagg.graph.choose_parameters` with the dropout fraction), ``"complete"`` =
#: every client a neighbour (classic SecAgg).
GRAPHS: tuple[str, ...] = ("flower-k20", "auto", "complete")
_FLOWER_K = 20


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration.

    Attributes:
        n: clients.
        d: vector length.
        dropout: fraction of the clients that go silent, all at ``stage``.
        stage: the stage they drop before (``"advertise_keys"``, ``"share_keys"``,
            ``"masked_input"`` = after sharing keys, ``"unmasking"``).
        graph: one of :data:`GRAPHS`.
        bits: ring bit width of our round (Flower always works mod 2^32 on int64 values).
        flower: also run Flower's SecAgg+ on the same workload.
        seed: seeds the inputs, the dropouts and our protocol's randomness.
        repeats: run both rounds this many times (alternately) and keep the fastest.
    """

    n: int
    d: int
    dropout: float = 0.1
    stage: str = "masked_input"
    graph: str = "flower-k20"
    bits: int = 32
    flower: bool = True
    seed: int = 0
    repeats: int = 1

    def __post_init__(self) -> None:
        check_int(self.n, "n", 3)
        check_int(self.d, "d", 1)
        check_choice(self.stage, "stage", STAGES)
        check_choice(self.graph, "graph", GRAPHS)
        check_int(self.bits, "bits", 2, 64)
        check_int(self.repeats, "repeats", 1)
        object.__setattr__(self, "dropout", check_fraction(self.dropout, "dropout"))

    @property
    def neighbors(self) -> int | str | None:
        """The ``neighbors`` argument of :func:`secagg.simulate.simulate_round`."""
        if self.graph == "flower-k20":
            return min(_FLOWER_K, self.n - 1)
        return None if self.graph == "auto" else "all"

    @property
    def dropped(self) -> int:
        """Number of clients that drop, ``round(dropout * n)``."""
        return round(self.dropout * self.n)

    @property
    def label(self) -> str:
        """Short human-readable name."""
        return f"n={self.n} d={self.d} drop={self.dropout:g}@{self.stage} {self.graph} b={self.bits}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def grid(
    clients: Iterable[int],
    dims: Iterable[int],
    dropouts: Iterable[float],
    graphs: Iterable[str],
    *,
    bits: Iterable[int] = (32,),
    stage: str = "masked_input",
    flower: bool = True,
    seed: int = 0,
    repeats: int = 1,
) -> list[BenchConfig]:
    """Every combination, as :class:`BenchConfig` objects (validated)."""
    return [
        BenchConfig(n, d, f, stage, g, b, flower, seed, repeats)
        for n in clients
        for d in dims
        for f in dropouts
        for g in graphs
        for b in bits
    ]
