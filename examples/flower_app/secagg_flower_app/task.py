"""The example's tasks: the demo's digits MLP (torch) and a synthetic numpy model whose
per-node updates are known in closed form (for tests and benchmarks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Arrays = dict[str, npt.NDArray[Any]]


# ----------------------------------------------------------------------------- synthetic


def synthetic_initial(dim: int, mode: str) -> Arrays:
    """Initial arrays of the synthetic task: a (dim - 10)-vector and a 10-vector."""
    if dim < 11:
        raise ValueError("dim must be >= 11")
    if mode == "integer":
        return {"w": np.zeros(dim - 10, np.int64), "b": np.zeros(10, np.int64)}
    return {"w": np.zeros(dim - 10, np.float32), "b": np.zeros(10, np.float32)}


def synthetic_delta(partition: int, size: int) -> npt.NDArray[np.float64]:
    """Node ``partition``'s update of the synthetic task (flat, in |x| <= 0.12)."""
    j = np.arange(size)
    return 0.01 * (partition + 1) * ((j % 5) - 2).astype(np.float64)


def synthetic_integers(partition: int, size: int, bits: int) -> npt.NDArray[np.int64]:
    """Node ``partition``'s integer vector in integer mode (values in [0, 2^min(bits, 20)))."""
    j = np.arange(size, dtype=np.int64)
    return ((partition + 1) * 1009 + j * 31 * (partition + 3)) % (1 << min(bits, 20))


def synthetic_examples(partition: int) -> int:
    """Node ``partition``'s example count (its FedAvg weight)."""
    return 10 * (partition + 1)


def synthetic_train(arrays: Arrays, partition: int, mode: str, bits: int) -> tuple[Arrays, int]:
    """The synthetic "training": global + the node's known update (or its integers)."""
    names = list(arrays)
    size = sum(a.size for a in arrays.values())
    flat = synthetic_integers(partition, size, bits) if mode == "integer" else synthetic_delta(partition, size)
    out: Arrays = {}
    pos = 0
    for k in names:
        a = arrays[k]
        piece = flat[pos : pos + a.size].reshape(a.shape)
        out[k] = piece.astype(a.dtype) if mode == "integer" else (a + piece).astype(a.dtype)
        pos += a.size
    return out, synthetic_examples(partition)


# ----------------------------------------------------------------------------- digits (torch)


def digits_model(hidden: int) -> Any:
    """The demo's MLP (64 -> hidden -> 10), deterministic initial weights."""
    from secagg.torch.demo import make_model

    return make_model("mlp", hidden=hidden, seed=0)


def digits_initial(hidden: int) -> Arrays:
    """Initial arrays of the digits MLP."""
    return {k: v.detach().numpy().copy() for k, v in digits_model(hidden).state_dict().items()}


def _load(model: Any, arrays: Arrays) -> None:
    import torch

    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})


def digits_train(
    arrays: Arrays, partition: int, num_partitions: int, *, hidden: int, epochs: int, lr: float, seed: int
) -> tuple[Any, int]:
    """Train the MLP on this node's non-IID share of the digits; return (model, examples)."""
    from secagg.torch.demo import load_digits_federated, train_local

    data = load_digits_federated(max(num_partitions, 2), seed=0)
    model = digits_model(hidden)
    _load(model, arrays)
    n = train_local(model, data.client(partition + 1), epochs=epochs, lr=lr, seed=seed)
    return model, n


def digits_accuracy(arrays: Arrays, hidden: int, num_partitions: int) -> float:
    """Test accuracy of the global arrays."""
    from secagg.torch.demo import evaluate, load_digits_federated

    data = load_digits_federated(max(num_partitions, 2), seed=0)
    model = digits_model(hidden)
    _load(model, arrays)
    return float(evaluate(model, data.test_x, data.test_y))


def digits_local_eval(
    arrays: Arrays, partition: int, num_partitions: int, *, hidden: int
) -> tuple[dict[str, float], int]:
    """Loss and accuracy of the global arrays on this node's own digits share."""
    import torch

    from secagg.torch.demo import load_digits_federated

    data = load_digits_federated(max(num_partitions, 2), seed=0).client(partition + 1)
    model = digits_model(hidden)
    _load(model, arrays)
    model.eval()
    with torch.no_grad():
        logits = model(data.x)
        loss = float(torch.nn.functional.cross_entropy(logits, data.y).item())
        acc = float((logits.argmax(dim=1) == data.y).float().mean().item())
    return {"loss": loss, "accuracy": acc}, data.size


def synthetic_local_eval(arrays: Arrays, partition: int) -> tuple[dict[str, float], int]:
    """A known metric of the synthetic task: the squared distance of the global arrays to
    this node's target (its update), and 1 - that distance clipped at 0 as an "accuracy"."""
    flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays.values()])
    loss = float(np.mean((flat - synthetic_delta(partition, flat.size)) ** 2))
    return {"loss": loss, "accuracy": max(0.0, 1.0 - loss)}, synthetic_examples(partition)
