"""The parallel in-memory round (secagg._parallel): same sums as the single-process
round, dropouts and failures handled, the parallel masker bit-exact."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from secagg._parallel import WorkerPool, pin_blas_threads
from secagg.errors import RemoteProtocolError, SecAggTypeError, SecAggValueError
from secagg.messages import Stage
from secagg.simulate import simulate_round
from secagg.transport import Outgoing


def _inputs(n: int, d: int) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 2**32, size=(n, d), dtype=np.uint64).astype(np.uint32)


@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_round_equals_sequential(workers: int) -> None:
    x = _inputs(12, 3000)
    drops = {"masked_input": [0, 5], "share_keys": [7]}  # survivable with the complete graph
    seq = simulate_round(x, 32, None, "all", drops, 11)
    par = simulate_round(x, 32, None, "all", drops, 11, workers=workers)
    assert np.array_equal(seq.aggregate, par.aggregate)
    assert seq.survivors == par.survivors and seq.recovered == par.recovered == [0, 5]
    want = x[par.survivors].astype(np.uint64).sum(axis=0) % 2**32
    assert np.array_equal(par.aggregate, want)
    assert par.timings["masked_input"]["client"] > 0


def test_parallel_masker_is_bit_exact() -> None:
    from secagg.crypto.prg import Masker

    d, bits = 1_000_003, 20
    masks = [(bytes([i + 1]) * 32, 1 if i % 3 else -1) for i in range(7)]
    acc = np.random.default_rng(1).integers(0, 2**bits, size=d, dtype=np.uint32)
    want = acc.copy()
    Masker(d, bits).add_many(want, masks)
    with WorkerPool(lambda cid: lambda stage, data: None, [1, 2], workers=2, d=d, bits=bits) as pool:
        assert pool.masker is not None
        pool.masker.add_many(acc, masks)
        assert sum(pool.worker_cpu) > 0
    assert np.array_equal(acc, want)


def test_worker_failure_is_a_dropout() -> None:
    def factory(cid: int) -> Callable[[Stage, bytes], bytes]:
        def endpoint(stage: Stage, data: bytes) -> bytes:
            if cid == 2:
                raise RemoteProtocolError("refused")
            return bytes([cid]) + data

        return endpoint

    with WorkerPool(factory, [1, 2, 3], workers=2, silent={Stage.SHARE_KEYS: [3]}) as pool:
        out = [Outgoing(c, b"x") for c in (1, 2, 3)]
        got = sorted((m.client, bytes(m.data)) for m in pool.transport.exchange(Stage.ADVERTISE_KEYS, out, None))
        assert got == [(1, b"\x01x"), (3, b"\x03x")]
        assert "RemoteProtocolError" in pool.transport.failures[2]
        got = sorted((m.client, bytes(m.data)) for m in pool.transport.exchange(Stage.SHARE_KEYS, out, None))
        assert got == [(1, b"\x01x")]  # 2 failed earlier, 3 is silent from share_keys on


def test_bad_arguments() -> None:
    with pytest.raises(SecAggValueError):
        WorkerPool(lambda cid: lambda s, d: None, [1], workers=0)
    with pytest.raises(SecAggTypeError):
        WorkerPool(lambda cid: lambda s, d: None, [1], workers=1.5)  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError):
        simulate_round(_inputs(4, 10), workers=0)


def test_pin_blas_threads_sets_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    pin_blas_threads()
    import os

    assert os.environ["OPENBLAS_NUM_THREADS"] == "1" and os.environ["OMP_NUM_THREADS"] == "1"
