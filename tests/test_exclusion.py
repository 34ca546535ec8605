"""One misbehaving client never ends the round: each bad message, at each stage, sent
through the round driver over the in-memory transport, excludes (or is ignored for) that
client only, and the round finishes DONE with the exact sum of the others.  Every case
runs in both modes (semi-honest and active; the consistency stage exists in active mode
only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from secagg.crypto.prg import Masker
from secagg.driver import DriverResult, drive_round
from secagg.errors import ProtocolAbort
from secagg.identity import generate_alliance
from secagg.messages import (
    Abort,
    AdvertiseKeys,
    ConsistencyCheck,
    MaskedInput,
    Message,
    RevealedShare,
    ShareKeys,
    Stage,
    UnmaskShares,
    decode_message,
)
from secagg.shamir import Share
from secagg.simulate import _SimClient, make_config
from secagg.transport import Incoming, MemoryTransport

N, D, BITS = 9, 24, 32
BAD = 4  # the misbehaving client's id
OTHER_RID = bytes(range(100, 116))

Wire = bytes | bytearray | memoryview
# (name, kind, rewrite): kind "excluded" or "ignored"; rewrite(stage, reply bytes, state) -> what arrives
Rewrite = Callable[[Stage, bytes, dict[str, object]], Sequence[Incoming]]


def _msg(data: Wire) -> Message:
    return decode_message(bytes(data))


def _send(*items: bytes | Message, sender: int | None = BAD) -> list[Incoming]:
    return [Incoming(sender, it if isinstance(it, bytes) else it.encode()) for it in items]


def garbage(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    return _send(b"\x00garbage")


def truncated(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    return _send(data[: len(data) // 2])


def out_of_stage(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    """A message of a later stage (in the last stage: one only the server may send)."""
    rid = _msg(data).round_id
    later: Message = {
        Stage.ADVERTISE_KEYS: MaskedInput(rid, BAD, b"\x00" * 4 * D),
        Stage.SHARE_KEYS: MaskedInput(rid, BAD, b"\x00" * 4 * D),
        Stage.MASKED_INPUT: UnmaskShares(rid, BAD, (), ()),
        Stage.CONSISTENCY: UnmaskShares(rid, BAD, (), ()),
        Stage.UNMASKING: Abort(rid, "a client cannot abort the round"),
    }[stage]
    return _send(later)


def spoofed(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    return _send(dataclasses.replace(msg, sender=BAD + 1) if not isinstance(msg, MaskedInput)
                 else MaskedInput(msg.round_id, BAD + 1, bytes(msg.payload)))  # fmt: skip


def conflicting_duplicate(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    if isinstance(msg, AdvertiseKeys):
        other: Message = dataclasses.replace(msg, mask_key=bytes([9]) + msg.mask_key[1:])
    elif isinstance(msg, ConsistencyCheck):
        other = dataclasses.replace(msg, signature=bytes(64))
    elif isinstance(msg, ShareKeys):
        first = msg.shares[0]
        other = dataclasses.replace(msg, shares=(dataclasses.replace(first, ciphertext=first.ciphertext[::-1]),
                                                 *msg.shares[1:]))  # fmt: skip
    else:
        assert isinstance(msg, UnmaskShares)
        other = dataclasses.replace(msg, self_shares=msg.self_shares[1:])
    return _send(data, other)


def identical_duplicate(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    return _send(data, data)


def late(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    st["late"] = data  # delivered during the next stage instead
    return []


def stale_round(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    if isinstance(msg, MaskedInput):
        return _send(MaskedInput(OTHER_RID, BAD, bytes(msg.payload)))
    return _send(dataclasses.replace(msg, round_id=OTHER_RID))


def copied_key(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    victim = st["keys"][BAD - 1]  # type: ignore[index]
    assert isinstance(msg, AdvertiseKeys) and isinstance(victim, AdvertiseKeys)
    return _send(dataclasses.replace(msg, mask_key=victim.mask_key))


def equal_keys(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    assert isinstance(msg, AdvertiseKeys)
    return _send(dataclasses.replace(msg, enc_key=msg.mask_key))


def small_order_key(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    assert isinstance(msg, AdvertiseKeys)
    one = (1).to_bytes(32, "little")  # the point of order 4 with u = 1
    return _send(dataclasses.replace(msg, enc_key=one))


def wrong_bundle_set(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    assert isinstance(msg, ShareKeys)
    return _send(dataclasses.replace(msg, shares=msg.shares[:-1]))


def wrong_length_vector(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    assert isinstance(msg, MaskedInput)
    return _send(MaskedInput(msg.round_id, BAD, bytes(msg.payload)[:-4]))


def bad_signature(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    assert isinstance(msg, (ConsistencyCheck, AdvertiseKeys))
    sig = bytes([msg.signature[0] ^ 1]) + msg.signature[1:]
    return _send(dataclasses.replace(msg, signature=sig))


def _shares(data: bytes, fix: Callable[[RevealedShare], RevealedShare]) -> list[Incoming]:
    msg = _msg(data)
    assert isinstance(msg, UnmaskShares)
    return _send(dataclasses.replace(msg, self_shares=(fix(msg.self_shares[0]), *msg.self_shares[1:])))


def missing_share(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    msg = _msg(data)
    assert isinstance(msg, UnmaskShares)
    return _send(dataclasses.replace(msg, self_shares=msg.self_shares[:-1]))


def malformed_share(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    return _shares(data, lambda s: dataclasses.replace(s, share=s.share[:3]))


def wrong_secret_length(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    def fix(s: RevealedShare) -> RevealedShare:
        sh = Share.from_bytes(s.share)
        short = Share(sh.x, bytes([0, 16]) + sh.value[2:2 + 4 * 5])  # a 16-byte secret: 5 field elements
        return dataclasses.replace(s, share=short.to_bytes())

    return _shares(data, fix)


def share_at_wrong_x(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
    def fix(s: RevealedShare) -> RevealedShare:
        sh = Share.from_bytes(s.share)
        return dataclasses.replace(s, share=Share(sh.x + 1, sh.value).to_bytes())

    return _shares(data, fix)


#: Active mode only: messages that break a signature.
ACTIVE: dict[Stage, list[tuple[str, str, Rewrite]]] = {
    Stage.ADVERTISE_KEYS: [("bad_signature", "excluded", bad_signature)],
}

COMMON: list[tuple[str, str, Rewrite]] = [
    ("undecodable", "excluded", garbage),
    ("truncated", "excluded", truncated),
    ("out_of_stage", "excluded", out_of_stage),
    ("spoofed_sender", "excluded", spoofed),
    ("identical_duplicate", "kept", identical_duplicate),
    ("late", "dropout", late),
    ("stale_round", "dropout", stale_round),
]
SPECIFIC: dict[Stage, list[tuple[str, str, Rewrite]]] = {
    Stage.ADVERTISE_KEYS: [
        ("copied_public_key", "excluded", copied_key),
        ("mask_key_equals_enc_key", "excluded", equal_keys),
        ("small_order_key", "excluded", small_order_key),
        ("conflicting_duplicate", "excluded", conflicting_duplicate),
    ],
    Stage.SHARE_KEYS: [
        ("wrong_bundle_set", "excluded", wrong_bundle_set),
        ("conflicting_duplicate", "excluded", conflicting_duplicate),
    ],
    Stage.MASKED_INPUT: [("wrong_length", "excluded", wrong_length_vector)],
    Stage.CONSISTENCY: [
        ("bad_signature", "excluded", bad_signature),
        ("conflicting_duplicate", "excluded", conflicting_duplicate),
    ],
    Stage.UNMASKING: [
        ("missing_share", "excluded", missing_share),
        ("malformed_share", "excluded", malformed_share),
        ("wrong_secret_length", "excluded", wrong_secret_length),
        ("share_at_wrong_x", "excluded", share_at_wrong_x),
        ("conflicting_duplicate", "excluded", conflicting_duplicate),
    ],
}
CASES = [
    (active, stage, name, kind, fn)
    for active in (False, True)
    for stage in Stage
    if active or stage is not Stage.CONSISTENCY
    for name, kind, fn in COMMON + SPECIFIC[stage] + (ACTIVE.get(stage, []) if active else [])
]


def run(stage: Stage, rewrite: Rewrite, seed: int = 0, *, active: bool = False) -> tuple[DriverResult, np.ndarray]:
    cfg, _ = make_config(N, D, BITS, neighbors="all", rng=seed, active=active)
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, 2**BITS, size=(N, D), dtype=np.uint64)
    masker = Masker(D, BITS)
    spent = [0.0]
    ids, alliance = generate_alliance(range(1, N + 1), seed) if active else ({}, None)
    endpoints = {
        c: _SimClient(c, bytes([c]) * 32, inputs.__getitem__, masker, spent, ids.get(c), alliance)
        for c in range(1, N + 1)
    }
    state: dict[str, object] = {"keys": {}}

    def tamper(st: Stage, client: int, reply: Wire | None) -> Sequence[Incoming]:
        out: list[Incoming] = []
        if "late" in state and st is not stage:  # the straggler's message arrives in the next stage
            out += _send(bytes(state.pop("late")))  # type: ignore[arg-type]
        if reply is None:
            return out
        data = bytes(reply)
        if st is Stage.ADVERTISE_KEYS:
            state["keys"][client] = _msg(data)  # type: ignore[index]
        if client == BAD and st is stage:
            return out + list(rewrite(st, data, state))
        return [*out, Incoming(client, data)]

    result = drive_round(cfg, MemoryTransport(endpoints, tamper=tamper), alliance=alliance)
    return result, inputs


@pytest.mark.parametrize(("active", "stage", "name", "kind", "rewrite"), CASES,
                         ids=[f"{'active' if a else 'semi'}-{s.value}-{n}" for a, s, n, _, _ in CASES])  # fmt: skip
def test_one_bad_client_never_ends_the_round(
    active: bool, stage: Stage, name: str, kind: str, rewrite: Rewrite
) -> None:
    result, inputs = run(stage, rewrite, active=active)
    assert result.result.active is active
    res = result.result
    survivors = list(res.survivors)
    want = inputs[[u - 1 for u in survivors]].sum(axis=0, dtype=np.uint64) % np.uint64(2**BITS)
    assert np.array_equal(res.aggregate.astype(np.uint64), want), "not the exact sum of the survivors"
    assert len(survivors) >= N - 1
    if kind == "excluded":
        assert set(res.excluded) == {BAD}, res.excluded
        assert f"stage {stage.value}" in res.excluded[BAD]
        assert set(res.evidence) == {BAD} and res.evidence[BAD].stage == stage.value
        if stage not in (Stage.CONSISTENCY, Stage.UNMASKING):  # before, the bad input is not in the sum
            assert BAD not in survivors
        assert all(BAD not in v for v in res.dropped.values())  # misbehaviour is not a dropout
    elif kind == "kept":
        assert not res.excluded and BAD in survivors
        assert result.ignored
    else:  # nothing valid came: a dropout at that stage, nobody blamed
        assert not res.excluded
        assert BAD in res.dropped[stage.value]
        if stage is not Stage.UNMASKING or name != "late":  # after the last stage nothing is read
            assert result.ignored


def test_masked_input_conflicting_duplicate_keeps_the_first() -> None:
    """Masked inputs are summed on arrival (O(d) memory): a second, different one from the
    same client is ignored and recorded; the first stands and the sum is exact."""

    def dup(stage: Stage, data: bytes, st: dict[str, object]) -> list[Incoming]:
        msg = _msg(data)
        assert isinstance(msg, MaskedInput)
        return _send(data, MaskedInput(msg.round_id, BAD, bytes(len(bytes(msg.payload)))))

    result, inputs = run(Stage.MASKED_INPUT, dup)
    res = result.result
    assert BAD in res.survivors and not res.excluded
    assert any("second masked input" in why for _, why in result.ignored)
    want = inputs[[u - 1 for u in res.survivors]].sum(axis=0, dtype=np.uint64) % np.uint64(2**BITS)
    assert np.array_equal(res.aggregate.astype(np.uint64), want)


def test_abort_only_when_the_floor_breaks() -> None:
    """Excluding clients is like dropping them: when too few remain the round aborts with
    a typed error naming the stage and the excluded clients."""
    cfg, _ = make_config(5, D, BITS, neighbors="all", rng=1)
    masker = Masker(D, BITS)
    inputs = np.zeros((5, D), dtype=np.uint64)
    endpoints = {c: _SimClient(c, bytes([c]) * 32, inputs.__getitem__, masker, [0.0]) for c in range(1, 6)}

    def tamper(st: Stage, client: int, reply: Wire | None) -> Sequence[Incoming]:
        if reply is None:
            return []
        if st is Stage.MASKED_INPUT and client != 1:
            return [Incoming(client, b"junk")]
        return [Incoming(client, reply)]

    with pytest.raises(ProtocolAbort) as info:
        drive_round(cfg, MemoryTransport(endpoints, tamper=tamper))
    assert info.value.stage == "masked_input"
    assert set(info.value.excluded) == {2, 3, 4, 5}
