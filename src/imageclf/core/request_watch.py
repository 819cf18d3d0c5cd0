"""Requests whose task message was lost are sent again: nothing a client was given an id for waits forever.

The API records each request it queues (an id's time in WATCH_KEY, its queue and message in MESSAGES_KEY) in the
script that queues it, and a model worker forgets it in the transaction that stores its answer and deletes its
pixels (both in imageclf.core.payloads). A message can still vanish in between: taken by a worker killed in the
instant between its BRPOP and the script that records it as delivered, or queued on a Redis master that died before
its replica had it (replication is asynchronous). So a sweep (imageclf.workers.jobs.driver.start_stall_sweep, one
process of all workers at a time) looks at requests recorded more than `older_than_s` ago: answered or expired ones
(their pixels gone) are forgotten, and one whose pixels are still there but whose message is neither queued nor
held by a worker is queued again under the same id.

Called by: imageclf.workers.jobs.driver (the sweep), imageclf.api.metrics (the count).
"""

from __future__ import annotations

import logging
import time
from typing import cast

import redis
from kombu.transport import redis as kombu_redis

from imageclf.core.payloads import MESSAGES_KEY, PIXELS_PREFIX, WATCH_KEY, forget, pixels_present
from imageclf.core.redis_clients import text
from imageclf.core.result_store import RESULT_KEY_PREFIX

logger = logging.getLogger(__name__)

RESENT_KEY = "imageclf:requests:resent"       # counter: messages sent again, for /metrics
_LOOK_AT_MOST = 500                           # requests looked at per sweep, the oldest first


def resend_lost(client: redis.Redis, older_than_s: float) -> list[str]:
    """Queue again every request recorded more than `older_than_s` ago whose message is nowhere and whose pixels
    are still there; forget those answered or expired. Returns the ids sent again."""
    now = time.time()
    oldest = cast(list[bytes], client.zrangebyscore(WATCH_KEY, "-inf", now - older_than_s, 0, _LOOK_AT_MOST))
    ids = [text(i) for i in oldest]
    if not ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for request_id in ids:
            pipe.exists(RESULT_KEY_PREFIX + request_id)
        answered = pipe.execute()
    present = pixels_present(client, [PIXELS_PREFIX + i for i in ids])
    done = [i for i, a, p in zip(ids, answered, present) if a or not p]
    waiting = [i for i, a, p in zip(ids, answered, present) if not a and p]
    forget(client, done)
    if not waiting:
        return []
    recorded = dict(zip(waiting, client.hmget(MESSAGES_KEY, waiting)))
    # First where a message would be now, then where it was before: one moving meanwhile is missed by both and
    # sent again, which costs a duplicate answer, never a lost one.
    held = "".join(map(text, client.hvals(kombu_redis.Channel.unacked_key)))
    queues = {text(value).split("\n", 1)[0] for value in recorded.values() if value}
    queued = "".join(text(m) for q in queues for m in client.lrange(q, 0, -1))
    lost, found = [], []
    for request_id, value in recorded.items():
        if value is None:  # recorded by nothing we can send again
            forget(client, [request_id])
        elif request_id in held or request_id in queued:
            found.append(request_id)
        else:
            lost.append((request_id, *text(value).split("\n", 1)))
    with client.pipeline(transaction=False) as pipe:
        for request_id, queue, message in lost:
            logger.warning("request %s: its message was lost (a worker killed as it took it, or a failover); "
                           "queued again on %s", request_id, queue)
            pipe.lpush(queue, message)
        pipe.incrby(RESENT_KEY, len(lost))
        # Found waiting (a long queue), or sent again: looked at again only after another `older_than_s`.
        again = found + [i for i, _, _ in lost]
        if again:
            pipe.zadd(WATCH_KEY, dict.fromkeys(again, now), xx=True)
        pipe.execute()
    return [i for i, _, _ in lost]


def count_resent(client: redis.Redis) -> int:
    """Requests sent again since Redis started (for /metrics)."""
    return int(client.get(RESENT_KEY) or 0)

