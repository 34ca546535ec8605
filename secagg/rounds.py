"""What the drivers at the edges share after a round: accounting and ledger records.

:mod:`secagg.torch` and :mod:`secagg.flower` run secure rounds over different transports
(set up by :func:`secagg.spec.build_spec`, driven by :func:`secagg.driver.drive_round`),
but what follows is the same: the worst-case budget check before a round starts, the
two-adversary figures of :class:`dp.tracker.PrivacyTracker`, the ledger header and one
:class:`dp.ledger.Ledger` record per round naming the round's
:class:`~secagg.spec.RoundSpec` by its fingerprint.  This module is that common part.  It
imports neither torch nor flwr, and :mod:`secagg` does not import it (it needs :mod:`dp`).

Threat model of the figures: see :mod:`dp.tracker` (``release`` with sampling
amplification and all noise present; ``server`` without amplification and only the noise
guaranteed against a server colluding with ``colluders`` clients).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dp.distributed import DistributedPlan, NoiseReport
from dp.errors import BudgetExceededError
from dp.ledger import Ledger, canonical_json
from dp.tracker import PrivacyTracker, RoundEpsilon, RoundPrivacy
from secagg._validate import check_int
from secagg.errors import MessageError, SecAggTypeError, SecAggValueError
from secagg.identity import (
    Alliance,
    SignedStatement,
    advertisement_statement,
    parse_advertisement,
    survivor_statement,
)
from secagg.messages import MAX_CLIENTS, ROUND_ID_MAX, ROUND_ID_MIN, RoundConfig
from secagg.server import AggregateResult
from secagg.spec import RoundSpec

__all__ = [
    "AUDIT_FORMAT",
    "NOISE_UNITS",
    "Contribution",
    "PlainRound",
    "RoundAccount",
    "account_round",
    "audit_trail",
    "check_budget",
    "ledger_header",
    "protocol_summary",
    "round_privacy",
    "security_mode",
    "verify_contributions",
]

#: Units of ``noise_present`` / ``noise_guaranteed`` in a distributed-DP ledger record.
NOISE_UNITS = "lattice (integer) units per coordinate; divide by mechanism.scale for model units"


def ledger_header(
    tracker: PrivacyTracker | None,
    *,
    planned_clients: int,
    dropout_fraction: float,
    corrupt_fraction: float,
    layout: Mapping[str, Any],
    plan: DistributedPlan | None = None,
    aggregation: Mapping[str, Any] | None = None,
    delta: float | None = None,
    population: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run description to pass to :meth:`dp.ledger.Ledger.create`.

    Holds the accountant and ``delta`` (default: the tracker's), the planned cohort size,
    the threat model, the update ``layout``, the population and the tracker's budget if
    known; for a distributed-DP run the ``plan`` (:meth:`DistributedPlan.to_dict`), its cohort
    floor and colluders; otherwise the ``aggregation`` rule (``"dp": None``).  ``extra``
    adds further fields (it may not replace these).

    Raises:
        SecAggValueError: no ``delta`` and no tracker to take it from, not exactly one of
            ``plan`` and ``aggregation``, or ``extra`` replacing a field.
    """
    if (plan is None) == (aggregation is None):
        raise SecAggValueError("describe the run with a DP plan or (without DP) an aggregation rule, not both")
    if delta is None:
        if tracker is None:
            raise SecAggValueError("pass delta= (there is no tracker to take it from)")
        delta = float(tracker.delta)
    header: dict[str, Any] = {
        "accountant": tracker.accountant if tracker is not None else "none",
        "delta": delta,
        "planned_clients": planned_clients,
        "threat_model": {"dropout_fraction": dropout_fraction, "corrupt_fraction": corrupt_fraction},
        "layout": dict(layout),
    }
    if population is not None:
        header["population"] = population
    if tracker is not None and tracker.budget_epsilon is not None:
        header["budget"] = float(tracker.budget_epsilon)
    if plan is not None:
        header["cohort_floor"] = plan.min_clients
        header["threat_model"]["colluders"] = plan.colluders
        header["dp"] = plan.to_dict()
    else:
        header["dp"] = None
        header["aggregation"] = dict(aggregation or {})
    if extra:
        clash = sorted(set(extra) & set(header))
        if clash:
            raise SecAggValueError(f"extra fields {clash} would replace the header's own; rename them")
        header.update(extra)
    return header


def protocol_summary(config: RoundConfig) -> dict[str, int]:
    """Public protocol parameters of a round (JSON-ready): ``n``, ``d``, ``bits``, ``k``
    (neighbours), ``t`` (Shamir threshold), ``colluders``, ``min_clients``."""
    return {
        "n": config.n,
        "d": config.d,
        "bits": config.bits,
        "k": config.degree,
        "t": config.t,
        "colluders": config.colluders,
        "min_clients": config.min_clients,
    }


def round_privacy(noise: NoiseReport, sampling_rate: float | None = None) -> RoundPrivacy:
    """The tracker's description of a distributed-DP round from its noise report.

    Args:
        noise: :meth:`dp.distributed.DistributedPlan.noise_report` for the survivors
            (lattice units).
        sampling_rate: clients sampled / population (None: 1.0, no amplification).
    """
    if not isinstance(noise, NoiseReport):
        raise SecAggTypeError(f"noise must be a dp.distributed.NoiseReport, got {type(noise).__name__}")
    return RoundPrivacy(
        sampling_rate=1.0 if sampling_rate is None else sampling_rate,
        l2_sensitivity=noise.l2_sensitivity,
        sigma_present=noise.sigma_present,
        sigma_guaranteed=noise.sigma_guaranteed,
        dim=noise.dim,
        n_present=noise.shares_present,
        n_guaranteed=noise.shares_guaranteed,
        mechanism="skellam" if noise.mechanism == "skellam" else "distributed_discrete_gaussian",
    )


def check_budget(
    tracker: PrivacyTracker | None, noise: NoiseReport, *, round_index: int, sampling_rate: float | None = None
) -> RoundEpsilon | None:
    """Refuse a round whose figures with ``noise`` would exceed the tracker's budget; record nothing.

    Call it before a round starts with the noise report at the cohort floor (the worst
    round the server accepts), so a round is never run that could not be recorded.

    Returns:
        The previewed figures (None without a tracker).

    Raises:
        BudgetExceededError: over the budget (see :attr:`PrivacyTracker.budget_against`).
    """
    if tracker is None:
        return None
    figures = tracker.preview_round(round_privacy(noise, sampling_rate))
    if tracker.exceeds_budget(figures):
        raise BudgetExceededError(
            f"round {round_index} could spend epsilon {figures.release_epsilon:.4g} (release) / "
            f"{figures.server_epsilon:.4g} (server) with {noise.shares_present} survivors, over the budget "
            f"{tracker.budget_epsilon:g} ({tracker.budget_against}); nothing was recorded: stop training or "
            "raise the noise"
        )
    return figures


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _dp_mechanism(plan: DistributedPlan) -> dict[str, Any]:
    mech: dict[str, Any] = {
        "name": "skellam" if plan.mechanism == "skellam" else "distributed_discrete_gaussian",
        "sigma_client": plan.sigma_client,
        "l2_sensitivity": plan.l2_sensitivity,
        "scale": plan.scale,
        "bits": plan.bits,
        "dim": plan.padded_dim,
        "noise_multiplier": plan.noise_multiplier,
    }
    if plan.mu_client is not None:
        mech["mu_client"] = plan.mu_client
    return mech


@dataclass(frozen=True)
class PlainRound:
    """A round without DP, as its ledger record describes it.

    Attributes:
        mode: aggregation mode (e.g. ``"fedavg"``, ``"integer"``).
        clip_norm: clip of each update (model units; the ring's largest value for integer sums).
        total_weight: the survivors' total weight, which the round reveals.
        max_weight: cap on a client's weight, if the round weighted by example counts.
    """

    mode: str
    clip_norm: float
    total_weight: int
    max_weight: int | None = None

    def mechanism(self) -> dict[str, Any]:
        """The record's ``mechanism`` field (``"name": "none"``)."""
        mech: dict[str, Any] = {"name": "none", "mode": self.mode}
        if self.max_weight is not None:
            mech.update(weighting="example counts capped at max_weight", max_weight=self.max_weight)
        return mech


@dataclass(frozen=True)
class RoundAccount:
    """What :func:`account_round` did.

    Attributes:
        privacy: cumulative figures after the round (distributed DP with a tracker), else None.
        noise: the round's noise report for its survivors (distributed DP), else None.
        record: the ledger record as appended (without ``prev``/``sig``), or None without a ledger.
        ledger_head: ``"COUNT:HASH"`` after the append, for the next round's configuration
            (None without a ledger).
    """

    privacy: RoundEpsilon | None
    noise: NoiseReport | None
    record: dict[str, Any] | None
    ledger_head: str | None


def _from_spec(spec: RoundSpec, total_weight: int | None, survivors: int) -> tuple[PlainRound | None, dict[str, Any]]:
    """(plain-round description, record fields) of a round described by ``spec``."""
    if not isinstance(spec, RoundSpec):
        raise SecAggTypeError(f"spec must be a secagg.spec.RoundSpec, got {type(spec).__name__}")
    fields: dict[str, Any] = {"spec": spec.fingerprint, "model_digest": spec.model_digest}
    if spec.mode == "dp":
        if total_weight is not None and total_weight != survivors:
            raise SecAggValueError("a DP round weighs every survivor once: total_weight must be the survivors or None")
        return None, fields
    if isinstance(total_weight, bool) or not isinstance(total_weight, int) or total_weight < 0:
        raise SecAggValueError(f"a {spec.mode} round needs total_weight, an int >= 0, got {total_weight!r}")
    if spec.mode == "fedavg":
        assert spec.encoder is not None
        return PlainRound("fedavg", spec.encoder.clip, total_weight, spec.max_weight), fields
    return PlainRound("integer", float(2**spec.bits - 1), total_weight), fields


# ----------------------------------------------------------------------------- audit trail

#: Version of the ``audit`` object of a round record (:func:`audit_trail`).
AUDIT_FORMAT = 1
_AD_FIELDS = ("mask_key", "enc_key", "commitment", "share_root")


def security_mode(config: RoundConfig) -> str:
    """``"active"`` or ``"semi-honest"``: the protocol a round ran, as records and reports state it."""
    return "active" if config.active else "semi-honest"


def audit_trail(result: AggregateResult, spec: RoundSpec) -> dict[str, Any]:
    """The verifiable record of who contributed to a round (JSON-ready, canonical order).

    ``{"format": 1, "mode": "active" | "semi-honest", "survivor_set": [ids],
    "advertisements": [...], "survivor_signatures": [...], "evidence": [...]}``: in active
    mode every roster entry's signed advertisement (client id, its two X25519 keys, seed
    commitment and share root in hex, its Ed25519 signature and ``digest``, the SHA-256 of
    the signed statement), the survivor set the survivors signed and each signature of it,
    and the evidence of every exclusion (:meth:`~secagg.identity.Evidence.to_dict`).  The
    round id, spec fingerprint and model digest the statements sign are the record's own
    fields (``round_id``, ``spec``, ``model_digest``), so :func:`verify_contributions`
    rebuilds every statement from the record and a trail copied into another round's
    record does not verify.  A semi-honest round has no signatures: its trail names the
    survivors and nothing proves them.

    Raises:
        SecAggValueError: ``result`` is not of this spec's round (mode, round id, spec or
            model digest of a statement differ).
    """
    if not isinstance(result, AggregateResult):
        raise SecAggTypeError(f"audit needs the round's AggregateResult, got {type(result).__name__}")
    if not isinstance(spec, RoundSpec):
        raise SecAggTypeError(f"spec must be a secagg.spec.RoundSpec, got {type(spec).__name__}")
    if result.active != spec.protocol.active:
        raise SecAggValueError(
            f"the result is of a {'n active' if result.active else ' semi-honest'} round, the spec not"
        )
    want = (spec.protocol.round_id, bytes.fromhex(spec.fingerprint), _model_bytes(spec.model_digest))
    ads: list[dict[str, Any]] = []
    for signed in result.advertisements:
        ad = parse_advertisement(signed.statement)
        if (ad.round_id, ad.fingerprint, ad.model) != want or ad.client_id != signed.signer:
            raise SecAggValueError(f"client {signed.signer}'s advertisement is not of this round, spec and model")
        ads.append({
            "client": ad.client_id,
            **{name: getattr(ad, name).hex() for name in _AD_FIELDS},
            "signature": signed.signature.hex(),
            "digest": hashlib.sha256(signed.statement).hexdigest(),
        })  # fmt: skip
    survivor_set = list(result.survivor_set) if result.active else list(result.survivors)
    sigs = []
    for signed in result.survivor_signatures:
        if signed.statement != survivor_statement(*want, signed.signer, result.survivor_set):
            raise SecAggValueError(f"client {signed.signer}'s survivor-set signature is not of this round's set")
        sigs.append({"signer": signed.signer, "signature": signed.signature.hex()})
    return {
        "format": AUDIT_FORMAT,
        "mode": "active" if result.active else "semi-honest",
        "survivor_set": survivor_set,
        "advertisements": ads,
        "survivor_signatures": sigs,
        "evidence": [ev.to_dict() for _, ev in sorted(result.evidence.items())],
    }


@dataclass(frozen=True)
class Contribution:
    """One client's verified part in one round (:func:`verify_contributions`).

    Attributes:
        round: the record's round index.
        client: the client id (the alliance's).
        key_fingerprint: SHA-256 (hex) of its Ed25519 identity key.
        spec: the round-spec fingerprint it signed.
        model_digest: the model digest it signed (None: the round named no model).
        signed_survivor_set: whether it also signed the survivor set (False: its input is
            in the sum but it went silent in the consistency round).
    """

    round: int
    client: int
    key_fingerprint: str
    spec: str
    model_digest: str | None
    signed_survivor_set: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "round": self.round,
            "client": self.client,
            "key_fingerprint": self.key_fingerprint,
            "spec": self.spec,
            "model_digest": self.model_digest,
            "signed_survivor_set": self.signed_survivor_set,
        }


def _model_bytes(digest: str | None) -> bytes:
    return b"" if digest is None else bytes.fromhex(digest)


def _field(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name) if isinstance(obj, Mapping) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError(f"{where}: {name!r} must be a {kind.__name__}")
    return value


def _client_field(obj: Mapping[str, Any], name: str, where: str) -> int:
    value: int = _field(obj, name, int, where)
    if not 1 <= value <= MAX_CLIENTS:
        raise MessageError(f"{where}: {name!r} must be a client id in [1, 2^32 - 1]")
    return value


def _hex_field(obj: Mapping[str, Any], name: str, size: int, where: str) -> bytes:
    text = _field(obj, name, str, where)
    if len(text) != 2 * size or text != text.lower():
        raise MessageError(f"{where}: {name!r} must be {2 * size} lowercase hex characters")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise MessageError(f"{where}: {name!r} is not hex") from exc


def _ids(values: object, where: str) -> list[int]:
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_CLIENTS for v in values
    ):
        raise MessageError(f"{where} must be a list of client ids")
    if any(a >= b for a, b in itertools.pairwise(values)):
        raise MessageError(f"{where} must be strictly ascending")
    return list(values)


def verify_contributions(record: Mapping[str, Any], alliance: Alliance) -> tuple[Contribution, ...]:
    """Check every signature of a round record's audit trail against ``alliance``; return
    who contributed (the survivor set, each with its verified advertisement).

    Checks: the record states active mode and carries a trail of :data:`AUDIT_FORMAT`;
    every advertisement, rebuilt from the record's round id, spec fingerprint and model
    digest, has its digest and its owner's valid signature; the survivor set has the
    record's survivor count, names only advertised clients, and at least ``min_clients``
    of them signed it (each signature valid); every signed statement of every evidence
    entry is valid.

    Raises:
        MessageError: the record has no trail, is semi-honest (nothing is signed), or the
            trail is malformed or inconsistent with the record.
        SignatureError: a signature does not verify (or names a client outside the alliance).
    """
    if not isinstance(alliance, Alliance):
        raise SecAggTypeError(f"alliance must be a secagg.Alliance, got {type(alliance).__name__}")
    if not isinstance(record, Mapping):
        raise MessageError("a ledger round record is a JSON object")
    where = f"round {record.get('round')!r}"
    audit = record.get("audit")
    if not isinstance(audit, Mapping):
        raise MessageError(f"{where}: no audit trail (recorded without the round's result)")
    if audit.get("format") != AUDIT_FORMAT or isinstance(audit.get("format"), bool):
        raise MessageError(f"{where}: audit trail of another format (this library reads {AUDIT_FORMAT})")
    expected = {"format", "mode", "survivor_set", "advertisements", "survivor_signatures", "evidence"}
    if set(audit) != expected:
        raise MessageError(f"{where}: the audit trail has exactly the fields {sorted(expected)}")
    if audit["mode"] != "active" or record.get("security_mode") != "active":
        raise MessageError(f"{where}: a semi-honest round; nothing in it is signed, so no contribution can be verified")
    round_index = _field(record, "round", int, where)
    try:
        round_id = bytes.fromhex(_field(record, "round_id", str, where))
    except ValueError as exc:
        raise MessageError(f"{where}: round_id is not hex") from exc
    if not ROUND_ID_MIN <= len(round_id) <= ROUND_ID_MAX:
        raise MessageError(f"{where}: round_id must be {ROUND_ID_MIN} to {ROUND_ID_MAX} bytes")
    fp = _hex_field(record, "spec", 32, where)
    md: bytes = b"" if record.get("model_digest") is None else _hex_field(record, "model_digest", 32, where)
    advertised: dict[int, bytes] = {}
    ads = audit["advertisements"]
    if not isinstance(ads, list) or not ads:
        raise MessageError(f"{where}: advertisements must be a non-empty list")
    for i, ad in enumerate(ads):
        at = f"{where}: advertisement {i}"
        if not isinstance(ad, Mapping) or set(ad) != {"client", *_AD_FIELDS, "signature", "digest"}:
            raise MessageError(f"{at}: unexpected fields")
        cid = _client_field(ad, "client", at)
        if advertised and cid <= max(advertised):
            raise MessageError(f"{at}: advertisements must be sorted by client id")
        parts = [_hex_field(ad, name, 32, at) for name in _AD_FIELDS]
        statement = advertisement_statement(round_id, fp, md, cid, *parts)
        if hashlib.sha256(statement).digest() != _hex_field(ad, "digest", 32, at):
            raise MessageError(f"{at}: digest is not the SHA-256 of the statement the record describes")
        alliance.verify(cid, statement, _hex_field(ad, "signature", 64, at))
        advertised[cid] = statement
    survivors = _ids(audit["survivor_set"], f"{where}: survivor_set")
    if len(survivors) != record.get("survivors"):
        raise MessageError(
            f"{where}: the survivor set has {len(survivors)} clients, the record {record.get('survivors')}"
        )
    strangers = sorted(set(survivors) - set(advertised))
    if strangers:
        raise MessageError(f"{where}: survivors {strangers[:5]} never advertised keys")
    sig_list = audit["survivor_signatures"]
    if not isinstance(sig_list, list):
        raise MessageError(f"{where}: survivor_signatures must be a list")
    signers: list[int] = []
    for i, item in enumerate(sig_list):
        at = f"{where}: survivor signature {i}"
        if not isinstance(item, Mapping) or set(item) != {"signer", "signature"}:
            raise MessageError(f"{at}: unexpected fields")
        w = _client_field(item, "signer", at)
        if w not in set(survivors) or (signers and w <= signers[-1]):
            raise MessageError(f"{at}: signer {w} is not a survivor, or signers are not ascending")
        alliance.verify(w, survivor_statement(round_id, fp, md, w, survivors), _hex_field(item, "signature", 64, at))
        signers.append(w)
    protocol = record.get("protocol")
    floor = protocol.get("min_clients") if isinstance(protocol, Mapping) else None
    if not isinstance(floor, int) or len(signers) < floor:
        raise MessageError(f"{where}: {len(signers)} survivors signed the survivor set, below min_clients={floor}")
    evidence = audit["evidence"]
    if not isinstance(evidence, list):
        raise MessageError(f"{where}: evidence must be a list")
    for i, ev in enumerate(evidence):
        at = f"{where}: evidence {i}"
        statements = ev.get("statements") if isinstance(ev, Mapping) else None
        if not isinstance(statements, list):
            raise MessageError(f"{at}: statements must be a list")
        for st in statements:
            signer = _client_field(st, "signer", at)
            try:
                body, sig = (
                    bytes.fromhex(_field(st, "statement", str, at)),
                    bytes.fromhex(_field(st, "signature", str, at)),
                )
            except ValueError as exc:
                raise MessageError(f"{at}: a statement or signature is not hex") from exc
            SignedStatement(signer, body, sig).verify(alliance)
    spec_hex, md_hex = fp.hex(), (md.hex() if md else None)
    signed = set(signers)
    return tuple(
        Contribution(round_index, c, hashlib.sha256(alliance[c]).hexdigest(), spec_hex, md_hex, c in signed)
        for c in survivors
    )


def account_round(
    tracker: PrivacyTracker | None,
    ledger: Ledger | None,
    spec: RoundSpec,
    *,
    survivors: int,
    dropped: Mapping[str, Sequence[int]],
    total_weight: int | None = None,
    excluded: Mapping[int, str] | None = None,
    sampling_rate: float | None = None,
    extra: Mapping[str, Any] | None = None,
    audit: AggregateResult | None = None,
) -> RoundAccount:
    """Account for a finished round and write its ledger record.

    In order: validate everything and build the record; check the budget with the
    tracker's preview (distributed DP; nothing recorded on refusal); record the round in
    the tracker (both adversaries); append the record to the ledger.  If the append itself
    fails (disk, a ledger changed on disk), the tracker has already counted the round: the
    safe side, since the aggregate exists.

    The round is described by its ``spec`` (the record names it by ``spec`` fingerprint and
    ``model_digest``; round index, protocol, layout, ledger head and DP plan come from it).

    Args:
        tracker: fed every distributed-DP round (None: no accounting).
        ledger: receives the record (None: no record); a distributed-DP ledger needs a tracker.
        spec: the round's :class:`~secagg.spec.RoundSpec`.
        survivors: how many clients' inputs are in the sum.
        dropped: per protocol stage, the clients that went silent or were excluded.
        total_weight: the survivors' total weight the round revealed (fedavg: summed
            capped example counts; integer: as the caller counts); None for DP.
        excluded: client id -> why the server excluded it (recorded as ``excluded``).
        sampling_rate: clients sampled / population, for the release figure (DP rounds;
            None: 1.0, no amplification).
        extra: further JSON fields for the record; may not replace the fields built here.
        audit: the round's :class:`~secagg.server.AggregateResult` (``DriverResult.result``):
            its audit trail is recorded as ``audit`` (:func:`audit_trail`; signed
            advertisements and survivor set in active mode), for ``secagg verify
            --alliance``.  None: no trail (the record still states ``security_mode``).

    Raises:
        SecAggValueError, SecAggTypeError: inconsistent arguments (nothing recorded).
        BudgetExceededError: the round would exceed the tracker's budget (nothing recorded).
        dp.errors.LedgerError: ``extra`` holds values JSON cannot carry (nothing recorded),
            or the append failed.
    """
    survivors = check_int("survivors", survivors, 0)
    plain, spec_fields = _from_spec(spec, total_weight, survivors)
    round_index, protocol, layout = spec.round_index, spec.protocol, spec.layout_fingerprint
    ledger_head_sent, plan = spec.ledger_head, spec.plan
    n = protocol.n
    if survivors > n:
        raise SecAggValueError(f"survivors must be an int in [0, {n}], got {survivors!r}")
    if plan is not None and ledger is not None and tracker is None:
        raise SecAggValueError("a distributed-DP ledger record carries epsilons: pass a PrivacyTracker too")
    if excluded is not None:
        if not isinstance(excluded, Mapping):
            raise SecAggTypeError(f"excluded must map a client id to a reason, got {type(excluded).__name__}")
        spec_fields["excluded"] = {str(int(c)): str(why) for c, why in sorted(excluded.items())}

    record: dict[str, Any] = {
        "round": round_index,
        "round_id": protocol.round_id.hex(),
        "sampled": n,
        "survivors": survivors,
        "dropouts": n - survivors,
        "dropped_per_stage": {k: len(v) for k, v in dropped.items()},
        "layout": layout,
        "ledger_head_sent": ledger_head_sent,
        "protocol": protocol_summary(protocol),
        "security_mode": security_mode(protocol),
        **spec_fields,
    }
    if audit is not None:
        trail = audit_trail(audit, spec)
        if len(trail["survivor_set"]) != survivors:
            raise SecAggValueError(f"the audit trail names {len(trail['survivor_set'])} survivors, not {survivors}")
        record["audit"] = trail
    noise: NoiseReport | None = None
    rp: RoundPrivacy | None = None
    if plan is not None:
        noise = plan.noise_report(survivors)
        rp = round_privacy(noise, sampling_rate)
        eps: dict[str, Any] = {"release": None, "server": None}
        evs: dict[str, Any] = {"release": None, "server": None}
        if tracker is not None:
            figures = check_budget(tracker, noise, round_index=round_index, sampling_rate=sampling_rate)
            assert figures is not None
            events = rp.events()
            eps = {"release": _finite(figures.release_epsilon), "server": _finite(figures.server_epsilon)}
            evs = {"release": events.release.to_dict(), "server": events.server.to_dict()}
        record.update(
            clip_norm=plan.clip_norm,
            mechanism=_dp_mechanism(plan),
            noise_present=noise.sigma_present,
            noise_guaranteed=noise.sigma_guaranteed,
            noise_units=NOISE_UNITS,
            epsilon=eps,
            events=evs,
        )
    else:
        assert plain is not None
        record.update(
            clip_norm=plain.clip_norm,
            mechanism=plain.mechanism(),
            noise_present=0.0,
            noise_guaranteed=0.0,
            epsilon={"release": None, "server": None},
            events={"release": None, "server": None},
            total_weight=plain.total_weight,
        )
    if extra:
        if not isinstance(extra, Mapping):
            raise SecAggTypeError(f"extra must be a mapping of JSON fields, got {type(extra).__name__}")
        clash = sorted(set(extra) & set(record))
        if clash:
            raise SecAggValueError(f"extra fields {clash} would replace the round record's own; rename them")
        record.update(extra)
    canonical_json(record)  # JSON-able, or LedgerError before anything is recorded

    privacy = tracker.record_round(rp) if tracker is not None and rp is not None else None
    if ledger is None:
        return RoundAccount(privacy, noise, None, None)
    ledger.append(record)
    return RoundAccount(privacy, noise, record, ledger.head_for_clients())
