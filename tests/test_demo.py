"""Demo pieces: the digits split, the model, local training and the FedAvg baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

import torch

from secagg.errors import SecAggValueError
from secagg.torch.demo import (
    evaluate,
    fedavg_round,
    load_digits_federated,
    make_model,
    make_train_fn,
    run_fedavg,
)

torch.set_num_threads(1)


def test_split_is_deterministic_disjoint_and_non_iid() -> None:
    a = load_digits_federated(20, seed=3)
    b = load_digits_federated(20, seed=3)
    assert len(a.clients) == 20 and a.client_ids == list(range(1, 21))
    for ca, cb in zip(a.clients, b.clients, strict=True):
        assert torch.equal(ca.x, cb.x) and torch.equal(ca.y, cb.y)
    assert all(c.size >= 10 for c in a.clients)
    total = sum(c.size for c in a.clients) + int(a.test_y.numel())
    assert total == 1797
    # test set is stratified: every class present
    assert set(a.test_y.tolist()) == set(range(10))
    # non-IID: the average client misses some classes or is dominated by a few
    top_share = [float(torch.bincount(c.y, minlength=10).max()) / c.size for c in a.clients]
    assert sum(top_share) / len(top_share) > 0.3  # IID would give about 0.1-0.2
    c = load_digits_federated(20, seed=4)
    assert not torch.equal(c.clients[0].y, a.clients[0].y)
    with pytest.raises(SecAggValueError):
        load_digits_federated(1)
    with pytest.raises(SecAggValueError):
        a.client(21)


def test_model_is_deterministic_and_leaves_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    m1, m2 = make_model(seed=5), make_model(seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    cnn = make_model("cnn")
    assert cnn(torch.zeros(2, 64)).shape == (2, 10)


def test_fedavg_round_is_weighted_average() -> None:
    torch.manual_seed(0)
    g = torch.nn.Linear(2, 1)

    def train_fn(cid: int, model: torch.nn.Module) -> int:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(cid))
        return cid  # client i has i examples

    new = fedavg_round(g, [1, 3], train_fn)
    want = (1 * 1 + 3 * 3) / 4
    assert all(torch.allclose(p, torch.full_like(p, want)) for p in new.parameters())


def test_non_private_baseline_learns() -> None:
    data = load_digits_federated(10, seed=0)
    model = make_model(seed=0)
    chance = evaluate(model, data.test_x, data.test_y)
    _, accs = run_fedavg(model, data, 4, make_train_fn(data, epochs=2, lr=0.2, seed=0))
    assert chance < 0.3
    assert accs[-1] > 0.5  # chance is 0.1


def test_demo_command_runs_with_tiny_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dp.ledger import verify_ledger
    from secagg.cli import main

    args = ["demo", "--rounds", "2", "--clients", "6", "--out", str(tmp_path), "--no-progress", "--seed", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "against the server" in out and "release" in out and "FedAvg" in out and "secure aggregation" in out
    for name in ("ledger.jsonl", "report.html", "accuracy.png", "epsilon.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    rounds = summary["rounds"]
    assert len(rounds) == 2
    done = [r for r in rounds if not r["aborted"]]
    assert done and all(r["epsilon_server"] >= r["epsilon_release"] > 0 for r in done)
    result = verify_ledger(tmp_path / "ledger.jsonl", expect_head=summary["parameters"]["ledger_head"])
    assert result.ok and result.count == 1 + len(done)
    # a second run keeps the first ledger (a ledger is never overwritten)
    assert main([*args, "--rounds", "1"]) == 0
    assert (tmp_path / "ledger-1.jsonl").exists() and (tmp_path / "ledger.jsonl").exists()


def test_demo_command_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    from secagg.cli import main

    assert main(["demo", "--dropout", "0.9"]) == 2
    assert "--dropout" in capsys.readouterr().err


@pytest.mark.parametrize("clients", [3, 4, 5, 7, 12])
def test_demo_runs_for_small_alliances(clients: int, tmp_path: Path) -> None:
    # "no safe parameters" for 3, 5 and 7 clients before: the threat model asked for more
    # dropouts than the complete graph survives.
    from secagg.graph import parameters_for_k
    from secagg.torch.demo import run_demo

    res = run_demo(rounds=1, clients=clients, dropout=0.1, out=tmp_path, local_epochs=1, seed=1)
    params = res.parameters
    most = parameters_for_k(clients, None, colluders=0, dropout_fraction=0.0).dropouts_tolerated
    assert params["tolerated_dropouts"] == min(most, max(3, 2 * round(0.1 * clients) + 1))
    assert params["cohort_floor"] == clients - params["tolerated_dropouts"]
    assert len(res.rounds) == 1 and Path(res.files["ledger"]).exists()
