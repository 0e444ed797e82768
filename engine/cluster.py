"""A local Redis Cluster of embedded valkey-server nodes on loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import redis

from .embedded import (
    _HOST,
    _POLL_S,
    EmbeddedServerError,
    EmbeddedValkey,
    _client,
    _free_port,
    _Managed,
)

__all__ = ["EmbeddedCluster"]

_CLUSTER_LAYOUT_FILE = "stockguard-cluster.json"
_CLUSTER_SLOTS = 16384
_CLUSTER_ARGS = (
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", "5000",
)  # fmt: skip


class _ClusterNode(EmbeddedValkey):
    """A cluster-enabled EmbeddedValkey that also owns an explicit cluster-bus port."""

    def __init__(
        self, data_dir: Path, *, port: int | None, bus_port: int | None, fresh: bool
    ) -> None:
        super().__init__(data_dir, port=port, extra_args=_CLUSTER_ARGS)
        self._requested_bus_port = bus_port
        self._bus_port = bus_port
        self._fresh = fresh

    @property
    def bus_port(self) -> int:
        """The cluster-bus port of the node (known once start() has succeeded)."""
        if self._bus_port is None:
            raise EmbeddedServerError("node has not been started")
        return self._bus_port

    def _reclaim_data_dir(self, timeout_s: float) -> None:
        super()._reclaim_data_dir(timeout_s)
        if self._fresh:
            # A formation that never completed left a node identity (and maybe slots) behind;
            # only delete it now, after any stale node that would rewrite it has been stopped.
            (self.data_dir / "nodes.conf").unlink(missing_ok=True)

    def _launch_args(self) -> list[str]:
        # The default bus port (port + 10000) may be taken or exceed 65535, so pick our own.
        requested = self._requested_bus_port
        self._bus_port = requested if requested is not None else _free_port()
        return [*super()._launch_args(), "--cluster-port", str(self._bus_port)]


def _slot_range(index: int, masters: int) -> tuple[int, int]:
    """Return the inclusive slot range of master index in an even split."""
    return index * _CLUSTER_SLOTS // masters, (index + 1) * _CLUSTER_SLOTS // masters - 1


def _node_converged(port: int, masters: int) -> bool:
    """Whether the node sees a healthy cluster of `masters` nodes that covers every slot."""
    try:
        with _client(port) as client:
            info: dict[str, Any] = client.execute_command("CLUSTER INFO")
            slots: list[list[Any]] = client.execute_command("CLUSTER SLOTS")
    except (redis.RedisError, OSError):
        return False
    covered = sum(int(entry[1]) - int(entry[0]) + 1 for entry in slots)
    return (
        info.get("cluster_state") == "ok"
        and int(info.get("cluster_known_nodes", 0)) == masters
        and covered == _CLUSTER_SLOTS
    )


class EmbeddedCluster(_Managed):
    """A 3-master Redis Cluster formed from the bundled binary on loopback ports."""

    def __init__(self, data_dir: str | os.PathLike[str], *, masters: int = 3) -> None:
        """Configure (but do not start) a cluster of `masters` slot-owning nodes."""
        if masters < 1:
            raise ValueError(f"masters must be at least 1, got {masters}")
        self._data_dir = Path(data_dir).absolute()
        self._masters = masters
        self._nodes: list[_ClusterNode] = []

    @property
    def ports(self) -> list[int]:
        """The client ports of the nodes, in node order."""
        if not self._nodes:
            raise EmbeddedServerError("cluster has not been started")
        return [node.port for node in self._nodes]

    @property
    def url(self) -> str:
        """A redis:// URL of the first node, usable as a RedisCluster startup node."""
        return f"redis://{_HOST}:{self.ports[0]}"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start every node and return once all agree the cluster is ok and covers all slots."""
        if self._nodes:
            return
        deadline = time.monotonic() + timeout_s
        layout = self._read_layout()
        self._nodes = self._make_nodes(layout)
        try:
            for node in self._nodes:
                node.start(max(deadline - time.monotonic(), 0.0))
            if layout is None:
                self._form()
            self._wait_converged(deadline, timeout_s)
            self._write_layout()
        except BaseException:
            # The startup failure is the error worth reporting, not a follow-up stop failure.
            with contextlib.suppress(EmbeddedServerError):
                self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every node gracefully (AOF and nodes.conf saved); idempotent."""
        nodes, self._nodes = self._nodes, []
        errors: list[Exception] = []
        for node in nodes:
            try:
                node.stop(timeout_s)
            except Exception as exc:  # keep stopping the other nodes
                errors.append(exc)
        if errors:
            raise EmbeddedServerError(f"failed to stop {len(errors)} node(s): {errors}")

    def _make_nodes(self, layout: list[tuple[int, int]] | None) -> list[_ClusterNode]:
        """Create node handles, reusing recorded ports since nodes.conf pins peer addresses."""
        dirs = [self._data_dir / f"node-{index}" for index in range(self._masters)]
        if layout is None:
            return [_ClusterNode(d, port=None, bus_port=None, fresh=True) for d in dirs]
        return [
            _ClusterNode(d, port=port, bus_port=bus, fresh=False)
            for d, (port, bus) in zip(dirs, layout, strict=True)
        ]

    def _form(self) -> None:
        """Assign each node an even share of slots and introduce every node to the first."""
        first = self._nodes[0]
        for index, node in enumerate(self._nodes):
            low, high = _slot_range(index, self._masters)
            with _client(node.port) as client:
                # Distinct epochs up front, as redis-cli does, skip epoch-collision resolution.
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
                client.execute_command("CLUSTER ADDSLOTSRANGE", low, high)
                if index:
                    client.execute_command("CLUSTER MEET", _HOST, first.port, first.bus_port)

    def _wait_converged(self, deadline: float, timeout_s: float) -> None:
        """Poll every node until all report a complete, healthy cluster."""
        while True:
            pending = [n for n in self._nodes if not _node_converged(n.port, self._masters)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                ports = [node.port for node in pending]
                raise EmbeddedServerError(f"cluster not ok within {timeout_s}s on ports {ports}")
            time.sleep(_POLL_S * 2)

    def _read_layout(self) -> list[tuple[int, int]] | None:
        """Return the recorded (port, bus port) per node of a formed cluster, if any."""
        try:
            raw = json.loads((self._data_dir / _CLUSTER_LAYOUT_FILE).read_text())
        except (OSError, ValueError):
            return None
        layout = [(int(port), int(bus)) for port, bus in raw["nodes"]]
        if len(layout) != self._masters:
            raise EmbeddedServerError(
                f"cluster in {self._data_dir} has {len(layout)} nodes, not {self._masters}"
            )
        return layout

    def _write_layout(self) -> None:
        """Record node ports so a restart can bring the same cluster back."""
        nodes = [[node.port, node.bus_port] for node in self._nodes]
        path = self._data_dir / _CLUSTER_LAYOUT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"nodes": nodes}))
        tmp.replace(path)
