"""The Flower baseline's stages are named, not indexed: its unmasking stage is reported
under ``unmasking`` (not ``consistency``, which Flower's protocol does not have)."""

from __future__ import annotations

import importlib.util

import pytest

from secagg.benchmarks._flower_round import run_flower_round


@pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="needs the flower extra")
def test_flower_unmasking_is_reported_as_unmasking() -> None:
    r = run_flower_round(8, 32, neighbors=4, threshold=3, dropouts={"unmasking": [2]}, rng=5)
    assert r.ok, r.reason
    assert r.bytes_up["consistency"] == 0 and r.bytes_down["consistency"] == 0
    assert r.bytes_up["unmasking"] > 0
    full = run_flower_round(8, 32, neighbors=4, threshold=3, rng=5)
    assert r.bytes_up["unmasking"] < full.bytes_up["unmasking"]  # client index 2 stayed silent there
