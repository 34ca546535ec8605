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
from secagg.torch import (
    ClientDPSGD,
    SelfReportedEpsilon,
    client_state_dict,
    compose_self_reported,
    prepare_global_model,
    self_reported_epsilon,
    strip_prefixes,
    unwrap,
)
from secagg.torch.flatten import UpdateError, UpdateLayout

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
    # torch.compile and DDP/DataParallel names too, nested in any order
    assert set(strip_prefixes({"module._orig_mod.a": t, "_orig_mod._module.b": t})) == {"a", "b"}


def test_unwrap_compile_and_data_parallel() -> None:
    g = _global()
    assert unwrap(torch.compile(g)) is g
    assert unwrap(nn.DataParallel(g)) is g
    assert unwrap(nn.DataParallel(torch.compile(g))) is g
    layout = UpdateLayout.from_module(nn.DataParallel(g), include_buffers=True)
    assert layout == UpdateLayout.from_module(g, include_buffers=True)
    state = client_state_dict(nn.DataParallel(g), layout=layout, client=1)
    assert set(layout.names) <= set(state)
    prefixed = {f"module._orig_mod.{k}": v for k, v in g.state_dict().items()}
    assert client_state_dict(prefixed, layout=layout).keys() == g.state_dict().keys()


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


def _claim(client: object, steps: int, *, z: float = 1.0, q: float = 0.25, delta: float = 1e-5) -> SelfReportedEpsilon:
    from dp.accountants import make_accountant
    from dp.events import GaussianEvent, PoissonSampledEvent

    acct = make_accountant("rdp")
    acct.compose(PoissonSampledEvent(q, GaussianEvent(z)), steps)
    return SelfReportedEpsilon(str(client), acct.get_epsilon(delta), delta, "rdp", ((z, q, steps),))


def test_self_reported_epsilons_compose_across_rounds() -> None:
    r1, r2 = _claim(1, 10), _claim(1, 10)
    one = compose_self_reported({}, [r1, _claim(2, 5)])
    assert one["1"].rounds == 1 and one["1"].epsilon == pytest.approx(r1.epsilon, rel=1e-9)
    two = compose_self_reported(one, [r2])
    assert set(two) == {"1", "2"} and two["2"] == one["2"]  # no report: unchanged
    c = two["1"]
    assert isinstance(c, ClientDPSGD) and c.rounds == 2 and c.history == ((1.0, 0.25, 10), (1.0, 0.25, 10))
    # two rounds of 10 steps are 20 steps: more than one round's claim, never the per-round figure
    assert c.epsilon == pytest.approx(_claim(1, 20).epsilon, rel=1e-9) and c.epsilon > r2.epsilon
    assert one["1"].rounds == 1  # the previous composition is not changed
    d = c.to_dict()
    assert d["verified"] is False and d["rounds"] == 2 and "2 round" in d["scope"]
    # the smallest delta any report used (the figure is at that delta, hence larger)
    tighter = compose_self_reported(two, [_claim(1, 10, delta=1e-7)])["1"]
    assert tighter.delta == 1e-7 and tighter.epsilon > c.epsilon
    with pytest.raises(SecAggValueError, match="twice"):
        compose_self_reported({}, [r1, r2])
    from secagg.errors import SecAggTypeError

    with pytest.raises(SecAggTypeError):
        compose_self_reported({}, [1.0])  # type: ignore[list-item]
    noiseless = compose_self_reported({}, [SelfReportedEpsilon("3", math.inf, 1e-5, "rdp", ((0.0, 0.5, 1),))])
    assert noiseless["3"].epsilon == math.inf and noiseless["3"].to_dict()["epsilon"] is None
