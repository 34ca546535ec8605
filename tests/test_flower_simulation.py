"""The example app (examples/flower_app), unchanged, under Flower's simulation engine: a
SuperLink started with ``--simulation`` (as ``flwr run`` starts for its local connection)
on 127.0.0.1, the app launched with ``flwr run APP CONN --federation-config
'num-supernodes=N'``.  Ten virtual nodes, one of which drops out, train with distributed
DP and report the epsilon per adversary; Flower's default of two virtual nodes is a
clear error at once.  Bounded; the SuperLink and what it started are stopped by pid."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from _flower_deploy import EXAMPLE_APP, VENV_BIN, Deployment

pytestmark = [pytest.mark.flower, pytest.mark.slow]

if not (VENV_BIN / "flower-superlink").exists():  # pragma: no cover - flwr without its scripts
    pytest.skip("flower-superlink is not installed next to this python", allow_module_level=True)


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Any:
    dep = Deployment(tmp_path_factory.mktemp("flower-sim"), 0, lifetime=400.0, simulation=True)
    try:
        yield dep
    finally:
        dep.close()


def _run(dep: Deployment, name: str, supernodes: int, timeout: float, **config: Any) -> tuple[dict[str, Any], float]:
    result = dep.root / f"{name}.json"
    t0 = time.monotonic()
    run_id = dep.start_run(EXAMPLE_APP, {"result-path": str(result), **config},
                           federation_config=f"num-supernodes={supernodes}")  # fmt: skip
    status = dep.wait_run(run_id, timeout)
    assert result.exists(), f"the ServerApp wrote no result ({status}):\n{dep.logs()}"
    return json.loads(result.read_text()), time.monotonic() - t0


def test_ten_virtual_nodes_one_dropout_dp_with_epsilon_per_adversary(simulation: Deployment) -> None:
    # the app's defaults (mode dp, secure evaluation, partition 3 drops out) on a small task
    out, _ = _run(simulation, "sim10", 10, 300.0, task="synthetic", dim=64, **{"num-rounds": 1})
    assert out["status"] == "completed", out
    (rnd,) = out["rounds"]
    assert len(rnd["nodes"]) == 10 and len(rnd["survivors"]) == 9
    assert [len(v) for v in rnd["dropped"].values()] == [0, 0, 1, 0]  # lost at the masked input
    assert rnd["recovered"] == rnd["dropped"]["masked_input"]  # its mask key recovered
    eps = out["report"]["epsilon"]
    assert eps["release"]["epsilon"] > 0 and eps["server"]["epsilon"] >= eps["release"]["epsilon"]
    assert "server" in eps["server"]["against"]
    assert rnd["privacy"]["server_epsilon"] == pytest.approx(eps["server"]["epsilon"])
    ev = out["evaluation"]["1"]
    assert ev["secagg-eval-secure"] == 1 and ev["secagg-eval-survivors"] == 10  # it trains no more, it still evaluates
    assert "secure" in out["report"]["evaluation"]


def test_flowers_default_two_virtual_nodes_is_a_clear_error_at_once(simulation: Deployment) -> None:
    out, seconds = _run(simulation, "sim2", 2, 120.0, task="synthetic", dim=32, **{"wait-nodes": 2.0})
    assert out["status"] == "failed", out
    assert "at least 3 nodes" in out["reason"] and "2 connected" in out["reason"]
    assert "num-supernodes" in out["reason"]  # says how to fix it
    assert seconds < 60.0
    assert not Path(str(simulation.root / "sim2.json.npz")).exists()
