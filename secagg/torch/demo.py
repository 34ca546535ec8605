"""Pieces of the federated training demo: data, model, local training, evaluation and a
non-private FedAvg baseline.

Data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), which ship inside
the scikit-learn package, so nothing is downloaded.  Pixels are scaled to [0, 1].  A
stratified test split is held out; the rest is split **non-IID** across clients with a
Dirichlet(``alpha``) draw of each class's share per client (Hsu et al. 2019), from a fixed
seed.  Smaller ``alpha`` means more skewed clients.

Everything here is seeded and deterministic; the randomness of data splitting and
training is statistical (numpy ``Generator`` / ``torch.Generator``), never used for
cryptography.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from secagg.errors import ProtocolAbort, SecAggTypeError, SecAggValueError

__all__ = [
    "ClientData",
    "DemoResult",
    "DemoRound",
    "FederatedData",
    "TrainFn",
    "evaluate",
    "fedavg_round",
    "load_digits_federated",
    "make_model",
    "make_train_fn",
    "run_demo",
    "run_fedavg",
    "train_local",
]

N_FEATURES = 64
N_CLASSES = 10

#: ``train_fn(client_id, model) -> number of examples used``; trains ``model`` in place.
TrainFn = Callable[[int, nn.Module], int]


@dataclass(frozen=True)
class ClientData:
    """One client's local examples: ``x`` float32 ``(m, 64)``, ``y`` int64 ``(m,)``."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def size(self) -> int:
        """Number of examples."""
        return int(self.y.shape[0])


@dataclass(frozen=True)
class FederatedData:
    """Clients' local data sets (client ``i`` is ``clients[i - 1]``; ids start at 1) and
    the held-out test set."""

    clients: tuple[ClientData, ...]
    test_x: torch.Tensor
    test_y: torch.Tensor

    def client(self, client_id: int) -> ClientData:
        """Data of client ``client_id`` (1-based)."""
        if not 1 <= client_id <= len(self.clients):
            raise SecAggValueError(f"client ids are 1..{len(self.clients)}, got {client_id}")
        return self.clients[client_id - 1]

    @property
    def client_ids(self) -> list[int]:
        """``[1, ..., n]``."""
        return list(range(1, len(self.clients) + 1))


def _dirichlet_split(
    labels: npt.NDArray[np.int64], n_clients: int, alpha: float, min_size: int, gen: np.random.Generator
) -> list[npt.NDArray[np.int64]]:
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = np.flatnonzero(labels == c)
            gen.shuffle(idx)
            share = gen.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(share)[:-1] * idx.size).astype(np.int64)
            for i, piece in enumerate(np.split(idx, cuts)):
                parts[i].append(piece)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(o.size for o in out) >= min_size:
            return out
    raise SecAggValueError(
        f"could not give every one of {n_clients} clients {min_size} examples; use fewer clients or a larger alpha"
    )


def load_digits_federated(
    n_clients: int = 20, *, alpha: float = 0.5, test_fraction: float = 0.25, min_size: int = 10, seed: int = 0
) -> FederatedData:
    """scikit-learn's digits split non-IID across ``n_clients`` clients.

    Args:
        n_clients: number of clients (2..100).
        alpha: Dirichlet concentration of the label split (> 0; small = skewed).
        test_fraction: share of the data held out for evaluation, stratified.
        min_size: every client gets at least this many examples.
        seed: fixes the split.
    """
    if not 2 <= n_clients <= 100:
        raise SecAggValueError(f"n_clients must be in [2, 100], got {n_clients}")
    if not alpha > 0:
        raise SecAggValueError(f"alpha must be > 0, got {alpha}")
    if not 0.0 < test_fraction < 0.9:
        raise SecAggValueError(f"test_fraction must be in (0, 0.9), got {test_fraction}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_all = np.asarray(digits.data, dtype=np.float32) / 16.0
    y_all = np.asarray(digits.target, dtype=np.int64)
    gen = np.random.default_rng(seed)
    test_idx: list[npt.NDArray[np.int64]] = []
    train_idx: list[npt.NDArray[np.int64]] = []
    for c in np.unique(y_all):
        idx = np.flatnonzero(y_all == c)
        gen.shuffle(idx)
        k = round(idx.size * test_fraction)
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr = np.sort(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    parts = _dirichlet_split(y_all[tr], n_clients, alpha, min_size, gen)
    clients = tuple(
        ClientData(torch.from_numpy(x_all[tr[p]].copy()), torch.from_numpy(y_all[tr[p]].copy())) for p in parts
    )
    return FederatedData(clients, torch.from_numpy(x_all[te].copy()), torch.from_numpy(y_all[te].copy()))


def make_model(kind: str = "mlp", *, hidden: int = 32, seed: int = 0) -> nn.Module:
    """A small digits classifier with deterministic initial weights.

    ``"linear"``: softmax regression, 64 -> 10 (650 parameters).
    ``"mlp"``: 64 -> ``hidden`` -> 10 with ReLU (2,410 parameters for hidden=32).
    ``"cnn"``: one 3x3 convolution (8 channels) on the 8x8 image, ReLU, then a linear
    layer.  Both take inputs of shape ``(batch, 64)``.  The global torch RNG is left as it was.
    """
    if kind not in ("linear", "mlp", "cnn"):
        raise SecAggValueError(f"kind must be 'linear', 'mlp' or 'cnn', got {kind!r}")
    if hidden < 1:
        raise SecAggValueError("hidden must be >= 1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "linear":
            return nn.Sequential(nn.Linear(N_FEATURES, N_CLASSES))
        if kind == "mlp":
            return nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))
        return nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 64, N_CLASSES),
        )


def train_local(
    model: nn.Module,
    data: ClientData,
    *,
    epochs: int = 2,
    lr: float = 0.1,
    batch_size: int = 16,
    seed: int = 0,
) -> int:
    """Plain minibatch SGD on ``data`` for ``epochs`` epochs, in place.  Returns the
    number of examples (the FedAvg weight)."""
    if not isinstance(model, nn.Module):
        raise SecAggTypeError("model must be a torch.nn.Module")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise SecAggValueError("epochs and batch_size must be >= 1 and lr > 0")
    gen = torch.Generator().manual_seed(seed)
    # Plain SGD by hand: torch.optim's first use imports torch._dynamo (about a second).
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    m = data.size
    for _ in range(epochs):
        perm = torch.randperm(m, generator=gen)
        for start in range(0, m, batch_size):
            idx = perm[start : start + batch_size]
            for p in params:
                p.grad = None
            loss = nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
            torch.autograd.backward(loss)
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
    return m


def make_train_fn(
    data: FederatedData, *, epochs: int = 2, lr: float = 0.1, batch_size: int = 16, seed: int = 0
) -> TrainFn:
    """A :data:`TrainFn` for the demo: client ``i`` runs :func:`train_local` on its data.
    Each call uses a fresh, distinct shuffling seed."""
    counter = [0]

    def train_fn(client_id: int, model: nn.Module) -> int:
        counter[0] += 1
        return train_local(
            model,
            data.client(client_id),
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed * 1_000_003 + counter[0],
        )

    return train_fn


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, in [0, 1]."""
    if y.numel() == 0:
        raise SecAggValueError("cannot evaluate on an empty set")
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    return float((pred == y).float().mean().item())


def fedavg_round(global_model: nn.Module, participants: Sequence[int], train_fn: TrainFn) -> nn.Module:
    """One round of plaintext FedAvg (McMahan et al. 2017): every participant trains a
    copy of ``global_model``; the new global floating-point state is the example-count
    weighted average of theirs.  Non-private: the server sees every update.  Returns a new model."""
    if not participants:
        raise SecAggValueError("a FedAvg round needs at least one participant")
    states: list[dict[str, torch.Tensor]] = []
    weights: list[float] = []
    for cid in participants:
        local = copy.deepcopy(global_model)
        n = train_fn(cid, local)
        if n <= 0:
            raise SecAggValueError(f"client {cid} reported {n} examples")
        states.append(local.state_dict())
        weights.append(float(n))
    total = sum(weights)
    new_model = copy.deepcopy(global_model)
    new_state = new_model.state_dict()
    with torch.no_grad():
        for name, t in new_state.items():
            if not t.is_floating_point():
                continue
            acc = torch.zeros_like(t, dtype=torch.float64)
            for s, w in zip(states, weights, strict=True):
                acc.add_(s[name].to(torch.float64), alpha=w / total)
            t.copy_(acc.to(t.dtype))
    return new_model


def run_fedavg(
    global_model: nn.Module,
    data: FederatedData,
    rounds: int,
    train_fn: TrainFn,
    *,
    participants: Callable[[int], Sequence[int]] | None = None,
) -> tuple[nn.Module, list[float]]:
    """``rounds`` rounds of :func:`fedavg_round` (all clients each round unless
    ``participants(round_index)`` says otherwise).  Returns the final model and the test
    accuracy after each round."""
    if rounds < 1:
        raise SecAggValueError("rounds must be >= 1")
    model = copy.deepcopy(global_model)
    accs: list[float] = []
    for r in range(rounds):
        who = list(participants(r)) if participants is not None else data.client_ids
        model = fedavg_round(model, who, train_fn)
        accs.append(evaluate(model, data.test_x, data.test_y))
    return model, accs


# ----------------------------------------------------------------------------- the whole demo


@dataclass(frozen=True)
class DemoRound:
    """Figures of one demo round.

    Attributes:
        round: 1-based round number.
        accuracy: test accuracy of the private (secure + distributed DP) model.
        baseline_accuracy: test accuracy of plaintext, non-private FedAvg on the same clients.
        epsilon_release: cumulative epsilon against anyone seeing only the released model.
        epsilon_server: cumulative epsilon against the aggregation server (guaranteed noise only).
        delta: the delta of both figures.
        sampled: clients in the round; survivors: whose update is in the sum.
        dropped: clients that went silent (simulated), per protocol stage.
        rejected: clients whose update was rejected (counted as dropouts).
        train_seconds: local training, all clients.
        secure_seconds: encoding, protocol (clients + server) and decoding.
        upload_bytes: protocol bytes sent by one client (mean over clients that sent).
        plaintext_bytes: size of one float32 update in the clear.
        aborted: the round aborted safely (too few survivors): nothing was revealed or
            spent, neither model changed.
    """

    round: int
    accuracy: float
    baseline_accuracy: float
    epsilon_release: float
    epsilon_server: float
    delta: float
    sampled: int
    survivors: int
    dropped: dict[str, int]
    rejected: int
    train_seconds: float
    secure_seconds: float
    upload_bytes: float
    plaintext_bytes: int
    aborted: bool = False


@dataclass(frozen=True)
class DemoResult:
    """Result of :func:`run_demo`: per-round figures and the files written."""

    rounds: tuple[DemoRound, ...]
    parameters: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)


def _free_ledger_path(out: Path) -> Path:
    """``out/ledger.jsonl``; an existing ledger (a ledger is never overwritten) is kept
    and renamed ``ledger-<k>.jsonl``."""
    path = out / "ledger.jsonl"
    if path.exists():
        k = 1
        while (out / f"ledger-{k}.jsonl").exists():
            k += 1
        path.rename(out / f"ledger-{k}.jsonl")
    return path


def _plot_accuracy(rounds: Sequence[DemoRound], path: Path) -> bool:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError:  # pragma: no cover - matplotlib is in the bench/test extras
        return False
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    xs = [r.round for r in rounds]
    ax1.plot(xs, [r.accuracy for r in rounds], "o-", label="SecAgg+ with distributed DP")
    ax1.plot(xs, [r.baseline_accuracy for r in rounds], "s--", label="plaintext FedAvg (no privacy)")
    ax1.set_xlabel("round")
    ax1.set_ylabel("test accuracy")
    ax1.set_ylim(0, 1)
    ax1.legend(loc="lower right", fontsize=8)
    ax2.plot(xs, [r.epsilon_server for r in rounds], "o-", label="against the server")
    ax2.plot(xs, [r.epsilon_release for r in rounds], "s--", label="against the release")
    ax2.set_xlabel("round")
    ax2.set_ylabel(f"epsilon (delta={rounds[0].delta:g})" if rounds else "epsilon")
    ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def run_demo(
    *,
    rounds: int = 5,
    clients: int = 20,
    dropout: float = 0.1,
    noise_multiplier: float = 1.0,
    clip_norm: float = 1.0,
    seed: int = 0,
    out: str | os.PathLike[str] = "demo-out",
    delta: float = 1e-5,
    mechanism: Literal["discrete_gaussian", "skellam"] = "discrete_gaussian",
    model: str = "linear",
    local_epochs: int = 5,
    lr: float = 0.2,
    on_round: Callable[[DemoRound], None] | None = None,
) -> DemoResult:
    """Private federated training on the digits data set, next to a non-private baseline.

    Every round each client trains locally from the global model; its update (delta) is
    clipped, noised with its share of distributed discrete Gaussian (or Skellam) noise,
    masked and summed with SecAgg+ (:func:`secagg.torch.run_round`); clients drop out at
    random protocol stages with probability ``dropout``.  The server divides the noised
    sum by the number of survivors.  The baseline is plaintext FedAvg (example-count
    weights, no noise, no clipping) over the same surviving clients each round.

    Writes into ``out``: ``ledger.jsonl`` (hash-chained privacy ledger), ``report.html``
    and ``epsilon.png`` (:func:`dp.report.write_report`), ``accuracy.png`` and
    ``summary.json``.

    ``seed`` fixes the data split, the model, local training and the simulated dropouts;
    keys, masks and DP noise always come from the operating system's CSPRNG, so accuracy
    varies slightly between runs.
    """
    if not 1 <= rounds <= 1000:
        raise SecAggValueError(f"rounds must be in [1, 1000], got {rounds}")
    if not 3 <= clients <= 100:
        raise SecAggValueError(f"clients must be in [3, 100], got {clients}")
    if not 0.0 <= dropout <= 0.3:
        raise SecAggValueError(f"dropout must be in [0, 0.3], got {dropout}")
    if not noise_multiplier > 0 or not clip_norm > 0:
        raise SecAggValueError("noise_multiplier and clip_norm must be > 0")
    if model not in ("linear", "mlp", "cnn"):
        raise SecAggValueError(f"model must be 'linear', 'mlp' or 'cnn', got {model!r}")
    from dp.ledger import Ledger
    from dp.report import write_report
    from dp.tracker import PrivacyTracker
    from secagg.simulate import STAGES
    from secagg.torch import DPAggregation, SecureServer, UpdateLayout, run_round

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_digits_federated(clients, alpha=0.5, min_size=max(5, min(10, 1347 // (2 * clients))), seed=seed)
    net = make_model(model, seed=seed)
    baseline = copy.deepcopy(net)
    layout = UpdateLayout.from_module(net)
    # Threat model: tolerate up to twice the expected dropouts (at least 3 clients), but
    # never more than the complete graph with the smallest safe threshold survives
    # (n - 1 - t: 0 of 3 clients, 1 of 5, 2 of 7), else no safe parameters exist.
    from secagg.graph import parameters_for_k

    most = parameters_for_k(clients, None, colluders=0, dropout_fraction=0.0).dropouts_tolerated
    tolerated = min(max(3, 2 * round(dropout * clients) + 1), most, int(0.45 * clients))
    dropout_fraction = tolerated / clients
    floor = clients - tolerated
    tracker = PrivacyTracker(delta=delta, accountant="rdp", population=clients)
    aggregation = DPAggregation(
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        mechanism=mechanism,
        min_clients=floor,
    )
    server = SecureServer(layout, aggregation, dropout_fraction=dropout_fraction, tracker=tracker, sampling_rate=1.0)
    ledger_path = _free_ledger_path(out_dir)
    ledger = Ledger.create(ledger_path, server.ledger_header(clients, population=clients))
    server.attach_ledger(ledger)
    gen = np.random.default_rng(seed)
    secure_train = make_train_fn(data, epochs=local_epochs, lr=lr, seed=seed)
    plain_train = make_train_fn(data, epochs=local_epochs, lr=lr, seed=seed)
    ids = data.client_ids
    history: list[DemoRound] = []
    for r in range(rounds):
        drops: dict[str, list[int]] = {s: [] for s in STAGES}
        for cid in ids:
            if gen.random() < dropout:
                drops[STAGES[int(gen.integers(0, len(STAGES)))]].append(cid)
        try:
            report = run_round(net, ids, secure_train, server=server, dropouts=drops)
        except ProtocolAbort:
            # Too few survivors: nothing was revealed, nothing is spent, the model is unchanged.
            cur = tracker.current()
            row = DemoRound(
                round=r + 1,
                accuracy=evaluate(net, data.test_x, data.test_y),
                baseline_accuracy=evaluate(baseline, data.test_x, data.test_y),
                epsilon_release=float(cur.release_epsilon),
                epsilon_server=float(cur.server_epsilon),
                delta=delta,
                sampled=clients,
                survivors=0,
                dropped={s: len(v) for s, v in drops.items()},
                rejected=0,
                train_seconds=0.0,
                secure_seconds=0.0,
                upload_bytes=0.0,
                plaintext_bytes=4 * layout.size,
                aborted=True,
            )
            history.append(row)
            if on_round is not None:
                on_round(row)
            continue
        upd = report.update
        participants = [c for c in ids if c in set(upd.survivors)]
        baseline = fedavg_round(baseline, participants, plain_train)
        eps = upd.privacy
        assert eps is not None  # a DP run with a tracker
        senders = max(1, sum(1 for o in report.clients if o.stage != STAGES[0]))
        row = DemoRound(
            round=r + 1,
            accuracy=evaluate(net, data.test_x, data.test_y),
            baseline_accuracy=evaluate(baseline, data.test_x, data.test_y),
            epsilon_release=float(eps.release_epsilon),
            epsilon_server=float(eps.server_epsilon),
            delta=delta,
            sampled=clients,
            survivors=len(upd.survivors),
            dropped={s: len(v) for s, v in drops.items()},
            rejected=len(report.rejected),
            train_seconds=report.timings["train"],
            secure_seconds=report.secure_overhead_seconds,
            upload_bytes=sum(report.bytes_up.values()) / senders,
            plaintext_bytes=report.plaintext_bytes,
        )
        history.append(row)
        if on_round is not None:
            on_round(row)
    files = {"ledger": str(ledger_path)}
    files["report"] = str(write_report(ledger_path, out_dir, "html", expect_head=ledger.head))
    if _plot_accuracy(history, out_dir / "accuracy.png"):
        files["accuracy_plot"] = str(out_dir / "accuracy.png")
    if (out_dir / "epsilon.png").exists():
        files["epsilon_plot"] = str(out_dir / "epsilon.png")
    spec = server.spec
    params: dict[str, Any] = {
        "rounds": rounds,
        "clients": clients,
        "dropout": dropout,
        "noise_multiplier": noise_multiplier,
        "clip_norm": clip_norm,
        "mechanism": mechanism,
        "delta": delta,
        "seed": seed,
        "model": model,
        "model_parameters": layout.size,
        "local_epochs": local_epochs,
        "lr": lr,
        "cohort_floor": floor,
        "tolerated_dropouts": tolerated,
        "protocol": spec.to_dict() if spec is not None else None,
        "spec_fingerprint": spec.fingerprint if spec is not None else None,
        "ledger_head": str(ledger.head),
    }
    summary = {"parameters": params, "rounds": [dataclasses.asdict(r) for r in history], "files": files}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    files["summary"] = str(out_dir / "summary.json")
    return DemoResult(tuple(history), params, files)
