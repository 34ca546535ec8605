"""Smoke test of examples/llm_lora at a tiny size: ``flwr run`` under Flower's simulation
engine (a SuperLink in simulation mode started here on a free port, its own FLWR_HOME,
stopped by pid), 4 silos, 3 rounds, silo 2 dropping out in round 2 after sharing its keys.

Checks: the loss is finite, only the adapter weights travel, the dropout happened and the
rounds went on without it, the ledger verifies, the epsilon is printed per adversary.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

# found, not imported: the example runs in Flower's processes, and importing these here costs seconds
for _mod, _why in (("flwr", "the 'flower' extra"), ("torch", "the 'torch' extra"), ("transformers", "the 'llm' extra"),
                   ("peft", "the 'llm' extra"), ("ray", "Flower's simulation engine (flwr[simulation])")):  # fmt: skip
    if importlib.util.find_spec(_mod) is None:
        pytest.skip(f"the LoRA example needs {_mod} ({_why}): pip install -e '.[llm]'", allow_module_level=True)

from _flower_deploy import VENV_BIN, Proc, free_port  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "examples" / "llm_lora"
TINY: dict[str, Any] = {
    "num-silos": 4,
    "num-rounds": 3,
    "drop-silo": 2,
    "drop-from-round": 2,
    "hidden": 32,
    "intermediate": 64,
    "layers": 1,
    "heads": 2,
    "kv-heads": 1,
    "lora-r": 2,
    "seq-len": 16,
    "train-per-silo": 8,
    "val-per-silo": 2,
    "local-steps": 2,
    "batch-size": 4,
    "wait-nodes": 30.0,
    "stage-timeout": 30.0,
    "dropout-fraction": 0.34,  # 4 silos: one dropout, no colluder assumed
    "corrupt-fraction": 0.0,
}


def run_example(
    root: Path, run_config: dict[str, Any], *, supernodes: int, timeout: float
) -> tuple[dict[str, Any], str]:
    """``flwr run examples/llm_lora`` on a simulation SuperLink of our own; the result JSON
    and the run's log.  Every process started is stopped by pid (with its descendants)."""
    home = root / "flwr-home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "sim"\n\n[superlink.sim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = dict(os.environ)
    env.update(FLWR_HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")  # fmt: skip
    out = Path(run_config.get("out-dir", root / "out"))
    cfg = " ".join(f"{k}={json.dumps(v)}" for k, v in {"out-dir": str(out), **run_config}.items())
    link = Proc("superlink", [str(VENV_BIN / "flower-superlink"), "--insecure", "--simulation", "--database",
                              str(root / "state.db"), "--host", "127.0.0.1", "--port", str(port),
                              "--disable-runtime-dependency-installation"], env, root / "superlink.log")  # fmt: skip
    log_path = root / "run.log"
    try:
        _wait_port(port, link, 60.0)
        with open(log_path, "wb") as fh:
            cli = subprocess.Popen(
                [str(VENV_BIN / "flwr"), "run", str(APP), "sim", "--run-config", cfg, "--federation-config",
                 f"num-supernodes={supernodes}", "--stream"],
                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
            )  # fmt: skip
            end = time.monotonic() + timeout
            result = out / f"result-{run_config.get('workflow', 'secagg')}.json"
            while time.monotonic() < end and cli.poll() is None:
                if result.exists() and "done:" in log_path.read_text(errors="replace"):
                    break
                time.sleep(0.5)
            cli.kill()  # --stream may keep following the finished run's logs
            cli.wait(timeout=10)
    finally:
        link.stop()
    log = log_path.read_text(errors="replace")
    if not result.exists():
        raise AssertionError(f"no result after {timeout} s\n--- run ---\n{log[-4000:]}\n--- superlink ---\n"
                             f"{link.text()[-3000:]}")  # fmt: skip
    return json.loads(result.read_text()), log


def _wait_port(port: int, link: Proc, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not link.alive():
            raise RuntimeError(f"flower-superlink exited:\n{link.text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"the SuperLink's port {port} is not open after {timeout} s")


def test_llm_lora_example_tiny(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res, log = run_example(tmp_path, TINY, supernodes=4, timeout=150.0)
    assert res["status"] == "completed", res
    rounds = res["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in rounds) and math.isfinite(res["initial_loss"])
    # only the adapters travel: the update is the LoRA weights, far smaller than the model
    assert res["adapter_bytes"] == 4 * res["adapter_params"] < res["full_model_bytes"] / 10
    down = rounds[0]["wire_bytes_sent"]
    assert res["adapter_bytes"] * 4 <= down < res["full_model_bytes"] * 4
    # silo 2 (partition id) drops out in round 2 after sharing its keys; rounds 2 and 3 go on
    assert len(rounds[0]["survivors"]) == 4 and not rounds[0]["dropped"]
    assert len(rounds[1]["survivors"]) == 3 and rounds[1]["dropped"].get("masked_input")
    assert rounds[1]["recovered"] == rounds[1]["dropped"]["masked_input"]
    gone = rounds[1]["dropped"]["masked_input"][0]
    assert gone not in rounds[2]["survivors"] and len(rounds[2]["survivors"]) == 3
    # the ledger verifies; the epsilon is printed per adversary
    assert res["ledger"]["verified"] is True and Path(res["ledger"]["path"]).exists()
    assert Path(res["report"]).exists()
    eps = res["epsilon"]
    assert 0 < eps["release"] <= eps["server"] * (1 + 1e-9) and math.isfinite(eps["server"])
    assert "against the release" in log and "against the server" in log
    print(f"llm_lora smoke test: {time.monotonic() - t0:.1f} s")
