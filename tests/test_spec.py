"""RoundSpec: one canonical, versioned round description; a strict decoder."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.errors import MessageError, SecAggValueError
from secagg.spec import (
    ArraySpec,
    DPAggregation,
    FedAvgAggregation,
    IntegerSum,
    RoundSpec,
    build_spec,
    layout_of,
    model_digest,
)

MODEL = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(4, np.float32)}
INTS = {"counts": np.arange(6, dtype=np.int64)}


def specs() -> list[RoundSpec]:
    lay = layout_of(MODEL)
    return [
        build_spec(5, layout_of(INTS), IntegerSum(16), rng=1),
        build_spec(5, lay, FedAvgAggregation(bound=2.0, max_weight=50), model=MODEL, rng=2, round_index=3),
        build_spec(
            8, lay, DPAggregation(clip_norm=1.0, noise_multiplier=1.0), model=MODEL, rng=3, ledger_head="2:" + "ab" * 32
        ),
    ]


@pytest.mark.parametrize("spec", specs(), ids=["integer", "fedavg", "dp"])
def test_roundtrip_is_canonical_and_fingerprinted(spec: RoundSpec) -> None:
    data = spec.to_bytes()
    back = RoundSpec.from_bytes(data)
    assert back == spec and back.to_bytes() == data and back.fingerprint == spec.fingerprint
    assert RoundSpec.from_bytes(data.decode()) == spec
    assert RoundSpec.from_bytes(memoryview(data)) == spec
    assert spec.protocol.d == spec.d


def test_the_model_is_bound_into_the_spec() -> None:
    spec = specs()[1]
    spec.check_model(MODEL)
    crafted = dict(MODEL, w=MODEL["w"] + 1e-3)  # a model sent to one client only (Pasquini et al.)
    with pytest.raises(SecAggValueError, match="digest"):
        spec.check_model(crafted)
    assert model_digest(crafted) != spec.model_digest


def test_every_field_changes_the_fingerprint() -> None:
    base = specs()[1]
    import dataclasses

    for change in ({"round_index": 4}, {"ledger_head": "1:x"}, {"rotation_label": "other"},
                   {"model_digest": "0" * 64}):  # fmt: skip
        assert dataclasses.replace(base, **change).fingerprint != base.fingerprint


def test_rotation_seed_has_one_derivation() -> None:
    spec = specs()[2]
    import hashlib

    assert spec.rotation_seed == hashlib.sha256(b"secagg/rotation-seed/v1\x00" + spec.round_id).digest()


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(round_index=float("inf")),
        lambda d: d.update(round_index=2**80),
        lambda d: d.update(round_index=True),
        lambda d: d.update(layout=[["w", "12", "float32"]]),
        lambda d: d.update(layout=[["w", [True], "float32"]]),
        lambda d: d.update(layout=[]),
        lambda d: d.update(format=1),
        lambda d: d.update(extra=1),
        lambda d: d.update(mode="other"),
        lambda d: d.update(protocol="zz"),
        lambda d: d.update(model_digest="12"),
        lambda d: d.pop("rotation_label"),
    ],
)
def test_strict_decoder_refuses_bad_fields(edit: object) -> None:
    doc = specs()[1].to_dict()
    edit(doc)  # type: ignore[operator]
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    with pytest.raises(MessageError):
        RoundSpec.from_bytes(text.encode())


def test_strict_decoder_refuses_non_json_forms() -> None:
    good = specs()[0].to_bytes()
    for bad in (
        good.replace(b'"round_index":0', b'"round_index":Infinity'),
        b"[" * 100_000 + b"]" * 100_000,
        good.replace(b",", b", ", 1),  # not canonical
        good[:-1],
        b"\xff\xfe",
        memoryview(good + good)[::2],  # not contiguous
        good.replace(b'"format":2', b'"format":2,"format":2'),
    ):
        with pytest.raises(MessageError):
            RoundSpec.from_bytes(bad)
    with pytest.raises(MessageError):
        RoundSpec.from_bytes(123)  # type: ignore[arg-type]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=600), st.integers(0, 2000))
def test_fuzz_only_message_error_escapes(noise: bytes, at: int) -> None:
    good = specs()[1].to_bytes()
    at = min(at, len(good))
    for data in (noise, good[:at] + noise + good[at:], bytes(b ^ 1 for b in good[:at]) + good[at:]):
        with contextlib.suppress(MessageError):
            RoundSpec.from_bytes(data)


def test_array_spec_refuses_bad_shapes() -> None:
    with pytest.raises(SecAggValueError):
        ArraySpec("w", (1, -1), "float32")
    with pytest.raises(SecAggValueError):
        ArraySpec("w", (1,), "complex64")
