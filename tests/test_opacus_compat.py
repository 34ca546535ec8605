"""A client trained with a real opacus PrivacyEngine maps onto the fixed global model."""

from __future__ import annotations

import copy
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("opacus")

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secagg.errors import SecAggValueError
from secagg.torch.flatten import UpdateError, UpdateLayout
from secagg.torch.opacus_compat import (
    SelfReportedEpsilon,
    client_state_dict,
    prepare_global_model,
    self_reported_epsilon,
    strip_prefixes,
    unwrap,
)

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore")


def _global() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def _train_one_step_private(model: nn.Module) -> tuple[nn.Module, object]:
    from opacus import PrivacyEngine

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    engine = PrivacyEngine(accountant="rdp")
    private, opt, loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    private.train()
    for xb, yb in loader:
        if len(yb) == 0:
            continue
        opt.zero_grad()
        torch.autograd.backward(nn.functional.cross_entropy(private(xb), yb))
        opt.step()
        break
    return private, engine


def test_prepare_replaces_batchnorm_and_leaves_input_alone() -> None:
    g = _global()
    fixed = prepare_global_model(g)
    assert any(isinstance(m, nn.BatchNorm1d) for m in g.modules())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())
    # fixing again is a no-op for the layout
    again = prepare_global_model(fixed)
    lay = UpdateLayout.from_module(fixed, include_buffers=True)
    assert UpdateLayout.from_module(again, include_buffers=True) == lay


def test_opacus_client_maps_onto_fixed_global_model() -> None:
    global_model = prepare_global_model(_global())
    layout = UpdateLayout.from_module(global_model, include_buffers=True)
    base = {k: v.clone() for k, v in global_model.state_dict().items()}

    local = copy.deepcopy(global_model)
    private, engine = _train_one_step_private(local)
    raw = private.state_dict()
    assert any(k.startswith("_module.") for k in raw)
    # without mapping, the round's tensor checks reject the client
    with pytest.raises(UpdateError):
        layout.flatten(raw, client=4)
    state = client_state_dict(private, layout=layout, client=4)
    assert set(layout.names) <= set(state)
    d = layout.flatten_delta(state, base, client=4)
    assert d.shape == (layout.size,) and np.isfinite(d).all() and np.abs(d).max() > 0
    # the plain-dict path gives the same names
    assert set(client_state_dict(raw)) == set(state)
    assert unwrap(private) is local

    rep = self_reported_epsilon(engine, 1e-5, client=4)
    assert isinstance(rep, SelfReportedEpsilon)
    assert rep.kind == "self-reported" and rep.client == "4" and rep.accountant == "rdp"
    assert 0 < rep.epsilon < math.inf and rep.steps == 1
    assert rep.to_dict()["verified"] is False


def test_unfixed_global_model_rejects_opacus_clients() -> None:
    global_model = _global()  # BatchNorm not fixed: buffers in the layout
    layout = UpdateLayout.from_module(global_model, include_buffers=True)
    client_model = prepare_global_model(global_model)
    private, _ = _train_one_step_private(client_model)
    with pytest.raises(UpdateError) as info:
        client_state_dict(private, layout=layout, client=2)
    assert info.value.client == 2 and info.value.tensor is not None and "running" in info.value.tensor


def test_strip_prefixes_nested_and_collisions() -> None:
    t = torch.zeros(1)
    assert set(strip_prefixes({"_module._module.a": t, "_module.b": t, "c": t})) == {"a", "b", "c"}
    with pytest.raises(SecAggValueError):
        strip_prefixes({"_module.a": t, "a": t})


def test_self_reported_validation() -> None:
    with pytest.raises(SecAggValueError):
        SelfReportedEpsilon("1", -1.0, 1e-5, "rdp")
    with pytest.raises(SecAggValueError):
        SelfReportedEpsilon("1", 1.0, 0.0, "rdp")
    with pytest.raises(SecAggValueError):
        SelfReportedEpsilon("1", float("nan"), 1e-5, "rdp")
    with pytest.raises(SecAggValueError):
        SelfReportedEpsilon("1", 1.0, 1e-5, "rdp", kind="verified")
    from opacus import PrivacyEngine

    fresh = self_reported_epsilon(PrivacyEngine(accountant="rdp"), 1e-5, client=1)
    assert fresh.epsilon == 0.0 and fresh.steps == 0
