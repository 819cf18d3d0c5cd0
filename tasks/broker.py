"""kombu's Redis transports with one client per channel, and a batch's acknowledgements sent together.

kombu's Redis channel builds a new `redis.Redis` for every publish, every task event and
every acknowledgement (`Channel.conn_or_acquire`). redis-py's constructor copies its table
of ~200 response callbacks each time: measured under load, a quarter of a model worker's
Celery main process went there (py-spy, docs/BENCHMARKS-PIPELINE.md). A client over the
channel's own connection pool is safe to reuse: it holds no connection between commands.

kombu also acknowledges each message in a transaction of its own (MULTI, ZREM, HDEL, EXEC);
`acknowledge_together` sends a whole batch's in one.

celeryconfig.py names these as `broker_transport`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis
from celery.utils.log import get_logger
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

logger = get_logger(__name__)


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


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS whose acknowledgements can be collected and sent in one transaction."""

    _collecting: list[str] | None = None

    def ack(self, delivery_tag: str) -> None:
        if self._collecting is None:
            super().ack(delivery_tag)
            return
        self._collecting.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # this process' own bookkeeping (prefetch), at once

    @contextmanager
    def acks_together(self) -> Iterator[None]:
        self._collecting = tags = []
        try:
            yield
        finally:
            self._collecting = None
            if tags:
                try:
                    with self.pipe_or_acquire() as pipe:
                        for tag in tags:
                            self._remove_from_indices(tag, pipe)
                        pipe.execute()
                except Exception:  # still unacknowledged in Redis: redelivered after the visibility timeout
                    logger.warning("could not acknowledge %d messages", len(tags), exc_info=True)


def acknowledge_together(requests: list[Any]) -> None:
    """Acknowledge each Celery request's message now, with one round trip to Redis per channel.

    Celery's own `request.acknowledge()` defers each ack to the event loop's next tick, one
    transaction each; these are made here, inside the collecting context, and marked done the
    same way (`request.acknowledged`).
    """
    pending = [r for r in requests if not r.acknowledged]
    with ExitStack() as stack:
        channels = {id(ch): ch for r in pending if (ch := getattr(r.message, "channel", None)) is not None}
        for channel in channels.values():
            if isinstance(channel.qos, QoS):
                stack.enter_context(channel.qos.acks_together())
        for request in pending:
            try:
                request.message.ack()
            except Exception:  # as Celery's ack_log_error: logged; Redis redelivers it after the visibility timeout
                logger.critical("could not acknowledge %s", request.id, exc_info=True)
            request.acknowledged = True


class Channel(_OneClient, kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_OneClient, kombu_redis.SentinelChannel):
    QoS = QoS


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
