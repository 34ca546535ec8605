"""The ``secagg`` command behaves: exit 0 / 1 (failed round or check) / 2 (usage), one-line
errors without tracebacks unless ``--debug``, quiet on a closed pipe."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from secagg.cli import CheckFailed, UsageError, exit_code, fraction, int_at_least, main
from secagg.driver import STAGES
from secagg.errors import ProtocolAbort, SecAggTypeError, SecAggValueError, UnsafeParametersError
from secagg.graph import ThreatModel, choose_parameters


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "secagg.cli", *args], capture_output=True, text=True, check=False)


# --------------------------------------------------------------------------- round


@pytest.mark.parametrize("n", [5, 8, 10, 12])
def test_round_sizes_the_threat_model_for_the_dropouts_it_simulates(n: int, capsys: pytest.CaptureFixture[str]) -> None:
    most = choose_parameters(ThreatModel(n, 0.1, 0.0)).dropouts_tolerated
    ok = ["round", "--clients", str(n), "--dim", "4", "--dropout", str(most / n), "--seed", "1"]
    assert main(ok) == 0
    out = capsys.readouterr().out
    assert f"{most} dropouts" in out and "aggregate checked" in out
    # round(F n) dropouts spread over the stages; those after masked_input are already in the sum.
    after = len(STAGES) - 1 - STAGES.index("masked_input")
    assert f"sum of the {n - most + after * (most // len(STAGES))} survivors" in out
    # One more dropout than any safe configuration of n clients tolerates: exit 1, one line.
    too_many = ["round", "--clients", str(n), "--dim", "4", "--dropout", str((most + 1) / n)]
    assert main(too_many) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("secagg round: ") and "more than any safe configuration tolerates" in line


def test_round_with_colluders_and_a_failed_round(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["round", "--clients", "10", "--dim", "3", "--dropout", "0.3", "--colluders", "1"]) == 0
    assert "1 colluders" in capsys.readouterr().out
    assert main(["round", "--clients", "10", "--dim", "3", "--dropout", "0.4", "--colluders", "1"]) == 1
    assert "more than any safe configuration" in _one_line_error(capsys.readouterr().err)
    assert main(["round", "--clients", "10", "--colluders", "9"]) == 2
    assert "--colluders" in _one_line_error(capsys.readouterr().err)

    import secagg.commands.round as round_cmd

    def abort(*args: object, **kwargs: object) -> None:
        raise ProtocolAbort("only 2 masked inputs arrived, below min_clients=3")

    monkeypatch.setattr(round_cmd, "simulate_round", abort)
    assert main(["round", "--clients", "5", "--dim", "3"]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "aborted safely" in line and "min_clients=3" in line


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["round", "--neighbors", "x"], "--neighbors"),
        (["round", "--neighbors", "1"], "--neighbors"),
        (["round", "--clients", "2"], "--clients"),
        (["round", "--dropout", "1.5"], "--dropout"),
        (["round", "--bits", "70"], "--bits"),
        (["round", "--clients", "8", "--threshold", "2", "--dim", "2"], "unsafe"),
        (["round", "--clients", "40", "--dim", "2", "--dropout", "0.2", "--neighbors", "4"], "k=4"),
        (["round", "--no-such-option"], "unrecognized"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], word: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert word in _one_line_error(capsys.readouterr().err)


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["round", "--clients", "10", "--dim", "3", "--dropout", "0.5"]
    assert main(args) == 1
    _one_line_error(capsys.readouterr().err)
    for debug in (["--debug", *args], [*args, "--debug"]):
        assert main(debug) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and "CheckFailed" in err

    import secagg.commands.round as round_cmd

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(round_cmd, "simulate_round", boom)
    assert main(["round", "--clients", "5", "--dim", "3"]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "unexpected RuntimeError: a bug" in line and "--debug" in line


# --------------------------------------------------------------------------- other commands


def test_demo_out_pointing_at_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "taken"
    f.write_text("x")
    assert main(["demo", "--out", str(f)]) == 2
    assert "--out" in _one_line_error(capsys.readouterr().err)
    assert main(["demo", "--dropout", "0.9"]) == 2
    assert "--dropout must be in [0, 0.3], got 0.9" in _one_line_error(capsys.readouterr().err)


def test_demo_draws_no_progress_bar_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    args = ["demo", "--rounds", "1", "--clients", "4", "--dropout", "0", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "secure rounds" not in captured.err
    assert "final accuracy" in captured.out


def test_report_refuses_an_unknown_accountant(tmp_path: Path) -> None:
    res = _run("report", str(tmp_path / "ledger.jsonl"), "--out", str(tmp_path), "--accountant", "foo")
    assert res.returncode == 2
    assert "--accountant" in _one_line_error(res.stderr) and "invalid choice" in res.stderr
    res = _run("report", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and _one_line_error(res.stderr).startswith("secagg report: ")
    (tmp_path / "file").write_text("x")
    res = _run("report", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "file"))
    assert res.returncode == 2 and "--out" in _one_line_error(res.stderr)


def test_verify_unreadable_ledger_is_a_usage_error(tmp_path: Path) -> None:
    res = _run("verify", str(tmp_path / "missing.jsonl"))
    assert res.returncode == 2 and _one_line_error(res.stderr).startswith("secagg verify: ")


def test_bench_refuses_too_few_clients(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import secagg.commands.bench  # noqa: F401
    except Exception as exc:  # pragma: no cover - the bench module is being reworked elsewhere
        pytest.skip(f"bench not importable: {exc}")
    assert main(["bench", "--quick", "--clients", "0"]) == 2
    assert "--clients must be >= 3" in _one_line_error(capsys.readouterr().err)


# --------------------------------------------------------------------------- pipes


@pytest.mark.parametrize("args", [["round", "--clients", "5", "--dim", "3"], ["--help"]])
def test_a_closed_pipe_ends_quietly(args: list[str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "secagg.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -1` exiting before the command writes
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == ""


def test_head_on_a_real_pipe(tmp_path: Path) -> None:
    cmd = f"{sys.executable} -m secagg.cli round --clients 5 --dim 3 2>{tmp_path / 'err'} | head -1"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("secagg round: n=5")
    assert (tmp_path / "err").read_text() == ""


# --------------------------------------------------------------------------- the mapping


def test_exit_code_mapping_in_one_place() -> None:
    from dp.errors import AccountingError, DPValueError, LedgerError, LedgerVerificationError

    assert exit_code(CheckFailed("x")) == 1
    assert exit_code(ProtocolAbort("x")) == 1
    assert exit_code(RuntimeError("x")) == 1
    assert exit_code(AccountingError("x")) == 1
    assert exit_code(LedgerVerificationError("x")) == 1
    for usage in (
        UsageError("x"),
        SecAggValueError("x"),
        SecAggTypeError("x"),
        UnsafeParametersError("x"),
        DPValueError("x"),
        LedgerError("x"),
        FileNotFoundError(2, "No such file", "f"),
    ):
        assert exit_code(usage) == 2, usage
    assert exit_code(KeyboardInterrupt()) == 130


def test_argparse_types() -> None:
    at_least_3 = int_at_least(3)
    assert at_least_3("3") == 3 and at_least_3("1e4") == 10_000 and at_least_3("10**4") == 10_000
    for bad in ("2", "x", "2.5", "10**-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            at_least_3(bad)
    assert fraction("0") == 0.0 and fraction("0.5") == 0.5
    for bad in ("1", "-0.1", "nan?"):
        with pytest.raises(argparse.ArgumentTypeError):
            fraction(bad)
