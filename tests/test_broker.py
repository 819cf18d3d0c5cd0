"""tasks/broker.py against a real Redis: one client per channel, a batch's acknowledgements in one transaction."""

from __future__ import annotations

import uuid

import redis
from kombu import Connection

from tasks.broker import acknowledge_together


class _Request:
    """What acknowledge_together needs of a Celery request: its id, message and `acknowledged`."""

    def __init__(self, message) -> None:
        self.id, self.message, self.acknowledged = message.delivery_tag, message, False


def _calls(client: redis.Redis, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def test_a_batch_is_acknowledged_in_one_transaction_and_nothing_stays_unacked(redis_url):
    client = redis.Redis.from_url(redis_url)
    queue = f"test-broker-{uuid.uuid4().hex}"
    with Connection(redis_url, transport="tasks.broker:Transport") as conn:
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
