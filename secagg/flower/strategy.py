"""Flower's strategy loop with secure rounds: :class:`SecAggFedAvg`.

A complete Message-API strategy: every training round is a secure round (secure
aggregation, optionally distributed DP), with

* **accounting**: ``mode="dp"`` needs a :class:`dp.tracker.PrivacyTracker` (refused at
  construction otherwise) and writes one privacy-ledger record per round (``ledger=``: a
  :class:`dp.ledger.Ledger`, or a path where the ledger is created at the first round);
* **node sampling that matches the accounting**: in ``dp`` mode each connected node takes
  part with probability ``fraction_train`` independently (Poisson sampling, what the
  tracker's release figure assumes); fixed-size sampling is refused in ``dp`` mode unless
  it samples everyone (``dp.tracker`` has no fixed-size event yet).  Other modes sample a
  fixed number of nodes, as Flower's FedAvg does;
* **federated evaluation**: ``evaluate="clear"`` (Flower's: each node's metrics reach the
  server) or ``"secure"`` (a secure round: only the example-weighted mean of each metric);
* **a server optimiser**: ``optimizer=`` any Flower FedAvg-family strategy (FedAdam,
  FedYogi, FedAdagrad, FedAvgM, ...) takes the secure (noised) aggregate as the round's
  average and applies its update (post-processing: no privacy cost);
* **adaptive clipping** (``clipper=``, Andrew et al. 2021), estimated under the round's own
  DP noise and accounted by its event (see :class:`~secagg.flower.server.SecAggServer`);
* **no hang on too few nodes**: the strategy waits at most ``node_wait`` seconds for the
  nodes a round needs and then raises a :class:`~secagg.errors.SecAggValueError` saying
  how many are connected and how many are needed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.flower.config import SecAggConfig
from secagg.flower.results import RELEASE_AGAINST, SERVER_AGAINST, SecureRoundAbort, SecureRoundResult, StageReport
from secagg.flower.server import SecAggServer
from secagg.rand import RngLike, as_random_source

__all__ = ["MIN_SECURE_NODES", "SIMULATION_HINT", "SecAggFedAvg"]

log = logging.getLogger("secagg.flower")

#: The fewest nodes a secure round can run with.
MIN_SECURE_NODES = 3
#: What to do when Flower's local simulation (2 virtual nodes by default) is too small.
SIMULATION_HINT = (
    "Flower's local simulation starts 2 virtual nodes unless told otherwise: "
    "flwr run APP --federation-config 'num-supernodes=10'; on a deployment start more SuperNodes"
)


class _StubGrid:
    """Just enough of a grid for an optimiser strategy's ``configure_train`` (it samples
    node ids we ignore; only its state update matters)."""

    def __init__(self, n: int) -> None:
        self._n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self._n + 1))


class SecAggFedAvg(FedAvg):
    """Flower's Message-API :class:`~flwr.serverapp.strategy.FedAvg` whose training step is
    a secure round (``configure_train`` runs it and sends no plain ``train`` message;
    ``aggregate_train`` returns the new global arrays and the round's metrics).  Use it
    like any Flower strategy: ``strategy.start(grid, initial_arrays, num_rounds)``.

    A round that aborts (:class:`~secagg.flower.results.SecureRoundAbort`) leaves the
    model unchanged; the exception is kept in :attr:`aborts`.  Nodes excluded for
    misbehaviour or that refused the round do not abort it while enough remain; they are in
    each result's ``excluded`` / ``refused``.

    Args:
        server: a :class:`~secagg.flower.server.SecAggServer` (then ``tracker``, ``ledger``
            and ``clipper`` are its own) or a :class:`~secagg.flower.config.SecAggConfig`.
        mode: shorthand that overrides the config's ``mode`` (``"fedavg"``, ``"dp"``,
            ``"integer"``).
        tracker: a :class:`dp.tracker.PrivacyTracker`; required in ``dp`` mode.
        ledger: a :class:`dp.ledger.Ledger`, or a path: the ledger is created there at the
            first round (header from the first cohort and model).
        clipper: ``dp`` only: a :class:`dp.clipping.AdaptiveClipper` (``count_stddev=0``).
        indicator_scale: adaptive clipping's ``alpha`` (see SecAggServer).
        optimizer: a Flower FedAvg-family strategy used as the server optimiser
            (``FedAdam(eta=...)``, ``FedYogi``, ``FedAvgM(server_momentum=...)``...).
        evaluate: ``"clear"`` (Flower's federated evaluation: nodes' ``evaluate``
            handlers, metrics in the clear), ``"secure"`` (a secure evaluation round:
            only metric means; the nodes' ClientApp needs an ``evaluate_fn``, see
            :func:`~secagg.flower.register`) or ``"none"``.
        evaluate_metrics: metric names of a secure evaluation.
        metric_bound: secure evaluation clips each metric to ``[-metric_bound, metric_bound]``.
        sampling: ``"poisson"`` (default in ``dp``) or ``"fixed"`` (default otherwise;
            in ``dp`` only with ``fraction_train=1.0``).
        node_wait: seconds to wait for enough connected nodes before raising.
        on_stage: passed to every round (:class:`~secagg.flower.results.StageReport`).
        rng: randomness for Poisson sampling (default: a fresh CSPRNG).
        min_train_nodes: at least 3 (a secure round needs 3 clients); with Poisson
            sampling, a round that samples fewer is skipped (the sample does not depend
            on the data, so skipping costs no privacy).
        **kwargs: FedAvg's other arguments (``fraction_train``, ``fraction_evaluate``,
            ``min_available_nodes``, ``min_evaluate_nodes``, ...).

    Attributes:
        secagg: the :class:`SecAggServer`.
        results: every completed round's :class:`SecureRoundResult`.
        evaluations: every completed secure evaluation's result.
        aborts: every aborted round's :class:`SecureRoundAbort`.
        skipped: server rounds skipped because Poisson sampling drew fewer than 3 nodes.
    """

    def __init__(
        self,
        server: SecAggServer | SecAggConfig | None = None,
        *,
        mode: str | None = None,
        tracker: Any = None,
        ledger: Any = None,
        clipper: Any = None,
        indicator_scale: float = 1.0,
        optimizer: FedAvg | None = None,
        evaluate: str = "clear",
        evaluate_metrics: Sequence[str] = ("loss", "accuracy"),
        metric_bound: float = 100.0,
        sampling: str | None = None,
        node_wait: float = 10.0,
        on_stage: Callable[[StageReport], None] | None = None,
        rng: RngLike = None,
        min_train_nodes: int = MIN_SECURE_NODES,
        **kwargs: Any,
    ) -> None:
        if min_train_nodes < MIN_SECURE_NODES:
            raise SecAggValueError("min_train_nodes must be >= 3 for secure aggregation")
        kwargs.setdefault("min_available_nodes", min_train_nodes)
        super().__init__(min_train_nodes=min_train_nodes, **kwargs)
        self._ledger_path: str | None = None
        if isinstance(server, SecAggServer):
            if mode is not None and mode != server.config.mode:
                raise SecAggValueError(f"mode={mode!r} differs from the server's mode {server.config.mode!r}")
            if any(x is not None for x in (tracker, ledger, clipper)):
                raise SecAggValueError("pass tracker, ledger and clipper to the SecAggServer, or a SecAggConfig here")
            secagg = server
        else:
            if server is not None and not isinstance(server, SecAggConfig):
                raise SecAggTypeError(f"server must be a SecAggServer or a SecAggConfig, got {type(server).__name__}")
            cfg = server if server is not None else SecAggConfig()
            if mode is not None:
                cfg = dataclasses.replace(cfg, mode=mode)
            if isinstance(ledger, (str, os.PathLike)):
                self._ledger_path, ledger = os.fspath(ledger), None
            if cfg.mode == "dp" and tracker is None:
                raise SecAggValueError(
                    "mode='dp' needs tracker=dp.tracker.PrivacyTracker(delta=...): a DP run without an accountant "
                    "reports no epsilon"
                )
            if cfg.mode == "dp" and self._ledger_path is not None and tracker is None:
                raise SecAggValueError("a dp ledger records epsilons: pass tracker= too")
            secagg = SecAggServer(cfg, tracker=tracker, ledger=ledger, rng=rng, clipper=clipper,
                                  indicator_scale=indicator_scale)  # fmt: skip
        cfg = secagg.config
        if cfg.mode == "dp" and secagg.tracker is None:
            raise SecAggValueError("mode='dp' needs a privacy tracker: SecAggServer(cfg, tracker=PrivacyTracker(...))")
        self._sampling = _sampling(sampling, cfg, self.fraction_train)
        if self._sampling == "poisson":
            q = float(self.fraction_train)
            want = None if q >= 1.0 else q
            if cfg.sampling_rate is not None and cfg.sampling_rate != want:
                raise SecAggValueError(
                    f"the config claims sampling_rate={cfg.sampling_rate} but the strategy samples nodes with "
                    f"probability fraction_train={q}: they must agree"
                )
            if cfg.sampling_rate != want:
                secagg = _with_sampling_rate(secagg, want)
        elif cfg.sampling_rate is not None:
            raise SecAggValueError("fixed-size sampling is not what sampling_rate describes (Poisson): leave it None")
        if optimizer is not None and not isinstance(optimizer, FedAvg):
            raise SecAggTypeError("optimizer must be a Flower Message-API strategy of the FedAvg family "
                                  "(FedAdam, FedYogi, FedAdagrad, FedAvgM, ...)")  # fmt: skip
        if evaluate not in ("clear", "secure", "none"):
            raise SecAggValueError(f"evaluate must be 'clear', 'secure' or 'none', got {evaluate!r}")
        if evaluate == "secure" and not list(evaluate_metrics):
            raise SecAggValueError("a secure evaluation needs evaluate_metrics (metric names)")
        if not (isinstance(node_wait, (int, float)) and not isinstance(node_wait, bool) and node_wait >= 0):
            raise SecAggValueError("node_wait must be a number of seconds >= 0")
        if on_stage is not None and not callable(on_stage):
            raise SecAggTypeError("on_stage must be callable")
        self.secagg = secagg
        self.optimizer = optimizer
        self.evaluate_mode = evaluate
        self.evaluate_metrics = tuple(str(m) for m in evaluate_metrics)
        self.metric_bound = float(metric_bound)
        self.node_wait = float(node_wait)
        self.on_stage = on_stage
        self._rng = as_random_source(rng)
        self.results: list[SecureRoundResult] = []
        self.evaluations: list[SecureRoundResult] = []
        self.aborts: list[SecureRoundAbort] = []
        self.skipped: list[int] = []
        self._pending: dict[int, SecureRoundResult] = {}
        self._pending_eval: dict[int, SecureRoundResult] = {}
        self._population = 0

    # -- reporting ----------------------------------------------------------------------------

    @property
    def sampling(self) -> str:
        """``"poisson"`` or ``"fixed"``: how nodes are sampled (and accounted)."""
        return self._sampling

    def sampling_description(self) -> str:
        """How nodes are sampled, as accounted."""
        q = self.fraction_train
        if self._sampling == "poisson":
            if q >= 1.0:
                return "every connected node, every round (no sampling amplification claimed)"
            return (f"Poisson: each connected node independently with probability {q:g} (the release epsilon "
                    "is amplified by this rate)")  # fmt: skip
        return (f"fixed-size: max(int({q:g} x connected), {self.min_train_nodes}) nodes uniformly without "
                "replacement (no DP accounting)")  # fmt: skip

    def evaluation_description(self) -> str:
        """How federated evaluation metrics are aggregated."""
        if self.evaluate_mode == "secure":
            return ("secure: only the example-weighted mean of each metric and the total example count reach the "
                    "server (not differentially private)")  # fmt: skip
        if self.evaluate_mode == "clear":
            return "in the clear: each node's metrics reach the server (Flower's federated evaluation)"
        return "none"

    def report(self) -> dict[str, Any]:
        """What the run did, for people: mode, sampling, evaluation, optimiser, clipping,
        rounds, aborts, and the cumulative epsilon per adversary (``dp``)."""
        cfg = self.secagg.config
        out: dict[str, Any] = {
            "mode": cfg.mode,
            "sampling": self.sampling_description(),
            "evaluation": self.evaluation_description(),
            "server_optimizer": type(self.optimizer).__name__ if self.optimizer is not None else "none (FedAvg)",
            "rounds_completed": len(self.results),
            "rounds_aborted": len(self.aborts),
            "rounds_skipped": list(self.skipped),
            "refused": {str(k): v for r in self.results for k, v in r.refused.items()},
        }
        clip = self.secagg.clipper
        if clip is not None:
            out["adaptive_clipping"] = {"clip_norm": clip.clip_norm, "target_quantile": clip.target_quantile,
                                        "rounds": clip.rounds}  # fmt: skip
        tracker = self.secagg.tracker
        if tracker is not None:
            cur = tracker.current()
            out["epsilon"] = {
                "delta": cur.delta,
                "release": {"epsilon": _finite(cur.release_epsilon), "against": RELEASE_AGAINST},
                "server": {"epsilon": _finite(cur.server_epsilon), "against": SERVER_AGAINST},
            }
        if self.secagg.ledger is not None:
            out["ledger_head"] = self.secagg.ledger_head
        return out

    def summary(self) -> None:
        """Log the strategy's settings (Flower calls this at ``start``)."""
        cfg = self.secagg.config
        log.info("SecAggFedAvg: mode %s, sampling %s", cfg.mode, self.sampling_description())
        log.info("SecAggFedAvg: evaluation %s; server optimiser %s", self.evaluation_description(),
                 type(self.optimizer).__name__ if self.optimizer is not None else "none")  # fmt: skip
        super().summary()

    # -- nodes --------------------------------------------------------------------------------

    def _connected(self, grid: Grid, need: int, what: str) -> list[int]:
        """Wait at most ``node_wait`` s for ``need`` connected nodes; raise if they never come."""
        end = time.monotonic() + self.node_wait
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            if len(nodes) >= need:
                return nodes
            if time.monotonic() >= end:
                raise SecAggValueError(
                    f"{what} needs at least {need} connected nodes (a secure round needs {MIN_SECURE_NODES}); "
                    f"{len(nodes)} connected after waiting {self.node_wait:g} s. {SIMULATION_HINT}"
                )
            time.sleep(min(0.5, max(end - time.monotonic(), 0.01)))

    def _sample_train(self, grid: Grid) -> list[int]:
        need = max(self.min_available_nodes, MIN_SECURE_NODES)
        if self._sampling == "fixed":
            need = max(need, self.min_train_nodes)
        nodes = self._connected(grid, need, "secure training")
        self._population = len(nodes)
        if self._sampling == "poisson":
            q = float(self.fraction_train)
            if q >= 1.0:
                return nodes
            draws = self._rng.random(len(nodes))
            return [n for n, u in zip(nodes, draws, strict=True) if u < q]
        size = min(len(nodes), max(int(len(nodes) * self.fraction_train), self.min_train_nodes))
        return self._subset(nodes, size)

    def _subset(self, nodes: list[int], size: int) -> list[int]:
        """A uniformly random subset of ``size`` nodes (without replacement), sorted."""
        order = np.argsort(self._rng.random(len(nodes)), kind="stable")
        return sorted(nodes[int(i)] for i in order[:size])

    # -- training -----------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[FlowerMessage]:
        """Sample nodes, run the secure round, send nothing else."""
        if self.fraction_train == 0.0:
            return []
        nodes = self._sample_train(grid)
        if len(nodes) < MIN_SECURE_NODES:
            log.warning("round %d skipped: Poisson sampling drew %d of %d nodes (< %d); the draw does not depend "
                        "on the data, so skipping spends no privacy", server_round, len(nodes), self._population,
                        MIN_SECURE_NODES)  # fmt: skip
            self.skipped.append(server_round)
            return []
        if self._ledger_path is not None:
            self._create_ledger(len(nodes), arrays)
        if self.optimizer is not None:
            opt = self.optimizer
            opt.configure_train(server_round, arrays, ConfigRecord(),
                                _StubGrid(max(opt.min_available_nodes, opt.min_train_nodes, 1)))  # type: ignore[arg-type]  # fmt: skip
        config["server-round"] = server_round
        try:
            res = self.secagg.run_round(grid, nodes, arrays, train_config=config, on_stage=self.on_stage)
        except SecureRoundAbort as exc:
            log.warning("%s", exc)
            self.aborts.append(exc)
            return []
        self._pending[server_round] = res
        self.results.append(res)
        return []

    def _create_ledger(self, n: int, arrays: ArrayRecord) -> None:
        from dp.ledger import Ledger

        assert self._ledger_path is not None
        # a ledger header names a delta; without DP (no tracker) none is claimed by any record
        delta = None if self.secagg.tracker is not None else 1e-5
        header = self.secagg.ledger_header(n, arrays, delta=delta)
        header["evaluation"] = self.evaluation_description()
        header["sampling"] = self.sampling_description()
        self.secagg.attach_ledger(Ledger.create(self._ledger_path, header))
        self._ledger_path = None

    def aggregate_train(
        self, server_round: int, replies: Iterable[FlowerMessage]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The secure round's new arrays (through the optimiser, if any) and metrics
        (None, None after an abort or a skipped round)."""
        del replies  # the secure round sent no plain train message
        res = self._pending.pop(server_round, None)
        if res is None:
            return None, None
        arrays: ArrayRecord = res.arrays
        if self.optimizer is not None:
            arrays = self._optimise(server_round, arrays)
        metrics: dict[str, Any] = dict(res.metrics())
        metrics["secagg-population"] = self._population
        return arrays, MetricRecord(metrics)

    def _optimise(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Feed the secure (noised) average to the optimiser as the round's only reply."""
        opt = self.optimizer
        assert opt is not None
        reply = FlowerMessage(
            RecordDict({opt.arrayrecord_key: arrays, "metrics": MetricRecord({opt.weighted_by_key: 1})}),
            dst_node_id=0,
            message_type="train",
        )
        out, _ = opt.aggregate_train(server_round, [reply])
        if out is None:
            raise SecAggValueError(f"the optimiser {type(opt).__name__} returned no arrays")
        dtypes = {k: v.numpy().dtype for k, v in arrays.items()}
        return ArrayRecord({k: Array(np.ascontiguousarray(v.numpy().astype(dtypes[k]))) for k, v in out.items()})

    # -- evaluation ---------------------------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[FlowerMessage]:
        """Clear: Flower's evaluate messages; secure: run a secure evaluation round."""
        if self.evaluate_mode == "none" or self.fraction_evaluate == 0.0:
            return []
        floor = MIN_SECURE_NODES if self.evaluate_mode == "secure" else 1
        need = max(self.min_evaluate_nodes, floor)
        nodes = self._connected(grid, need, f"{self.evaluate_mode} evaluation")
        size = min(len(nodes), max(int(len(nodes) * self.fraction_evaluate), need))
        picked = self._subset(nodes, size)
        config["server-round"] = server_round
        if self.evaluate_mode == "clear":
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            return self._construct_messages(record, picked, "evaluate")
        try:
            res = self.secagg.run_evaluation(grid, picked, arrays, self.evaluate_metrics, bound=self.metric_bound,
                                             evaluate_config=config, on_stage=self.on_stage)  # fmt: skip
        except SecureRoundAbort as exc:
            log.warning("%s", exc)
            self.aborts.append(exc)
            return []
        self._pending_eval[server_round] = res
        self.evaluations.append(res)
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[FlowerMessage]) -> MetricRecord | None:
        """Clear: Flower's weighted average; secure: the secure round's metric means."""
        if self.evaluate_mode == "clear":
            got = super().aggregate_evaluate(server_round, replies)
            if got is not None:
                got["secagg-eval-secure"] = 0
            return got
        res = self._pending_eval.pop(server_round, None)
        if res is None or res.evaluation is None:
            return None
        out: dict[str, Any] = dict(res.evaluation)
        out.update({self.weighted_by_key: res.total_weight, "secagg-eval-secure": 1,
                    "secagg-eval-survivors": len(res.survivors), "secagg-eval-refused": len(res.refused)})  # fmt: skip
        return MetricRecord(out)


def _sampling(sampling: str | None, cfg: SecAggConfig, fraction: float) -> str:
    if sampling is None:
        return "poisson" if cfg.mode == "dp" else "fixed"
    if sampling not in ("poisson", "fixed"):
        raise SecAggValueError(f"sampling must be 'poisson' or 'fixed', got {sampling!r}")
    if cfg.mode == "dp" and sampling == "fixed" and fraction < 1.0:
        raise SecAggValueError(
            "dp mode with fixed-size sampling of a fraction of the nodes: the privacy tracker accounts Poisson "
            "sampling only, so the epsilon would describe another sampling than the one done. Use "
            "sampling='poisson' (each node with probability fraction_train) or fraction_train=1.0"
        )
    return sampling


def _with_sampling_rate(server: SecAggServer, rate: float | None) -> SecAggServer:
    """The same server with its config's ``sampling_rate`` set (before any round)."""
    if server.round_index:
        raise SecAggValueError("give the strategy a SecAggServer that has not run a round yet")
    server._cfg = dataclasses.replace(server.config, sampling_rate=rate)
    return server


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
