"""MGET whose values are read from the socket straight into their own buffers: how the model reads pixels.

redis-py (with hiredis) reads a reply 64 KB at a time into the parser's buffer, which grows as it is fed, and
then copies the whole value into a bytes object: for a job's part (32 images, 4.8 MB) that was 40 % of the
model worker's pool process beside a near-free model (py-spy). Read straight into its own buffer, the pool
process' CPU per image fell from 0.82-0.87 ms to 0.61-0.62 (docs/benchmarks/jobs.md). On a GPU host that
process is the one that feeds the GPU.

The command is sent, and the connection taken and given back, by redis-py (its pool, Sentinel, AUTH, TLS and
retries stay as configured); only the reply is read here, from the connection's socket, which redis-py exposes
no public way to read from. A reply read half-way leaves the connection unusable: it is closed.
"""

from __future__ import annotations

import socket
from typing import Any

import redis

#: What one read takes while looking for a value's header: the header, and the head of the value after it.
_HEAD = 4096


def mget_into(client: redis.Redis, keys: list[str]) -> list[bytearray | None]:
    """The values under `keys` (None where missing), each read into its own buffer."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        return connection.retry.call_with_retry(lambda: _mget(connection, keys),
                                                lambda _error: connection.disconnect())
    finally:
        pool.release(connection)


def _mget(connection: Any, keys: list[str]) -> list[bytearray | None]:
    connection.send_command("MGET", *keys)
    try:
        reply = _Reply(connection._sock)
        head = reply.line()
        if head.startswith(b"-"):
            raise redis.ResponseError(head[1:].decode(errors="replace"))
        if not head.startswith(b"*") or int(head[1:]) != len(keys):
            raise redis.ConnectionError(f"MGET of {len(keys)} keys answered {head[:40]!r}")
        return [reply.value() for _ in keys]
    except redis.ResponseError:
        raise
    except TimeoutError as exc:
        connection.disconnect()
        raise redis.TimeoutError(f"reading MGET's reply: {exc}") from exc
    except (OSError, ValueError) as exc:
        connection.disconnect()
        raise redis.ConnectionError(f"reading MGET's reply: {exc}") from exc
    except BaseException:
        connection.disconnect()
        raise


class _Reply:
    """RESP2/RESP3 bulk strings from a socket: headers through a small buffer, values straight into their own."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._more()
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line

    def value(self) -> bytearray | None:
        head = self.line()
        if head == b"_":  # RESP3's null (redis-py 8 speaks RESP3 where the server can)
            return None
        if not head.startswith(b"$"):
            raise ValueError(f"expected a bulk string, got {head[:40]!r}")
        size = int(head[1:])
        if size < 0:
            return None
        value = bytearray(size)
        have = min(size, len(self.buffer))
        value[:have] = self.buffer[:have]
        del self.buffer[:have]
        view = memoryview(value)
        while have < size:
            read = self.sock.recv_into(view[have:])
            if not read:
                raise ConnectionResetError("Redis closed the connection mid-reply")
            have += read
        while len(self.buffer) < 2:  # the value's CRLF
            self._more()
        del self.buffer[:2]
        return value

    def _more(self) -> None:
        chunk = self.sock.recv(_HEAD)
        if not chunk:
            raise ConnectionResetError("Redis closed the connection mid-reply")
        self.buffer += chunk
