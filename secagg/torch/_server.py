"""The server half: :class:`SecureServer`, what spans a run of secure rounds over one model.

It holds the layout, the aggregation rule and threat model, the round counter, the privacy
tracker and ledger, and the composition of the clients' self-reported DP-SGD.  Per round it
builds the :class:`~secagg.spec.RoundSpec` (:meth:`SecureServer.new_round`, through
:func:`secagg.spec.build_spec`, binding the global model's digest and the ledger head) and,
once :func:`secagg.driver.drive_round` has run the round over some transport, decodes,
accounts and records it (:meth:`SecureServer.finish`).

With the alliance's identity keys (``alliance=``) every round runs in **active mode**
(signed advertisements, the consistency round, verified shares) and each ledger record
carries the signed audit trail that ``secagg verify --alliance`` checks.  Without an
alliance the rounds run the semi-honest protocol: the only mode available to users
without identities, stated in every ledger record (``security_mode``), in the ledger
header and by :attr:`SecureServer.security_mode`.  It never runs a protocol stage
itself and never holds an individual update: only the driver's session sees masked
vectors, summed on arrival.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from secagg._validate import check_fraction, check_int
from secagg.driver import DriverResult
from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.identity import Alliance
from secagg.rand import RngLike, as_random_source
from secagg.rounds import account_round, check_budget, ledger_header, security_mode
from secagg.spec import DPAggregation, FedAvgAggregation, RoundSpec, build_spec
from secagg.torch._bind import array_specs, model_arrays
from secagg.torch._names import map_names, unwrap
from secagg.torch._results import AggregateUpdate
from secagg.torch.flatten import UpdateLayout
from secagg.torch.opacus_compat import ClientDPSGD, SelfReportedEpsilon, compose_self_reported

__all__ = ["SecureServer"]

Aggregation = DPAggregation | FedAvgAggregation


class SecureServer:
    """The server's side of a run of secure rounds over one model layout.

    Args:
        layout: the update layout (build it from the global model).
        aggregation: :class:`~secagg.spec.DPAggregation` or
            :class:`~secagg.spec.FedAvgAggregation`.
        dropout_fraction: tolerated dropouts (threat model of the SecAgg+ graph).
        corrupt_fraction: tolerated clients colluding with the server.
        neighbors: None (SecAgg+ with k from the threat model), an int k, or ``"all"``.
        threshold: Shamir threshold t; None = the safe default for the graph.
        tracker: a privacy accountant fed every DP round (``dp.tracker.PrivacyTracker``).
        ledger: a :class:`dp.ledger.Ledger` receiving one record per completed round.
        sampling_rate: fraction of the population sampled per round (for the release
            figure's amplification), if known.
        rng: randomness for round ids (default: a fresh CSPRNG).
        alliance: the alliance's identity keys (:class:`secagg.Alliance`, protocol id ->
            Ed25519 public key): every round runs in active mode and records its signed
            audit trail.  None: the semi-honest protocol (for users without identities;
            every ledger record and :attr:`security_mode` say so).
    """

    def __init__(
        self,
        layout: UpdateLayout,
        aggregation: Aggregation,
        *,
        dropout_fraction: float = 0.1,
        corrupt_fraction: float = 0.0,
        neighbors: int | str | None = None,
        threshold: int | None = None,
        tracker: Any = None,
        ledger: Any = None,
        sampling_rate: float | None = None,
        rng: RngLike = None,
        alliance: Alliance | None = None,
    ) -> None:
        if not isinstance(layout, UpdateLayout):
            raise SecAggTypeError(f"layout must be an UpdateLayout, got {type(layout).__name__}")
        if not isinstance(aggregation, (DPAggregation, FedAvgAggregation)):
            raise SecAggTypeError("aggregation must be a DPAggregation or a FedAvgAggregation")
        dropout_fraction = check_fraction("dropout_fraction", dropout_fraction)
        corrupt_fraction = check_fraction("corrupt_fraction", corrupt_fraction)
        if sampling_rate is not None and (
            isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float))
            or not 0.0 < sampling_rate <= 1.0
        ):  # fmt: skip
            raise SecAggValueError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
        if tracker is not None and not hasattr(tracker, "record_round"):
            raise SecAggTypeError("tracker must be a dp.tracker.PrivacyTracker")
        if ledger is not None and not hasattr(ledger, "append"):
            raise SecAggTypeError("ledger must be a dp.ledger.Ledger")
        if isinstance(aggregation, DPAggregation) and ledger is not None and tracker is None:
            raise SecAggValueError("a DP run's ledger records epsilons: pass tracker=PrivacyTracker(...) too")
        if alliance is not None and not isinstance(alliance, Alliance):
            raise SecAggTypeError(f"alliance must be a secagg.Alliance, got {type(alliance).__name__}")
        self._alliance = alliance
        self._layout = layout
        self._agg = aggregation
        self._dropout = dropout_fraction
        self._corrupt = corrupt_fraction
        self._neighbors = neighbors
        self._threshold = threshold
        self._tracker = tracker
        self._ledger = ledger
        self._sampling_rate = sampling_rate
        self._rng = as_random_source(rng)
        self._round = 0
        self._spec: RoundSpec | None = None
        self._open = False
        self._example_level: dict[str, ClientDPSGD] = {}
        self.last: AggregateUpdate | None = None

    # -- properties -----------------------------------------------------------------------
    @property
    def layout(self) -> UpdateLayout:
        """The round's layout (public)."""
        return self._layout

    @property
    def aggregation(self) -> Aggregation:
        """The aggregation rule."""
        return self._agg

    @property
    def spec(self) -> RoundSpec | None:
        """The latest round's spec (None before the first :meth:`new_round`)."""
        return self._spec

    @property
    def alliance(self) -> Alliance | None:
        """The alliance's identity keys (None: semi-honest rounds)."""
        return self._alliance

    @property
    def active(self) -> bool:
        """True when the rounds run in active mode (the server has an alliance)."""
        return self._alliance is not None

    @property
    def security_mode(self) -> str:
        """``"active"`` or ``"semi-honest"``: the protocol every round of this server runs."""
        return "active" if self._alliance is not None else "semi-honest"

    @property
    def round_index(self) -> int:
        """Index the next (or current) round gets."""
        return self._round

    @property
    def ledger_head(self) -> str | None:
        """The ledger's current head ``"COUNT:HASH"`` (None without a ledger)."""
        return None if self._ledger is None else str(self._ledger.head_for_clients())

    @property
    def example_level(self) -> dict[str, ClientDPSGD]:
        """Client -> its self-reported DP-SGD composed over every finished round."""
        return dict(self._example_level)

    def attach_ledger(self, ledger: Any) -> None:
        """Record every following round in ``ledger`` (a :class:`dp.ledger.Ledger`, e.g.
        created with :meth:`ledger_header`)."""
        if not hasattr(ledger, "append") or not hasattr(ledger, "head_for_clients"):
            raise SecAggTypeError("ledger must be a dp.ledger.Ledger")
        if isinstance(self._agg, DPAggregation) and self._tracker is None:
            raise SecAggValueError("a DP run's ledger records epsilons: create the server with a tracker")
        self._ledger = ledger

    # -- round set-up ---------------------------------------------------------------------
    def _check_members(self, n: int) -> None:
        if self._alliance is None:
            return
        missing = [cid for cid in range(1, n + 1) if cid not in self._alliance]
        if missing:
            raise SecAggValueError(
                f"an active round addresses protocol ids 1..{n}; the alliance has no key for {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}"
            )

    def _build(self, n: int, model: Mapping[str, Any] | None, round_id: bytes | None = None) -> RoundSpec:
        return build_spec(
            n,
            array_specs(self._layout),
            self._agg,
            round_index=self._round,
            model=model,
            ledger_head=self.ledger_head,
            neighbors=self._neighbors,
            threshold=self._threshold,
            dropout_fraction=self._dropout,
            corrupt_fraction=self._corrupt,
            round_id=round_id,
            rng=self._rng,
            active=self._alliance is not None,
        )

    def new_round(self, n: int, global_model: nn.Module | Mapping[str, torch.Tensor]) -> RoundSpec:
        """Start a round for ``n`` clients (protocol ids 1..n) training from ``global_model``;
        return the :class:`~secagg.spec.RoundSpec` to send them (``spec.to_bytes()``) with
        the model.  A round still open is abandoned.  With an alliance the spec is active
        and ids 1..n must be alliance members; drive it with
        ``drive_round(spec.protocol, transport, setup=spec.to_bytes(),
        alliance=server.alliance, model_digest=spec.model_digest)``.

        Raises:
            UpdateError: ``global_model`` does not have the server's layout.
            HeadroomError: FedAvg weights/bound cannot fit the ring for ``n`` clients.
            dp.errors.DPError: no DP plan fits (the message says what would).
            BudgetExceededError: the round could exceed the tracker's budget if only the
                cohort floor survived (nothing recorded).
            UnsafeParametersError: the cohort is too small for the threat model.
            SecAggValueError: with an alliance, a protocol id in 1..n that is not a member.
        """
        n = check_int("n", n, 3)
        self._check_members(n)
        lay = self._layout
        if isinstance(global_model, nn.Module):
            state: Mapping[str, torch.Tensor] = unwrap(global_model).state_dict()
        elif isinstance(global_model, Mapping):
            state = map_names(global_model, {*lay.names, *lay.ignored})
        else:
            kind = type(global_model).__name__
            raise SecAggTypeError(f"global_model must be an nn.Module or a state dict, got {kind}")
        spec = self._build(n, model_arrays(lay, state))
        if spec.plan is not None:
            # refuse the round now if even its worst accepted outcome (the floor) could not be recorded
            worst = spec.plan.noise_report(spec.plan.min_clients)
            check_budget(self._tracker, worst, round_index=self._round, sampling_rate=self._sampling_rate)
        self._spec, self._open = spec, True
        return spec

    # -- result ---------------------------------------------------------------------------
    def finish(
        self,
        run: DriverResult,
        *,
        self_reported: Iterable[SelfReportedEpsilon] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> AggregateUpdate:
        """Decode the round the driver completed, account for it and record it.

        Args:
            run: :func:`secagg.driver.drive_round`'s result for this round's spec.
            self_reported: the survivors' example-level epsilons of this round (opacus);
                composed per client across rounds (:attr:`example_level`) and recorded as
                self-reported, never mixed into the server's accounting.
            extra: further JSON fields for the ledger record (not the record's own keys).

        Raises:
            SecAggValueError: no round is open, ``run`` is another round's, or ``extra``
                would replace a field of the record (nothing recorded; fix it and call again).
            dp.errors.BudgetExceededError: the round would exceed the tracker's budget
                (nothing recorded).
        """
        spec = self._spec
        if spec is None or not self._open:
            raise SecAggValueError("no round is open; call new_round(n, model) and drive it first")
        if not isinstance(run, DriverResult):
            raise SecAggTypeError(f"run must be the driver's DriverResult, got {type(run).__name__}")
        if run.config != spec.protocol:
            raise SecAggValueError("this driver result is of another round than the open spec")
        res = run.result
        if res.active != spec.protocol.active:
            raise SecAggValueError(
                f"the driver ran the round {'active' if res.active else 'semi-honest'}, the spec "
                f"is {security_mode(spec.protocol)}"
            )
        survivors = tuple(res.survivors)
        reports = tuple(self_reported)
        composed = compose_self_reported(self._example_level, reports)
        fields: dict[str, Any] = {}
        if reports:
            fields["self_reported"] = {
                c: (v.epsilon if math.isfinite(v.epsilon) else None)
                for c, v in composed.items()
                if c in {r.client for r in reports}
            }
            fields["self_reported_scope"] = "example-level DP-SGD composed over every round each client reported"
            fields["self_reported_round"] = [r.to_dict() for r in reports]
        if extra:
            clash = sorted(set(extra) & set(fields))
            if clash:
                raise SecAggValueError(f"extra fields {clash} are the self-reported epsilons' own; rename them")
            fields.update(extra)
        mean, weight = spec.decode(res.aggregate, len(survivors))
        tensors = self._layout.unflatten(np.asarray(mean, dtype=np.float64))
        dropped = {k: tuple(v) for k, v in res.dropped.items()}
        acct = account_round(
            self._tracker,
            self._ledger,
            spec,
            survivors=len(survivors),
            dropped=dropped,
            total_weight=None if spec.mode == "dp" else weight,
            excluded=res.excluded,
            sampling_rate=self._sampling_rate,
            extra=fields,
            audit=res,
        )
        out = AggregateUpdate(
            round_index=spec.round_index,
            spec=spec,
            mean=np.asarray(mean, dtype=np.float64),
            tensors=tensors,
            survivors=survivors,
            dropped=dropped,
            excluded=dict(res.excluded),
            total_weight=weight,
            noise=acct.noise,
            privacy=acct.privacy,
            example_level=composed,
            ledger_head=acct.ledger_head,
        )
        self._example_level = composed
        self.last = out
        self._round += 1
        self._open = False
        return out

    def ledger_header(self, n: int, *, delta: float | None = None, population: int | None = None) -> dict[str, Any]:
        """A ledger header describing this run for cohorts of ``n`` clients (pass it to
        ``dp.ledger.Ledger.create``; see :func:`secagg.rounds.ledger_header`).  ``delta``
        defaults to the tracker's; ``layout.fingerprint`` is the one the records carry;
        ``security_mode`` is the protocol every round runs (with ``alliance``, the
        fingerprint of the alliance the signatures verify against)."""
        n = check_int("n", n, 3)
        self._check_members(n)
        agg = self._agg
        probe = self._build(n, None, round_id=bytes(16))  # the parameters every round of n clients gets
        aggregation = None
        if isinstance(agg, FedAvgAggregation):
            aggregation = {
                "mode": "fedavg",
                "bound": agg.bound,
                "max_weight": agg.max_weight,
                "bits": agg.bits,
                "total_weight_revealed": True,
            }
        return ledger_header(
            self._tracker,
            planned_clients=n,
            dropout_fraction=self._dropout,
            corrupt_fraction=self._corrupt,
            layout={
                "fingerprint": probe.layout_fingerprint,
                "size": self._layout.size,
                "tensors": len(self._layout.specs),
            },
            plan=probe.plan,
            aggregation=aggregation,
            delta=delta,
            population=population,
            extra=self._mode_fields(),
        )

    def _mode_fields(self) -> dict[str, Any]:
        if self._alliance is None:
            return {"security_mode": "semi-honest"}
        return {
            "security_mode": "active",
            "alliance": {"fingerprint": self._alliance.fingerprint, "members": len(self._alliance)},
        }

    def apply(self, model: nn.Module, update: AggregateUpdate | None = None, *, server_lr: float = 1.0) -> None:
        """``model += server_lr * mean`` for the layout's tensors (in place; validated first)."""
        upd = update if update is not None else self.last
        if upd is None:
            raise SecAggValueError("no aggregate to apply; finish a round first")
        self._layout.add_to(model, upd.mean, alpha=server_lr)
