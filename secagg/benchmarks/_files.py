"""Benchmark output files.

:func:`write_outputs` writes, into one directory::

    results.csv            one row per configuration (every BenchRow field)
    privacy_utility.csv    one row per (mechanism, bits, rounds)
    results.json           everything: machine, command, rows, privacy rows, fits, targets
    results.md             the Markdown tables (configurations, privacy-utility, scaling, targets)
    time_vs_d.png, ratios.png, upload.png, privacy_utility.png   (when matplotlib is installed)
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secagg.benchmarks._plots import plot_all
from secagg.benchmarks._privacy_utility import PrivacyUtilityRow
from secagg.benchmarks._row import ROW_FIELDS, BenchRow
from secagg.benchmarks._scaling import ScalingFit
from secagg.benchmarks._tables import markdown_report
from secagg.benchmarks._targets import TargetCheck

__all__ = ["read_rows_csv", "write_csv", "write_json", "write_outputs"]


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_csv(path: Path, records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``records`` (dicts) as CSV with ``columns`` (None -> empty cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for rec in records:
            w.writerow({k: _cell(rec.get(k)) for k in columns})
    return path


def read_rows_csv(path: Path) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv` (values as strings)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    """Write ``report`` as indented JSON (non-finite floats become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(dict(report)), indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path



def write_outputs(
    out_dir: str | Path,
    rows: Sequence[BenchRow],
    *,
    privacy: Sequence[PrivacyUtilityRow] = (),
    fits: Sequence[ScalingFit] = (),
    targets: Sequence[TargetCheck] = (),
    meta: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write every output file into ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    paths: dict[str, Path] = {}
    paths["csv"] = write_csv(out / "results.csv", [r.to_dict() for r in rows], ROW_FIELDS)
    if privacy:
        cols = list(privacy[0].to_dict())
        paths["privacy_csv"] = write_csv(out / "privacy_utility.csv", [p.to_dict() for p in privacy], cols)
    report = {
        **meta,
        "rows": [r.to_dict() for r in rows],
        "privacy_utility": [p.to_dict() for p in privacy],
        "scaling": [f.to_dict() for f in fits],
        "targets": [t.to_dict() for t in targets],
    }
    paths["json"] = write_json(out / "results.json", report)
    md = out / "results.md"
    md.write_text(markdown_report(rows, privacy, fits, targets, meta), encoding="utf-8")
    paths["markdown"] = md
    if plots:
        for p in plot_all(out, rows, privacy):
            paths[p.stem] = p
    return paths
