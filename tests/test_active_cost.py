"""Active mode's extra cost is per client, not per coordinate, and no signature is checked twice.

The consistency check of a client verifies each signer's statement of the survivor set at
most once per session (whichever partners it counts for), never its own, and no more than
it needs; these are the properties the cost figure of ``bench/bench_protocol.py`` rests on.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from secagg.client import ClientSession
from secagg.identity import Alliance
from secagg.simulate import simulate_round


class _Counting:
    def __init__(self, inner: Alliance, seen: Counter[tuple[int, bytes]]) -> None:
        self._inner, self._seen = inner, seen

    def verify(self, cid: int, data: bytes, signature: bytes) -> None:
        self._seen[(cid, bytes(data))] += 1
        self._inner.verify(cid, data, signature)


def test_consistency_check_verifies_each_signer_once_and_not_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    per_session: list[tuple[int, Counter[tuple[int, bytes]], int]] = []
    original = ClientSession._check_consistency

    def counted(self: ClientSession, req: Any) -> None:
        seen: Counter[tuple[int, bytes]] = Counter()
        real = self._alliance
        assert real is not None
        self._alliance = _Counting(real, seen)  # type: ignore[assignment]
        try:
            original(self, req)
        finally:
            self._alliance = real
        per_session.append((self.client_id, seen, len(self.partners)))

    monkeypatch.setattr(ClientSession, "_check_consistency", counted)
    n, d = 40, 8
    res = simulate_round(
        np.ones((n, d), dtype=np.uint32), neighbors=10, dropouts={"masked_input": [0, 7]}, seed=3, active=True
    )
    assert res.active and np.array_equal(res.aggregate, np.full(d, len(res.survivors)))
    assert len(per_session) == len(res.survivors)
    for cid, seen, partners in per_session:
        assert all(count == 1 for count in seen.values()), f"client {cid} verified a statement twice"
        assert cid not in {signer for signer, _ in seen}, f"client {cid} verified its own signature"
        # t - 1 others per partner at most, and never more signers than the 2-hop neighbourhood holds
        assert len(seen) <= min(partners * (res.t - 1), 2 * res.k)
