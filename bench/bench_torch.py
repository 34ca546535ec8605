"""Flatten / unflatten of a LoRA-sized update (10**7 values, 100 tensors, fp32 and bf16).

Run with ``pytest bench/bench_torch.py`` (``--benchmark-disable`` for a smoke run).
The memory test checks that flattening allocates (numpy side, via tracemalloc) little
more than the output vector itself.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

pytest.importorskip("torch")

import numpy as np
import torch

from secagg.torch.flatten import UpdateLayout

torch.set_num_threads(1)

D = 10**7
N_TENSORS = 100


def _state(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    per = D // N_TENSORS
    # LoRA-like: pairs of (r x k) and (k x r) matrices
    rows = 16
    return {f"layers.{i:03d}.lora": torch.randn(rows, per // rows, generator=gen).to(dtype) for i in range(N_TENSORS)}


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def update(request: Any) -> tuple[UpdateLayout, dict[str, torch.Tensor]]:
    state = _state(request.param)
    return UpdateLayout.from_state_dict(state), state


def test_flatten_1e7(benchmark: Any, update: tuple[UpdateLayout, dict[str, torch.Tensor]]) -> None:
    layout, state = update
    out = np.empty(layout.size, dtype=np.float32)
    vec = benchmark(layout.flatten, state, client=1, out=out)
    assert vec.size == D


def test_unflatten_1e7(benchmark: Any, update: tuple[UpdateLayout, dict[str, torch.Tensor]]) -> None:
    layout, state = update
    vec = layout.flatten(state)
    back = benchmark(layout.unflatten, vec)
    name = layout.names[0]
    assert torch.equal(back[name], state[name])


def test_flatten_memory_is_one_output_vector(update: tuple[UpdateLayout, dict[str, torch.Tensor]]) -> None:
    layout, state = update
    tracemalloc.start()
    try:
        vec = layout.flatten(state)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.2 * vec.nbytes, (peak, vec.nbytes)


@pytest.fixture(scope="module", params=["fedavg", "dp"])
def client_1e6(request: Any) -> tuple[Any, UpdateLayout, dict[str, torch.Tensor]]:
    from secagg.torch import DPAggregation, FedAvgAggregation, SecureClient, SecureServer

    gen = torch.Generator().manual_seed(1)
    state = {f"lora.{i:02d}": torch.randn(16, 625, generator=gen) * 1e-3 for i in range(100)}  # 10**6 values
    base = {k: torch.zeros_like(v) for k, v in state.items()}
    layout = UpdateLayout.from_state_dict(state)
    agg: Any = (
        FedAvgAggregation(bound=1.0, max_weight=100)
        if request.param == "fedavg"
        else DPAggregation(clip_norm=1.0, noise_multiplier=1.0)
    )
    spec = SecureServer(layout, agg, rng=1).new_round(20, base)
    return SecureClient(spec, 1, base, rng=2), layout, state


def test_client_encode_1e6(benchmark: Any, client_1e6: Any) -> None:
    """The whole client-side encoding (flatten delta + DP pipeline or fixed point), for
    comparison with test_flatten_1e7 / 10: flattening is a small share of it."""
    client, layout, state = client_1e6
    ring = benchmark(client.encode, state, num_examples=10)
    assert ring.size >= layout.size
