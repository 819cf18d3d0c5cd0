"""kombu's Redis transports with one client per channel instead of one per command.

kombu's Redis channel builds a new `redis.Redis` for every publish, every task event and
every acknowledgement (`Channel.conn_or_acquire`). redis-py's constructor copies its table
of ~200 response callbacks each time: measured under load, a quarter of a model worker's
Celery main process went there (py-spy, docs/BENCHMARKS-PIPELINE.md). A client over the
channel's own connection pool is safe to reuse: it holds no connection between commands.

celeryconfig.py names these as `broker_transport`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis


class _OneClient:
    """Reuses one client on the channel's pool; a new pool (after a reconnect) gets a new client."""

    _shared_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Channel(_OneClient, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_OneClient, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
