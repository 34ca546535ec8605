"""Model wrappers and the tensor names they add.

Wrapping a model changes its ``state_dict`` names: opacus' ``GradSampleModule`` adds
``_module.``, ``torch.compile``'s ``OptimizedModule`` adds ``_orig_mod.``, and
``DistributedDataParallel`` / ``DataParallel`` add ``module.``.  A round's layout always uses
the plain model's names: :func:`unwrap` finds the plain module and :func:`map_names` maps a
wrapped state dict's keys onto a layout's names.

opacus is never imported here: its wrappers are recognised only once it is loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping

import torch
from torch import nn

from secagg.errors import SecAggTypeError, SecAggValueError

__all__ = ["WRAPPER_PREFIXES", "map_names", "strip_prefixes", "unwrap"]

#: Name prefixes added by wrappers: opacus (``_module.``), torch.compile (``_orig_mod.``),
#: DistributedDataParallel and DataParallel (``module.``).
WRAPPER_PREFIXES: tuple[str, ...] = ("_module.", "_orig_mod.", "module.")
_MAX_DEPTH = 8


def _inner(model: nn.Module) -> nn.Module | None:
    """The module ``model`` wraps, or None when it wraps nothing we know."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        inner = model.module
    elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):  # torch.compile
        inner = model._orig_mod
    elif "opacus" in sys.modules:  # never imported: nothing can be an opacus wrapper (and importing costs ~1 s)
        from opacus.grad_sample.gsm_base import AbstractGradSampleModule

        if isinstance(model, AbstractGradSampleModule):
            inner = model._module
        elif type(model).__name__ == "DPDDP":
            inner = model.module
        else:
            return None
    else:
        return None
    return inner if isinstance(inner, nn.Module) else None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside wrappers (opacus' ``GradSampleModule`` and ``DPDDP``,
    ``torch.compile``, ``DistributedDataParallel``, ``DataParallel``; nested), or ``model``."""
    if not isinstance(model, nn.Module):
        raise SecAggTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for _ in range(_MAX_DEPTH):
        inner = _inner(model)
        if inner is None:
            break
        model = inner
    return model


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if p and name.startswith(p):
                name = name[len(p) :]
                changed = True
    return name


def strip_prefixes(
    state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...] = WRAPPER_PREFIXES
) -> dict[str, torch.Tensor]:
    """Copy of ``state`` (same tensors) with wrapper ``prefixes`` removed from the front of
    every key, repeatedly (nested wrappers).

    Raises:
        SecAggValueError: two keys map to the same name.
    """
    if not isinstance(state, Mapping):
        raise SecAggTypeError(f"state must be a mapping, got {type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _strip(str(key), prefixes)
        if name in out:
            raise SecAggValueError(f"keys {key!r} and another both map to {name!r}; the state mixes wrapped names")
        out[name] = value
    return out


def map_names(
    state: Mapping[str, torch.Tensor], known: Collection[str], prefixes: tuple[str, ...] = WRAPPER_PREFIXES
) -> dict[str, torch.Tensor]:
    """``state`` with each key that is not in ``known`` replaced by its name without
    wrapper ``prefixes``, if that name is known (a model whose own submodule is called
    ``module`` keeps its names).  Other keys are kept as they are, for the layout's check
    to report.

    Raises:
        SecAggValueError: two keys map to the same name.
    """
    if not isinstance(state, Mapping):
        raise SecAggTypeError(f"state must be a mapping, got {type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = str(key)
        if name not in known:
            bare = _strip(name, prefixes)
            name = bare if bare in known else name
        if name in out:
            raise SecAggValueError(f"keys {key!r} and another both map to {name!r}; the state mixes wrapped names")
        out[name] = value
    return out
