"""Auditor's report: verification, parameters, replay through every accountant, plot, warnings, CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dp.accountants import available_accountants, make_accountant
from dp.errors import DPValueError
from dp.events import GaussianEvent, PoissonSampledEvent, event_from_dict
from dp.ledger import Ledger, verify_ledger
from dp.report import build_report, save_report, write_report

Q = 0.01  # client sampling rate (release adversary only)
Z_PRESENT, Z_GUARANTEED = 1.2, 0.9


def _events(z_release: float, z_server: float | None) -> dict[str, Any]:
    return {
        "release": PoissonSampledEvent(Q, GaussianEvent(z_release)).to_dict(),
        "server": None if z_server is None else GaussianEvent(z_server).to_dict(),
    }


def write_run(
    path: Path,
    header: dict[str, Any],
    rounds: list[dict[str, Any]],
) -> Ledger:
    """Write a ledger the way a training run does: recorded epsilons from the declared accountant.

    Each item of ``rounds`` may set survivors, planned, self_reported, z_server (None: no
    guarantee against the server) and doctor (a factor applied to the recorded figures).
    """
    led = Ledger.create(path, header, now="2024-05-01T00:00:00Z")
    accs = {adv: make_accountant(header["accountant"]) for adv in ("release", "server")}
    unbounded = {"release": False, "server": False}
    for i, spec in enumerate(rounds):
        events = _events(Z_PRESENT, spec.get("z_server", Z_GUARANTEED))
        eps: dict[str, float | None] = {}
        for adv, acc in accs.items():
            if events[adv] is None:
                unbounded[adv] = True
            if unbounded[adv]:
                eps[adv] = None
                continue
            acc.compose(event_from_dict(events[adv]))
            eps[adv] = acc.get_epsilon(header["delta"]) * spec.get("doctor", 1.0)
        survivors = spec.get("survivors", 10)
        rec: dict[str, Any] = {
            "round": i,
            "round_id": f"{i:016x}",
            "sampled": 10,
            "survivors": survivors,
            "dropouts": 10 - survivors,
            "clip_norm": 1.0,
            "mechanism": {"name": "gaussian", "noise_multiplier": Z_PRESENT},
            "noise_present": Z_PRESENT,
            "noise_guaranteed": 0.0 if events["server"] is None else Z_GUARANTEED,
            "epsilon": eps,
            "events": events,
        }
        for key in ("planned", "self_reported"):
            if key in spec:
                rec[key] = spec[key]
        led.append(rec)
    return led


CLEAN_HEADER: dict[str, Any] = {
    "accountant": "rdp",
    "delta": 1e-6,
    "budget": 50.0,
    "population": 100_000,
    "planned_clients": 10,
    "cohort_floor": 8,
    "protocol": {"bits": 32},
}


@pytest.fixture
def clean(tmp_path: Path) -> Ledger:
    return write_run(tmp_path / "clean.jsonl", CLEAN_HEADER, [{} for _ in range(4)])


def make_crafted(path: Path) -> Ledger:
    header = dict(CLEAN_HEADER, delta=1e-3, population=10_000, budget=0.05)
    rounds: list[dict[str, Any]] = [
        {},
        {"survivors": 7},  # below planned (10) and the cohort floor (8)
        {"survivors": 9, "planned": 9, "self_reported": {"client-3": 0.5, "client-8": 2.5}},
        {"doctor": 0.5},  # recorded figures halved: must disagree with the replay
    ]
    return write_run(path, header, rounds)


@pytest.fixture
def crafted(tmp_path: Path) -> Ledger:
    return make_crafted(tmp_path / "crafted.jsonl")


# ------------------------------------------------------------------------------------------
def test_clean_ledger_replays_to_the_recorded_figures(clean: Ledger) -> None:
    rep = build_report(clean.path, expect_head=clean.head)
    assert rep["verification"]["ok"] and rep["verification"]["anchored"]
    assert rep["warnings"] == []
    assert set(rep["replay"]) == set(available_accountants())
    rdp = rep["replay"]["rdp"]
    for row, rel, srv in zip(rep["rounds"], rdp["release"], rdp["server"], strict=True):
        assert rel == pytest.approx(row["epsilon_release"], rel=1e-12)
        assert srv == pytest.approx(row["epsilon_server"], rel=1e-12)
    for name, entry in rep["replay"].items():
        for adv in ("release", "server"):
            assert len(entry[adv]) == 4
            figs = [f for f in entry[adv] if isinstance(f, float)]
            assert figs == sorted(figs), f"{name}/{adv}: cumulative epsilon must not decrease"
        # the server sees who took part and only the guaranteed (smaller) noise: it can never be better off
        for rel, srv in zip(entry["release"], entry["server"], strict=True):
            if isinstance(rel, float) and isinstance(srv, float):
                assert srv > rel


def test_unanchored_ledger_is_flagged(clean: Ledger) -> None:
    rep = build_report(clean.path, accountants=["rdp"])
    assert any("not anchored" in w for w in rep["warnings"])
    assert str(clean.head) in " ".join(rep["warnings"])


@pytest.fixture(scope="module")
def crafted_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ledger, dict[str, Any]]:
    """The crafted ledger and its report, replayed once through every accountant (PLD is slow)."""
    led = make_crafted(tmp_path_factory.mktemp("crafted") / "crafted.jsonl")
    return led, build_report(led.path, expect_head=led.head)


@pytest.mark.parametrize("fmt", ["html", "md", "json"])
def test_report_formats_contain_everything(
    crafted_report: tuple[Ledger, dict[str, Any]], tmp_path: Path, fmt: str
) -> None:
    _, rep = crafted_report
    out = tmp_path / "audit"
    path = save_report(copy.deepcopy(rep), out, fmt)
    assert path == out / f"report.{fmt}" and path.exists()
    png = out / "epsilon.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    text = path.read_text(encoding="utf-8")
    last = rep["rounds"][-1]
    if fmt == "json":
        data = json.loads(text)
        assert data["plot"] == "epsilon.png"
        assert data["verification"]["ok"] is True
        assert data["rounds"][-1]["epsilon_server"] == last["epsilon_server"]
        assert set(data["replay"]) == set(available_accountants())
        warnings = " ".join(data["warnings"])
    else:
        for adv in ("release", "server"):
            assert f"{last['epsilon_' + adv]:.4g}" in text
            assert f"{rep['replay']['rdp'][adv][-1]:.4g}" in text
            for name in available_accountants():
                assert f"{name} · {adv}" in text
        assert "survivors / sampled" in text and "7 / 10" in text
        assert "unverifiable" in text
        warnings = text
        if fmt == "html":
            assert "data:image/png;base64," in text  # self-contained
        else:
            assert "](epsilon.png)" in text
    assert "budget exceeded against the server adversary" in warnings
    assert "budget exceeded against the release adversary" in warnings
    assert "1/population" in warnings
    assert "round 1: 7 survivors, below the planned 10" in warnings
    assert "below the cohort floor 8" in warnings
    assert "round 2" in warnings and "self-reported" in warnings and "unverifiable" in warnings
    assert "round 3: recorded epsilon against the release adversary" in warnings
    assert "below the planned 9" not in warnings  # round 2 planned for 9 and got 9


def test_write_report_end_to_end(crafted: Ledger, tmp_path: Path) -> None:
    path = write_report(crafted.path, tmp_path / "e2e", "html", expect_head=crafted.head, accountants=["rdp"])
    text = path.read_text(encoding="utf-8")
    assert path.name == "report.html" and (tmp_path / "e2e" / "epsilon.png").exists()
    assert crafted.head.hash in text and "rdp · server" in text and "budget exceeded" in text


def test_unbounded_server_epsilon(tmp_path: Path) -> None:
    led = write_run(tmp_path / "u.jsonl", CLEAN_HEADER, [{}, {"z_server": None}, {}])
    rep = build_report(led.path, accountants=["rdp", "prv"])
    for name, entry in rep["replay"].items():
        assert entry["server"][1:] == ["inf", "inf"], name
        assert "no server event" in entry["server_note"]
    assert rep["rounds"][1]["epsilon_server"] == "inf"
    assert any("budget exceeded against the server adversary" in w and "∞" in w for w in rep["warnings"])
    text = save_report(copy.deepcopy(rep), tmp_path / "o", "md").read_text(encoding="utf-8")
    assert "∞" in text
    json.loads(save_report(rep, tmp_path / "o", "json").read_text(encoding="utf-8"))  # still valid JSON


def test_event_a_backend_cannot_handle_shows_na(tmp_path: Path) -> None:
    led = Ledger.create(tmp_path / "b.jsonl", CLEAN_HEADER)
    rec = {
        "round": 0,
        "round_id": "00",
        "sampled": 10,
        "survivors": 10,
        "dropouts": 0,
        "clip_norm": 1.0,
        "mechanism": {"name": "mystery"},
        "noise_present": 1.0,
        "noise_guaranteed": 1.0,
        "epsilon": {"release": 1.0, "server": 2.0},
        "events": {"release": {"type": "mystery-noise"}, "server": GaussianEvent(1.0).to_dict()},
    }
    led.append(rec)
    rep = build_report(led.path)
    for name, entry in rep["replay"].items():
        assert entry["release"] == [None]
        assert "mystery-noise" in entry["release_note"] and "n/a" in entry["release_note"], name
    text = write_report(led.path, tmp_path / "o", "html").read_text(encoding="utf-8")
    assert "n/a" in text and "mystery-noise" in text


def test_failed_verification_leads_the_report(crafted: Ledger, tmp_path: Path) -> None:
    lines = crafted.path.read_bytes().splitlines(keepends=True)
    crafted.path.write_bytes(b"".join(lines[:2] + lines[3:]))  # delete round 1
    rep = build_report(crafted.path, accountants=["rdp"])
    assert not rep["verification"]["ok"] and rep["verification"]["first_bad_line"] == 3
    assert rep["warnings"][0].startswith("LEDGER VERIFICATION FAILED at line 3")
    assert len(rep["rounds"]) == 1  # only the verified prefix
    text = save_report(rep, tmp_path / "o", "html").read_text(encoding="utf-8")
    assert "FAILED" in text


def test_report_without_matplotlib(clean: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    path = write_report(clean.path, tmp_path / "o", "json", accountants=["rdp"])
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["plot"] is None and any("matplotlib" in w for w in data["warnings"])
    assert not (tmp_path / "o" / "epsilon.png").exists()


def test_bad_format_writes_nothing(clean: Ledger, tmp_path: Path) -> None:
    with pytest.raises(DPValueError):
        write_report(clean.path, tmp_path / "o", "pdf")
    assert not (tmp_path / "o").exists()


def test_restricted_replay_and_signed_ledger(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    led = Ledger.create(tmp_path / "s.jsonl", CLEAN_HEADER, signing_key=key)
    rep = build_report(led.path, pubkey=key.public_key(), accountants=["rdp"])
    assert list(rep["replay"]) == ["rdp"] and rep["rounds"] == []
    assert rep["verification"]["signer_checked"]
    assert verify_ledger(led.path).ok


# ------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secagg.cli", "report", *args], capture_output=True, text=True, check=False
    )


def test_cli_report_exit_codes(crafted: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = _cli(str(crafted.path), "--out", str(out), "--format", "md", "--accountant", "rdp")
    assert res.returncode == 0, res.stderr
    assert (out / "report.md").exists() and (out / "epsilon.png").exists()
    assert "warning: budget exceeded" in res.stdout
    res = _cli(str(crafted.path), "--out", str(out), "--format", "json", "--accountant", "rdp")
    assert res.returncode == 0 and json.loads((out / "report.json").read_text())["verification"]["ok"]
    res = _cli(str(crafted.path), "--out", str(out), "--expect-head", "1:" + "0" * 64, "--accountant", "rdp")
    assert res.returncode == 1 and (out / "report.html").exists()
    assert _cli(str(tmp_path / "missing.jsonl"), "--out", str(out)).returncode == 2
    assert _cli(str(crafted.path), "--out", str(out), "--format", "pdf").returncode == 2
    assert _cli(str(crafted.path)).returncode == 2  # --out is required
