"""UpdateLayout: flatten / unflatten round trips, ordering, typed rejections of bad updates."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from secagg.errors import SecAggValueError
from secagg.torch.flatten import TensorSpec, UpdateError, UpdateLayout, delta

torch.set_num_threads(1)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # registered in non-alphabetical order on purpose
        self.z = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.a = nn.Linear(3, 2, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.frozen(self.a(self.bn(self.z(x))))
        return out


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def test_default_layout_is_trainable_params_sorted_by_name() -> None:
    lay = UpdateLayout.from_module(_net())
    assert lay.names == ("a.weight", "bn.bias", "bn.weight", "z.bias", "z.weight")
    assert lay.size == 6 + 3 + 3 + 3 + 12
    # everything else the state dict holds is known and ignored
    assert {"frozen.weight", "frozen.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} == set(
        lay.ignored
    )


def test_layout_options_and_int_buffer_skipped() -> None:
    net = _net()
    full = UpdateLayout.from_module(net, trainable_only=False, include_buffers=True)
    assert "frozen.weight" in full.names and "bn.running_mean" in full.names
    assert "bn.num_batches_tracked" not in full.names
    assert "bn.num_batches_tracked" in full.ignored
    # from_state_dict selects every floating tensor
    sd = UpdateLayout.from_state_dict(net.state_dict())
    assert sd.names == full.names


def test_order_independent_of_registration_and_mapping_order() -> None:
    specs = [TensorSpec("b", (2,), "float32"), TensorSpec("a", (3,), "float16")]
    l1 = UpdateLayout(tuple(specs))
    l2 = UpdateLayout(tuple(reversed(specs)))
    assert l1 == l2 and l1.fingerprint() == l2.fingerprint()
    state = {"b": torch.tensor([4.0, 5.0]), "a": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)}
    rev = dict(reversed(list(state.items())))
    np.testing.assert_array_equal(l1.flatten(state), l1.flatten(rev))
    np.testing.assert_array_equal(l1.flatten(state), [1, 2, 3, 4, 5])
    assert l1.slice_of("b") == slice(3, 5)


def test_dict_round_trip_and_fingerprint_changes() -> None:
    lay = UpdateLayout.from_module(_net())
    again = UpdateLayout.from_dict(lay.to_dict())
    assert again == lay and again.fingerprint() == lay.fingerprint()
    other = UpdateLayout.from_module(_net(), trainable_only=False)
    assert other.fingerprint() != lay.fingerprint()
    with pytest.raises(SecAggValueError):
        UpdateLayout.from_dict({"nope": 1})


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_every_dtype(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    state = {
        "w": torch.randn(5, 7, generator=gen).to(dtype),
        "b": torch.randn(7, generator=gen).to(dtype),
        "s": torch.randn((), generator=gen).to(dtype),
        "e": torch.empty(0, 3, dtype=dtype),
    }
    lay = UpdateLayout.from_state_dict(state)
    vec = lay.flatten(state)
    assert vec.shape == (35 + 7 + 1,)
    assert vec.dtype == (np.float64 if dtype == torch.float64 else np.float32)
    back = lay.unflatten(vec)
    for k, t in state.items():
        assert back[k].dtype == dtype and back[k].shape == t.shape
        assert torch.equal(back[k], t)  # exact: every half value is exact in float32
    # unflatten owns its storage
    vec[:] = 0
    assert torch.equal(back["w"], state["w"])


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=3), min_size=1, max_size=5),
    dt=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(shapes: list[list[int]], dt: torch.dtype, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    state = {f"t{i}": (torch.randn(tuple(s), generator=gen) * 100).to(dt) for i, s in enumerate(shapes)}
    lay = UpdateLayout.from_state_dict(state)
    back = lay.unflatten(lay.flatten(state, dtype=np.float64))
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_module_round_trip_and_add_to() -> None:
    net = _net()
    lay = UpdateLayout.from_module(net)
    vec = lay.flatten(net.state_dict())  # a full state dict: ignored names are skipped
    for name, t in lay.unflatten(vec).items():
        assert torch.equal(t, net.state_dict()[name])
    before = lay.flatten(net.state_dict()).copy()
    frozen_before = net.frozen.weight.detach().clone()
    lay.add_to(net, np.ones(lay.size, dtype=np.float32), alpha=0.5)
    np.testing.assert_allclose(lay.flatten(net.state_dict()), before + 0.5, rtol=0, atol=1e-6)
    assert torch.equal(net.frozen.weight, frozen_before)


def test_add_to_validates_before_changing() -> None:
    net = _net()
    lay = UpdateLayout.from_module(net)
    before = lay.flatten(net.state_dict()).copy()
    bad = np.ones(lay.size, dtype=np.float32)
    bad[-1] = np.nan
    with pytest.raises(SecAggValueError):
        lay.add_to(net, bad)
    with pytest.raises(SecAggValueError):
        lay.add_to(net, np.ones(lay.size + 1, dtype=np.float32))
    np.testing.assert_array_equal(lay.flatten(net.state_dict()), before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flatten_delta_is_exact_in_float32_for_half_models(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(64, generator=gen).to(dtype)}
    new = {"w": (base["w"].float() + 1e-3 * torch.randn(64, generator=gen)).to(dtype)}
    lay = UpdateLayout.from_state_dict(base)
    got = lay.flatten_delta(new, base)
    want = (new["w"].float() - base["w"].float()).numpy()
    np.testing.assert_array_equal(got, want)
    # the per-tensor helper agrees (in the tensor's own dtype)
    d = delta(new, base)
    assert d["w"].dtype == dtype


def test_out_buffer_reused_and_checked() -> None:
    lay = UpdateLayout.from_module(_net())
    buf = np.empty(lay.size, dtype=np.float32)
    vec = lay.flatten(_net().state_dict(), out=buf)
    assert vec is buf
    with pytest.raises(SecAggValueError):
        lay.flatten(_net().state_dict(), out=np.empty(lay.size, dtype=np.float64))
    with pytest.raises(SecAggValueError):
        lay.flatten(_net().state_dict(), out=np.empty(lay.size + 1, dtype=np.float32))


def _good() -> tuple[UpdateLayout, dict[str, torch.Tensor]]:
    state = {"layer.weight": torch.ones(3, 2), "layer.bias": torch.zeros(3), "head": torch.ones(2, dtype=torch.float16)}
    return UpdateLayout.from_state_dict(state), state


@pytest.mark.parametrize(
    ("mutate", "tensor", "reason"),
    [
        (lambda s: s.pop("layer.bias"), "layer.bias", "missing"),
        (lambda s: s.__setitem__("extra.w", torch.ones(1)), "extra.w", "unexpected"),
        (lambda s: s.__setitem__("layer.weight", torch.ones(2, 3)), "layer.weight", "shape"),
        (lambda s: s.__setitem__("head", torch.ones(2)), "head", "dtype"),
        (lambda s: s.__setitem__("layer.bias", torch.tensor([0.0, float("nan"), 0.0])), "layer.bias", "nonfinite"),
        (lambda s: s.__setitem__("layer.weight", torch.full((3, 2), float("inf"))), "layer.weight", "nonfinite"),
        (lambda s: s.__setitem__("head", torch.tensor([1.0, -float("inf")], dtype=torch.float16)), "head", "nonfinite"),
        (lambda s: s.__setitem__("layer.bias", np.zeros(3)), "layer.bias", "type"),
    ],
    ids=["missing", "extra", "shape", "dtype", "nan", "inf", "half-inf", "not-a-tensor"],
)
def test_bad_updates_name_client_and_tensor(mutate: object, tensor: str, reason: str) -> None:
    lay, state = _good()
    bad = dict(state)
    mutate(bad)  # type: ignore[operator]
    with pytest.raises(UpdateError) as info:
        lay.flatten(bad, client=7)
    err = info.value
    assert isinstance(err, SecAggValueError)
    assert err.client == 7 and err.tensor == tensor and err.reason == reason
    assert "client 7" in str(err) and repr(tensor) in str(err)
    # flatten_delta rejects the same way
    with pytest.raises(UpdateError) as info2:
        lay.flatten_delta(bad, state, client=7)
    assert info2.value.tensor == tensor


def test_bad_base_is_blamed_on_global() -> None:
    lay, state = _good()
    base = dict(state)
    base.pop("head")
    with pytest.raises(UpdateError) as info:
        lay.flatten_delta(state, base, client=3)
    assert info.value.client == "global" and info.value.tensor == "head"


def test_not_a_mapping() -> None:
    lay, _ = _good()
    with pytest.raises(UpdateError) as info:
        lay.flatten([1, 2], client="c9")  # type: ignore[arg-type]
    assert info.value.reason == "type" and info.value.tensor is None and "client c9" in str(info.value)


def test_requires_grad_tensors_flatten() -> None:
    p = nn.Parameter(torch.ones(3))
    lay = UpdateLayout.from_state_dict({"p": p.detach()})
    np.testing.assert_array_equal(lay.flatten({"p": p}), [1, 1, 1])


def test_bad_layouts_rejected() -> None:
    with pytest.raises(SecAggValueError):
        UpdateLayout((TensorSpec("a", (1,), "float32"), TensorSpec("a", (2,), "float32")))
    with pytest.raises(SecAggValueError):
        TensorSpec("a", (1,), "int64")
    with pytest.raises(SecAggValueError):
        TensorSpec("a", (-1,), "float32")
    with pytest.raises(SecAggValueError):
        UpdateLayout((TensorSpec("a", (1,), "float32"),), frozenset({"a"}))
    with pytest.raises(SecAggValueError):
        UpdateLayout.from_state_dict({"n": torch.zeros(2, dtype=torch.int64)})
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(SecAggValueError):
        UpdateLayout.from_module(frozen)


def test_tied_weights_appear_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

    m = Tied()
    lay = UpdateLayout.from_module(m)
    assert lay.names == ("emb.weight",)
    assert "out.weight" in lay.ignored
    assert lay.flatten(m.state_dict()).size == 15


def test_importing_secagg_does_not_import_torch() -> None:
    code = "import sys, secagg, secagg.cli; assert 'torch' not in sys.modules; import secagg.torch; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
