"""Auditor's privacy report from a ledger (:mod:`dp.ledger`): HTML, Markdown or JSON, plus a PNG plot.

The report does not trust the figures the training run wrote down.  It

1. verifies the ledger (hash chain, signatures, anchors) and shows the result first;
2. lists the run's parameters from the header;
3. tabulates every round: survivors / sampled clients, the noise present and the noise
   guaranteed against the server, and the recorded cumulative epsilon against both
   adversaries (``release``: anyone seeing only the released model, with amplification by
   client sampling; ``server``: the aggregation server, no amplification, guaranteed noise
   only);
4. **replays** each round's two privacy events (the ``events`` field) through a fresh
   instance of every available accountant (:func:`dp.accountants.available_accountants`)
   and shows epsilon per round per accountant and adversary, as a table and a PNG plot;
   a backend that cannot handle an event is shown as ``n/a`` with the reason;
5. optionally (``audit=``) shows an empirical privacy audit beside the ledger: the
   empirical *lower* bound on epsilon measured with canaries and the accountant's *upper*
   bound for the audited rounds, against the adversary the audit names (see
   :mod:`dp.audit`; :meth:`secagg.audit.CanaryAudit.to_dict` produces the mapping); a lower
   bound above the upper bound is a warning, as is every failure below;
6. warns about: a failed verification (figures then cover only the verified prefix), an
   unanchored tail, an exceeded budget, delta larger than 1/population, rounds whose
   survivors fell below the planned count or the cohort floor, recorded figures that
   disagree with the replay, and self-reported client epsilons (unverifiable claims,
   never accounted).

matplotlib (Agg backend, no display) is imported only when the plot is drawn; without it
the report is written with a warning instead of the plot.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dp.errors import DPValueError, LedgerError
from dp.ledger import LedgerHead, PublicKeyLike, SignedHead, read_ledger, verify_ledger

__all__ = ["AUDIT_FIELDS", "REPORT_FORMATS", "build_report", "save_report", "write_report"]

#: Output formats of :func:`write_report`.
REPORT_FORMATS = ("html", "md", "json")
_PLOT_NAME = "epsilon.png"
_ADVERSARIES = ("release", "server")
_ADV_LABEL = {
    "release": "release (anyone but the server; with sampling amplification)",
    "server": "server (no amplification; guaranteed noise only)",
}
_HIDDEN_HEADER_KEYS = ("prev", "sig", "type")
#: Fields an ``audit`` mapping must have (:func:`build_report`); others are shown as given.
AUDIT_FIELDS = ("epsilon_lower", "epsilon_upper", "delta", "confidence", "adversary")

Figure = float | str | None  # a number, "inf" (unbounded), or None (n/a)


def _fig(x: Any) -> Figure:
    """JSON-safe epsilon: finite float, "inf" for unbounded, None for not available."""
    if x is None:
        return "inf"  # recorded null means unbounded (see dp.ledger)
    v = float(x)
    if math.isnan(v):
        return None
    return "inf" if math.isinf(v) else v


def _num(f: Figure) -> float | None:
    if f is None:
        return None
    return math.inf if f == "inf" else float(f)


def _fmt(f: Figure) -> str:
    if f is None:
        return "n/a"
    if f == "inf":
        return "∞"
    return f"{float(f):.4g}"


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------
def _replay(
    records: Sequence[dict[str, Any]], delta: float, names: Iterable[str] | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Replay every round's events through fresh accountants; return (per-accountant figures, notes)."""
    notes: list[str] = []
    try:
        from dp.accountants import available_accountants, make_accountant
        from dp.events import event_from_dict
    except ImportError as exc:
        return {}, [f"accounting layer not importable ({exc}): no replay; recorded figures are unchecked"]
    wanted = list(available_accountants()) if names is None else list(names)
    out: dict[str, dict[str, Any]] = {}
    for name in wanted:
        entry: dict[str, Any] = {}
        for adv in _ADVERSARIES:
            values: list[Figure] = []
            reason: str | None = None
            unbounded = False
            try:
                acc = make_accountant(name)
            except Exception as exc:  # an optional backend may fail in its own way
                reason = f"cannot create accountant: {type(exc).__name__}: {exc}"
            for rec in records:
                if unbounded:
                    values.append("inf")  # unbounded is absorbing under composition
                    continue
                if reason is not None:
                    values.append(None)
                    continue
                ev = rec["events"][adv]
                if ev is None:
                    unbounded = True
                    reason = f"round {rec['round']} records no {adv} event (no noise guaranteed): epsilon unbounded"
                    values.append("inf")
                    continue
                try:
                    acc.compose(event_from_dict(ev))
                    values.append(_fig(acc.get_epsilon(delta)))
                except Exception as exc:  # report, do not crash: the auditor must see the rest
                    values.append(None)
                    reason = f"n/a from round {rec['round']}: {type(exc).__name__}: {exc}"
            entry[adv] = values
            entry[f"{adv}_note"] = reason
        out[name] = entry
    return out, notes


# --------------------------------------------------------------------------------------------
# empirical audit (optional section)
# --------------------------------------------------------------------------------------------
def _check_audit(audit: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of an audit mapping, its key figures checked."""
    if not isinstance(audit, Mapping):
        raise DPValueError(f"audit must be a mapping (e.g. CanaryAudit.to_dict()), got {type(audit).__name__}")
    missing = [k for k in AUDIT_FIELDS if k not in audit]
    if missing:
        raise DPValueError(f"audit lacks {missing}; it needs {list(AUDIT_FIELDS)}")
    doc = {str(k): v for k, v in audit.items()}
    for key in ("epsilon_lower", "epsilon_upper"):
        v = doc[key]
        if v == "inf":
            v = math.inf
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
            raise DPValueError(f"audit {key} must be a number >= 0 (or 'inf'), got {doc[key]!r}")
        doc[key] = _fig(v)
    for key in ("delta", "confidence"):
        v = doc[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
            raise DPValueError(f"audit {key} must be a number in [0, 1), got {v!r}")
    if not isinstance(doc["adversary"], str) or not doc["adversary"]:
        raise DPValueError("audit adversary must name whom the figures are against")
    try:
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DPValueError(f"audit must be JSON-ready: {exc}") from exc
    return doc


def _audit_failed(doc: Mapping[str, Any]) -> bool:
    lower, upper = _num(doc["epsilon_lower"]), _num(doc["epsilon_upper"])
    return lower is not None and upper is not None and lower > upper


def _audit_warnings(doc: Mapping[str, Any]) -> list[str]:
    if not _audit_failed(doc):
        return []
    return [
        f"EMPIRICAL AUDIT FAILED: the measured lower bound epsilon >= {_fmt_down(doc['epsilon_lower'])} exceeds the "
        f"accountant's epsilon {_fmt(doc['epsilon_upper'])} for the audited rounds (against {doc['adversary']}; "
        f"confidence {float(doc['confidence']):g}): the mechanism leaks more than its accounting says"
    ]


def _fmt_down(f: Figure) -> str:
    """A lower bound to 4 significant digits, rounded down (never shown larger than measured)."""
    v = _num(f)
    if v is None or v == 0.0 or not math.isfinite(v):
        return _fmt(f)
    exp = math.floor(math.log10(abs(v))) - 3
    r = math.floor(v / 10.0**exp)
    while r * 10.0**exp > v:
        r -= 1
    return f"{r * 10.0**exp:.4g}"


def _fmt_up(f: Figure) -> str:
    """An upper bound to 4 significant digits, rounded up (never shown smaller than computed)."""
    v = _num(f)
    if v is None or v == 0.0 or not math.isfinite(v):
        return _fmt(f)
    exp = math.floor(math.log10(abs(v))) - 3
    r = math.ceil(v / 10.0**exp)
    while r * 10.0**exp < v:
        r += 1
    return f"{r * 10.0**exp:.4g}"


_AUDIT_SHOWN = ("epsilon_lower", "epsilon_upper", "delta", "confidence", "adversary")


def _audit_rows(doc: Mapping[str, Any]) -> tuple[str, list[list[str]]]:
    """(status line, rows of the other fields) of the audit section."""
    status = (
        f"{'FAILED' if _audit_failed(doc) else 'Passed'}: empirical lower bound epsilon >= "
        f"{_fmt_down(doc['epsilon_lower'])} (confidence {float(doc['confidence']):g}) beside the accountant's "
        f"epsilon <= {_fmt_up(doc['epsilon_upper'])} for the audited rounds, delta {float(doc['delta']):g}; "
        f"against {doc['adversary']}. A lower bound far below the upper bound is expected from one run "
        "(see docs/audit.md); only a lower bound above it is a finding."
    )
    rows = [[k, json.dumps(v, sort_keys=True)] for k, v in doc.items() if k not in _AUDIT_SHOWN]
    return status, rows


# --------------------------------------------------------------------------------------------
# report data
# --------------------------------------------------------------------------------------------
def _trail_summary(audit: Any) -> str | None:
    """One line on a round's audit trail (what ``secagg verify --alliance`` checks), or None."""
    if not isinstance(audit, Mapping):
        return None
    ads, sigs = audit.get("advertisements"), audit.get("survivor_signatures")
    if not isinstance(ads, list) or not isinstance(sigs, list):
        return "malformed trail"
    if not ads and not sigs:
        return "unsigned (semi-honest)"
    return f"{len(ads)} signed advertisements, {len(sigs)} survivor-set signatures"


def _modes(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Round indices per protocol mode (``active``, ``semi-honest``, ``not recorded``)."""
    out: dict[str, list[int]] = {}
    for r in rows:
        mode = r.get("security_mode")
        key = mode if mode in ("active", "semi-honest") else "not recorded"
        out.setdefault(key, []).append(r["round"])
    return out


_MODE_LABEL = {
    "active": "secure against a malicious server colluding with up to the declared colluders (signed "
    "identities, consistency round, verified shares); contributions verifiable with secagg verify --alliance",
    "semi-honest": "secure only against a server that follows the protocol (explicit opt-in); nothing signed",
    "not recorded": "the record predates the protocol mode field",
}


def _mode_lines(report: dict[str, Any]) -> list[str]:
    return [
        f"{mode}: rounds {', '.join(map(str, rounds))} ({_MODE_LABEL[mode]})"
        for mode, rounds in report.get("modes", {}).items()
    ]


def build_report(
    ledger_path: str | os.PathLike[str],
    expect_head: LedgerHead | str | None = None,
    pubkey: PublicKeyLike | None = None,
    *,
    signed_head: SignedHead | str | os.PathLike[str] | None = None,
    anchors: Iterable[LedgerHead | str] = (),
    accountants: Iterable[str] | None = None,
    audit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Verify and replay a ledger; return the report as a JSON-ready dict (no files written).

    ``accountants`` restricts the replay (default: every available accountant).  Keys:
    ``ledger``, ``verification``, ``parameters``, ``rounds``, ``replay``, ``warnings``, and
    ``audit`` when an empirical audit is given: a mapping with at least
    :data:`AUDIT_FIELDS` (e.g. :meth:`secagg.audit.CanaryAudit.to_dict`), shown as its own
    section; the ledger format is untouched.

    Raises:
        LedgerError: the ledger or a key cannot be read, or an anchor is malformed.
        DPValueError: ``audit`` lacks a field of :data:`AUDIT_FIELDS` or holds a bad figure.
    """
    audit_doc = None if audit is None else _check_audit(audit)
    res = verify_ledger(ledger_path, expect_head, pubkey, signed_head=signed_head, anchors=anchors)
    warnings: list[str] = []
    verification = {**res.to_dict(), "summary": res.summary()}
    report: dict[str, Any] = {
        "ledger": os.fspath(ledger_path),
        "verification": verification,
        "parameters": {},
        "rounds": [],
        "replay": {},
        "warnings": warnings,
    }
    if not res.ok:
        where = "an unknown line" if res.first_bad_line is None else f"line {res.first_bad_line}"
        warnings.append(
            f"LEDGER VERIFICATION FAILED at {where}: {res.reason}. Everything below covers only the "
            f"verified prefix ({max(res.count - 1, 0)} rounds) and must not be relied on."
        )
    elif not res.anchored:
        warnings.append(
            "The ledger's tail is not anchored: removal of trailing rounds would go undetected. "
            f"Compare the head {res.head} with one kept elsewhere (or by clients)."
        )
    if audit_doc is not None:
        report["audit"] = audit_doc
        warnings.extend(_audit_warnings(audit_doc))
    try:
        header, records = read_ledger(ledger_path, strict=False)
    except LedgerError:
        return report  # not even the header verifies: the failure is the report
    if res.ok is False:
        records = records[: max(res.count - 1, 0)]
    report["parameters"] = {k: v for k, v in header.items() if k not in _HIDDEN_HEADER_KEYS}
    delta = float(header["delta"])
    budget = header.get("budget")
    population = header.get("population")
    planned_default = header.get("planned_clients")
    floor = header.get("cohort_floor")

    if population is not None and delta > 1.0 / population:
        warnings.append(
            f"delta = {delta:g} is larger than 1/population = {1.0 / population:g}: a mechanism that "
            "publishes one client's data outright could meet this delta; choose delta << 1/population."
        )

    rows: list[dict[str, Any]] = []
    for rec in records:
        planned = rec.get("planned", planned_default)
        sr = rec.get("self_reported")
        row = {
            "round": rec["round"],
            "round_id": rec["round_id"],
            "sampled": rec["sampled"],
            "survivors": rec["survivors"],
            "planned": planned,
            "noise_present": rec["noise_present"],
            "noise_guaranteed": rec["noise_guaranteed"],
            "epsilon_release": _fig(rec["epsilon"]["release"]),
            "epsilon_server": _fig(rec["epsilon"]["server"]),
            "self_reported_unverified": sr,
            "security_mode": rec.get("security_mode"),
            "signed_trail": _trail_summary(rec.get("audit")),
        }
        rows.append(row)
        if planned is not None and rec["survivors"] < planned:
            warnings.append(f"round {rec['round']}: {rec['survivors']} survivors, below the planned {planned} clients")
        if floor is not None and rec["survivors"] < floor:
            warnings.append(
                f"round {rec['round']}: {rec['survivors']} survivors, below the cohort floor {floor}: the noise "
                "guaranteed against the server was calibrated for more clients"
            )
        if sr:
            vals = [float(v) for v in (sr.values() if isinstance(sr, dict) else sr) if v is not None]
            top = f" (largest {max(vals):.4g})" if vals else ""
            warnings.append(
                f"round {rec['round']}: {len(vals)} client(s) self-reported example-level epsilons{top}; these "
                "are unverifiable claims, not accounted here"
            )
    report["rounds"] = rows
    report["modes"] = _modes(rows)

    for adv in _ADVERSARIES:
        seq = [_num(r[f"epsilon_{adv}"]) for r in rows]
        for i in range(1, len(seq)):
            a, b = seq[i - 1], seq[i]
            if a is not None and b is not None and b < a * (1 - 1e-9):
                warnings.append(
                    f"round {rows[i]['round']}: the recorded cumulative epsilon against the {adv} adversary "
                    f"decreased ({a:.4g} -> {b:.4g}); cumulative figures can only grow"
                )
                break

    replay, notes = _replay(records, delta, accountants)
    report["replay"] = replay
    warnings.extend(notes)

    # budget: recorded figures and every replay
    if budget is not None:
        sources: list[tuple[str, str, list[Figure]]] = [
            ("recorded", adv, [r[f"epsilon_{adv}"] for r in rows]) for adv in _ADVERSARIES
        ]
        sources += [(f"replayed with {n}", adv, e[adv]) for n, e in replay.items() for adv in _ADVERSARIES]
        for label, adv, figs in sources:
            for row, f in zip(rows, figs, strict=True):
                v = _num(f)
                if v is not None and v > float(budget):
                    warnings.append(
                        f"budget exceeded against the {adv} adversary ({label}): epsilon {_fmt(f)} > budget "
                        f"{float(budget):g} from round {row['round']}"
                    )
                    break

    # recorded figures must match a replay with the accountant the run declared
    acc_name = header.get("accountant")
    if acc_name in replay:
        for adv in _ADVERSARIES:
            for row, f in zip(rows, replay[acc_name][adv], strict=True):
                rec_v, rep_v = _num(row[f"epsilon_{adv}"]), _num(f)
                if rec_v is None or rep_v is None:
                    continue
                same = rec_v == rep_v or abs(rec_v - rep_v) <= 1e-6 * max(abs(rep_v), 1e-9)
                if not same:
                    warnings.append(
                        f"round {row['round']}: recorded epsilon against the {adv} adversary ({_fmt(rec_v)}) "
                        f"differs from the replay with '{acc_name}' ({_fmt(rep_v)})"
                    )
                    break
    elif records:
        warnings.append(f"the run's accountant {acc_name!r} is not available here: recorded figures not re-checked")
    return report


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------
def _plot(report: dict[str, Any], path: Path) -> bool:
    """Draw epsilon per round (all accountants, both adversaries) to ``path``; False without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure as MplFigure
    except ImportError:
        return False
    rows = report["rounds"]
    fig = MplFigure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [r["round"] for r in rows]

    def series(figs: Sequence[Figure]) -> tuple[list[int], list[float]]:
        pts = [(x, _num(f)) for x, f in zip(xs, figs, strict=True)]
        ok = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        return [p[0] for p in ok], [float(p[1]) for p in ok]

    styles = {"release": "-", "server": "--"}
    for name, entry in report["replay"].items():
        for adv in _ADVERSARIES:
            px, py = series(entry[adv])
            if px:
                ax.plot(px, py, styles[adv], label=f"{name} · {adv}")
    for adv, marker in (("release", "o"), ("server", "s")):
        px, py = series([r[f"epsilon_{adv}"] for r in rows])
        if px:
            ax.plot(px, py, marker, fillstyle="none", color="black", label=f"recorded · {adv}")
    budget = report["parameters"].get("budget")
    if budget is not None:
        ax.axhline(float(budget), color="red", linewidth=1, label="budget")
    ax.set_xlabel("round")
    ax.set_ylabel(f"cumulative epsilon (delta = {report['parameters'].get('delta', float('nan')):g})")
    ax.set_title("Privacy spent per round: release vs server adversary")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def _tables(report: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(round header, round rows, replay header, replay rows) as plain strings."""
    rh = [
        "round",
        "round id",
        "survivors / sampled",
        "planned",
        "noise present",
        "noise guaranteed",
        "ε release (recorded)",
        "ε server (recorded)",
        "self-reported ε (unverifiable)",
        "protocol mode",
        "signed trail",
    ]
    rr = []
    for r in report["rounds"]:
        sr = r["self_reported_unverified"]
        if sr:
            vals = [v for v in (sr.values() if isinstance(sr, dict) else sr) if v is not None]
            srs = f"{len(vals)} claims, max {max(vals):.4g}" if vals else "-"
        else:
            srs = "-"
        rr.append(
            [
                str(r["round"]),
                str(r["round_id"]),
                f"{r['survivors']} / {r['sampled']}",
                "-" if r["planned"] is None else str(r["planned"]),
                f"{r['noise_present']:.4g}",
                f"{r['noise_guaranteed']:.4g}",
                _fmt(r["epsilon_release"]),
                _fmt(r["epsilon_server"]),
                srs,
                r.get("security_mode") or "not recorded",
                r.get("signed_trail") or "-",
            ]
        )
    names = list(report["replay"])
    ph = ["round"] + [f"{n} · {adv}" for n in names for adv in _ADVERSARIES]
    pr = []
    for i, r in enumerate(report["rounds"]):
        pr.append([str(r["round"])] + [_fmt(report["replay"][n][adv][i]) for n in names for adv in _ADVERSARIES])
    return rh, rr, ph, pr


def _replay_notes(report: dict[str, Any]) -> list[str]:
    out = []
    for n, e in report["replay"].items():
        for adv in _ADVERSARIES:
            if e.get(f"{adv}_note"):
                out.append(f"{n} · {adv}: {e[f'{adv}_note']}")
    return out


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _render_md(report: dict[str, Any], plot: str | None) -> str:
    v = report["verification"]
    out = [f"# Privacy report: `{report['ledger']}`", "", "## Verification", ""]
    out.append(("**Intact.** " if v["ok"] else "**FAILED.** ") + _md_cell(v["summary"]))
    out += ["", "## Warnings", ""]
    out += [f"- {_md_cell(w)}" for w in report["warnings"]] or ["- none"]
    out += ["", "## Parameters", ""]
    out += _md_table(
        ["parameter", "value"], [[k, json.dumps(val, sort_keys=True)] for k, val in report["parameters"].items()]
    )
    out += ["", "## Adversaries", ""]
    out += [f"- **{a}**: {_ADV_LABEL[a]}" for a in _ADVERSARIES]
    rh, rr, ph, pr = _tables(report)
    if report.get("modes"):
        out += ["", "## Protocol mode", ""] + [f"- {_md_cell(line)}" for line in _mode_lines(report)]
    out += ["", "## Rounds (as recorded)", "", *_md_table(rh, rr)]
    out += ["", "## Epsilon per round, replayed from the recorded events", ""]
    if report["replay"]:
        out += _md_table(ph, pr)
        out += [""] + [f"- {_md_cell(n)}" for n in _replay_notes(report)]
    else:
        out.append("No accountant available for the replay.")
    if plot:
        out += ["", f"![epsilon per round, both adversaries, every accountant]({plot})"]
    if report.get("audit") is not None:
        status, rows = _audit_rows(report["audit"])
        out += ["", "## Empirical privacy audit", "", _md_cell(status), "", *_md_table(["field", "value"], rows)]
    return "\n".join(out) + "\n"


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _render_html(report: dict[str, Any], png: bytes | None) -> str:
    v = report["verification"]
    e = html.escape
    status = "ok" if v["ok"] else "bad"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Privacy report: {e(report['ledger'])}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:.2em .5em;text-align:right}.ok{color:#060}.bad{color:#a00;"
        "font-weight:bold}.warn li{color:#840}</style></head><body>",
        f"<h1>Privacy report: <code>{e(report['ledger'])}</code></h1>",
        "<h2>Verification</h2>",
        f'<p class="{status}">{e(v["summary"])}</p>',
        "<h2>Warnings</h2>",
        '<ul class="warn">' + ("".join(f"<li>{e(w)}</li>" for w in report["warnings"]) or "<li>none</li>") + "</ul>",
        "<h2>Parameters</h2>",
        _html_table(
            ["parameter", "value"], [[k, json.dumps(val, sort_keys=True)] for k, val in report["parameters"].items()]
        ),
        "<h2>Adversaries</h2><ul>"
        + "".join(f"<li><b>{a}</b>: {e(_ADV_LABEL[a])}</li>" for a in _ADVERSARIES)
        + "</ul>",
    ]
    rh, rr, ph, pr = _tables(report)
    if report.get("modes"):
        parts.append("<h2>Protocol mode</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in _mode_lines(report)) + "</ul>")
    parts += ["<h2>Rounds (as recorded)</h2>", _html_table(rh, rr)]
    parts.append("<h2>Epsilon per round, replayed from the recorded events</h2>")
    if report["replay"]:
        parts.append(_html_table(ph, pr))
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in _replay_notes(report)) + "</ul>")
    else:
        parts.append("<p>No accountant available for the replay.</p>")
    if png is not None:
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f'<p><img alt="epsilon per round" src="data:image/png;base64,{b64}"></p>')
    if report.get("audit") is not None:
        status, rows = _audit_rows(report["audit"])
        cls = "bad" if _audit_failed(report["audit"]) else "ok"
        parts += ["<h2>Empirical privacy audit</h2>", f'<p class="{cls}">{e(status)}</p>',
                  _html_table(["field", "value"], rows)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def save_report(report: dict[str, Any], out_dir: str | os.PathLike[str], fmt: str = "html") -> Path:
    """Write a :func:`build_report` dict as ``report.<fmt>`` plus ``epsilon.png`` into ``out_dir``.

    ``fmt`` is ``"html"`` (self-contained: the plot is embedded as well as written next to
    it), ``"md"`` (links the PNG next to it) or ``"json"`` (the report dict, with ``"plot"``
    naming the PNG or null).  Adds ``report["plot"]`` (and a warning if matplotlib is
    missing) to ``report``.  Returns the report file's path.

    Raises:
        DPValueError: unknown ``fmt``.
        LedgerError: the directory or a file cannot be written.
    """
    if fmt not in REPORT_FORMATS:
        raise DPValueError(f"fmt must be one of {REPORT_FORMATS}, got {fmt!r}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LedgerError(f"cannot create report directory {os.fspath(out)!r}: {exc}") from exc
    png_path = out / _PLOT_NAME
    try:
        drawn = bool(report["rounds"]) and _plot(report, png_path)
    except OSError as exc:
        raise LedgerError(f"cannot write {os.fspath(png_path)!r}: {exc}") from exc
    if report["rounds"] and not drawn:
        report["warnings"].append("matplotlib is not installed: no plot (install the 'bench' or 'test' extra)")
    report["plot"] = _PLOT_NAME if drawn else None
    if fmt == "json":
        text = json.dumps(report, sort_keys=True, indent=2, allow_nan=False) + "\n"
    elif fmt == "md":
        text = _render_md(report, report["plot"])
    else:
        text = _render_html(report, png_path.read_bytes() if drawn else None)
    target = out / f"report.{fmt}"
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise LedgerError(f"cannot write {os.fspath(target)!r}: {exc}") from exc
    return target


def write_report(
    ledger_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fmt: str = "html",
    expect_head: LedgerHead | str | None = None,
    pubkey: PublicKeyLike | None = None,
    *,
    signed_head: SignedHead | str | os.PathLike[str] | None = None,
    anchors: Iterable[LedgerHead | str] = (),
    accountants: Iterable[str] | None = None,
    audit: Mapping[str, Any] | None = None,
) -> Path:
    """Verify and replay ``ledger_path`` and write ``report.<fmt>`` and ``epsilon.png`` into ``out_dir``.

    Same as :func:`build_report` followed by :func:`save_report`; returns the report's
    path.  A ledger failing verification still gets a report, led by the failure.
    ``audit``: an empirical audit to show as a section (see :func:`build_report`).

    Raises:
        DPValueError: unknown ``fmt`` (checked before anything is read or written).
        LedgerError: the ledger or a key cannot be read, an anchor is malformed, or the
            output cannot be written.
    """
    if fmt not in REPORT_FORMATS:
        raise DPValueError(f"fmt must be one of {REPORT_FORMATS}, got {fmt!r}")
    report = build_report(
        ledger_path, expect_head, pubkey, signed_head=signed_head, anchors=anchors, accountants=accountants,
        audit=audit,
    )
    return save_report(report, out_dir, fmt)
