"""``secagg privacy`` command-line contract, checked from outside (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dp.accountants import available_accountants, make_accountant
from dp.calibration import calibrate_noise_multiplier
from dp.events import GaussianEvent, PoissonSampledEvent

BASE = ["--sampling-rate", "0.01", "--rounds", "1000", "--delta", "1e-5"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "secagg.cli", "privacy", *args], capture_output=True, text=True,
                          check=False, timeout=300)


def _eps(z: float, q: float, t: int, delta: float, name: str = "rdp") -> float:
    acc = make_accountant(name)
    acc.compose(PoissonSampledEvent(q, GaussianEvent(z)) if q < 1 else GaussianEvent(z), t)
    return acc.get_epsilon(delta)


def test_epsilon_json() -> None:
    out = _run("--noise-multiplier", "1.1", *BASE, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["epsilon"] == pytest.approx(_eps(1.1, 0.01, 1000, 1e-5), rel=1e-12)
    assert data["epsilon_without_amplification"] == pytest.approx(_eps(1.1, 1.0, 1000, 1e-5), rel=1e-12)
    assert data["epsilon_without_amplification"] > data["epsilon"]
    assert "release" in data["against"] and "amplification" in data["against"]
    assert "server" in data["against_without_amplification"]
    assert data["noise_multiplier"] == 1.1 and data["sampling_rate"] == 0.01
    assert data["rounds"] == 1000 and data["delta"] == 1e-5 and data["accountant"] == "rdp"


def test_epsilon_text_shows_both_labelled_figures() -> None:
    out = _run("--noise-multiplier", "1.1", *BASE)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("epsilon = ") and "release adversary" in lines[0]
    assert lines[1].startswith("epsilon without sampling amplification = ") and "server adversary" in lines[1]
    assert float(lines[0].split()[2]) == pytest.approx(_eps(1.1, 0.01, 1000, 1e-5), rel=1e-5)


def test_calibration_mode() -> None:
    out = _run("--target-epsilon", "3", *BASE, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["noise_multiplier"] == pytest.approx(calibrate_noise_multiplier(3.0, 1e-5, 1000, 0.01), rel=1e-12)
    assert data["epsilon"] <= 3.0 and data["target_epsilon"] == 3.0
    assert data["epsilon_without_amplification"] > 3.0
    text = _run("--target-epsilon", "3", *BASE)
    assert text.returncode == 0 and text.stdout.startswith("noise multiplier = ")


# opacus-rdp is cross-checked in-process (tests/test_accountants.py); here the two tight backends
@pytest.mark.parametrize("name", [n for n in available_accountants() if n in ("prv", "pld")])
def test_backend_accountants(name: str) -> None:
    out = _run("--noise-multiplier", "1.0", "--sampling-rate", "0.01", "--rounds", "10", "--delta", "1e-5",
               "--accountant", name, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["accountant"] == name
    assert data["epsilon"] == pytest.approx(_eps(1.0, 0.01, 10, 1e-5, name), rel=1e-9)
    assert data["epsilon"] <= _eps(1.0, 0.01, 10, 1e-5) * 1.02  # never looser than RDP (up to PRV's eps_error)


@pytest.mark.parametrize(
    "args",
    [
        ["--noise-multiplier", "nan", *BASE],
        ["--noise-multiplier", "-1", *BASE],
        ["--noise-multiplier", "0", *BASE],
        ["--noise-multiplier", "1", "--sampling-rate", "0", "--rounds", "10", "--delta", "1e-5"],
        ["--noise-multiplier", "1", "--sampling-rate", "1.5", "--rounds", "10", "--delta", "1e-5"],
        ["--noise-multiplier", "1", "--sampling-rate", "0.1", "--rounds", "0", "--delta", "1e-5"],
        ["--noise-multiplier", "1", "--sampling-rate", "0.1", "--rounds", "10", "--delta", "1"],
        ["--noise-multiplier", "1", "--sampling-rate", "0.1", "--rounds", "10", "--delta", "nan"],
        ["--target-epsilon", "0", *BASE],
        ["--target-epsilon", "1e-9", "--sampling-rate", "1", "--rounds", "1000000", "--delta", "1e-12"],
        ["--noise-multiplier", "1", "--target-epsilon", "1", *BASE],  # both modes at once
        BASE,  # neither
        ["--noise-multiplier", "1", "--sampling-rate", "0.1", "--rounds", "1.5", "--delta", "1e-5"],
        ["--noise-multiplier", "1", *BASE, "--accountant", "moments"],
        # absurd counts: typed error, exit 2, one line, no traceback
        ["--noise-multiplier", "1", "--sampling-rate", "0.01", "--rounds", str(10**400), "--delta", "1e-5"],
        ["--target-epsilon", "1", "--sampling-rate", "0.01", "--rounds", str(10**400), "--delta", "1e-5"],
        ["--noise-multiplier", "1", "--sampling-rate", "0.01", "--rounds", str(2**53 + 1), "--delta", "1e-5"],
        ["--noise-multiplier", "1", "--sampling-rate", "0.01", "--rounds", "-3", "--delta", "1e-5"],
        ["--noise-multiplier", "1", "--sampling-rate", "0.01", "--rounds", "True", "--delta", "1e-5"],
        ["--noise-multiplier", "1", "--sampling-rate", "0.01", "--rounds", "1e3", "--delta", "1e-5"],
        ["--noise-multiplier", "1", "--sampling-rate", "0.01", "--rounds", "9" * 5000, "--delta", "1e-5"],
        ["--noise-multiplier", "1e400", *BASE],
        ["--noise-multiplier", "1", "--sampling-rate", "0.01", "--rounds", "10", "--delta", "1e-400"],
        ["--noise-multiplier", "1", "--sampling-rate", "0.01", "--rounds", str(10**400), "--delta", "1e-5",
         "--accountant", "pld"],
    ],
)
def test_bad_input_exits_2_with_message(args: list[str]) -> None:
    out = _run(*args)
    assert out.returncode == 2
    assert out.stderr.strip() and out.stdout == ""
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3  # argparse: usage + error


@pytest.mark.skipif("pld" not in available_accountants(), reason="dp-accounting not installed")
def test_pld_server_figure_takes_the_analytic_path() -> None:
    """q=0.001, T=10000 with --accountant pld: the unsampled figure is composed in closed form
    (T Gaussians are one Gaussian with z / sqrt(T)), not by T numerical self-compositions."""
    out = _run("--noise-multiplier", "1.0", "--sampling-rate", "0.001", "--rounds", "10000", "--delta", "1e-5",
               "--accountant", "pld", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["composition_without_amplification"] == "analytic"
    assert data["accountant_without_amplification"] == "pld"
    # the closed form: one Gaussian with z = 1 / sqrt(10000)
    assert data["epsilon_without_amplification"] == pytest.approx(_eps(0.01, 1.0, 1, 1e-5, "pld"), rel=1e-9)
    assert data["epsilon"] <= data["epsilon_without_amplification"]


def test_release_figure_never_above_the_server_figure() -> None:
    """Sampling can only lower epsilon (issue: z=1e-5, q=0.01 printed release > server, after 3 minutes)."""
    out = _run("--noise-multiplier", "1e-5", "--sampling-rate", "0.01", "--rounds", "1", "--delta", "1e-5",
               "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert float(data["epsilon"]) <= float(data["epsilon_without_amplification"])
