"""Export/restore of active-mode client sessions (a Flower SuperNode runs a fresh process
per message): canonical versioned bytes, a strict decoder, the identity key never in the
state, and a restored session that behaves exactly like the original."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.client import ClientSession, ClientState
from secagg.crypto.prg import Masker
from secagg.driver import drive_round
from secagg.errors import MessageError, SecAggValueError, UnsafeParametersError
from secagg.identity import generate_alliance
from secagg.messages import Stage
from secagg.simulate import _SimClient
from secagg.spec import ArraySpec, IntegerSum, build_spec
from secagg.transport import MemoryTransport

N, D = 7, 12
IDS, ALLIANCE = generate_alliance(range(1, N + 1), 11)


def _inputs(i: int) -> Any:
    return (np.arange(D, dtype=np.uint32) * (i + 1)) % 1000


class _Persisting(_SimClient):
    """A simulated client whose session is exported and restored after every message it
    handles (as a fresh process would: a new object built from the bytes alone, plus the
    identity and alliance the client loads from its own files).  The random source is the
    original's, so a complete state gives the identical transcript."""

    def __init__(self, *args: Any, persist: bool, states: dict[ClientState, bytes]) -> None:
        super().__init__(*args)
        self._persist, self._states = persist, states
        self.replies: list[bytes | None] = []

    def __call__(self, stage: Stage, data: bytes) -> bytes | None:
        reply = super().__call__(stage, data)
        self.replies.append(reply)
        session = self._session
        assert session is not None
        exported = session.export_state()
        self._states.setdefault(session.state, exported)
        if self._persist:
            restored = ClientSession.restore(
                exported, session._rng, masker=self._masker, identity=self._identity, alliance=self._alliance
            )
            assert restored.export_state() == exported  # canonical
            assert restored.state is session.state and restored.stage is session.stage
            assert restored.neighbours == session.neighbours and restored.partners == session.partners
            self._session = restored
        return reply


def _round(
    persist: bool,
    seed: int,
    silent: dict[Stage, set[int]] | None = None,
    states: dict[ClientState, bytes] | None = None,
) -> tuple[dict[int, list[bytes | None]], Any]:
    spec = build_spec(
        N, (ArraySpec("x", (D,), "uint64"),), IntegerSum(32), model={"w": np.ones(3, dtype=np.float32)},
        neighbors=4, threshold=3, rng=seed, active=True,
    )  # fmt: skip
    keep: dict[ClientState, bytes] = {} if states is None else states
    clients = {
        c: _Persisting(c, bytes([seed % 256, c]) * 16, _inputs, Masker(D, 32), [0.0], IDS[c], ALLIANCE,
                       persist=persist, states=keep)
        for c in range(1, N + 1)
    }  # fmt: skip
    run = drive_round(
        spec.protocol, MemoryTransport(clients, silent=silent or {}), setup=spec.to_bytes(), alliance=ALLIANCE,
        model_digest=spec.model_digest,
    )  # fmt: skip
    return {c: e.replies for c, e in clients.items()}, run.result


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), drop=st.sampled_from([None, "masked_input", "consistency", "unmasking"]))
def test_restore_after_every_message_gives_the_same_transcript(seed: int, drop: str | None) -> None:
    silent = {Stage(drop): {3}} if drop else None
    plain, res_a = _round(False, seed, silent)
    persisted, res_b = _round(True, seed, silent)
    assert persisted == plain  # every reply of every client, byte for byte
    assert np.array_equal(res_a.aggregate, res_b.aggregate)
    assert res_b.survivor_set == res_a.survivor_set and res_b.active


@pytest.fixture(scope="module")
def states() -> dict[ClientState, bytes]:
    keep: dict[ClientState, bytes] = {}
    _round(False, 5, None, keep)
    assert set(keep) >= {
        ClientState.ADVERTISED, ClientState.SHARED, ClientState.MASKED, ClientState.CHECKED, ClientState.DONE
    }  # fmt: skip
    return keep


def _restore(data: bytes, cid: int | None = None) -> ClientSession:
    who = cid if cid is not None else int.from_bytes(data[9 + int.from_bytes(data[5:9], "big") :][:4], "big")
    return ClientSession.restore(data, identity=IDS[who], alliance=ALLIANCE)


def test_active_state_is_versioned_and_never_holds_the_identity_key(states: dict[ClientState, bytes]) -> None:
    for state, data in states.items():
        assert data[:5] == b"SAcs\x02"
        cid = int.from_bytes(data[9 + int.from_bytes(data[5:9], "big") :][:4], "big")
        assert IDS[cid].private_bytes() not in data
        assert _restore(data).export_state() == data, state


def test_restore_needs_the_identity_and_the_same_alliance(states: dict[ClientState, bytes]) -> None:
    data = states[ClientState.SHARED]
    cid = _restore(data).client_id
    with pytest.raises(SecAggValueError, match="identity"):
        ClientSession.restore(data)
    other_ids, other = generate_alliance(range(1, N + 1), 12)
    with pytest.raises(SecAggValueError, match="another alliance"):
        ClientSession.restore(data, identity=other_ids[cid], alliance=other)
    with pytest.raises(SecAggValueError, match="identity is not"):
        ClientSession.restore(data, identity=IDS[cid % N + 1], alliance=ALLIANCE)


def test_a_semi_honest_state_refuses_an_identity() -> None:
    from secagg.spec import make_config

    cfg, _ = make_config(6, 4, neighbors="all", active=False)
    data = ClientSession(cfg, 1, rng=1).export_state()
    assert data[:5] == b"SAcs\x01"  # semi-honest states keep version 1
    with pytest.raises(UnsafeParametersError):
        ClientSession.restore(data, identity=IDS[1], alliance=ALLIANCE)


def _flip(data: bytes, part: bytes) -> bytes:
    at = data.index(part) + len(part) - 1
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def test_an_advertised_state_must_be_this_identitys_and_rebuild_its_secrets(states: dict[ClientState, bytes]) -> None:
    data = states[ClientState.ADVERTISED]
    session = _restore(data)
    cid = session.client_id
    assert session._dealt is not None
    with pytest.raises(MessageError, match="rebuild"):  # a dealt share changed: not the secret's sharing
        _restore(_flip(data, session._dealt[0][1]), cid)
    with pytest.raises(MessageError, match="signature"):  # not the advertisement this identity signed
        _restore(_flip(data, session._advert_sig), cid)
    with pytest.raises(MessageError, match="commitment"):
        _restore(_flip(data, session._commitment), cid)


def test_a_corrupted_held_share_or_path_is_refused_before_it_could_be_revealed(
    states: dict[ClientState, bytes],
) -> None:
    """A share revealed with a path that does not reach its dealer's signed root gets its
    holder excluded with its own signature as proof: a corrupted state must not get that far."""
    for state in (ClientState.MASKED, ClientState.CHECKED):
        data = states[state]
        session = _restore(data)
        v = session.partners[0]
        for part in (session._held[v][0], session._held[v][1], session._proofs[v][3]):
            with pytest.raises(MessageError):
                _restore(_flip(data, part), session.client_id)
    checked = _restore(states[ClientState.CHECKED])
    with pytest.raises(MessageError, match="survivor-set signature"):
        _restore(_flip(states[ClientState.CHECKED], checked._survivor_sig), checked.client_id)


def test_every_single_bit_flip_and_truncation_is_refused_or_canonical(states: dict[ClientState, bytes]) -> None:
    rng = random.Random(0)
    for state in (ClientState.ADVERTISED, ClientState.SHARED, ClientState.MASKED, ClientState.CHECKED):
        data = states[state]
        cid = _restore(data).client_id
        positions = sorted(rng.sample(range(len(data)), min(len(data), 300)))
        refused = 0
        for i in positions:
            bad = bytearray(data)
            bad[i] ^= 1 << rng.randrange(8)
            try:
                restored = ClientSession.restore(bytes(bad), identity=IDS[cid], alliance=ALLIANCE)
            except (MessageError, SecAggValueError):
                refused += 1
                continue
            assert restored.export_state() == bytes(bad)
        assert refused > len(positions) // 4, state
        for end in sorted(rng.sample(range(len(data)), 60)):
            with pytest.raises((MessageError, SecAggValueError)):
                ClientSession.restore(data[:end], identity=IDS[cid], alliance=ALLIANCE)
        with pytest.raises(MessageError):
            ClientSession.restore(data + b"\x00", identity=IDS[cid], alliance=ALLIANCE)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_typed_errors(blob: bytes) -> None:
    for data in (blob, b"SAcs\x02" + blob):
        with pytest.raises((MessageError, SecAggValueError)):
            ClientSession.restore(data, identity=IDS[1], alliance=ALLIANCE)
