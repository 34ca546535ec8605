"""What one benchmark cell measured (:class:`BenchRow`), the results' record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from secagg.benchmarks._config import BenchConfig

__all__ = ["ROW_FIELDS", "BenchRow", "row_for"]


@dataclass(frozen=True)
class BenchRow:
    """Everything measured for one configuration (seconds, bytes; None = not measured).

    Seconds are in ``clock`` time: ``"cpu"`` = CPU time of the measuring process
    (``time.process_time``; robust when other work shares the machine) or ``"wall"``.
    Whatever the clock, ``wall_round_s``, ``keystream_wall_s`` and ``flower_wall_s`` are
    wall-clock, and ``x_keystream_wall``/``flower_speedup_wall`` the wall-clock ratios.
    With ``repeats > 1`` the fastest of that many rounds is reported.

    Our round: ``client_s`` is the client work summed over all clients, ``server_s`` the
    server's, ``total_s`` their sum (one process, in sequence, as Flower's figure).
    ``client_per_client_s = client_s / n``; ``mask_stage_per_client_s`` is one surviving
    client's masked-input stage (key agreement with each neighbour, share decryption,
    masking, packing).  ``client_keystream_s`` is the keystream bound for that client's
    masks, and ``masking_efficiency = client_keystream_s / mask_stage_per_client_s``.

    Ratios: ``x_plaintext = total_s / plaintext_s``, ``x_keystream = total_s /
    keystream_s``, ``flower_speedup = flower_total_s / total_s`` (> 1: we are faster);
    ``flower_speedup_protocol`` leaves Flower's quantization out of its time.

    Bytes per client are for a client that completes every stage: the sum over stages of
    that stage's bytes divided by the clients that sent (up) or were sent (down) a message
    in it.  ``float32_bytes = 4 d``, the size of the update as float32.

    ``peak_mem_bytes``: peak memory of our round above the process baseline, measured as
    ``mem_method`` says (``"rss"``: peak resident set size from ``getrusage`` minus the
    resident size before the round, in a fresh process; ``"tracemalloc"``: peak traced
    allocations).  It covers the server's state plus the one client active at a time plus
    the simulator's copy of the result, so it is an upper bound on the server's own peak;
    ``peak_mem_vectors`` divides it by one vector, ``d * itemsize`` bytes.
    """

    n: int
    d: int
    dropout: float
    stage: str
    graph: str
    bits: int
    status: str = "ok"
    note: str = ""
    k: int | None = None
    t: int | None = None
    survivors: int | None = None
    recovered: int | None = None
    correct: bool | None = None
    clock: str = "cpu"
    repeats: int = 1
    client_s: float | None = None
    server_s: float | None = None
    total_s: float | None = None
    wall_round_s: float | None = None
    client_per_client_s: float | None = None
    mask_stage_per_client_s: float | None = None
    plaintext_s: float | None = None
    mask_bytes: int | None = None
    keystream_s: float | None = None
    keystream_wall_s: float | None = None
    keystream_gbps: float | None = None
    client_keystream_s: float | None = None
    masking_efficiency: float | None = None
    masker_s: float | None = None
    masker_efficiency: float | None = None
    x_plaintext: float | None = None
    x_keystream: float | None = None
    x_keystream_wall: float | None = None
    up_per_client: float | None = None
    down_per_client: float | None = None
    masked_up_per_client: float | None = None
    float32_bytes: int | None = None
    peak_mem_bytes: int | None = None
    peak_mem_vectors: float | None = None
    mem_method: str = "none"
    flower_status: str = "not run"
    flower_note: str = ""
    flower_k: int | None = None
    flower_t: int | None = None
    flower_client_s: float | None = None
    flower_server_s: float | None = None
    flower_total_s: float | None = None
    flower_wall_s: float | None = None
    flower_quantize_s: float | None = None
    flower_correct: bool | None = None
    flower_up_per_client: float | None = None
    flower_down_per_client: float | None = None
    flower_speedup: float | None = None
    flower_speedup_protocol: float | None = None
    flower_speedup_wall: float | None = None
    predicted_s: float | None = None
    predicted_flower_s: float | None = None
    wall_s: float | None = None

    @property
    def config(self) -> BenchConfig:
        """The configuration of this row."""
        return BenchConfig(self.n, self.d, self.dropout, self.stage, self.graph, self.bits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRow:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


#: Column order of the CSV output.
ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(BenchRow))


def row_for(cfg: BenchConfig, **values: Any) -> BenchRow:
    """A row of ``cfg`` with ``values`` (the other fields at their defaults)."""
    return BenchRow(cfg.n, cfg.d, cfg.dropout, cfg.stage, cfg.graph, cfg.bits, **values)
