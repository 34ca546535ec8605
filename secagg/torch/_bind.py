"""A torch :class:`~secagg.torch.flatten.UpdateLayout` and the round's :class:`~secagg.spec.RoundSpec`.

The spec describes the layout as :class:`~secagg.spec.ArraySpec` (name, shape, dtype) and
binds the global model by :func:`secagg.spec.model_digest` of its numpy arrays.  Both halves
convert the same way, here: tensors go to the CPU, ``bfloat16`` (which numpy lacks) is
widened to ``float32`` (exact), in the layout's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy.typing as npt
import torch

from secagg.errors import SecAggValueError
from secagg.spec import ArraySpec, RoundSpec
from secagg.torch.flatten import TensorSpec, UpdateLayout

__all__ = ["array_specs", "layout_of_spec", "model_arrays"]


def array_specs(layout: UpdateLayout) -> tuple[ArraySpec, ...]:
    """The layout's tensors as the spec's :class:`ArraySpec` (same names, shapes, dtype names, order)."""
    return tuple(ArraySpec(s.name, s.shape, s.dtype) for s in layout.specs)


def model_arrays(layout: UpdateLayout, state: Mapping[str, torch.Tensor]) -> dict[str, npt.NDArray[Any]]:
    """The layout's tensors of ``state`` as numpy arrays (for :func:`secagg.spec.model_digest`).

    Raises:
        UpdateError: ``state`` does not fit the layout.
    """
    layout.check(state, client="global")
    out: dict[str, npt.NDArray[Any]] = {}
    with torch.no_grad():
        for s in layout.specs:
            t = state[s.name].detach().cpu()
            out[s.name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return out


def layout_of_spec(spec: RoundSpec, ignored: frozenset[str] = frozenset()) -> UpdateLayout:
    """The :class:`UpdateLayout` a spec describes (``ignored``: other names a client's
    state dict may hold).

    Raises:
        SecAggValueError: the spec's arrays are not float tensors in name order (no torch
            layout produces such a spec).
    """
    layout = UpdateLayout(tuple(TensorSpec(s.name, s.shape, s.dtype) for s in spec.layout), ignored - {
        s.name for s in spec.layout
    })
    if array_specs(layout) != spec.layout:
        raise SecAggValueError("the round's layout is not a torch layout (float tensors sorted by name)")
    return layout

