"""``secagg keygen`` and ``secagg alliance``: members make their keys, the coordinator the
alliance file, and an active round runs with them (the key never leaves its file)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from secagg.cli import main
from secagg.driver import drive_round
from secagg.flower.config import load_alliance, load_identity
from secagg.identity import Alliance
from secagg.spec import ArraySpec, IntegerSum, build_spec
from secagg.transport import MemoryTransport


def _keygen(tmp: Path, m: int, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["keygen", str(tmp / f"member-{m}.key"), "--member-id", str(m)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{m}=") and len(line.split("=")[1]) == 64
    return line


def test_keys_and_alliance_run_an_active_round(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [_keygen(tmp_path, m, capsys) for m in (1, 2, 3, 4)]
    key = tmp_path / "member-1.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    out = tmp_path / "alliance.json"
    assert main(["alliance", str(out), *lines]) == 0
    alliance = load_alliance(out)
    assert alliance.fingerprint in capsys.readouterr().out
    assert Alliance.from_json(out.read_text()) == alliance
    ids = {m: load_identity(tmp_path / f"member-{m}.key") for m in (1, 2, 3, 4)}
    assert all(alliance[m] == ids[m].public_bytes() for m in ids)

    # an active round with exactly these keys (the in-memory endpoints of the simulator)
    from secagg.crypto.prg import Masker
    from secagg.simulate import _SimClient

    spec = build_spec(4, (ArraySpec("x", (3,), "int64"),), IntegerSum(16), neighbors="all", active=True, rng=1)
    inputs = np.arange(12, dtype=np.uint64).reshape(4, 3)
    masker = Masker(3, 16)
    clients = {
        m: _SimClient(m, bytes([m]) * 32, inputs.__getitem__, masker, [0.0], identity=ids[m], alliance=alliance)
        for m in ids
    }
    run = drive_round(spec.protocol, MemoryTransport(clients), setup=spec.to_bytes(), alliance=alliance)
    assert run.result.active and np.array_equal(run.result.aggregate, inputs.sum(axis=0) % 2**16)


def test_refusals_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _keygen(tmp_path, 1, capsys)
    assert main(["keygen", str(tmp_path / "member-1.key"), "--member-id", "1"]) == 2  # never overwrite
    assert "refusing to overwrite" in capsys.readouterr().err
    other = _keygen(tmp_path, 2, capsys)
    out = str(tmp_path / "a.json")
    for bad in ([line, line.replace("1=", "2=", 1)],  # one key, two members
                [line, "2=zz"], [line, "x=00"], [line, "1=" + other.split("=")[1]]):  # fmt: skip
        assert main(["alliance", out, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0]
    assert not os.path.exists(out)
