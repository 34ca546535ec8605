"""Flatten a PyTorch model update into one vector, and back.

Secure aggregation works on a single vector of length ``d``.  An :class:`UpdateLayout`
fixes which tensors of a model take part, in which order, with which shape and dtype;
client and server build it from the same (global) model, or the server sends it with the
round configuration (:meth:`UpdateLayout.to_dict`), and both sides compare
:meth:`UpdateLayout.fingerprint`.

Order
    Tensors are laid out **sorted by name** (Python string order of the ``state_dict``
    keys).  The order depends only on the set of names, never on module registration order
    or on the order of a mapping a client hands in, so it is identical on every party that
    agrees on the names.

Which tensors
    :meth:`UpdateLayout.from_module` takes the trainable parameters by default
    (``requires_grad``; a LoRA adapter's frozen base weights are left out), all parameters
    with ``trainable_only=False``, and floating-point persistent buffers with
    ``include_buffers=True`` (BatchNorm running statistics).  Integer buffers such as
    BatchNorm's ``num_batches_tracked`` are never part of the update: they are not
    averageable.  Tied parameters appear once, under their first name.  Names the model
    has but the layout leaves out are recorded in :attr:`UpdateLayout.ignored`, so a full
    ``model.state_dict()`` can be handed to :meth:`UpdateLayout.flatten` directly; any
    other extra name is an error.

Dtypes
    ``float32``, ``float16``, ``bfloat16`` and ``float64``.  The flat vector is
    ``float32`` (every half-precision value is exact in it) unless the layout holds a
    ``float64`` tensor, then ``float64``.

Cost
    :meth:`UpdateLayout.flatten` preallocates one output array (or writes into ``out``)
    and copies each tensor into its slice through a zero-copy :func:`torch.from_numpy`
    view: no per-element Python loop and no full-size temporary beyond the output.  CUDA
    tensors are copied to the CPU tensor by tensor.  Finiteness is checked per tensor, at
    most one byte per element of the largest tensor extra.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.torch._names import unwrap

__all__ = [
    "SUPPORTED_DTYPES",
    "TensorSpec",
    "UpdateError",
    "UpdateLayout",
    "delta",
]

#: Floating dtypes an update may hold, by name.
SUPPORTED_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in SUPPORTED_DTYPES.items()}

FloatVector = npt.NDArray[np.float32] | npt.NDArray[np.float64]
_FINITE_CHUNK = 1 << 20


class UpdateError(SecAggValueError):
    """A client's model update does not match the round's :class:`UpdateLayout`.

    ``client`` names the client (``None`` when not given), ``tensor`` the offending
    tensor (``None`` when the problem is the whole update) and ``reason`` is one of
    ``"type"``, ``"missing"``, ``"unexpected"``, ``"dtype"``, ``"shape"``, ``"nonfinite"``.
    The aggregation drivers treat a client whose update raises this as a dropout.
    """

    def __init__(self, message: str, *, client: object = None, tensor: str | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.client = client
        self.tensor = tensor
        self.reason = reason


def _who(client: object) -> str:
    return "update" if client is None else f"client {client}: update"


def _dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        raise SecAggValueError(
            f"dtype {dtype} is not supported in an update; use one of {sorted(SUPPORTED_DTYPES)} "
            "(leave integer or complex tensors out of the layout)"
        )
    return name


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of an update: ``name`` (state_dict key), ``shape`` and ``dtype`` name
    (a key of :data:`SUPPORTED_DTYPES`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SecAggValueError("a TensorSpec needs a non-empty string name")
        if not isinstance(self.shape, tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.shape
        ):
            raise SecAggValueError(f"tensor {self.name!r}: shape must be a tuple of ints >= 0, got {self.shape!r}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise SecAggValueError(
                f"tensor {self.name!r}: dtype {self.dtype!r} is not supported; use one of {sorted(SUPPORTED_DTYPES)}"
            )

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def torch_dtype(self) -> torch.dtype:
        """The :class:`torch.dtype`."""
        return SUPPORTED_DTYPES[self.dtype]

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> TensorSpec:
        """Spec of an existing tensor."""
        return cls(name, tuple(int(s) for s in tensor.shape), _dtype_name(tensor.dtype))


@dataclass(frozen=True)
class UpdateLayout:
    """Which tensors form an update, in which order (sorted by name), with which shapes
    and dtypes.  ``ignored`` lists names a model's ``state_dict`` may also hold that are
    not part of the update (frozen parameters, excluded or integer buffers, tied aliases).

    Build it with :meth:`from_module` or :meth:`from_state_dict`; the constructor sorts
    ``specs`` by name.
    """

    specs: tuple[TensorSpec, ...]
    ignored: frozenset[str] = frozenset()
    _offsets: dict[str, tuple[int, int]] = field(init=False, repr=False, compare=False)
    _size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        specs = tuple(self.specs)
        if not all(isinstance(s, TensorSpec) for s in specs):
            raise SecAggTypeError("UpdateLayout.specs must be TensorSpec objects")
        specs = tuple(sorted(specs, key=lambda s: s.name))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = next(n for i, n in enumerate(names) if i and names[i - 1] == n)
            raise SecAggValueError(f"tensor {dup!r} appears twice in the layout; give each tensor one name")
        ignored = frozenset(self.ignored)
        both = ignored.intersection(names)
        if both:
            raise SecAggValueError(f"tensor {sorted(both)[0]!r} is both in the layout and ignored")
        offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for s in specs:
            offsets[s.name] = (pos, pos + s.numel)
            pos += s.numel
        object.__setattr__(self, "specs", specs)
        object.__setattr__(self, "ignored", ignored)
        object.__setattr__(self, "_offsets", offsets)
        object.__setattr__(self, "_size", pos)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_module(
        cls, model: nn.Module, *, trainable_only: bool = True, include_buffers: bool = False
    ) -> UpdateLayout:
        """Layout of ``model``'s update.

        Args:
            model: any :class:`torch.nn.Module`; wrappers (opacus, ``torch.compile``,
                DDP) are unwrapped, so the names are the plain model's.
            trainable_only: only parameters with ``requires_grad`` (default).
            include_buffers: also floating-point persistent buffers (integer buffers are
                always left out).

        Raises:
            SecAggValueError: a selected tensor has an unsupported dtype, or nothing is
                selected.
        """
        if not isinstance(model, nn.Module):
            raise SecAggTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model = unwrap(model)
        state_names = set(model.state_dict(keep_vars=True).keys())
        specs: list[TensorSpec] = []
        for name, p in model.named_parameters():  # remove_duplicate=True: tied weights once
            if trainable_only and not p.requires_grad:
                continue
            specs.append(TensorSpec.of(name, p))
        if include_buffers:
            for name, b in model.named_buffers():
                if name in state_names and b.dtype in _DTYPE_NAMES:
                    specs.append(TensorSpec.of(name, b))
        if not specs:
            raise SecAggValueError(
                "the model has no tensors to aggregate; unfreeze some parameters or pass include_buffers=True"
            )
        chosen = {s.name for s in specs}
        return cls(tuple(specs), frozenset(state_names - chosen))

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], *, include: Callable[[str], bool] | None = None
    ) -> UpdateLayout:
        """Layout of every floating-point tensor of ``state`` (for which ``include(name)``
        is true, if given); other keys are recorded as ignored.  A state dict carries no
        ``requires_grad`` flag: prefer :meth:`from_module` when a model is at hand."""
        if not isinstance(state, Mapping):
            raise SecAggTypeError(f"state must be a mapping of names to tensors, got {type(state).__name__}")
        specs: list[TensorSpec] = []
        ignored: set[str] = set()
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                raise SecAggTypeError(f"state[{name!r}] is a {type(t).__name__}, not a torch.Tensor")
            if t.dtype in _DTYPE_NAMES and (include is None or include(name)):
                specs.append(TensorSpec.of(name, t))
            else:
                ignored.add(name)
        if not specs:
            raise SecAggValueError("the state dict holds no selected floating-point tensor")
        return cls(tuple(specs), frozenset(ignored))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for the round configuration)."""
        return {
            "tensors": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.specs],
            "ignored": sorted(self.ignored),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UpdateLayout:
        """Inverse of :meth:`to_dict`."""
        try:
            specs = tuple(
                TensorSpec(str(t["name"]), tuple(int(s) for s in t["shape"]), str(t["dtype"])) for t in d["tensors"]
            )
            ignored = frozenset(str(n) for n in d.get("ignored", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise SecAggValueError(
                f"not a layout description ({exc}); pass the output of UpdateLayout.to_dict"
            ) from exc
        return cls(specs, ignored)

    # ------------------------------------------------------------------ properties
    @property
    def size(self) -> int:
        """Length ``d`` of the flat vector."""
        return self._size

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names in layout order."""
        return tuple(s.name for s in self.specs)

    @property
    def vector_dtype(self) -> type[np.float32] | type[np.float64]:
        """numpy dtype of the flat vector: float64 if any tensor is float64, else float32."""
        return np.float64 if any(s.dtype == "float64" for s in self.specs) else np.float32

    def slice_of(self, name: str) -> slice:
        """Where tensor ``name`` lives in the flat vector."""
        try:
            a, b = self._offsets[name]
        except KeyError:
            raise SecAggValueError(f"tensor {name!r} is not in the layout") from None
        return slice(a, b)

    def fingerprint(self) -> str:
        """Hex SHA-256 of the (name, shape, dtype) list: equal layouts, equal fingerprints."""
        payload = json.dumps([[s.name, list(s.shape), s.dtype] for s in self.specs], separators=(",", ":"))
        return hashlib.sha256(b"secagg/torch/layout/v1" + payload.encode()).hexdigest()

    # ------------------------------------------------------------------ validation
    def check(self, state: object, *, client: object = None) -> None:
        """Check names, types, shapes and dtypes of ``state`` against the layout (not the
        values).  Raises :class:`UpdateError` naming ``client`` and the tensor."""
        who = _who(client)
        if not isinstance(state, Mapping):
            raise UpdateError(
                f"{who} must be a mapping of tensor names to tensors, got {type(state).__name__}",
                client=client,
                reason="type",
            )
        for s in self.specs:
            if s.name not in state:
                raise UpdateError(
                    f"{who} is missing tensor {s.name!r}; send every tensor of the layout "
                    "(map wrapped names first, e.g. opacus_compat.client_state_dict)",
                    client=client,
                    tensor=s.name,
                    reason="missing",
                )
        for name in state:
            if name not in self._offsets and name not in self.ignored:
                raise UpdateError(
                    f"{who} has unexpected tensor {name!r}; the round's layout does not know it "
                    "(different model, or an unmapped wrapper prefix such as '_module.')",
                    client=client,
                    tensor=str(name),
                    reason="unexpected",
                )
        for s in self.specs:
            t = state[s.name]
            if not isinstance(t, torch.Tensor):
                raise UpdateError(
                    f"{who}: tensor {s.name!r} is a {type(t).__name__}, not a torch.Tensor",
                    client=client,
                    tensor=s.name,
                    reason="type",
                )
            if t.layout != torch.strided:
                raise UpdateError(
                    f"{who}: tensor {s.name!r} has layout {t.layout}; densify it (tensor.to_dense())",
                    client=client,
                    tensor=s.name,
                    reason="type",
                )
            if t.dtype != s.torch_dtype:
                raise UpdateError(
                    f"{who}: tensor {s.name!r} has dtype {t.dtype}, the layout expects {s.torch_dtype}; "
                    "train in the global model's dtype",
                    client=client,
                    tensor=s.name,
                    reason="dtype",
                )
            if tuple(t.shape) != s.shape:
                raise UpdateError(
                    f"{who}: tensor {s.name!r} has shape {tuple(t.shape)}, the layout expects {s.shape}",
                    client=client,
                    tensor=s.name,
                    reason="shape",
                )

    def _out(self, out: FloatVector | None, dtype: npt.DTypeLike | None) -> FloatVector:
        want = np.dtype(self.vector_dtype if dtype is None else dtype)
        if want not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise SecAggValueError(f"the flat vector dtype must be float32 or float64, got {want}")
        if out is None:
            return np.empty(self._size, dtype=want)
        if not isinstance(out, np.ndarray) or out.ndim != 1 or out.size != self._size or not out.flags.c_contiguous:
            raise SecAggValueError(f"out must be a C-contiguous 1-D array of length {self._size}")
        if out.dtype != want or not out.flags.writeable:
            raise SecAggValueError(f"out must be a writeable {want} array")
        return out

    def _check_finite(self, vec: FloatVector, client: object) -> None:
        for s in self.specs:
            a, b = self._offsets[s.name]
            for lo in range(a, b, _FINITE_CHUNK):
                if not np.isfinite(vec[lo : min(b, lo + _FINITE_CHUNK)]).all():
                    raise UpdateError(
                        f"{_who(client)}: tensor {s.name!r} holds NaN or infinite values; "
                        "lower the learning rate or clip gradients",
                        client=client,
                        tensor=s.name,
                        reason="nonfinite",
                    )

    # ------------------------------------------------------------------ flatten
    def flatten(
        self,
        state: Mapping[str, torch.Tensor],
        *,
        client: object = None,
        out: FloatVector | None = None,
        dtype: npt.DTypeLike | None = None,
    ) -> FloatVector:
        """Copy the layout's tensors of ``state`` into one 1-D vector (layout order).

        Args:
            state: a state dict or a delta (``name -> tensor``, any device); names in
                :attr:`ignored` are skipped.
            client: named in errors.
            out: optional preallocated vector to reuse across rounds (contents
                unspecified if an error is raised while copying).
            dtype: ``np.float32`` or ``np.float64``; default :attr:`vector_dtype`.

        Returns:
            the flat vector, ``shape (d,)``, model units.

        Raises:
            UpdateError: missing/extra tensor, wrong type/shape/dtype, NaN or infinity.
        """
        self.check(state, client=client)
        vec = self._out(out, dtype)
        with torch.no_grad():
            for s in self.specs:
                a, b = self._offsets[s.name]
                torch.from_numpy(vec[a:b]).view(s.shape).copy_(state[s.name])
        self._check_finite(vec, client)
        return vec

    def flatten_delta(
        self,
        new_state: Mapping[str, torch.Tensor],
        base_state: Mapping[str, torch.Tensor],
        *,
        client: object = None,
        out: FloatVector | None = None,
        dtype: npt.DTypeLike | None = None,
    ) -> FloatVector:
        """Flat ``new_state - base_state``, computed in the vector's precision (float32 or
        float64), so half-precision models lose nothing to the subtraction.

        ``base_state`` is the global model's state the client started from; errors about
        it name ``client="global"``.
        """
        self.check(new_state, client=client)
        self.check(base_state, client="global")
        vec = self._out(out, dtype)
        with torch.no_grad():
            for s in self.specs:
                a, b = self._offsets[s.name]
                view = torch.from_numpy(vec[a:b]).view(s.shape)
                view.copy_(new_state[s.name])
                view.sub_(base_state[s.name].to("cpu"))
        self._check_finite(vec, client)
        return vec

    def extract(self, model: nn.Module, *, client: object = None) -> dict[str, torch.Tensor]:
        """The layout's tensors of ``model`` (no copy; detached; wrappers such as opacus,
        ``torch.compile`` or DDP are unwrapped first)."""
        if not isinstance(model, nn.Module):
            raise SecAggTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        state = unwrap(model).state_dict()
        self.check(state, client=client)
        return {s.name: state[s.name] for s in self.specs}

    # ------------------------------------------------------------------ unflatten
    def _check_vector(self, vec: object) -> FloatVector:
        if not isinstance(vec, np.ndarray) or vec.ndim != 1 or vec.size != self._size:
            raise SecAggValueError(f"expected a 1-D numpy vector of length {self._size}")
        if vec.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise SecAggValueError(f"expected a float32 or float64 vector, got {vec.dtype}")
        if not np.isfinite(vec).all():
            raise SecAggValueError("the vector holds NaN or infinite values; it cannot be a decoded aggregate")
        return np.ascontiguousarray(vec)

    def unflatten(self, vec: FloatVector, *, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Tensors of the original shapes and dtypes from a flat vector (fresh storage;
        nothing aliases ``vec``).  ``device`` defaults to the CPU."""
        vec = self._check_vector(vec)
        out: dict[str, torch.Tensor] = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for s in self.specs:
                a, b = self._offsets[s.name]
                t = torch.empty(s.shape, dtype=s.torch_dtype, device=device)
                t.copy_(torch.from_numpy(vec[a:b]).view(s.shape))
                out[s.name] = t
        return out

    def add_to(self, model: nn.Module, vec: FloatVector, *, alpha: float = 1.0) -> None:
        """``tensor += alpha * vec[slice]`` for every layout tensor of ``model``, in place
        (the server applying an averaged delta).  Validates everything before changing
        the model."""
        vec = self._check_vector(vec)
        targets = self.extract(model, client="global")
        if not np.isfinite(alpha):
            raise SecAggValueError("alpha must be finite")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for s in self.specs:
                a, b = self._offsets[s.name]
                t = targets[s.name]
                src = torch.from_numpy(vec[a:b]).view(s.shape).to(t.device)
                if t.dtype in (torch.float16, torch.bfloat16):
                    # Add in float32 and round once, not twice.
                    t.copy_(t.float().add_(src.float(), alpha=alpha))
                else:
                    t.add_(src.to(t.dtype), alpha=alpha)


def delta(
    new_state: Mapping[str, torch.Tensor],
    global_state: Mapping[str, torch.Tensor],
    *,
    names: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-tensor ``new - global`` for the floating tensors (or ``names``) of ``new_state``,
    in each tensor's own dtype and device.  For half-precision models prefer
    :meth:`UpdateLayout.flatten_delta`, which subtracts in float32."""
    if not isinstance(new_state, Mapping) or not isinstance(global_state, Mapping):
        raise SecAggTypeError("delta takes two mappings of names to tensors")
    chosen = (
        list(names)
        if names is not None
        else [n for n, t in new_state.items() if isinstance(t, torch.Tensor) and t.dtype in _DTYPE_NAMES]
    )
    for n in chosen:
        if n not in new_state or n not in global_state:
            raise UpdateError(f"tensor {n!r} is missing from one of the two states", tensor=n, reason="missing")
        a, b = new_state[n], global_state[n]
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            raise UpdateError(f"tensor {n!r} is not a torch.Tensor in both states", tensor=n, reason="type")
        if a.dtype != b.dtype or a.shape != b.shape:
            raise UpdateError(
                f"tensor {n!r}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}; the states must match",
                tensor=n,
                reason="shape" if a.shape != b.shape else "dtype",
            )
    with torch.no_grad():
        return {n: new_state[n].detach() - global_state[n].detach().to(new_state[n].device) for n in chosen}
