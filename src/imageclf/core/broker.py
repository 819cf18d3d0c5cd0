"""kombu's Redis transports with one client per channel, and a batch's acknowledgements sent together.

kombu's Redis channel builds a new `redis.Redis` for every publish, every task event and
every acknowledgement (`Channel.conn_or_acquire`). redis-py's constructor copies its table
of ~200 response callbacks each time: measured under load, a quarter of a model worker's
Celery main process went there (py-spy, docs/benchmarks/per-image.md). A client over the
channel's own connection pool is safe to reuse: it holds no connection between commands.

kombu also fetches one message per round trip (BRPOP) and records it as delivered in a second
(MULTI, ZADD, HSET, EXEC), and acknowledges each in a transaction of its own. Here a BRPOP's
answer is followed by one script that records it and takes the messages queued behind it (up to
the prefetch window), recorded the same way, atomically; and `acknowledge_together` sends a whole
batch's acknowledgements in one transaction. What a worker that dies leaves behind is exactly
what kombu leaves: entries of its unacknowledged hash, restored after the visibility timeout.

kombu restores an unacknowledged message once it was delivered more than the visibility timeout
ago, whether its worker died or is merely still holding it (a request in a batch buffer, a
countdown). So the timeout had to outlast any task, and a request prefetched by a worker killed
with `kill -9` waited that long (300 s) for another worker. Here a live worker keeps renewing its
messages' delivery times (`touch_interval`, from its event loop, as SQS's ChangeMessageVisibility
does): the timeout only has to outlast a gap in a live worker's renewals, and a dead worker's
messages return after VISIBILITY_TIMEOUT_S (15 s) instead.
The channel subclasses kombu 5.7's (pinned in requirements/api.txt).

imageclf/core/celeryconfig.py names these as `broker_transport`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis
from celery.utils.log import get_logger
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

logger = get_logger(__name__)

#: Longest a live worker renews one message (QoS.touch).
RENEW_AT_MOST_S = 300.0


class _OneClient:
    """Reuses one client on the channel's pool; a new pool (after a reconnect) gets a new client."""

    _shared_client: redis.Redis | None = None
    # kombu's Redis channel, which this is mixed into, provides these.
    pool: Any
    _create_client: Any

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


# KEYS: the list BRPOP answered from, the unacknowledged hash, its index; ARGV: the message BRPOP returned,
# how many more to take, the time. Each message is recorded as kombu's QoS.append records it (ZADD tag,
# HSET tag [message, exchange, routing key]); the ones taken here are returned.
_TAKE_MORE = """
local function record(raw)
  local properties = cjson.decode(raw).properties
  local info = properties.delivery_info or {}
  redis.call('ZADD', KEYS[3], ARGV[3], properties.delivery_tag)
  local where = cjson.encode(info.exchange or '') .. ',' .. cjson.encode(info.routing_key or '')
  redis.call('HSET', KEYS[2], properties.delivery_tag, '[' .. raw .. ',' .. where .. ']')
end
record(ARGV[1])
local taken = {}
for _ = 1, tonumber(ARGV[2]) do
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  record(raw)
  taken[#taken + 1] = raw
end
return taken
"""


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS whose acknowledgements can be collected and sent in one transaction, and which
    knows the messages `_TAKE_MORE` already recorded as delivered."""

    _collecting: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: set[str] = set()
        self._held_since: dict[str, float] = {}  # when touch() first saw each message held

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # in Redis already: only this process' bookkeeping
            return
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if self._collecting is None:
            super().ack(delivery_tag)
            return
        self._collecting.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # this process' own bookkeeping (prefetch), at once

    def touch(self) -> None:
        """Renew the delivery time of every message this process holds unacknowledged, so that none is handed
        to another worker while this one lives (ZADD XX: an entry acknowledged meanwhile is not brought back).

        A message is renewed for at most RENEW_AT_MOST_S: no task waits in a worker that long (a batch buffer
        drains in seconds), so one still held then was forgotten by some failure and is better run again than
        held forever."""
        now = time.time()
        held = self._held_since
        for tag in list(self._delivered):  # one C-level copy: the event loop's own thread is the only writer
            held.setdefault(tag, now)
        for tag in [t for t in held if t not in self._delivered]:
            del held[tag]
        tags = [tag for tag, since in held.items() if now - since < RENEW_AT_MOST_S]
        if not tags:
            return
        with self.channel.conn_or_acquire() as client:
            client.zadd(self.unacked_index_key, dict.fromkeys(tags, now), xx=True)

    @contextmanager
    def acks_together(self) -> Iterator[None]:
        tags: list[str] = []
        self._collecting = tags
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


def requeue(requests: list[Any]) -> None:
    """Put each Celery request's message back on its queue now (kombu marks it redelivered). When Redis cannot
    take it, this process stops renewing it, so the broker restores it after the visibility timeout instead:
    a message this worker no longer holds must never stay renewed forever."""
    for request in requests:
        if request.acknowledged:
            continue
        message = request.message
        qos: Any = getattr(getattr(message, "channel", None), "qos", None)  # gone with a lost connection
        try:
            qos.reject(message.delivery_tag, requeue=True)  # AttributeError without one: handled as a failure
        except Exception:
            logger.warning("could not requeue %s now; it returns after the visibility timeout", request.id,
                           exc_info=True)
            if qos is not None:
                qos._delivered.pop(message.delivery_tag, None)
        request.acknowledged = True


def release(requests: list[Any]) -> None:
    """Stop holding each Celery request's message without acknowledging it: this process no longer renews it,
    so the broker hands it to a worker after the visibility timeout (kombu marks it redelivered)."""
    for request in requests:
        if request.acknowledged:
            continue
        qos: Any = getattr(getattr(request.message, "channel", None), "qos", None)
        if qos is not None:
            qos._delivered.pop(request.message.delivery_tag, None)
        request.acknowledged = True


class _TakesMany:
    """BRPOP, then one script that records the message and takes those queued behind it (see _TAKE_MORE)."""

    #: Most messages taken after one BRPOP, within the prefetch window.
    take_at_most = 64
    # kombu's Redis channel, which this is mixed into, provides these.
    client: Any
    connection: Any
    connection_errors: tuple[type[BaseException], ...]
    sep: str
    qos: Any
    global_keyprefix: str
    _queue_cycle: Any
    _in_poll: Any
    _flush_brpop_reauth: Callable[[], None]
    conn_or_acquire: Callable[..., Any]

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's Channel._brpop_read, delivering every message the script took.
        try:
            try:
                answer = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not answer:
                raise kombu_redis.Empty()
            key, item = answer
            dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            taken, recorded = self._take_more(key, item)
            for raw in [item, *taken]:
                message = loads(bytes_to_str(raw))
                if recorded:
                    self.qos.recorded.add(message["properties"]["delivery_tag"])
                self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _take_more(self, key: bytes, first: bytes) -> tuple[list[bytes], bool]:
        """(more messages from `key`, whether they and `first` are recorded as delivered). On any error
        none, and `first` goes kombu's usual way (QoS.append records it)."""
        qos = self.qos
        if not isinstance(qos, QoS) or self.global_keyprefix:
            return [], False
        room = qos.can_consume_max_estimate()
        more = self.take_at_most if room is None else max(0, min(self.take_at_most, room - 1))
        try:
            with self.conn_or_acquire() as client:
                return client.eval(_TAKE_MORE, 3, key, qos.unacked_key, qos.unacked_index_key, first, more,
                                   time.time()), True
        except Exception:
            logger.warning("could not take more messages after a BRPOP", exc_info=True)
            return [], False


class _Touches:
    """A transport whose consumers renew their unacknowledged messages every `touch_interval` seconds
    (broker_transport_options) from the worker's event loop."""

    cycle: Any
    #: Default renewal period, seconds, when the options name none.
    touch_interval = 5.0

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)  # type: ignore[misc]
        cycle = self.cycle
        previous = getattr(cycle, "_touch_tref", None)
        if previous is not None:  # a reconnect registers again
            previous.cancel()
        interval = float(connection.client.transport_options.get("touch_interval", self.touch_interval))

        def touch_all() -> None:
            for channel in list(cycle._channels):
                if isinstance(channel.qos, QoS):
                    try:
                        channel.qos.touch()
                    except channel.connection_errors:  # Redis away: the next round renews them
                        logger.debug("could not renew unacknowledged messages", exc_info=True)

        cycle._touch_tref = loop.call_repeatedly(interval, touch_all)


class Channel(_TakesMany, _OneClient, kombu_redis.Channel):
    QoS = QoS


class Transport(_Touches, kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_TakesMany, _OneClient, kombu_redis.SentinelChannel):
    QoS = QoS


class SentinelTransport(_Touches, kombu_redis.SentinelTransport):
    Channel = SentinelChannel
