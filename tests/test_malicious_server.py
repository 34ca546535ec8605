"""Active mode against a malicious server (and colluding or cheating clients): the attacks
of issue 21, each run against the real sessions.  Every attack ends in a refusal by the
honest clients, an exclusion with evidence, or a typed abort; when enough honest clients
remain the sum is exact, and no honest client is ever blamed."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable

import numpy as np
import pytest

from secagg import Alliance, IdentityKey
from secagg.client import ClientSession, check_config
from secagg.errors import (
    EquivocationError,
    MessageError,
    ProtocolAbort,
    ProtocolError,
    SecAggError,
    SecurityViolation,
    SignatureError,
    UnsafeParametersError,
)
from secagg.identity import (
    SEED_SHARE,
    ShareTree,
    advertisement_statement,
    generate_alliance,
    seed_commitment,
    share_leaf,
)
from secagg.messages import (
    ConsistencyCheck,
    ConsistencyRequest,
    MaskedInput,
    Message,
    RevealedShare,
    Roster,
    RosterEntry,
    RoundConfig,
    ShareDelivery,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskShares,
    decode_message,
)
from secagg.server import ServerSession
from secagg.shamir import split_many
from secagg.simulate import simulate_round
from secagg.spec import ArraySpec, RoundSpec, make_config

D, BITS = 6, 32
Down = Callable[[int, Message], Message | None]


class Round:
    """n active clients, the honest server session, and hooks for a lying server."""

    def __init__(self, n: int = 10, *, threshold: int | None = None, digests: dict[int, str] | None = None) -> None:
        self.cfg, _ = make_config(n, D, BITS, neighbors="all", threshold=threshold, active=True, rng=1)
        self.spec = RoundSpec(self.cfg, "integer", (ArraySpec("x", (D,), "uint64"),))
        self.ids, self.alliance = generate_alliance(range(1, n + 1), 7)
        digests = digests or {}
        self.clients = {
            c: ClientSession(
                self.cfg, c, rng=c, identity=self.ids[c], alliance=self.alliance,
                spec_fingerprint=self.spec.fingerprint, model_digest=digests.get(c),
            )
            for c in range(1, n + 1)
        }  # fmt: skip
        self.server = ServerSession(
            self.cfg, auto_close=False, alliance=self.alliance, spec_fingerprint=self.spec.fingerprint
        )
        gen = np.random.default_rng(0)
        self.inputs = {c: gen.integers(0, 2**BITS, size=D, dtype=np.uint64) for c in range(1, n + 1)}
        self.refusals: dict[int, ProtocolError] = {}
        self.outbox: dict[int, Message] = {}

    def start(self, up: Callable[[int, Message], Message] | None = None) -> None:
        for c, client in self.clients.items():
            msg = client.start()
            self.server.receive(up(c, msg) if up else msg)
        self.outbox = self.server.close_stage()

    def step(self, down: Down | None = None, up: Callable[[int, Message], Message] | None = None) -> dict[int, Message]:
        """Deliver the outbox (rewritten by ``down``), feed the replies (rewritten by ``up``)."""
        replies: dict[int, Message] = {}
        for c, msg in self.outbox.items():
            if down is not None:
                msg = down(c, msg)  # type: ignore[assignment]
                if msg is None:
                    continue
            if c in self.refusals:
                continue
            try:
                kw = {"input": self.inputs[c]} if isinstance(msg, ShareDelivery) else {}
                reply = self.clients[c].receive(msg.encode(), **kw)
            except ProtocolError as exc:
                self.refusals[c] = exc
                continue
            if reply is not None:
                replies[c] = up(c, reply) if up else reply
        for reply in replies.values():
            self.server.receive(reply)
        return replies

    def close(self) -> None:
        self.outbox = self.server.close_stage()

    def until_consistency(self) -> None:
        self.start()
        for _ in range(2):  # share keys, masked input
            self.step()
            self.close()

    def expected(self, ids: tuple[int, ...]) -> np.ndarray:
        return sum((self.inputs[c] for c in ids), np.zeros(D, dtype=np.uint64)) % np.uint64(2**BITS)


# ----------------------------------------------------------------------------- honest run


def test_active_round_is_exact_and_records_signed_statements() -> None:
    r = Round()
    r.until_consistency()
    for _ in range(2):  # consistency, unmasking
        r.step()
        r.close()
    res = r.server.result
    assert res is not None and res.active and not r.refusals and not res.excluded
    assert np.array_equal(res.aggregate.astype(np.uint64), r.expected(res.survivors))
    for st in (*res.survivor_signatures, *res.advertisements):
        st.verify(r.alliance)
    assert len(res.survivor_signatures) == len(res.advertisements) == r.cfg.n


def test_simulate_round_is_active_by_default_and_semi_honest_on_request() -> None:
    x = np.random.default_rng(1).integers(0, 2**32, size=(8, 5), dtype=np.uint64)
    a = simulate_round(x, seed=2, dropouts={"consistency": [1], "unmasking": [2]})
    b = simulate_round(x, seed=2, active=False)
    assert a.active and not b.active and a.dropped["consistency"] == [1]
    for res in (a, b):
        assert np.array_equal(res.aggregate, x[res.survivors].sum(axis=0) % 2**32)
    assert b.bytes_up["consistency"] == 0 < a.bytes_up["consistency"]


# ----------------------------------------------------------------------------- attack 1: shrunk roster


def test_attack1_make_config_carries_the_roster_floor_and_refuses_a_shrinkable_one() -> None:
    cfg, p = make_config(1000, 1, corrupt_fraction=0.1)
    assert cfg.roster_floor >= 1000 - p.dropouts_tolerated and cfg.roster_floor >= 890
    with pytest.raises(UnsafeParametersError):  # the attack's configuration: a roster of 102 allowed
        make_config(1000, 1, neighbors=96, threshold=67, colluders=100, min_clients=102, max_dropouts=898)


def test_attack1_clients_refuse_a_roster_below_n_minus_d() -> None:
    cfg = RoundConfig(bytes(16), 12, D, BITS, 4, 3, 0, 0, 2, 3, True, 2, True)
    ids, alliance = generate_alliance(range(1, 13), 3)
    fp = RoundSpec(cfg, "integer", (ArraySpec("x", (D,), "uint64"),)).fingerprint
    clients = {c: ClientSession(cfg, c, rng=c, identity=ids[c], alliance=alliance, spec_fingerprint=fp)
               for c in range(1, 13)}  # fmt: skip
    server = ServerSession(cfg, auto_close=False, alliance=alliance, spec_fingerprint=fp)
    for c in (1, 2, 3, 4, 5, 6, 7, 8, 9):  # the server "drops" 10, 11, 12: below n - D = 10
        server.receive(clients[c].start())
    with pytest.raises(ProtocolAbort, match="roster floor"):  # an honest server knows better
        server.close_stage()
    ads = [clients[c].start() for c in (10, 11, 12)]  # a lying server relays a 9-client roster anyway
    assert ads
    roster = Roster(cfg.round_id, tuple(RosterEntry(e.client_id, e.mask_key, e.enc_key, e.commitment,
                                                    e.share_root, e.signature)
                                        for e in _entries(clients, range(1, 10))))  # fmt: skip
    with pytest.raises(SecurityViolation, match="below the floor"):
        clients[1].receive(roster)


def _entries(clients: dict[int, ClientSession], ids: range) -> list[RosterEntry]:
    out = []
    for c in ids:
        s = clients[c]
        assert s._tree is not None
        out.append(RosterEntry(c, s._mask_pk, s._enc_pk, s._commitment, s._tree.root, s._advert_sig))
    return out


# ----------------------------------------------------------------------------- attack 2: colluders ignored


def test_attack2_configs_that_ignore_the_colluders_are_refused() -> None:
    with pytest.raises(UnsafeParametersError):
        check_config(RoundConfig(bytes(16), 10, 1, 32, 4, 3, 8, 0, 10, 3, True))
    with pytest.raises(UnsafeParametersError):
        check_config(RoundConfig(bytes(16), 7, 1, 32, 0, 4, 3, 0, 5, 4, True))  # complete graph: needs t >= 5
    with pytest.raises(UnsafeParametersError):
        make_config(10, 1, neighbors=4, threshold=3, colluders=8)
    with pytest.raises(UnsafeParametersError):
        make_config(7, 1, neighbors="all", threshold=4, colluders=3)
    make_config(7, 1, neighbors="all", threshold=5, colluders=3, dropout_fraction=0.0)


# ----------------------------------------------------------------------------- attack 3: lying about dropouts


def _split_consistency(r: Round, victim: int, a: set[int]) -> dict[int, bytes]:
    """The server tells group ``a`` that ``victim`` dropped and the others that it survived."""
    everyone = tuple(sorted(r.outbox))
    without = tuple(c for c in everyone if c != victim)
    sigs: dict[int, bytes] = {}
    for c in everyone:
        told = without if c in a else everyone
        reply = r.clients[c].receive(ConsistencyRequest(r.cfg.round_id, c, told))
        assert isinstance(reply, ConsistencyCheck)
        sigs[c] = reply.signature
    return sigs


def test_attack3_split_survivor_sets_are_refused_or_caught() -> None:
    r = Round(11)  # complete graph, t = 6
    assert r.cfg.t == 6
    r.until_consistency()
    victim, group_a = 11, {1, 2, 3, 4, 5}
    sigs = _split_consistency(r, victim, group_a)
    everyone = tuple(range(1, 12))
    without = tuple(range(1, 11))
    # (a) consistent lies: group A gets "victim dropped" with group A's own signatures only
    c1 = r.clients[1]
    req = UnmaskRequest(r.cfg.round_id, 1, tuple(range(2, 11)), (victim,), without,
                        tuple(SurvivorSignature(w, sigs[w]) for w in sorted(group_a)))  # fmt: skip
    with pytest.raises(SecurityViolation, match="fewer than"):
        c1.receive(req)
    assert c1.revealed == (frozenset(), frozenset())
    # (b) the server shows client 2 the other group's signatures: equivocation, with proof
    c2 = r.clients[2]
    others = tuple(SurvivorSignature(w, sigs[w]) for w in everyone if w not in group_a)
    req = UnmaskRequest(r.cfg.round_id, 2, tuple(c for c in everyone if c != 2), (), everyone, others)
    with pytest.raises(EquivocationError) as info:
        c2.receive(req)
    mine, theirs = info.value.statements
    mine.verify(r.alliance)  # type: ignore[attr-defined]
    theirs.verify(r.alliance)  # type: ignore[attr-defined]
    assert mine.statement != theirs.statement and mine.signer == 2  # type: ignore[attr-defined]
    # group B (told the truth) has only 6 signatures from the victim's neighbours if A's are
    # withheld: 6 = t, so it may reveal seeds -- but nobody in A revealed a key share.
    assert all(r.clients[c].revealed[1] == frozenset() for c in group_a)


def test_attack3_unmasking_without_the_consistency_round_is_refused() -> None:
    r = Round(11)
    r.until_consistency()
    req = UnmaskRequest(r.cfg.round_id, 1, tuple(range(2, 11)), (11,))
    with pytest.raises(SecurityViolation, match="before the consistency round"):
        r.clients[1].receive(req)


# ----------------------------------------------------------------------------- attack 4: key substitution


def test_attack4_substituted_keys_are_refused() -> None:
    r = Round()
    r.start()
    roster = r.outbox[1]
    assert isinstance(roster, Roster)
    from secagg.crypto import keys as _keys

    evil = _keys.public_key(_keys.generate_private_key(5))
    forged = tuple(dataclasses.replace(e, enc_key=evil) if e.client_id == 4 else e for e in roster.clients)
    with pytest.raises(SecurityViolation, match="client 4"):
        r.clients[1].receive(Roster(roster.round_id, forged))
    # re-signing with the server's own identity does not help: the alliance names client 4's key
    server_key = IdentityKey.generate(9)
    e4 = next(e for e in roster.clients if e.client_id == 4)
    st = advertisement_statement(roster.round_id, bytes.fromhex(r.spec.fingerprint), b"", 4, e4.mask_key, evil,
                                 e4.commitment, e4.share_root)  # fmt: skip
    forged = tuple(dataclasses.replace(e, enc_key=evil, signature=server_key.sign(st)) if e.client_id == 4 else e
                   for e in roster.clients)  # fmt: skip
    with pytest.raises(SecurityViolation):
        r.clients[2].receive(Roster(roster.round_id, forged))


def test_attack4_server_excludes_an_unsigned_or_foreign_advertisement() -> None:
    r = Round()

    def up(c: int, msg: Message) -> Message:
        if c == 3:
            return dataclasses.replace(msg, signature=r.ids[4].sign(b"something else"))
        return msg

    r.start(up)
    assert set(r.server.excluded) == {3} and not r.server.evidence[3].provable


# ----------------------------------------------------------------------------- attack 5: bad shares


def _cheat_holder(r: Round, cheater: int) -> Callable[[int, Message], Message]:
    """Client ``cheater`` shifts the first self-mask share it reveals and signs its reply."""

    def up(c: int, msg: Message) -> Message:
        if c != cheater or not isinstance(msg, UnmaskShares):
            return msg
        first = msg.self_shares[0]
        raw = bytearray(first.share)
        raw[-1] ^= 1
        shares = (RevealedShare(first.owner, bytes(raw), first.proof), *msg.self_shares[1:])
        unsigned = UnmaskShares(msg.round_id, c, shares, msg.key_shares)
        from secagg.identity import reveal_statement

        st = reveal_statement(msg.round_id, bytes.fromhex(r.spec.fingerprint), b"", unsigned.encode())
        return UnmaskShares(msg.round_id, c, shares, msg.key_shares, r.ids[c].sign(st))

    return up


@pytest.mark.parametrize("cheater", [1, 10])  # answering first or last
def test_attack5_a_holder_revealing_an_altered_share_is_excluded_with_proof(cheater: int) -> None:
    r = Round(10)
    r.until_consistency()
    r.step()
    r.close()
    r.step(up=_cheat_holder(r, cheater))
    r.close()
    res = r.server.result
    assert res is not None and set(res.excluded) == {cheater}
    ev = res.evidence[cheater]
    assert ev.provable and ev.stage == "unmasking"
    ev.verify(r.alliance)
    assert np.array_equal(res.aggregate.astype(np.uint64), r.expected(res.survivors))


def test_attack5_with_exactly_t_holders_the_round_aborts_typed() -> None:
    r = Round(10)
    t = r.cfg.t
    r.until_consistency()
    drop = set(range(t + 2, 11))  # survivors sign, but only t + 1 answer the unmasking request
    r.step()
    r.close()
    r.outbox = {c: m for c, m in r.outbox.items() if c not in drop}
    r.step(up=_cheat_holder(r, 1))
    with pytest.raises(ProtocolAbort, match="fewer than t"):
        r.close()


def test_attack5_a_dealer_whose_shares_miss_its_commitment_aborts_with_proof() -> None:
    r = Round(10)
    bad = 5
    c = r.clients[bad]

    def up(cid: int, msg: Message) -> Message:
        if cid != bad:
            return msg
        # deal the seed shares of another seed under a freshly signed root
        assert c._dealt is not None and c._seed is not None
        other = bytes(32)
        _, seeds = split_many([c._mask_sk or b"", other], r.cfg.t, list(range(1, 11)), rng=1)
        seeds_b = [s.to_bytes() for s in seeds]
        leaves = []
        for x in range(1, 11):
            leaves.append(share_leaf(r.cfg.round_id, bad, x, 0, c._dealt[0][x - 1]))
            leaves.append(share_leaf(r.cfg.round_id, bad, x, SEED_SHARE, seeds_b[x - 1]))
        tree = ShareTree(leaves, 10)
        commit = seed_commitment(r.cfg.round_id, bad, c._seed)
        st = advertisement_statement(r.cfg.round_id, bytes.fromhex(r.spec.fingerprint), b"", bad, c._mask_pk,
                                     c._enc_pk, commit, tree.root)  # fmt: skip
        sig = r.ids[bad].sign(st)
        c._dealt, c._tree, c._advert_sig = (c._dealt[0], seeds_b), tree, sig
        assert isinstance(msg, type(msg))
        return dataclasses.replace(msg, share_root=tree.root, signature=sig)

    r.start(up)
    for _ in range(3):
        r.step()
        r.close()
    r.step()
    with pytest.raises(ProtocolAbort, match=f"client {bad} dealt bad shares") as info:
        r.close()
    ev = info.value.evidence[bad]
    ev.verify(r.alliance)  # type: ignore[attr-defined]
    assert ev.provable and list(info.value.evidence) == [bad]  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- attack 6: model inconsistency


def test_attack6_a_client_given_another_model_cannot_take_part() -> None:
    crafted = "ab" * 32
    r = Round(10, digests={3: crafted})  # the server sent client 3 a crafted model
    r.start()
    assert set(r.server.excluded) == {3}  # its signature names another model
    for _ in range(4):
        r.step()
        r.close()
    res = r.server.result
    assert res is not None and 3 not in res.survivors
    assert np.array_equal(res.aggregate.astype(np.uint64), r.expected(res.survivors))


def test_attack6_neighbours_refuse_a_roster_entry_signed_over_another_model() -> None:
    crafted = "ab" * 32
    r = Round(10, digests={3: crafted})
    ads = {c: cl.start() for c, cl in r.clients.items()}
    roster = Roster(r.cfg.round_id, tuple(RosterEntry(c, a.mask_key, a.enc_key, a.commitment, a.share_root,
                                                      a.signature) for c, a in sorted(ads.items())))  # fmt: skip
    with pytest.raises(SecurityViolation, match="client 3"):
        r.clients[1].receive(roster)


# ----------------------------------------------------------------------------- downgrade, identities


def test_no_downgrade_and_identity_must_match() -> None:
    cfg, _ = make_config(6, D, BITS, neighbors="all", rng=1)
    ids, alliance = generate_alliance(range(1, 7), 1)
    with pytest.raises(UnsafeParametersError, match="downgrade"):
        ClientSession(cfg, 1, identity=ids[1], alliance=alliance)
    acfg, _ = make_config(6, D, BITS, neighbors="all", rng=1, active=True)
    with pytest.raises(SecAggError):
        ClientSession(acfg, 1)
    with pytest.raises(SecAggError):
        ClientSession(acfg, 1, identity=ids[2], alliance=alliance, spec_fingerprint="0" * 64)
    with pytest.raises(SecAggError):
        ServerSession(acfg)


def test_alliance_json_round_trip_and_strict_decoder() -> None:
    ids, alliance = generate_alliance(range(1, 5), 2)
    text = alliance.to_json()
    assert Alliance.from_json(text) == alliance == Alliance.from_json(text.encode())
    assert dict(alliance) == {c: k.public_bytes() for c, k in ids.items()}
    key = IdentityKey.from_private_bytes(ids[1].private_bytes())
    sig = key.sign(b"x")
    alliance.verify(1, b"x", sig)
    for who, data, s in ((1, b"y", sig), (2, b"x", sig), (9, b"x", sig), (1, b"x", sig[:10])):
        with pytest.raises(SignatureError):
            alliance.verify(who, data, s)
    doc = json.loads(text)
    bad_docs = [
        text + " ", "[]", "{", '{"format":1}', "nan", "1e999", "[" * 100000 + "]" * 100000,
        json.dumps({**doc, "format": 2}, sort_keys=True, separators=(",", ":")),
        json.dumps({**doc, "members": {"0": "00" * 32}}, sort_keys=True, separators=(",", ":")),
        json.dumps({**doc, "members": {"1": "zz" * 32}}, sort_keys=True, separators=(",", ":")),
        json.dumps({**doc, "members": {"1": "00" * 32, "2": "00" * 32}}, sort_keys=True, separators=(",", ":")),
        json.dumps({**doc, "members": {"01": "00" * 32}}, sort_keys=True, separators=(",", ":")),
        b"\xff\xfe", 17,
    ]
    for bad in bad_docs:
        with pytest.raises(MessageError):
            Alliance.from_json(bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- fuzzing the new decoders


def test_fuzz_new_decoders_raise_only_message_errors() -> None:
    r = Round(6)
    r.until_consistency()
    samples: list[bytes] = [m.encode() for m in r.outbox.values()]
    samples += [m.encode() for m in r.step().values()]
    r.close()
    samples += [m.encode() for m in r.outbox.values()]
    samples += [m.encode() for m in r.step().values()]
    samples += [r.server.roster.encode()] if r.server.roster is not None else []
    samples.append(r.cfg.encode())
    gen = np.random.default_rng(5)
    for data in samples:
        decode_message(data)
        for _ in range(300):
            buf = bytearray(data)
            kind = gen.integers(0, 3)
            if kind == 0:
                for _ in range(int(gen.integers(1, 4))):
                    buf[int(gen.integers(0, len(buf)))] = int(gen.integers(0, 256))
            elif kind == 1:
                buf = buf[: int(gen.integers(0, len(buf)))]
            else:
                buf += bytes(gen.integers(0, 256, size=int(gen.integers(1, 8)), dtype=np.uint8))
            with contextlib.suppress(MessageError):
                decode_message(bytes(buf))


def test_masked_input_is_unchanged_by_active_mode() -> None:
    r = Round(6)
    r.start()
    r.step()
    r.close()
    replies = r.step()
    assert all(isinstance(m, MaskedInput) for m in replies.values())
