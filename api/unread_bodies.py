"""Receive what is left of a request body the app answered without reading (a 429, a 401, a 404), in large reads.

A refused upload's bytes still arrive, and the connection can only be kept for the next request once they are
received. Left to gunicorn, they are drained 1,024 bytes at a time (each read copying its buffer) and only up to
64 KiB, past which the connection is closed: a refused 120 KB photo cost the API process some 120 reads under its
interpreter lock, a lingering close and a new connection for the client's next request, and the other keys'
requests in the same process waited behind that (docs/BENCHMARKS-QUOTAS.md). Here the rest is read after the
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
        return _Drained(self.app(environ, start_response), environ, self.limit, self.timeout_s)


class _Drained:
    """The app's response; closing it (the server does, once it is sent) receives the unread body."""

    def __init__(self, response: Iterable[bytes], environ: dict[str, Any], limit: int, timeout_s: float) -> None:
        self.response = response
        self.environ = environ
        self.limit = limit
        self.timeout_s = timeout_s

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.response)

    def close(self) -> None:
        try:
            close = getattr(self.response, "close", None)
            if close is not None:
                close()
        finally:
            drain(self.environ, self.limit, self.timeout_s)


def drain(environ: dict[str, Any], limit: int, timeout_s: float) -> None:
    """Read and drop what the app left of a Content-Length body of at most `limit` bytes."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if not 0 < length <= limit:
        return
    stream = environ["wsgi.input"]
    sock = environ.get("gunicorn.socket")
    previous = sock.gettimeout() if isinstance(sock, socket.socket) else None
    try:
        if isinstance(sock, socket.socket):
            sock.settimeout(timeout_s)
        while stream.read(_READ):
            pass
    except (OSError, ValueError):
        pass  # the client went or stalled: the server closes the connection, having not seen the body's end
    finally:
        if isinstance(sock, socket.socket):
            sock.settimeout(previous)
