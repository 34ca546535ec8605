"""secagg on a real Flower deployment: a SuperLink and six SuperNodes as subprocesses on
127.0.0.1, the example app (examples/flower_app) launched with ``flwr run``.

Run alone with ``pytest -m flower``; skip with ``-m "not flower"``.  The tests share one
deployment (module scope) and run in file order: five SuperNodes (integer and float
mode), then a faulty SuperNode that truncates its masked input (excluded, the others'
round completes), then two SuperNodes killed by pid around key sharing, then too few
nodes left (typed abort) and a next run on the same SuperLink, then active mode with an
alliance (four more SuperNodes, one outside the alliance).  SuperNodes are killed with SIGKILL
(a crashed device): the server only learns it from the stage deadline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from _flower_deploy import EXAMPLE_APP, VENV_BIN, Deployment

from secagg.encoding import FixedPointEncoder

pytestmark = [pytest.mark.flower, pytest.mark.slow]

if not (VENV_BIN / "flower-superlink").exists():  # pragma: no cover - flwr without its scripts
    pytest.skip("flower-superlink is not installed next to this python", allow_module_level=True)

sys.path.insert(0, str(EXAMPLE_APP))
from secagg_flower_app import task  # noqa: E402

N = 6
RUN_TIMEOUT = 240.0
STAGE_TIMEOUT = 30.0  # a killed node costs this much
#: every run: one round of the synthetic task, no federated evaluation, no demo dropout
BASE = {"task": "synthetic", "num-rounds": 1, "stage-timeout": STAGE_TIMEOUT, "wait-nodes": 30.0,
        "evaluate": "none", "drop-partitions": ""}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("flower")
    dep = Deployment(root, N, lifetime=900.0)
    try:
        yield dep
    finally:
        dep.close()


def _run(dep: Deployment, name: str, **config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    result = dep.root / f"{name}.json"
    base = {**BASE, "result-path": str(result)}
    run_id = dep.start_run(EXAMPLE_APP, {**base, **config})
    status = dep.wait_run(run_id, RUN_TIMEOUT)
    assert result.exists(), f"the ServerApp wrote no result ({status}):\n{dep.logs()}"
    return json.loads(result.read_text()), status


def _nodes(dep: Deployment, partitions: list[int]) -> str:
    return ",".join(str(dep.node_id(p)) for p in partitions)


def _partition_of(dep: Deployment) -> dict[int, int]:
    return {dep.node_id(p): p for p in dep.nodes}


def _arrays(dep: Deployment, name: str) -> np.ndarray:
    with np.load(dep.root / f"{name}.json.npz") as z:
        return np.concatenate([z["w"].ravel(), z["b"].ravel()])


def _mean_delta(partitions: list[int], size: int) -> np.ndarray:
    w = np.array([task.synthetic_examples(p) for p in partitions], dtype=np.float64)
    return sum(wi * task.synthetic_delta(p, size) for wi, p in zip(w, partitions, strict=True)) / w.sum()


def test_five_supernodes_exact_sum_and_fedavg_update(deployment: Deployment) -> None:
    dep = deployment
    cohort = [0, 1, 2, 3, 4]
    part = _partition_of(dep)
    # integer mode: exactly the sum mod 2^16
    out, status = _run(dep, "int5", mode="integer", dim=64, bits=16, nodes=_nodes(dep, cohort))
    assert status["status"] == "finished:completed" and out["status"] == "completed", out
    assert sorted(part[n] for n in out["rounds"][0]["survivors"]) == cohort
    want = sum(task.synthetic_integers(p, 64, 16) for p in cohort) % (1 << 16)
    np.testing.assert_array_equal(_arrays(dep, "int5"), want)

    # float mode: global (zeros) + the weighted mean update, within the encoder's bound and resolution
    out, status = _run(dep, "avg5", mode="fedavg", dim=64, bound=0.5, nodes=_nodes(dep, cohort),
                       **{"max-weight": 100})
    assert status["status"] == "finished:completed" and out["status"] == "completed", out
    assert sorted(part[n] for n in out["rounds"][0]["survivors"]) == cohort
    got = _arrays(dep, "avg5")
    enc = FixedPointEncoder.fit(5, 32, 0.5, weights=[100] * 5)
    assert np.all(np.abs(got) <= 0.5)
    assert np.max(np.abs(got - _mean_delta(cohort, 64))) <= 1.0 / enc.scale + 1e-7
    assert out["rounds"][0]["total_weight"] == sum(task.synthetic_examples(p) for p in cohort)


def test_a_node_sending_a_truncated_masked_input_is_excluded_and_the_others_complete(
    deployment: Deployment,
) -> None:
    dep = deployment
    faulty = N + 1  # a seventh SuperNode whose ClientApp cuts its masked input in half
    dep.add_node(faulty, N, **{"truncate-masked-input": True})
    try:
        dep.node_id(faulty, timeout=60)
        cohort = [0, 1, 2, 3, faulty]
        progress = dep.root / "progress-trunc"
        progress.mkdir()
        out, status = _run(dep, "trunc", mode="integer", dim=64, bits=16, neighbors="all", threshold=3,
                           nodes=_nodes(dep, cohort), **{"progress-dir": str(progress)})
        assert status["status"] == "finished:completed" and out["status"] == "completed", out
        (rnd,) = out["rounds"]
        bad = str(dep.node_id(faulty))
        assert list(rnd["excluded"]) == [bad] and "masked_input" in rnd["excluded"][bad], rnd
        assert all(v == [] for v in rnd["dropped"].values()), rnd  # excluded, not a dropout
        assert rnd["recovered"] == [dep.node_id(faulty)]  # its mask key was reconstructed
        part = _partition_of(dep)
        assert sorted(part[n] for n in rnd["survivors"]) == [0, 1, 2, 3]
        want = sum(task.synthetic_integers(p, 64, 16) for p in (0, 1, 2, 3)) % (1 << 16)
        np.testing.assert_array_equal(_arrays(dep, "trunc"), want)
        stage = json.loads((progress / "0-masked_input.json").read_text())
        assert list(stage["excluded"]) == [bad] and dep.node_id(faulty) not in stage["answered"]
    finally:
        dep.nodes.pop(faulty).stop()


def _wait_file(dep: Deployment, path: Path, timeout: float) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path.name} never appeared:\n{dep.logs()}"
        time.sleep(0.2)
    time.sleep(0.1)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_supernodes_killed_before_and_after_key_sharing(deployment: Deployment) -> None:
    from dp.ledger import read_ledger, verify_ledger

    dep = deployment
    progress = dep.root / "progress-drop"
    progress.mkdir()
    ledger = dep.root / "drop-ledger.jsonl"
    victim_early, victim_late = 5, 4
    config = {"mode": "fedavg", "dim": 64, "bound": 0.5, "max-weight": 100, "neighbors": "all", "threshold": 3,
              "nodes": _nodes(dep, list(range(N))), "progress-dir": str(progress),
              "pause-after": "advertise_keys,share_keys", "ledger-path": str(ledger)}
    result = dep.root / "drop.json"
    run_id = dep.start_run(EXAMPLE_APP, {**BASE, "result-path": str(result), **config})
    first = _wait_file(dep, progress / "0-advertise_keys.json", RUN_TIMEOUT)
    assert len(first["answered"]) == N
    dep.kill_node(victim_early)  # advertised its keys, dies before sharing them
    (progress / "0-advertise_keys.go").touch()
    second = _wait_file(dep, progress / "0-share_keys.json", RUN_TIMEOUT)
    assert second["silent"] == [dep.node_id(victim_early)]
    dep.kill_node(victim_late)  # shared its keys, dies before sending its masked input
    (progress / "0-share_keys.go").touch()
    status = dep.wait_run(run_id, RUN_TIMEOUT)
    out = json.loads(result.read_text())
    assert status["status"] == "finished:completed" and out["status"] == "completed", out
    (rnd,) = out["rounds"]
    part = _partition_of(dep)
    survivors = sorted(part[n] for n in rnd["survivors"])
    assert survivors == [0, 1, 2, 3]
    assert rnd["dropped"]["share_keys"] == [dep.node_id(victim_early)]
    assert rnd["dropped"]["masked_input"] == [dep.node_id(victim_late)]
    assert rnd["recovered"] == [dep.node_id(victim_late)]
    enc = FixedPointEncoder.fit(N, 32, 0.5, weights=[100] * N)
    got = _arrays(dep, "drop")
    assert np.max(np.abs(got - _mean_delta(survivors, 64))) <= 1.0 / enc.scale + 1e-7
    # the privacy ledger records the round and its dropouts
    assert verify_ledger(ledger).ok
    _, records = read_ledger(ledger)
    (rec,) = records
    assert rec["sampled"] == N and rec["survivors"] == 4 and rec["dropouts"] == 2
    assert rec["dropped_nodes"]["share_keys"] == [dep.node_id(victim_early)]
    assert rec["dropped_nodes"]["masked_input"] == [dep.node_id(victim_late)]
    assert rec["transport"] == "flower"


def test_too_few_nodes_typed_abort_then_superlink_serves_next_run(deployment: Deployment) -> None:
    dep = deployment
    alive = [p for p in range(N) if dep.nodes[p].alive()]
    assert alive == [0, 1, 2, 3]
    progress = dep.root / "progress-few"
    progress.mkdir()
    result = dep.root / "few.json"
    run_id = dep.start_run(EXAMPLE_APP, {**BASE, "mode": "integer", "dim": 32,
                                         "neighbors": "all",
                                         "result-path": str(result), "nodes": _nodes(dep, alive),
                                         "progress-dir": str(progress), "pause-after": "advertise_keys"})
    _wait_file(dep, progress / "0-advertise_keys.json", RUN_TIMEOUT)
    dep.kill_node(2)
    dep.kill_node(3)
    (progress / "0-advertise_keys.go").touch()
    status = dep.wait_run(run_id, RUN_TIMEOUT)
    out = json.loads(result.read_text())
    assert status["status"] == "finished:completed", status  # the ServerApp reported, it did not crash
    assert out["status"] == "aborted" and out["error"] == "SecureRoundAbort", out
    assert out["stage"] == "share_keys" and "min_clients" in out["reason"]
    assert sorted(out["dropped"]["share_keys"]) == sorted(dep.node_id(p) for p in alive)
    assert not (dep.root / "few.json.npz").exists()  # nothing was released

    # The same SuperLink (same process) serves the next run, on the survivors plus a new node.
    assert dep.superlink.alive()
    dep.add_node(N, N + 1)
    cohort = [0, 1, N]
    out, status = _run(dep, "next", mode="integer", dim=32, bits=16, nodes=_nodes(dep, cohort))
    assert out["status"] == "completed", out
    want = sum(task.synthetic_integers(p, 32, 16) for p in cohort) % (1 << 16)
    np.testing.assert_array_equal(_arrays(dep, "next"), want)


def test_active_mode_refuses_the_outsider_and_the_ledger_verifies_against_the_alliance(
    deployment: Deployment,
) -> None:
    """Four new SuperNodes: three hold alliance keys (member ids not in node order), one a key
    outside the alliance.  The outsider is refused before the round, the three complete an
    active round with the exact sum, and ``secagg verify --alliance`` passes on the ledger
    and fails after one byte of a signature is changed."""
    from secagg.identity import Alliance, IdentityKey

    dep = deployment
    members = {20: 2, 21: 3, 22: 1}  # partition -> member id
    outsider = 23
    keys = {p: IdentityKey.generate() for p in [*members, outsider]}
    alliance_file = dep.root / "alliance.json"
    alliance_file.write_text(Alliance({m: keys[p].public_bytes() for p, m in members.items()}).to_json())
    for p, key in keys.items():
        (dep.root / f"member-{p}.key").write_text(key.private_bytes().hex())
        dep.add_node(p, N, **{"alliance": str(alliance_file), "identity-key": str(dep.root / f"member-{p}.key")})
    try:
        cohort = [*members, outsider]
        ledger = dep.root / "active-ledger.jsonl"
        out, status = _run(dep, "active", mode="integer", dim=32, bits=16, nodes=_nodes(dep, cohort),
                           alliance=str(alliance_file), **{"ledger-path": str(ledger)})
        assert status["status"] == "finished:completed" and out["status"] == "completed", out
        (rnd,) = out["rounds"]
        bad = str(dep.node_id(outsider))
        assert list(rnd["refused"]) == [bad] and "not in the alliance" in rnd["refused"][bad], rnd
        assert rnd["security_mode"] == "active"
        assert rnd["members"] == {str(m): dep.node_id(p) for p, m in sorted(members.items(), key=lambda x: x[1])}
        part = _partition_of(dep)
        assert sorted(part[n] for n in rnd["survivors"]) == sorted(members)
        want = sum(task.synthetic_integers(p, 32, 16) for p in members) % (1 << 16)
        np.testing.assert_array_equal(_arrays(dep, "active"), want)
        verify = [str(VENV_BIN / "secagg"), "verify", "--alliance", str(alliance_file)]
        ok = subprocess.run([*verify, str(ledger)], capture_output=True, text=True, timeout=60, check=False)
        assert ok.returncode == 0 and "3 contributions verified" in ok.stdout, ok.stdout + ok.stderr
        header, record = ledger.read_text().splitlines()
        sig = json.loads(record)["audit"]["advertisements"][1]["signature"]
        tampered = dep.root / "active-tampered.jsonl"
        tampered.write_text(f"{header}\n{record.replace(sig, sig[:6] + ('1' if sig[6] == '0' else '0') + sig[7:])}\n")
        no = subprocess.run([*verify, str(tampered)], capture_output=True, text=True, timeout=60, check=False)
        assert no.returncode == 1 and "signature does not verify" in no.stderr, no.stdout + no.stderr
    finally:
        for p in keys:
            dep.nodes.pop(p).stop()


def test_deployment_leaves_no_process_behind(tmp_path: Path) -> None:
    from _flower_deploy import _children

    dep = Deployment(tmp_path, 1, lifetime=120.0)
    procs = [dep.superlink, *dep.nodes.values()]
    time.sleep(2.0)  # let them start their SuperExec helpers
    started = [q for p in procs for q in (p.pid, *_children(p.pid))]
    assert len(started) >= 4  # SuperLink, SuperNode and a SuperExec for each
    dep.close()
    assert not any(p.alive() for p in procs)
    time.sleep(1.0)
    left = [q for q in started if Path(f"/proc/{q}").exists() and "zombie" not in _state(q)]
    assert not left, left
    assert shutil.which("flwr", path=str(VENV_BIN))


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"
