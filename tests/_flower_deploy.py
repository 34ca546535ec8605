"""Helpers for the Flower tests (imported by tests/test_flower_*.py and bench/bench_flower.py).

* :class:`LocalGrid` -- an in-process stand-in for a SuperLink and its SuperNodes: every
  message and every reply is deflated and inflated as Flower ships it, and each node's
  ``Context`` is serialised to protobuf and back between messages (as the SuperNode does
  with the ``flwr-clientapp`` process it starts per message).  Fast tests of the whole
  stack, with dropouts on demand.
* :class:`Deployment` -- a real Flower deployment: ``flower-superlink`` and
  ``flower-supernode`` subprocesses on 127.0.0.1 (or, ``simulation=True``, a SuperLink
  running Flower's simulation engine with virtual nodes) (free ports, state in a temporary
  directory, bounded lifetimes), stopped by their process ids (and their process groups:
  each is started in its own session) in :meth:`Deployment.close`; apps are launched with
  ``flwr run`` and waited for with ``flwr ls``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EXAMPLE_APP = REPO / "examples" / "flower_app"


# ----------------------------------------------------------------------------- in-process grid


def _wire_copy(msg: Message) -> tuple[Message, int]:
    """Deflate and inflate a message as Flower ships it; return the copy and its byte size."""
    objs = get_all_nested_objects(msg)
    contents = {k: v.deflate() for k, v in objs.items()}
    size = sum(len(v) for v in contents.values())
    copy = inflate_object_from_contents(msg.object_id, contents)
    assert isinstance(copy, Message)
    copy.metadata.__dict__["_message_id"] = msg.object_id
    return copy, size


class LocalGrid(Grid):
    """In-process grid over ``n`` nodes running ``client_app`` (see the module docstring).

    ``kill(node)`` makes a node silent from then on (its pending and future messages get
    no reply); node ``i``'s node config is ``{"partition-id": i, "num-partitions": n}``
    plus ``node_configs[i]`` (e.g. ``identity-key`` and ``alliance`` paths).
    """

    def __init__(self, client_app: Any, n: int, *, run_config: Mapping[str, Any] | None = None,
                 node_configs: Mapping[int, Mapping[str, Any]] | None = None) -> None:
        self._app = client_app
        # Message() reads the identity of the current task process (a ServerApp here)
        if getattr(TaskIdentity, "_run_id", None) is None:
            TaskIdentity.run_id = 1
        if getattr(TaskIdentity, "_node_id", None) is None:
            TaskIdentity.node_id = 1
        if getattr(TaskIdentity, "_task_id", None) is None:
            TaskIdentity.task_id = 1
        self.node_ids = [1000 + 7 * i for i in range(n)]
        self._contexts: dict[int, bytes] = {}
        for i, nid in enumerate(self.node_ids):
            ctx = Context(
                run_id=1,
                node_id=nid,
                node_config={"partition-id": i, "num-partitions": n, **dict((node_configs or {}).get(i, {}))},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            self._contexts[nid] = context_to_proto(ctx).SerializeToString()
        self._pending: dict[str, Message] = {}
        self.dead: set[int] = set()
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}
        self.handled = 0

    def partition_of(self, node: int) -> int:
        return self.node_ids.index(node)

    def kill(self, node: int) -> None:
        self.dead.add(node)

    def context(self, node: int) -> Context:
        proto = ProtoContext()
        proto.ParseFromString(self._contexts[node])
        return context_from_proto(proto)

    # -- Grid API ----------------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        pass

    @property
    def run(self) -> Any:
        return SimpleNamespace(run_id=1)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            copy, size = _wire_copy(m)
            nid = int(m.metadata.dst_node_id)
            self.sent[nid] = self.sent.get(nid, 0) + size
            self._pending[m.object_id] = copy
            ids.append(m.object_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for mid in list(message_ids):
            msg = self._pending.get(mid)
            if msg is None:
                continue
            nid = int(msg.metadata.dst_node_id)
            if nid in self.dead:
                continue
            del self._pending[mid]
            ctx = self.context(nid)
            self.handled += 1
            try:
                reply = self._app(msg, ctx)
            except Exception as exc:
                reply = Message(Error(2, f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self._contexts[nid] = context_to_proto(ctx).SerializeToString()
            reply.metadata.__dict__["_message_id"] = reply.object_id
            copy, size = _wire_copy(reply)
            self.received[nid] = self.received.get(nid, 0) + size
            out.append(copy)
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return list(self.pull_messages(ids))


# ----------------------------------------------------------------------------- real deployment


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc), deepest last."""
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        kids: list[int] = []
        with contextlib.suppress(OSError):
            for t in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    kids += [int(x) for x in (t / "children").read_text().split()]
        out += kids
        stack += kids
    return out


class Proc:
    """One started process (in its own session) with its log file."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, env=dict(env),
                                      start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        """Signal this process, its process group and every descendant (by pid)."""
        pids = [self.pid, *_children(self.pid)]
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end and self.alive():
            time.sleep(0.1)
        if sig != signal.SIGKILL:
            for p in [self.pid, *_children(self.pid), *pids]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        self._fh.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class Deployment:
    """A SuperLink and SuperNodes on 127.0.0.1, state and logs under ``root``.

    Args:
        root: a fresh temporary directory.
        supernodes: how many SuperNodes to start.
        lifetime: seconds after which :meth:`check_lifetime` refuses to go on (bounded run).
    """

    def __init__(self, root: Path, supernodes: int, *, lifetime: float = 900.0, simulation: bool = False) -> None:
        self.root = root
        self.started = time.monotonic()
        self.lifetime = lifetime
        self.port = free_port()
        home = root / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self.env = dict(os.environ)
        self.env.update(
            FLWR_HOME=str(home),
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1",
            FLWR_TELEMETRY_ENABLED="0",
            PYTHONUNBUFFERED="1",
        )
        self.superlink = Proc(
            "superlink",
            [str(VENV_BIN / "flower-superlink"), "--insecure", "--database", str(root / "state.db"),
             "--host", "127.0.0.1", "--port", str(self.port), "--disable-runtime-dependency-installation",
             *(["--simulation"] if simulation else [])],
            self.env,
            root / "superlink.log",
        )
        self.nodes: dict[int, Proc] = {}
        self._n_total = supernodes
        try:
            self._wait_port(self.port, 60)
            for i in range(supernodes):
                self.add_node(i, supernodes)
            for i in range(supernodes):
                self.node_id(i, timeout=60)
        except BaseException:
            self.close()
            raise

    # -- processes -----------------------------------------------------------------------------
    def _wait_port(self, port: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if not self.superlink.alive():
                raise RuntimeError(f"flower-superlink exited:\n{self.superlink.text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"port {port} not open after {timeout} s")

    def add_node(self, partition: int, num_partitions: int | None = None,
                 **node_config: bool | int | float | str) -> Proc:
        """Start SuperNode ``partition``; ``node_config`` adds flags to its node config
        (e.g. ``**{"truncate-masked-input": True}`` for the example app's faulty node)."""
        n = self._n_total if num_partitions is None else num_partitions
        extra = "".join(f" {k}={json.dumps(v)}" for k, v in node_config.items())
        proc = Proc(
            f"supernode-{partition}",
            [str(VENV_BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
             "--port", str(free_port()), "--node-config", f"partition-id={partition} num-partitions={n}{extra}"],
            self.env,
            self.root / f"supernode-{partition}.log",
        )
        self.nodes[partition] = proc
        return proc

    def node_id(self, partition: int, timeout: float = 30.0) -> int:
        """The SuperLink's node id of a SuperNode (from its log)."""
        end = time.monotonic() + timeout
        while True:
            m = re.search(r"SuperNode ID: (\d+)", self.nodes[partition].text())
            if m:
                return int(m.group(1))
            if time.monotonic() > end or not self.nodes[partition].alive():
                raise TimeoutError(f"supernode {partition} did not register:\n{self.nodes[partition].text()[-2000:]}")
            time.sleep(0.2)

    def kill_node(self, partition: int) -> None:
        """Kill a SuperNode (and what it started) with SIGKILL, by pid: a crashed device."""
        self.nodes[partition].stop(signal.SIGKILL, grace=2.0)

    def check_lifetime(self) -> None:
        if time.monotonic() - self.started > self.lifetime:
            raise TimeoutError(f"the test deployment exceeded its lifetime of {self.lifetime} s")

    def close(self) -> None:
        for proc in self.nodes.values():
            proc.stop()
        self.superlink.stop()

    # -- runs ----------------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        out = subprocess.run([str(VENV_BIN / "flwr"), *args, "--format", "json"], env=self.env, cwd=self.root,
                             capture_output=True, text=True, timeout=timeout, check=False)
        try:
            doc: dict[str, Any] = json.loads(out.stdout[out.stdout.find("{"):])
        except ValueError as exc:
            raise RuntimeError(f"flwr {args[0]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}") from exc
        return doc

    def start_run(self, app: Path, run_config: Mapping[str, Any], *, federation_config: str | None = None) -> int:
        """``flwr run APP test --run-config ...`` (``--federation-config`` too, e.g.
        ``"num-supernodes=10"`` on a simulation SuperLink); return the run id."""
        self.check_lifetime()
        cfg = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        more = ["--federation-config", federation_config] if federation_config else []
        doc = self.flwr("run", str(app), "test", "--run-config", cfg, *more)
        if not doc.get("success"):
            raise RuntimeError(f"flwr run failed: {doc}")
        return int(doc["run-id"])

    def run_status(self, run_id: int) -> dict[str, Any]:
        doc = self.flwr("ls", "test", "--run-id", str(run_id))
        runs = doc.get("runs", [])
        return runs[0] if runs else {}

    def wait_run(self, run_id: int, timeout: float) -> dict[str, Any]:
        """Wait (bounded) until the run is finished; return its ``flwr ls`` entry."""
        end = time.monotonic() + timeout
        while True:
            st = self.run_status(run_id)
            if str(st.get("status", "")).startswith("finished"):
                return st
            if time.monotonic() > end:
                raise TimeoutError(f"run {run_id} not finished after {timeout} s: {st}\n{self.logs()}")
            self.check_lifetime()
            time.sleep(1.0)

    def logs(self, tail: int = 3000) -> str:
        parts = [f"--- {p.name} ---\n{p.text()[-tail:]}" for p in (self.superlink, *self.nodes.values())]
        return "\n".join(parts)
