"""Real-process tests for the embedded valkey-server and the local cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import engine.embedded as embedded
from engine.cluster import EmbeddedCluster
from engine.embedded import EmbeddedServerError, EmbeddedValkey

STATE_FILE = "stockguard-valkey.json"


def _running(pid: int) -> bool:
    """Whether pid is a live process (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_not_running(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _state(data_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((data_dir / STATE_FILE).read_text())
    return state


def _write_state(data_dir: Path, **changes: Any) -> None:
    path = data_dir / STATE_FILE
    state = json.loads(path.read_text()) if path.exists() else {}
    state.update(changes)
    path.write_text(json.dumps(state))


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_data_survives_restart_on_same_dir(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "data")
    with server, redis.Redis.from_url(server.url) as client:
        client.set("sku:1", "7")
        client.rpush("log", "a", "b")
    assert not (tmp_path / "data" / STATE_FILE).exists()

    with EmbeddedValkey(tmp_path / "data") as again, redis.Redis.from_url(again.url) as client:
        assert client.get("sku:1") == b"7"
        assert client.lrange("log", 0, -1) == [b"a", b"b"]


def test_config_flags_are_applied(tmp_path: Path) -> None:
    with (
        EmbeddedValkey(tmp_path, appendfsync="always") as server,
        redis.Redis.from_url(server.url, decode_responses=True) as client,
    ):
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("save") == {"save": ""}
        assert Path(client.config_get("dir")["dir"]) == tmp_path.resolve()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_server_runs_on_jemalloc_where_the_system_has_it(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as server:
        maps = Path(f"/proc/{_state(tmp_path)['child_pid']}/maps").read_text()
    library = embedded.allocator()
    if library is None:
        assert "jemalloc" not in maps
        assert server.malloc == "libc malloc"
    else:
        assert f"/{library}" in maps  # the dynamic linker loaded it into valkey-server
        assert server.malloc == "jemalloc"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_jemalloc_can_be_turned_off(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path, jemalloc=False) as server:
        maps = Path(f"/proc/{_state(tmp_path)['child_pid']}/maps").read_text()
    assert "jemalloc" not in maps
    assert server.malloc == "libc malloc"


def test_rejects_unknown_appendfsync(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedValkey(tmp_path, appendfsync="sometimes")


def test_stop_is_idempotent_and_kills_child(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path)
    server.start()
    pid = _state(tmp_path)["child_pid"]
    assert _running(pid)
    server.stop()
    server.stop()
    assert not _running(pid)
    assert not (tmp_path / STATE_FILE).exists()


def test_stale_child_of_crashed_owner_is_replaced(tmp_path: Path) -> None:
    crashed = EmbeddedValkey(tmp_path)
    crashed.start()
    try:
        with redis.Redis.from_url(crashed.url) as client:
            client.set("survivor", "yes")
        old_pid = _state(tmp_path)["child_pid"]
        _write_state(tmp_path, owner_pid=_dead_pid())

        with EmbeddedValkey(tmp_path) as fresh:
            assert not _running(old_pid)
            assert _state(tmp_path)["child_pid"] != old_pid
            with redis.Redis.from_url(fresh.url) as client:
                assert client.get("survivor") == b"yes"
            # Reaping the crashed handle must not delete the new server's state file.
            crashed.stop()
            assert _state(tmp_path)["owner_pid"] == os.getpid()
    finally:
        crashed.stop()


def test_data_dir_owned_by_live_process_is_refused(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    tmp_path.joinpath(STATE_FILE).write_text(
        json.dumps(
            {
                "owner_pid": sleeper.pid,
                "owner_start": embedded._process_start_time(sleeper.pid),
                "child_pid": _dead_pid(),
                "port": 1,
            }
        )
    )
    server = EmbeddedValkey(tmp_path)
    with pytest.raises(EmbeddedServerError, match=f"is in use by process {sleeper.pid}"):
        server.start()

    sleeper.kill()
    sleeper.wait()
    with server, redis.Redis.from_url(server.url) as client:
        assert client.ping() is True


def test_recycled_owner_pid_does_not_lock_data_dir(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    start = embedded._process_start_time(sleeper.pid)
    assert start is not None
    tmp_path.joinpath(STATE_FILE).write_text(
        json.dumps({"owner_pid": sleeper.pid, "owner_start": start - 1, "child_pid": 0, "port": 1})
    )
    with EmbeddedValkey(tmp_path) as server, redis.Redis.from_url(server.url) as client:
        assert client.ping() is True


def test_child_dies_with_its_owner(tmp_path: Path) -> None:
    owner_script = textwrap.dedent(
        f"""
        import time
        from engine.embedded import EmbeddedValkey
        server = EmbeddedValkey({str(tmp_path)!r})
        server.start()
        print(server.url, flush=True)
        time.sleep(60)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert owner.stdout is not None
        url = owner.stdout.readline().strip()
        with redis.Redis.from_url(url) as client:
            client.set("written-before-crash", "1")
        child_pid = _state(tmp_path)["child_pid"]
        with pytest.raises(EmbeddedServerError, match=f"in use by process {owner.pid}"):
            EmbeddedValkey(tmp_path).start()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert owner.stdout is not None
        owner.stdout.close()

    if not _wait_not_running(child_pid):
        os.kill(child_pid, signal.SIGKILL)  # don't leak the orphan when this test fails
        pytest.fail(f"valkey-server {child_pid} outlived its owner")
    with EmbeddedValkey(tmp_path) as server, redis.Redis.from_url(server.url) as client:
        assert client.get("written-before-crash") == b"1"


def test_startup_failure_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedValkey(tmp_path, port=port)
        with pytest.raises(EmbeddedServerError, match="Address already in use"):
            server.start()
    assert not (tmp_path / STATE_FILE).exists()


def test_port_race_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, busy])
        real_free_port = embedded._free_port
        monkeypatch.setattr(embedded, "_free_port", lambda: next(ports, None) or real_free_port())
        with EmbeddedValkey(tmp_path) as server, redis.Redis.from_url(server.url) as client:
            assert server.port != busy
            assert client.ping() is True
    log = (tmp_path / "valkey.log").read_text()
    assert log.count("Address already in use") == 2


def _covered_slots(port: int) -> tuple[int, set[int]]:
    with redis.Redis(port=port) as node:
        slots = node.execute_command("CLUSTER SLOTS")
    covered = sum(end - start + 1 for start, end, *_ in slots)
    master_ports = {int(entry[2][1]) for entry in slots}
    return covered, master_ports


@contextlib.contextmanager
def _cluster_client(url: str) -> Iterator[redis.RedisCluster]:
    """A cluster client whose node connections are closed on exit: RedisCluster.close()
    leaves them to the garbage collector, which reports them as unclosed sockets."""
    client = redis.RedisCluster.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        for node in client.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
        client.close()


def test_cluster_serves_keys_across_masters(tmp_path: Path) -> None:
    cluster = EmbeddedCluster(tmp_path)
    keys = {"{a}x": "1", "{b}x": "2", "{c}x": "3"}
    with cluster:
        ports = cluster.ports
        assert len(set(ports)) == 3
        assert cluster.url == f"redis://127.0.0.1:{ports[0]}"
        pids = [_state(tmp_path / f"node-{i}")["child_pid"] for i in range(3)]
        with _cluster_client(cluster.url) as client:
            assert len(client.get_primaries()) == 3
            for key, value in keys.items():
                client.set(key, value)
            assert {key: client.get(key) for key in keys} == keys
            owners = {client.get_node_from_key(key).port for key in keys}
            assert len(owners) == 3
        for port in ports:
            assert _covered_slots(port) == (16384, set(ports))
    assert all(_wait_not_running(pid, 1.0) for pid in pids)

    with EmbeddedCluster(tmp_path) as again:
        assert again.ports == ports
        with _cluster_client(again.url) as client:
            assert {key: client.get(key) for key in keys} == keys
