"""ClientApp: answers secagg's secure rounds (and, for the benchmark, Flower's own SecAgg+)."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from secagg.flower import LocalUpdate, SecAggClient
from secagg_flower_app import task

app = ClientApp()


def _drops_out(context: Context) -> bool:
    """Demo/test hook: the partitions listed in the run config's ``drop-partitions`` fail
    their local training (a node lost mid-round: it answered the key stages, then went
    silent at the masked input, so its mask key is recovered and its input left out)."""
    drop = {int(x) for x in str(context.run_config.get("drop-partitions", "")).replace(",", " ").split()}
    return int(context.node_config["partition-id"]) in drop


def train_fn(arrays: ArrayRecord, config: ConfigRecord, context: Context) -> LocalUpdate:
    """Local training at the masked-input stage of a secure round."""
    rc = context.run_config
    partition = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    if _drops_out(context):
        raise RuntimeError(f"partition {partition} drops out (drop-partitions)")
    current = {k: v.numpy() for k, v in arrays.items()}
    if rc["task"] == "synthetic":
        trained, n = task.synthetic_train(current, partition, str(rc["mode"]), int(rc["bits"]))
        return LocalUpdate(trained, n)
    model, n = task.digits_train(
        current,
        partition,
        num_partitions,
        hidden=int(rc["hidden"]),
        epochs=int(rc["local-epochs"]),
        lr=float(rc["lr"]),
        seed=int(str(config.get("server-round", 0))) * 1000 + partition,
    )
    return LocalUpdate(model, n)  # an nn.Module: secagg.flower takes its state dict


def evaluate_fn(arrays: ArrayRecord, config: ConfigRecord, context: Context) -> tuple[dict[str, float], int]:
    """Local evaluation (secure evaluation rounds and Flower's clear ``evaluate``)."""
    rc = context.run_config
    partition = int(context.node_config["partition-id"])
    current = {k: v.numpy() for k, v in arrays.items()}
    if rc["task"] == "synthetic":
        return task.synthetic_local_eval(current, partition)
    return task.digits_local_eval(current, partition, int(context.node_config["num-partitions"]),
                                  hidden=int(rc["hidden"]))  # fmt: skip


# secagg: every stage arrives as a "train.secagg" message (secagg.flower.register(app, train_fn,
# evaluate_fn=evaluate_fn) does this in one line; the example wraps the handler for the
# misbehaving-node test hook).  Active mode: the handler reads this node's key file and the
# alliance file from the node config (``identity-key=...`` and ``alliance=...``), proves the
# node's membership when the server asks, and then takes part in active rounds only.
_secagg = SecAggClient(train_fn, evaluate_fn=evaluate_fn)


@app.evaluate()
def clear_evaluate(message: Message, context: Context) -> Message:
    """Flower's federated evaluation in the clear (``evaluate = "clear"``)."""
    from flwr.app import MetricRecord, RecordDict

    config = message.content.config_records.get("config", ConfigRecord())
    metrics, n = evaluate_fn(message.content.array_records["arrays"], config, context)
    return Message(RecordDict({"metrics": MetricRecord({**metrics, "num-examples": n})}), reply_to=message)


@app.train("secagg")
def secagg_stage(message: Message, context: Context) -> Message:
    """One secagg stage.  Test hook: a SuperNode started with the node config
    ``truncate-masked-input=true`` cuts its masked input in half, as a faulty or malicious
    device would; the server excludes it and the other nodes' round completes."""
    reply = _secagg(message, context)
    if context.node_config.get("truncate-masked-input") is True:
        reply = _truncated(message, reply)
    return reply


def _truncated(message: Message, reply: Message) -> Message:
    from secagg.flower._codec import CONTROL_KEY, PAYLOAD_KEY, pack_payload, unpack_payload

    ctl = message.content.config_records[CONTROL_KEY]
    if ctl.get("stage") != "masked_input" or reply.has_error() or PAYLOAD_KEY not in reply.content.array_records:
        return reply
    data = unpack_payload(reply.content.array_records[PAYLOAD_KEY])
    reply.content.array_records[PAYLOAD_KEY] = pack_payload(data[: len(data) // 2])
    return reply


# --- timing baselines (workflow "plain-fedavg" / "latency", see timing.py) ---
@app.train("plain")
def plain_train(message: Message, context: Context) -> Message:
    """A plain FedAvg training message (``train.plain``, no secure aggregation): the same
    train_fn.  (Flower's default ``train`` handler is the SecAgg+ baseline's.)"""
    from flwr.app import MetricRecord, RecordDict

    arrays = message.content.array_records["arrays"]
    config = message.content.config_records.get("config", ConfigRecord())
    upd = train_fn(arrays, config, context)
    from secagg.flower.client import _to_numpy

    trained = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in _to_numpy(upd.arrays).items()})
    return Message(RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": upd.num_examples})}),
                   reply_to=message)  # fmt: skip


@app.query()
def ping(message: Message, context: Context) -> Message:
    """An empty reply: Flower's per-message round trip."""
    from flwr.app import RecordDict

    return Message(RecordDict(), reply_to=message)


# --- Flower's own SecAgg+ (benchmark baseline): a legacy NumPyClient behind secaggplus_mod ---
def _baseline_client_fn(context: Context) -> Any:
    from flwr.client import NumPyClient

    class _Client(NumPyClient):
        def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict[str, Any]]:
            rc = context.run_config
            partition = int(context.node_config["partition-id"])
            names = list(_initial_names(context))
            current = dict(zip(names, parameters, strict=True))
            if rc["task"] == "synthetic":
                trained, n = task.synthetic_train(current, partition, "fedavg", int(rc["bits"]))
                return [trained[k] for k in names], n, {}
            model, n = task.digits_train(
                current,
                partition,
                int(context.node_config["num-partitions"]),
                hidden=int(rc["hidden"]),
                epochs=int(rc["local-epochs"]),
                lr=float(rc["lr"]),
                seed=partition,
            )
            state = model.state_dict()
            return [state[k].detach().numpy() for k in names], n, {}

    return _Client().to_client()


def _initial_names(context: Context) -> list[str]:
    rc = context.run_config
    if rc["task"] == "synthetic":
        return list(task.synthetic_initial(int(rc["dim"]), "fedavg"))
    return list(task.digits_initial(int(rc["hidden"])))


def _baseline_mods() -> list[Any]:
    from flwr.client.mod import secaggplus_mod

    return [secaggplus_mod]


@app.train(mods=_baseline_mods())
def flower_secaggplus(message: Message, context: Context) -> Message:
    """Flower's legacy fit path (FitIns/FitRes) under secaggplus_mod."""
    from flwr.client.message_handler.message_handler import handle_legacy_message_from_msgtype

    return handle_legacy_message_from_msgtype(_baseline_client_fn, message, context)

