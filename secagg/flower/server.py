"""Server side of secagg on Flower: :class:`SecAggServer`, one secure round over a Flower
:class:`~flwr.serverapp.Grid` at a time.

A round is three steps, none of them a stage loop:

1. **set up** -- :func:`secagg.spec.build_spec` makes the round's
   :class:`~secagg.spec.RoundSpec` from the :class:`~secagg.flower.config.SecAggConfig`
   (its aggregation rule), the cohort size, the layout of the global arrays and their
   digest (``model=``: a client refuses to train on arrays the spec does not name); a DP
   budget is checked at the cohort floor before anything is sent;
2. **drive** -- :func:`secagg.driver.drive_round` runs the protocol over a
   :class:`~secagg.flower.transport.FlowerTransport`, the spec's canonical bytes being
   every node's first message; the masked-input request also carries the global arrays
   and the train config (the node trains there).  A node that goes silent is a dropout; a
   node whose reply the protocol refuses (undecodable, truncated, invalid) is excluded
   with the reason; neither stops the round while enough nodes remain;
3. **decode and record** -- the aggregate becomes a Flower :class:`~flwr.app.ArrayRecord`,
   the round is fed to the accountant and written to the privacy ledger
   (:func:`secagg.rounds.account_round`).

Threat model on Flower: the SuperLink and the ServerApp are the server.  They see the
protocol messages (public keys, encrypted shares, masked vectors, revealed shares of
the round's secrets as the protocol allows) and, as the only decoded output, the sum
(``integer``), the weighted mean and the survivors' total weight (``fedavg``), or the
noised mean (``dp``); never an individual update.  An honest-but-curious server learns
nothing more; what an actively malicious one can still do is in docs/flower.md.

Security mode: with an alliance (``SecAggConfig(alliance=...)``) every round runs in
**active mode**: nodes first prove which alliance member they are (a signed answer to a
fresh challenge; others are refused, with the reason in the result and the ledger),
member ``m`` is protocol id ``m``, the driver checks every signature against the
alliance, and the ledger record carries the signed trail (``secagg verify --alliance``).
Without one, rounds are **semi-honest** and every result and record says so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord

from secagg.driver import StageReport as DriverStageReport
from secagg.driver import drive_round
from secagg.errors import MessageError, ProtocolAbort, SecAggTypeError, SecAggValueError, SignatureError
from secagg.flower._codec import (
    ARRAYS_KEY,
    CLIP_INDICATOR,
    CLIP_NORM_KEY,
    CONTROL_KEY,
    IDENTIFY,
    IDENTIFY_CHALLENGE_BYTES,
    INDICATOR_SCALE_KEY,
    MESSAGE_TYPE,
    PAYLOAD_KEY,
    SECAGG_ERROR_CODE,
    TASK_KEY,
    TRAIN_CONFIG_KEY,
    arrays_of,
    identify_statement,
    pack_payload,
    unpack_payload,
)
from secagg.flower.config import SecAggConfig
from secagg.flower.results import SecureRoundAbort, SecureRoundResult, StageReport
from secagg.flower.transport import FlowerTransport
from secagg.messages import Stage
from secagg.rand import RngLike, as_random_source
from secagg.rounds import RoundAccount, account_round, check_budget, ledger_header, protocol_summary
from secagg.spec import Aggregation, ArraySpec, DPAggregation, FedAvgAggregation, RoundSpec, build_spec, layout_of

__all__ = ["SecAggServer"]

log = logging.getLogger("secagg.flower")


def _check_nodes(node_ids: Iterable[int]) -> list[int]:
    try:
        nodes = [int(n) for n in node_ids]
    except (TypeError, ValueError) as exc:
        raise SecAggTypeError("node_ids must be integers (Flower node ids)") from exc
    if len(set(nodes)) != len(nodes):
        raise SecAggValueError("node_ids must be distinct")
    if len(nodes) < 3:
        raise SecAggValueError(f"a secure round needs at least 3 nodes, got {len(nodes)}; wait for more nodes")
    return sorted(nodes)


def _config(config: Any, what: str) -> ConfigRecord:
    """A copy of a ConfigRecord (or an empty one) the round may add its own keys to."""
    if config is None:
        return ConfigRecord()
    if not isinstance(config, ConfigRecord):
        raise SecAggTypeError(f"{what} must be a flwr ConfigRecord")
    return ConfigRecord(dict(config.items()))


def _record(arrays: Mapping[str, npt.NDArray[Any]]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


class SecAggServer:
    """Runs secure rounds over a Flower grid and keeps what spans rounds: the round
    counter, the accountant and the ledger.

    Args:
        config: the :class:`~secagg.flower.config.SecAggConfig`.
        tracker: a :class:`dp.tracker.PrivacyTracker` fed every ``dp`` round (its budget,
            if any, is checked at the cohort floor before a round starts).
        ledger: a :class:`dp.ledger.Ledger` receiving one record per completed round (a
            ``dp`` ledger needs a tracker).
        rng: randomness for round ids (default: a fresh CSPRNG).
        clipper: ``dp`` only: a :class:`dp.clipping.AdaptiveClipper` (Andrew et al. 2021)
            whose ``clip_norm`` replaces ``config.clip_norm`` and moves after every round
            towards its ``target_quantile`` of the update norms.  Each client adds one
            coordinate to its update, ``(b - 1/2) * indicator_scale * C`` with
            ``b = 1[||update|| <= C]``, inside the same DP vector (L2 clip
            ``C * sqrt(1 + indicator_scale**2 / 4)``, the same noise multiplier), so the
            quantile estimate is noised by the round's distributed noise and accounted by
            the round's own event: no extra privacy cost, no separate accountant entry.
            Its ``count_stddev`` must be 0 (the noise is the round's).
        indicator_scale: ``alpha`` above (> 0); larger means a less noisy quantile
            estimate (count noise std ``z sqrt(1 + alpha^2/4) / alpha``) and more noise on
            the update (std ``z C sqrt(1 + alpha^2/4)``).
        alliance: an :class:`~secagg.identity.Alliance` or the path of its JSON file
            (replaces ``config.alliance``): active mode.  Before its first round with a
            node the server sends it a fresh challenge; the node answers with its member
            id and the signature of :func:`~secagg.flower._codec.identify_statement` by
            that member's key.  A node that cannot (its key is not in the alliance, a bad
            signature, no reply, a member already on another node) is refused: it gets no
            round message and ``result.refused`` and the ledger record (``refused_nodes``)
            name it with the reason.  Member ``m`` is protocol id ``m`` in every round
            (``n`` is the alliance's size; a member without a node is silent from the
            start), so the ledger's signed trail verifies against the alliance file.
    """

    def __init__(
        self,
        config: SecAggConfig | None = None,
        *,
        tracker: Any = None,
        ledger: Any = None,
        rng: RngLike = None,
        clipper: Any = None,
        indicator_scale: float = 1.0,
        alliance: Any = None,
    ) -> None:
        cfg = SecAggConfig() if config is None else config
        if not isinstance(cfg, SecAggConfig):
            raise SecAggTypeError(f"config must be a SecAggConfig, got {type(cfg).__name__}")
        if alliance is not None:
            cfg = dataclasses.replace(cfg, alliance=alliance)
        if tracker is not None and not hasattr(tracker, "record_round"):
            raise SecAggTypeError("tracker must be a dp.tracker.PrivacyTracker")
        if ledger is not None and not (hasattr(ledger, "append") and hasattr(ledger, "head_for_clients")):
            raise SecAggTypeError("ledger must be a dp.ledger.Ledger")
        if cfg.mode == "dp" and ledger is not None and tracker is None:
            raise SecAggValueError("a dp ledger records epsilons: pass tracker=PrivacyTracker(...) too")
        if clipper is not None:
            from dp.clipping import AdaptiveClipper

            if not isinstance(clipper, AdaptiveClipper):
                raise SecAggTypeError("clipper must be a dp.clipping.AdaptiveClipper")
            if cfg.mode != "dp":
                raise SecAggValueError("adaptive clipping needs mode='dp' (it clips the DP update's L2 norm)")
            if clipper.count_stddev != 0.0:
                raise SecAggValueError(
                    "clipper.count_stddev must be 0: on secagg the unclipped count is noised by the round's "
                    "distributed DP noise (see indicator_scale), not by the server"
                )
        if isinstance(indicator_scale, bool) or not isinstance(indicator_scale, (int, float)) or not (
            0.0 < float(indicator_scale) < 1e6
        ):
            raise SecAggValueError("indicator_scale must be a number in (0, 1e6)")
        self._clipper = clipper
        self._alpha = float(indicator_scale)
        self._eval_round = 0
        self._cfg = cfg
        self._tracker = tracker
        self._ledger = ledger
        self._rng = as_random_source(rng)
        self._round = 0
        self._member_of: dict[int, int] = {}  # node id -> member id it proved (active mode)
        self.last: SecureRoundResult | None = None

    @property
    def config(self) -> SecAggConfig:
        """The configuration."""
        return self._cfg

    @property
    def tracker(self) -> Any:
        """The :class:`dp.tracker.PrivacyTracker` (or None)."""
        return self._tracker

    @property
    def ledger(self) -> Any:
        """The :class:`dp.ledger.Ledger` (or None)."""
        return self._ledger

    def attach_ledger(self, ledger: Any) -> None:
        """Attach a ledger before the first round (e.g. one created from
        :meth:`ledger_header` once the cohort is known)."""
        if self._ledger is not None or self._round:
            raise SecAggValueError("attach a ledger once, before the first round")
        if not (hasattr(ledger, "append") and hasattr(ledger, "head_for_clients")):
            raise SecAggTypeError("ledger must be a dp.ledger.Ledger")
        if self._cfg.mode == "dp" and self._tracker is None:
            raise SecAggValueError("a dp ledger records epsilons: the server needs a tracker")
        self._ledger = ledger

    @property
    def clipper(self) -> Any:
        """The current :class:`dp.clipping.AdaptiveClipper` (None without adaptive clipping)."""
        return self._clipper

    @property
    def round_index(self) -> int:
        """Index the next round gets."""
        return self._round

    @property
    def ledger_head(self) -> str | None:
        """The ledger head ``"COUNT:HASH"`` (None without a ledger)."""
        return None if self._ledger is None else str(self._ledger.head_for_clients())

    # -- round set-up -----------------------------------------------------------------------

    def _layout(self, arrays: Mapping[str, npt.NDArray[Any]]) -> tuple[ArraySpec, ...]:
        """The arrays aggregated: all of them (integer mode) or the float ones."""
        full = layout_of(arrays)
        return full if self._cfg.mode == "integer" else tuple(s for s in full if s.is_float)

    def _training(self, arrays: Mapping[str, npt.NDArray[Any]]) -> tuple[tuple[ArraySpec, ...], Aggregation]:
        """The layout and rule of a training round (with the clip indicator under adaptive clipping)."""
        layout, rule = self._layout(arrays), self._cfg.rule()
        if self._clipper is None:
            return layout, rule
        if CLIP_INDICATOR in arrays:
            raise SecAggValueError(f"the model may not have an array named {CLIP_INDICATOR!r}")
        assert isinstance(rule, DPAggregation)
        joint = float(self._clipper.clip_norm) * math.sqrt(1.0 + self._alpha**2 / 4.0)
        return (*layout, ArraySpec(CLIP_INDICATOR, (1,), "float64")), dataclasses.replace(rule, clip_norm=joint)

    def _spec(
        self,
        n: int,
        arrays: Mapping[str, npt.NDArray[Any]],
        round_id: bytes,
        *,
        layout: tuple[ArraySpec, ...] | None = None,
        rule: Aggregation | None = None,
        round_index: int | None = None,
    ) -> RoundSpec:
        cfg = self._cfg
        if layout is None or rule is None:
            layout, rule = self._training(arrays)
        return build_spec(
            len(cfg.alliance) if cfg.active else n,  # active: protocol ids are the member ids
            layout,
            rule,
            round_index=self._round if round_index is None else round_index,
            model=arrays,
            ledger_head=self.ledger_head,
            neighbors=cfg.neighbors,
            threshold=cfg.threshold,
            min_clients=cfg.min_clients,
            dropout_fraction=cfg.dropout_fraction,
            corrupt_fraction=cfg.corrupt_fraction,
            round_id=round_id,
            active=cfg.active,
        )

    def plan_round(self, n: int, arrays: Any) -> RoundSpec:
        """The :class:`~secagg.spec.RoundSpec` of the next round for ``n`` clients over the
        global ``arrays`` (no state changes; ``spec.protocol`` is the protocol config).

        Raises:
            HeadroomError: ``fedavg`` weights and bound do not fit the ring for ``n``.
            dp.errors.DPError: no DP plan fits.
            dp.errors.BudgetExceededError: the tracker's budget could be exceeded even at
                the cohort floor (the worst round the server accepts).
            UnsafeParametersError: the cohort is too small for the threat model.
        """
        spec = self._spec(n, arrays_of(arrays), self._rng.bytes(16))
        if spec.plan is not None:  # refuse now if even the worst accepted outcome could not be recorded
            check_budget(
                self._tracker, spec.plan.noise_report(spec.plan.min_clients), round_index=self._round,
                sampling_rate=self._cfg.sampling_rate,
            )  # fmt: skip
        return spec

    # -- the round --------------------------------------------------------------------------

    def run_round(
        self,
        grid: Any,
        node_ids: Iterable[int],
        arrays: Any,
        *,
        train_config: Any = None,
        on_stage: Callable[[StageReport], None] | None = None,
    ) -> SecureRoundResult:
        """Run one secure round over ``node_ids``.

        Args:
            grid: the ServerApp's :class:`flwr.serverapp.Grid`.
            node_ids: the nodes taking part (at least 3); protocol ids follow their order
                when sorted.
            arrays: the global model (:class:`flwr.app.ArrayRecord` or name -> ndarray);
                its float arrays are aggregated in ``fedavg``/``dp`` (sent to the clients
                with the masked-input request, to train from; the spec binds their
                digest); in ``integer`` mode a template of the integer arrays to sum.
            train_config: a :class:`flwr.app.ConfigRecord` passed to the clients' training.
            on_stage: called with a :class:`~secagg.flower.results.StageReport` after each
                stage closes.

        Returns:
            The :class:`~secagg.flower.results.SecureRoundResult`; nodes excluded for
            misbehaviour are in ``excluded``, silent ones in ``dropped``, nodes that
            refused the round (with their reason) in ``refused``.

        Raises:
            SecureRoundAbort: too few nodes remained at a stage, or a secret could not be
                recovered; nothing individual was revealed, nothing was recorded.  Nodes
                that refused the round are named in it with their reasons.
            dp.errors.BudgetExceededError: over the budget (before anything was sent).
        """
        nodes = _check_nodes(node_ids)
        arrs = arrays_of(arrays)
        train_rec = _config(train_config, "train_config")
        layout, rule = self._training(arrs)
        clip = self._clipper
        if clip is not None:
            train_rec[CLIP_NORM_KEY] = float(clip.clip_norm)
            train_rec[INDICATOR_SCALE_KEY] = self._alpha * float(clip.clip_norm)
        result = self._run(grid, nodes, arrays, arrs, layout, rule, train_rec, on_stage, self._round, True)
        self.last = result
        self._round += 1
        return result

    def run_evaluation(
        self,
        grid: Any,
        node_ids: Iterable[int],
        arrays: Any,
        metrics: Sequence[str],
        *,
        bound: float = 100.0,
        max_weight: int | None = None,
        evaluate_config: Any = None,
        on_stage: Callable[[StageReport], None] | None = None,
    ) -> SecureRoundResult:
        """Federated evaluation aggregated securely: each node evaluates the global
        ``arrays`` (its ClientApp's ``evaluate_fn``, see :func:`~secagg.flower.register`)
        and the server learns only the example-weighted mean of each metric over the
        survivors and their total example count, never one node's metrics.

        The metric means are **not** differentially private (they are computed on the
        nodes' data without noise): in ``dp`` training they are outside the accounted
        guarantee.  Nothing is recorded in the tracker or the ledger.

        Args:
            metrics: metric names every node returns (each a finite number).
            bound: metrics are clipped to ``[-bound, bound]`` (fixed point, 64-bit ring).
            max_weight: cap on a node's example count (default ``config.max_weight``).
            evaluate_config: a :class:`flwr.app.ConfigRecord` passed to ``evaluate_fn``.

        Returns:
            A :class:`SecureRoundResult` whose ``evaluation`` maps metric -> mean.
        """
        nodes = _check_nodes(node_ids)
        names = [str(m) for m in metrics]
        if not names or len(set(names)) != len(names):
            raise SecAggValueError("metrics must be distinct metric names, at least one")
        arrs = arrays_of(arrays)
        rec = _config(evaluate_config, "evaluate_config")
        rec[TASK_KEY] = "evaluate"
        weight = self._cfg.max_weight if max_weight is None else max_weight
        rule = FedAvgAggregation(float(bound), int(weight), 64)
        layout = tuple(ArraySpec(m, (1,), "float64") for m in names)
        res = self._run(grid, nodes, arrays, arrs, layout, rule, rec, on_stage, self._eval_round, False)
        self._eval_round += 1
        return res

    def _run(  # noqa: PLR0917 - internal helper
        self,
        grid: Any,
        nodes: list[int],
        arrays: Any,
        arrs: dict[str, npt.NDArray[Any]],
        layout: tuple[ArraySpec, ...],
        rule: Aggregation,
        train_rec: ConfigRecord,
        on_stage: Callable[[StageReport], None] | None,
        round_index: int,
        training: bool,
    ) -> SecureRoundResult:
        t_start = time.perf_counter()
        if on_stage is not None and not callable(on_stage):
            raise SecAggTypeError("on_stage must be callable")
        cohort: Sequence[int] | dict[int, int] = nodes
        members: dict[int, int] = {}
        refused_nodes: dict[int, str] = {}
        t_identify = 0.0
        if self._cfg.active:
            members, refused_nodes = self._identify(grid, nodes)
            cohort = members
            t_identify = time.perf_counter() - t_start
        spec = self._spec(len(nodes), arrs, self._rng.bytes(16), layout=layout, rule=rule, round_index=round_index)
        if training and spec.plan is not None:  # refuse now if even the worst accepted outcome could not be recorded
            check_budget(
                self._tracker, spec.plan.noise_report(spec.plan.min_clients), round_index=self._round,
                sampling_rate=self._cfg.sampling_rate,
            )  # fmt: skip
        protocol = spec.protocol
        global_rec = arrays if isinstance(arrays, ArrayRecord) else _record(arrs)
        extra_down = sum(int(a.nbytes) for a in arrs.values())

        def extra(stage: Stage, client: int) -> Mapping[str, Any]:
            del client
            return {ARRAYS_KEY: global_rec, TRAIN_CONFIG_KEY: train_rec} if stage is Stage.MASKED_INPUT else {}

        kind = "round" if training else "evaluation"
        transport = FlowerTransport(
            grid,
            cohort,
            round_id=spec.round_id,
            group=f"secagg-{kind}-{round_index}",
            ttl=max(self._cfg.stage_timeout * 2.0, 60.0),
            poll_interval=self._cfg.poll_interval,
            extra=extra,
        )
        log.info("secagg %s %d (%s): %d nodes, mode %s, d=%d, bits=%d, k=%d, t=%d", kind, round_index,
                 spec.round_id.hex()[:8], len(nodes), spec.mode, protocol.d, protocol.bits, protocol.degree,
                 protocol.t)  # fmt: skip

        def report(rep: DriverStageReport) -> None:
            mine = self._stage_report(rep, transport, extra_down)
            if mine.errors or mine.excluded:
                log.info("secagg stage %s: silent %s, excluded %s, errors %s", rep.stage, mine.silent,
                         mine.excluded, mine.errors)  # fmt: skip
            if on_stage is not None:
                on_stage(mine)

        try:
            run = drive_round(protocol, transport, setup=spec.to_bytes(), stage_timeout=self._cfg.stage_timeout,
                              on_stage=report, alliance=self._cfg.alliance,
                              model_digest=spec.model_digest if self._cfg.active else None)  # fmt: skip
        except ProtocolAbort as exc:
            raise SecureRoundAbort(
                f"secure {kind} {round_index}: {exc}",
                stage=exc.stage,
                dropped={k: transport.nodes_of(v) for k, v in exc.dropped.items()},
                excluded={transport.node_of(c): r for c, r in exc.excluded.items()},
                nodes=nodes,
                errors=transport.errors,
                refused={**refused_nodes, **transport.refused},
            ) from exc

        t1 = time.perf_counter()
        res = run.result
        vec, weight = spec.decode(res.aggregate, len(res.survivors))
        clip_norm = unclipped = None
        evaluation = None
        if spec.mode == "integer":
            new_arrays = _record(spec.unflatten(vec, dtype="uint64"))
            update = None
        elif not training:
            mean = spec.unflatten(vec, dtype="float64")
            evaluation = {k: float(v.reshape(-1)[0]) for k, v in mean.items()}
            new_arrays = _record(mean)
            update = None
        else:
            mean = spec.unflatten(vec, dtype="float64")
            if CLIP_INDICATOR in mean:
                clip_norm, unclipped = self._adapt(float(mean.pop(CLIP_INDICATOR).reshape(-1)[0]))
            update = _record(mean)
            new_arrays = _record({k: (v + mean[k]).astype(v.dtype) if k in mean else v for k, v in arrs.items()})
        survivors = transport.nodes_of(res.survivors)
        dropped = {k: transport.nodes_of(v) for k, v in res.dropped.items()}
        excluded = {transport.node_of(c): r for c, r in res.excluded.items()}
        acct = None
        if training:
            more: dict[str, Any] = {} if clip_norm is None else {"adaptive_clipping": {
                "clip_norm": clip_norm, "unclipped_fraction_noised": unclipped, "indicator_scale": self._alpha,
                "target_quantile": self._clipper.target_quantile, "learning_rate": self._clipper.learning_rate,
                "next_clip_norm": self._clipper.clip_norm}}  # fmt: skip
            if self._cfg.active:  # who was which member; members with no node were silent from the start
                more["member_nodes"] = {str(m): n for m, n in sorted(members.items())}
                more["absent_members"] = [m for m in range(1, len(self._cfg.alliance) + 1) if m not in members]
            if refused_nodes:
                more["refused_nodes"] = {str(n): r for n, r in sorted(refused_nodes.items())}
            acct = self._account(spec, survivors, dropped, excluded, weight, more=more, audit=res)
        bytes_down = dict(run.bytes_down)
        for rep in run.stages:
            if rep.stage == Stage.MASKED_INPUT.value:
                bytes_down[rep.stage] += extra_down * len(rep.addressed)
        timings = {r.stage: r.seconds for r in run.stages}
        timings["server"] = sum(r.server_seconds for r in run.stages) + time.perf_counter() - t1
        if self._cfg.active:
            timings["identify"] = t_identify
        timings["total"] = time.perf_counter() - t_start
        result = SecureRoundResult(
            round_index=round_index,
            round_id=spec.round_id.hex(),
            mode=spec.mode,
            arrays=new_arrays,
            update=update,
            nodes=tuple(nodes),
            survivors=survivors,
            dropped=dropped,
            excluded=excluded,
            recovered=transport.nodes_of(res.recovered_keys),
            total_weight=weight,
            noise=None if acct is None else acct.noise,
            privacy=None if acct is None else acct.privacy,
            ledger_head=self.ledger_head,
            fingerprint=spec.fingerprint,
            protocol=protocol_summary(protocol),
            bytes_up=dict(run.bytes_up),
            bytes_down=bytes_down,
            timings=timings,
            errors=dict(transport.errors),
            refused={**refused_nodes, **transport.refused},
            clip_norm=clip_norm,
            unclipped_fraction=unclipped,
            evaluation=evaluation,
            security_mode=self._cfg.security_mode,
            members=members,
        )
        log.info("secagg %s %d done: %d/%d survivors, %d excluded, %d refused, in %.2f s", kind, round_index,
                 len(survivors), len(nodes), len(excluded), len(transport.refused), timings["total"])  # fmt: skip
        return result

    def _adapt(self, indicator_mean: float) -> tuple[float, float]:
        """Move the adaptive clip from the round's noised indicator coordinate (the mean over
        survivors of ``(b - 1/2) alpha C`` plus noise); return (C used, noised unclipped fraction)."""
        clip = self._clipper
        c = float(clip.clip_norm)
        frac = indicator_mean / (self._alpha * c) + 0.5
        expo = -float(clip.learning_rate) * (frac - float(clip.target_quantile))
        new_c = c * math.exp(min(expo, 50.0))
        if not 1e-300 <= new_c <= 1e300:
            raise SecAggValueError(f"the adaptive clip would leave [1e-300, 1e300] ({new_c}); lower learning_rate")
        self._clipper = dataclasses.replace(clip, clip_norm=new_c, rounds=clip.rounds + 1, last_fraction=frac)
        return c, frac

    @staticmethod
    def _stage_report(rep: DriverStageReport, transport: FlowerTransport, extra_down: int) -> StageReport:
        """The driver's report of a stage in node ids."""
        extra = extra_down * len(rep.addressed) if rep.stage == Stage.MASKED_INPUT.value else 0
        return StageReport(
            stage=rep.stage,
            addressed=transport.nodes_of(rep.addressed),
            answered=transport.nodes_of(rep.answered),
            silent=transport.nodes_of(rep.silent),
            excluded={transport.node_of(c): r for c, r in rep.excluded.items()},
            errors=dict(transport.stage_errors[rep.stage]),
            bytes_up=rep.bytes_up,
            bytes_down=rep.bytes_down + extra,
            seconds=rep.seconds,
        )

    # -- identities (active mode) -------------------------------------------------------------

    def _identify(self, grid: Any, nodes: Sequence[int]) -> tuple[dict[int, int], dict[int, str]]:
        """Member id -> node id of the ``nodes`` that proved an alliance identity (asking
        only the nodes not yet identified), and node id -> reason for the refused ones."""
        from flwr.app import ConfigRecord, RecordDict
        from flwr.app import Message as FlowerMessage

        refused: dict[int, str] = {}
        todo = [n for n in nodes if n not in self._member_of]
        if todo:
            challenges = {n: self._rng.bytes(IDENTIFY_CHALLENGE_BYTES) for n in todo}
            msgs = [
                FlowerMessage(RecordDict({
                    CONTROL_KEY: ConfigRecord({"kind": IDENTIFY, "stage": IDENTIFY, "round": "", "cid": 0}),
                    PAYLOAD_KEY: pack_payload(challenges[n])}), n, MESSAGE_TYPE,
                    ttl=max(self._cfg.stage_timeout * 2.0, 60.0), group_id=f"secagg-identify-{self._round}")
                for n in todo
            ]  # fmt: skip
            pending = {str(mid): n for n, mid in zip(todo, grid.push_messages(msgs), strict=True) if mid}
            deadline = time.monotonic() + self._cfg.stage_timeout
            while pending:
                for reply in grid.pull_messages(list(pending)):
                    node = pending.pop(str(reply.metadata.reply_to_message_id), None)
                    if node is not None:
                        why = self._check_identity(reply, node, challenges[node])
                        if why is not None:
                            refused[node] = why
                if not pending or time.monotonic() >= deadline:
                    break
                time.sleep(self._cfg.poll_interval)
            for node in todo:
                if node not in self._member_of and node not in refused:
                    refused[node] = "not identified: no identify reply before the deadline"
        members: dict[int, int] = {}
        for node in nodes:
            m = self._member_of.get(node)
            if m is None:
                continue
            if m in members:
                refused[node] = f"alliance member {m} is already taking part on node {members[m]}"
                continue
            members[m] = node
        for node, why in refused.items():
            log.warning("secagg: node %d refused: %s", node, why)
        if len(members) < 3:
            raise SecureRoundAbort(
                f"active mode: only {len(members)} of {len(nodes)} nodes proved an alliance identity; "
                "a secure round needs at least 3",
                stage=Stage.ADVERTISE_KEYS.value, dropped={}, excluded={}, nodes=list(nodes), errors={},
                refused=refused,
            )  # fmt: skip
        return members, refused

    def _check_identity(self, reply: Any, node: int, challenge: bytes) -> str | None:
        """Record ``node``'s member id if its identify reply proves it; else the reason."""
        alliance = self._cfg.alliance
        if reply.has_error():
            why = str(reply.error.reason)
            return f"not identified: {why[len('secagg: '):] if why.startswith('secagg: ') else why}" + (
                "" if int(reply.error.code) == SECAGG_ERROR_CODE else f" (error {int(reply.error.code)})")
        if int(reply.metadata.src_node_id) != node:
            return "not identified: the reply came from another node"
        try:
            data = unpack_payload(reply.content.array_records[PAYLOAD_KEY])
            if len(data) != 4 + 64:
                raise MessageError("an identify reply is a member id (4 bytes) and a signature (64 bytes)")
            member = int.from_bytes(data[:4], "big")
            if member not in alliance:
                return f"identity not in the alliance (it claims member {member}, which the alliance does not have)"
            alliance.verify(member, identify_statement(alliance.fingerprint, challenge, node, member), data[4:])
        except (KeyError, MessageError) as exc:
            return f"not identified: malformed identify reply: {exc}"
        except SignatureError:
            return f"identity not in the alliance: its signature does not verify under member {member}'s key"
        self._member_of[node] = member
        return None

    # -- accounting and ledger ----------------------------------------------------------------

    def _account(
        self,
        spec: RoundSpec,
        survivors: Sequence[int],
        dropped: Mapping[str, Sequence[int]],
        excluded: Mapping[int, str],
        weight: int,
        *,
        more: Mapping[str, Any] | None = None,
        audit: Any = None,
    ) -> RoundAccount:
        """Feed the tracker (dp), then append the ledger record (:func:`secagg.rounds.account_round`;
        the record names the spec by fingerprint and model digest, clients by node id)."""
        return account_round(
            self._tracker,
            self._ledger,
            spec,
            survivors=len(survivors),
            dropped=dropped,
            total_weight=None if spec.mode == "dp" else weight,
            excluded=excluded,
            sampling_rate=self._cfg.sampling_rate,
            audit=audit,
            extra={
                "dropped_nodes": {k: [int(x) for x in v] for k, v in dropped.items()},
                "survivor_nodes": [int(x) for x in survivors],
                "transport": "flower",
                **(more or {}),
            },
        )

    def ledger_header(
        self, n: int, arrays: Any, *, delta: float | None = None, population: int | None = None
    ) -> dict[str, Any]:
        """A ledger header for rounds of ``n`` clients over ``arrays`` (pass it to
        :meth:`dp.ledger.Ledger.create`; see :func:`secagg.rounds.ledger_header`); ``delta``
        defaults to the tracker's."""
        cfg = self._cfg
        arrs = arrays_of(arrays)
        layout = self._layout(arrs)
        aggregation: dict[str, Any] | None = None
        plan = None
        if cfg.mode == "dp":
            plan = self._spec(n, arrs, bytes(16)).plan
        else:
            aggregation = {"mode": cfg.mode, "bits": cfg.bits}
            if cfg.mode == "fedavg":
                aggregation.update(bound=cfg.bound, max_weight=cfg.max_weight, total_weight_revealed=True)
        return ledger_header(
            self._tracker,
            planned_clients=n,
            dropout_fraction=cfg.dropout_fraction,
            corrupt_fraction=cfg.corrupt_fraction,
            layout={"size": sum(s.size for s in layout), "arrays": len(layout)},
            plan=plan,
            aggregation=aggregation,
            delta=delta,
            population=population,
            extra={"transport": "flower", "security_mode": cfg.security_mode,
                   **({"alliance": {"fingerprint": cfg.alliance.fingerprint, "members": len(cfg.alliance)}}
                      if cfg.active else {})},  # the torch adapter's header fields
        )
