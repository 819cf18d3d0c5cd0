"""imageclf.core.broker against a real Redis: one client per channel, a batch's acknowledgements in one transaction."""

from __future__ import annotations

import json
import time
import uuid

import redis
from kombu import Connection, Queue

from imageclf.core.broker import acknowledge_together

TRANSPORT = "imageclf.core.broker:Transport"


class _Request:
    """What acknowledge_together needs of a Celery request: its id, message and `acknowledged`."""

    def __init__(self, message) -> None:
        self.id, self.message, self.acknowledged = message.delivery_tag, message, False


def _calls(client: redis.Redis, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def test_a_batch_is_acknowledged_in_one_transaction_and_nothing_stays_unacked(redis_url):
    client = redis.Redis.from_url(redis_url)
    queue = f"test-broker-{uuid.uuid4().hex}"
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        producer = conn.Producer(channel)
        for i in range(5):
            producer.publish({"i": i}, routing_key=queue, declare=[conn.SimpleQueue(queue).queue])
        messages = [channel.basic_get(queue, no_ack=False) for _ in range(5)]
        assert all(m is not None for m in messages)
        unacked = channel.unacked_key
        assert client.hlen(unacked) >= 5
        before = _calls(client, "exec"), _calls(client, "zrem")
        acknowledge_together([_Request(m) for m in messages])
        after = _calls(client, "exec"), _calls(client, "zrem")
        assert after[0] - before[0] == 1 and after[1] - before[1] == 5  # one MULTI/EXEC for all five
        tags = [m.delivery_tag for m in messages]
        assert not any(client.hexists(unacked, tag) for tag in tags)
        assert all(m.acknowledged for m in messages) and set(channel.qos._delivered) <= channel.qos._dirty
        client.delete(queue)


def _queued(conn: Connection, name: str, n: int) -> Queue:
    """A queue `name` holding `n` messages {"i": 0..n-1}."""
    queue = Queue(name, routing_key=name)
    producer = conn.Producer()
    for i in range(n):
        producer.publish({"i": i}, routing_key=name, declare=[queue])
    return queue


def test_one_brpop_takes_the_queued_messages_recorded_as_kombu_would_and_restorable(redis_url):
    """After a BRPOP, one script records the message and takes those behind it; each lands in the
    unacknowledged hash exactly as kombu's QoS.append writes it, so kombu restores them after a crash."""
    client = redis.Redis.from_url(redis_url)
    name = f"test-take-{uuid.uuid4().hex}"
    with Connection(redis_url, transport=TRANSPORT) as conn:
        queue = _queued(conn, name, 10)
        got = []
        before = _calls(client, "brpop"), _calls(client, "eval")
        with conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)], accept=["json"]):
            conn.drain_events(timeout=5)
        assert [m.payload["i"] for m in got] == list(range(10))  # all of them, in order, from one BRPOP
        assert (_calls(client, "brpop") - before[0], _calls(client, "eval") - before[1]) == (1, 1)
        channel = got[0].channel
        unacked = {k.decode(): json.loads(v) for k, v in client.hgetall(channel.unacked_key).items()}
        for message in got:
            raw, exchange, routing_key = unacked[message.delivery_tag]
            assert raw["properties"]["delivery_tag"] == message.delivery_tag and routing_key == name
            assert client.zscore(channel.unacked_index_key, message.delivery_tag) is not None
        assert not channel.qos.recorded  # every recorded message was handed to the consumer
        # As if the worker died: kombu's own restore puts them back on the queue.
        for message in got[:4]:
            channel.qos.restore_by_tag(message.delivery_tag, client=client)
        assert client.llen(name) == 4 and not any(client.hexists(channel.unacked_key, m.delivery_tag)
                                                   for m in got[:4])
        acknowledge_together([_Request(m) for m in got[4:]])
        assert not any(client.hexists(channel.unacked_key, m.delivery_tag) for m in got[4:])
        client.delete(name)


def test_taking_more_stays_inside_the_prefetch_window(redis_url):
    client = redis.Redis.from_url(redis_url)
    name = f"test-window-{uuid.uuid4().hex}"
    with Connection(redis_url, transport=TRANSPORT) as conn:
        got = []
        with conn.Consumer(_queued(conn, name, 10), callbacks=[lambda body, message: got.append(message)],
                           accept=["json"]) as consumer:
            consumer.qos(prefetch_count=3)
            conn.drain_events(timeout=5)
            assert len(got) == 3 and client.llen(name) == 7
        client.delete(name)


def test_a_live_consumer_renews_what_it_holds_and_only_a_dead_ones_messages_come_back(redis_url):
    """Both consumers took a message and hold it past the visibility timeout; the live one renews its own
    (what its event loop does every `touch_interval`), the dead one cannot. kombu's restore pass gives back
    only the dead one's, marked redelivered."""
    url = redis_url.rsplit("/", 1)[0] + "/5"  # a database of its own: the restore pass looks at all of it
    client = redis.Redis.from_url(url)
    client.flushdb()
    name = f"test-touch-{uuid.uuid4().hex}"
    options = {"visibility_timeout": 1}
    with Connection(url, transport=TRANSPORT, transport_options=options) as live, \
            Connection(url, transport=TRANSPORT, transport_options=options) as dead:
        _queued(live, name, 2)
        held = live.default_channel.basic_get(name, no_ack=False)
        lost = dead.default_channel.basic_get(name, no_ack=False)
        assert held is not None and lost is not None and client.llen(name) == 0
        for _ in range(3):  # 1.5 s in all: past the timeout for both, renewed for one
            time.sleep(0.5)
            live.default_channel.qos.touch()
        live.default_channel.qos.restore_visible(num=None, interval=1)
        [raw] = client.lrange(name, 0, -1)
        back = json.loads(raw)
        assert back["properties"]["delivery_tag"] == lost.delivery_tag
        assert back["properties"]["delivery_info"]["redelivered"] is True
        assert client.hexists(live.default_channel.unacked_key, held.delivery_tag)
        held.ack()
        assert not client.hexists(live.default_channel.unacked_key, held.delivery_tag)
        live.default_channel.qos.touch()  # renewing after the ack brings nothing back
        assert client.zscore(live.default_channel.unacked_index_key, held.delivery_tag) is None
    client.flushdb()


def test_a_message_held_past_the_renewal_limit_is_no_longer_renewed(redis_url, monkeypatch):
    """A message some failure left in a live worker's hands is not held forever: past RENEW_AT_MOST_S its
    renewals stop and the broker hands it out again."""
    import imageclf.core.broker

    monkeypatch.setattr(imageclf.core.broker, "RENEW_AT_MOST_S", 0.6)
    url = redis_url.rsplit("/", 1)[0] + "/5"
    client = redis.Redis.from_url(url)
    client.flushdb()
    name = f"test-forgotten-{uuid.uuid4().hex}"
    with Connection(url, transport=TRANSPORT, transport_options={"visibility_timeout": 1}) as conn:
        _queued(conn, name, 1)
        held = conn.default_channel.basic_get(name, no_ack=False)
        assert held is not None
        for _ in range(5):  # 2.5 s of renewals, of which only the first 0.6 s count
            time.sleep(0.5)
            conn.default_channel.qos.touch()
        conn.default_channel.qos.restore_visible(num=None, interval=1)
        assert client.llen(name) == 1  # handed out again
    client.flushdb()
