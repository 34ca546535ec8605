"""One benchmark cell in a fresh Python process: the parent's side (:func:`measure_isolated`,
:func:`measure_flower_isolated`) and the child's entry point.

A fresh process makes the peak memory that cell's alone and lets the parent kill a run
that overruns the time budget.  The child is ``python -m secagg.benchmarks._isolated``;
it prints one JSON line, a :class:`~secagg.benchmarks.BenchRow` or Flower's fields.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secagg.benchmarks._config import BenchConfig
from secagg.benchmarks._measure import Clock, measure, measure_flower
from secagg.benchmarks._memory import MemoryMethod
from secagg.benchmarks._row import BenchRow, row_for

__all__ = ["measure_flower_isolated", "measure_isolated"]

_MODULE = "secagg.benchmarks._isolated"


def _spawn(args: list[str], timeout: float | None) -> tuple[list[str] | None, str]:
    """Run ``python -m secagg.benchmarks._isolated ARGS``; JSON lines of its stdout, or None and why."""
    import secagg

    root = str(Path(secagg.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", _MODULE, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return None, f"killed after {timeout or 0:.0f} s (over the time budget)"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"exit {proc.returncode}: {tail[0]}"
    return lines, ""


def _failure(err: str) -> str:
    return "timeout" if err.startswith("killed") else "error"


def measure_isolated(
    cfg: BenchConfig, timeout: float | None, *, memory: MemoryMethod, keystream_sample: int, clock: Clock
) -> BenchRow:
    """:func:`~secagg.benchmarks.measure` in a fresh process, killed after ``timeout``
    seconds; a failed or killed run is a row with status ``"error"`` or ``"timeout"``."""
    args = ["--one", json.dumps(cfg.to_dict()), "--memory", memory, "--keystream-sample", str(keystream_sample),
            "--clock", clock]
    lines, err = _spawn(args, timeout)
    if lines is None:
        return row_for(cfg, status=_failure(err), note=err)
    return BenchRow.from_dict(json.loads(lines[-1]))


def measure_flower_isolated(cfg: BenchConfig, k: int, t: int, timeout: float | None, *, clock: Clock) -> dict[str, Any]:
    """:func:`~secagg.benchmarks._measure.measure_flower` in a fresh process (as
    :func:`measure_isolated`); returns the ``flower_*`` fields."""
    lines, err = _spawn(["--one", json.dumps(cfg.to_dict()), "--flower-only", f"{k},{t}", "--clock", clock], timeout)
    if lines is None:
        return {"flower_status": _failure(err), "flower_note": err}
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description="measure one configuration")
    ap.add_argument("--one", required=True, help="BenchConfig as JSON")
    ap.add_argument("--memory", default="rss", choices=["rss", "tracemalloc", "none"])
    ap.add_argument("--keystream-sample", type=int, default=1 << 27)
    ap.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    ap.add_argument("--flower-only", default=None, metavar="K,T", help="only Flower's round, with these k and t")
    args = ap.parse_args(argv)
    cfg = BenchConfig.from_dict(json.loads(args.one))
    if args.flower_only:
        k, t = (int(x) for x in args.flower_only.split(","))
        print(json.dumps(measure_flower(cfg, k=k, t=t, clock=args.clock)))
        return 0
    row = measure(cfg, memory=args.memory, keystream_sample=args.keystream_sample, clock=args.clock)
    print(json.dumps(row.to_dict()))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through run_sweep(isolate=True)
    raise SystemExit(_main())
