"""ClientApp: a silo fine-tunes the LoRA adapters on its own synthetic text.

* ``"train.secagg"`` messages: the stages of a secagg secure round (a
  :class:`secagg.flower.SecAggClient`); at the masked-input stage ``train_fn`` trains the
  adapters the server sent and the client encodes its clipped, noised update.
* ``"train"`` messages: plain FedAvg (``workflow = "fedavg"``, the baseline): train and
  send the adapters back in the clear.

Dropout: the silo whose partition id is ``drop-silo`` (run config), or any SuperNode
started with ``--node-config "drop-from-round=R"``, stops answering from round ``R`` on: in
round ``R`` it has already advertised and shared its keys when it goes away at the
masked-input stage (the server recovers its mask key from the others' shares), and it
answers nothing afterwards (every message gets an error reply, which Flower delivers at
once; the server counts it as silent, as it would a node that never answers).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secagg.flower import LocalUpdate, SecAggClient
from secagg_llm_lora import task

app = ClientApp()
OFFLINE_CODE = 5099
_OFFLINE_KEY = "llm-lora.offline"
_offline_here: set[tuple[int, int]] = set()  # (run id, node id) gone offline in this process


class SiloOffline(Exception):
    """Raised by the training step of a silo that goes away mid-round."""


def _drop_round(context: Context) -> int:
    """The round from which this silo stops answering (0: never)."""
    node = context.node_config.get("drop-from-round")
    if node is not None:
        return int(node)
    partition = int(context.node_config.get("partition-id", -1))
    if partition == int(context.run_config["drop-silo"]):
        return int(context.run_config["drop-from-round"])
    return 0


def _is_offline(context: Context) -> bool:
    return (context.run_id, context.node_id) in _offline_here or _OFFLINE_KEY in context.state


def _go_offline(context: Context) -> None:
    _offline_here.add((context.run_id, context.node_id))
    context.state[_OFFLINE_KEY] = ConfigRecord({"offline": True})


def _silence(message: Message) -> Message:
    return Message(Error(OFFLINE_CODE, "llm-lora: this silo is offline (dropout)"), reply_to=message)


def _local_train(arrays: ArrayRecord, config: ConfigRecord, context: Context) -> tuple[Any, int]:
    """Train the adapters from ``arrays`` on this silo's text; (trained adapters, examples)."""
    import torch

    rc = context.run_config
    torch.set_num_threads(int(rc["torch-threads"]))
    partition = int(context.node_config["partition-id"])
    size = task.ModelSize.from_config(rc)
    model = task.build_model(size)
    task.set_adapters(model, {k: v.numpy() for k, v in arrays.items()})
    tokens = task.silo_tokens(partition, int(rc["train-per-silo"]), int(rc["seq-len"]))
    server_round = int(str(config.get("server-round", 0)))
    task.train(model, tokens, steps=int(str(config["local-steps"])), batch_size=int(str(config["batch-size"])),
               lr=float(str(config["lr"])), seed=1000 * server_round + partition)  # fmt: skip
    return task.adapter_arrays(model), int(tokens.shape[0])


def train_fn(arrays: ArrayRecord, config: ConfigRecord, context: Context) -> LocalUpdate:
    """Local training at the masked-input stage of a secure round."""
    drop = _drop_round(context)
    if drop and int(str(config.get("server-round", 0))) >= drop:
        _go_offline(context)
        raise SiloOffline(f"silo {context.node_config.get('partition-id')} drops out")
    trained, n = _local_train(arrays, config, context)
    return LocalUpdate(trained, n)


_secagg = SecAggClient(train_fn)


@app.train("secagg")
def secagg_stage(message: Message, context: Context) -> Message:
    """One stage of a secure round (silent once this silo is offline)."""
    if _is_offline(context):
        return _silence(message)
    try:
        return _secagg(message, context)
    except SiloOffline:
        return _silence(message)


@app.train()
def plain_train(message: Message, context: Context) -> Message:
    """Plain FedAvg (the baseline): train and answer with the adapters in the clear."""
    config = message.content.config_records["config"]
    drop = _drop_round(context)
    if _is_offline(context) or (drop and int(str(config.get("server-round", 0))) >= drop):
        _go_offline(context)
        return _silence(message)
    trained, n = _local_train(message.content.array_records["arrays"], config, context)
    content = RecordDict({"arrays": ArrayRecord({k: _arr(v) for k, v in trained.items()}),
                          "metrics": MetricRecord({"num-examples": n})})  # fmt: skip
    return Message(content, reply_to=message)


def _arr(v: Any) -> Any:
    from flwr.app import Array

    return Array(v)
