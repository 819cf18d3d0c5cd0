"""Receive what is left of a request body the app answered without reading (a 429, a 401, a 404), in large reads.

A refused upload's bytes still arrive, and the connection can only be kept for the next request once they are
received. Left to gunicorn, they are drained 1,024 bytes at a time (each read copying its buffer) and only up to
64 KiB, past which the connection is closed: a refused 120 KB photo cost the API process some 80 reads under its
interpreter lock, a lingering close and a new connection for the client's next request, and the other keys'
requests in the same process waited behind that (docs/benchmarks/quotas.md). Here the rest is read after the
response is sent, 1 MiB at a time, so a refusal costs the process a few reads and the client keeps its connection.

Only bodies up to `limit` bytes are read (a larger one would be a 413 anyway, and a refused key must not make the
API receive a job's gigabytes); those the server closes the connection on, as before. A read waits at most
`timeout_s` for the client, so a refused client that stops sending does not hold a thread.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_READ = 1 << 20


class DrainUnreadBodies:
    """WSGI middleware: after each response, receive the rest of a body of at most `limit` bytes."""

    def __init__(self, app: Callable[..., Iterable[bytes]], limit: int, timeout_s: float = 5.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if not 0 < length <= self.limit:
            return self.app(environ, start_response)
        body = environ["wsgi.input"] = _CountedInput(environ["wsgi.input"])
        found = environ.get("gunicorn.socket")  # to bound each read; elsewhere the server's own timeouts apply
        sock = found if isinstance(found, socket.socket) else None
        return _Drained(self.app(environ, start_response), body, length, sock, self.timeout_s)


class _CountedInput:
    """wsgi.input, counting what the app reads: the drain then reads exactly the rest, never into the next request
    (a server's input stream need not stop at the body's end)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.consumed = 0

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self.stream.read() if size is None or size < 0 else self.stream.read(size)
        self.consumed += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line: bytes = self.stream.readline() if size is None or size < 0 else self.stream.readline(size)
        self.consumed += len(line)
        return line

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = self.stream.readlines(hint) if hint > 0 else self.stream.readlines()
        self.consumed += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class _Drained:
    """The app's response; closing it (the server does, once it is sent) receives the unread body."""

    def __init__(self, response: Iterable[bytes], body: _CountedInput, length: int, sock: socket.socket | None,
                 timeout_s: float) -> None:
        self.response = response
        self.body = body
        self.length = length
        self.sock = sock
        self.timeout_s = timeout_s

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.response)

    def close(self) -> None:
        try:
            close = getattr(self.response, "close", None)
            if close is not None:
                close()
        finally:
            self._drain()

    def _drain(self) -> None:
        """Read and drop the `length` bytes of the body the app did not read, a large read at a time."""
        sock = self.sock
        previous = sock.gettimeout() if sock else None
        try:
            if sock:
                sock.settimeout(self.timeout_s)
            left = self.length - self.body.consumed
            while left > 0:
                data = self.body.stream.read(min(_READ, left))
                if not data:
                    return
                left -= len(data)
        except (OSError, ValueError):
            pass  # the client went or stalled: the server closes the connection, having not seen the body's end
        finally:
            if sock:
                sock.settimeout(previous)
