"""The batched task itself, driven through the real broker: a bad payload fails alone."""

from __future__ import annotations

import socket
import time
import uuid

import httpx
import pytest
from celery import Celery

from imageclf.core.payloads import PIXELS_PREFIX, enqueue_classify
from imageclf.core.result_store import READY_STATES, failure_message, read_meta
from imageclf.models.images import decode_to_pixels
from tests.helpers import SHARED, labelled_photos

QUEUE = "interactive.mobilenet_v1_0.75"  # the test service's model


@pytest.fixture(scope="module")
def client_app(service, redis_url: str) -> Celery:
    """A send-only client like the API's; results are read from Redis directly."""
    app = Celery("test-client")
    app.config_from_object("imageclf.core.celeryconfig")
    app.conf.update(broker_url=redis_url, result_backend=None)
    return app


def wait_all(client, ids: list[str], timeout_s: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        metas = [read_meta(client, i) for i in ids]
        if all(m["status"] in READY_STATES for m in metas):
            return metas
        assert time.monotonic() < deadline, "some requests were never answered"
        time.sleep(0.05)


def test_an_undecodable_payload_fails_alone_and_its_batch_mates_are_answered(client_app, redis_client, redis_url):
    photos = labelled_photos()[:8]
    pixels = [decode_to_pixels((SHARED / r["path"]).read_bytes(), 224, 10**9) for r in photos]

    def send(data: bytes) -> str:
        task_id = str(uuid.uuid4())
        enqueue_classify(client_app, redis_client, task_id, data, (224, 224), 1, 600, queue=QUEUE)
        return task_id

    # Queue everything while the worker is not consuming, so it all arrives in one burst: the
    # first request runs alone (the worker is idle), the rest fill the next batch together.
    # Only the model worker: a broadcast add_consumer would make the decoder consume "interactive" too.
    model_worker = [f"mobilenet_v1_0.75@{socket.gethostname()}"]
    replies = client_app.control.cancel_consumer(QUEUE, reply=True, timeout=5, destination=model_worker)
    assert replies, "the worker did not answer cancel_consumer"
    try:
        busy = [send(pixels[0])]
        before = [send(p) for p in pixels]
        bad = send(b"\x00" * 1000)
        missing = str(uuid.uuid4())
        client_app.send_task("classify", kwargs={"pixels_key": "imageclf:pixels:nowhere", "top": 1}, queue=QUEUE,
                             task_id=missing)
        after = [send(p) for p in pixels]
    finally:
        assert client_app.control.add_consumer(QUEUE, reply=True, timeout=5, destination=model_worker)
    metas = wait_all(redis_client, [*busy, *before, bad, missing, *after])
    before_m, bad_m, missing_m, after_m = metas[1:9], metas[9], metas[10], metas[11:]

    assert bad_m["status"] == "FAILURE" and "1000 bytes" in failure_message(bad_m)
    assert missing_m["status"] == "FAILURE" and "no pixels" in failure_message(missing_m)
    for row, meta in zip(photos * 2, before_m + after_m):
        assert meta["status"] == "SUCCESS"
        assert meta["result"]["predictions"][0]["class_id"] == int(row["expected_class_id"])
    # Batches are consecutive slices of the queue: the bad payloads' neighbours shared their batch.
    assert before_m[-1]["result"]["batch_id"] == after_m[0]["result"]["batch_id"]
    # Pixels are deleted once answered.
    assert not list(redis_client.scan_iter(match=PIXELS_PREFIX + "*"))
    # Answers are stored in one round trip per batch, in the form Celery's own result backend reads.
    reader = Celery("test-reader", backend=redis_url)
    stored = reader.AsyncResult(after[0])
    assert stored.state == "SUCCESS" and stored.date_done is not None
    assert stored.result == after_m[0]["result"]


def test_a_request_past_its_deadline_is_skipped_not_computed(client_app, redis_client):
    pixels = decode_to_pixels((SHARED / labelled_photos()[0]["path"]).read_bytes(), 224, 10**9)

    def send(expires_at: float) -> str:
        task_id = str(uuid.uuid4())
        enqueue_classify(client_app, redis_client, task_id, pixels, (224, 224), 1, 600, queue=QUEUE,
                         expires_at=expires_at)
        return task_id

    busy = [send(time.time() + 600) for _ in range(48)]  # more than a batch: the next ones queue behind
    late = send(time.time() + 0.05)
    in_time = send(time.time() + 600)
    metas = wait_all(redis_client, [*busy, late, in_time])
    assert metas[-2]["status"] == "REVOKED" and "deadline" in failure_message(metas[-2])
    assert metas[-1]["status"] == "SUCCESS"
    assert all(m["status"] == "SUCCESS" for m in metas[:-2])


def test_the_apis_own_task_message_is_the_one_send_task_writes(client_app, redis_client):
    """The API pushes its classify message from a script (imageclf.core.payloads.task_message): it must be exactly
    what Celery's send_task through kombu would push, apart from the ids it makes fresh."""
    import base64
    import json

    from kombu import serialization

    from imageclf.core.payloads import task_message

    queue, task_id = f"test-message-{uuid.uuid4().hex}", str(uuid.uuid4())
    kwargs = {"pixels_key": PIXELS_PREFIX + task_id, "size": [224, 224], "top": 3, "sent_at": 1.5}
    client_app.send_task("classify", kwargs=kwargs, task_id=task_id, argsrepr="()", kwargsrepr="{'top': 3}",
                         queue=queue)
    theirs = json.loads(redis_client.rpop(queue))
    ours = json.loads(task_message(client_app, task_id, kwargs, queue, "{'top': 3}"))
    redis_client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")

    def body(message: dict) -> object:
        return serialization.loads(base64.b64decode(message["body"]), message["content-type"],
                                   message["content-encoding"], accept={"application/x-msgpack"})

    assert body(ours) == body(theirs) and body(ours)[1] == kwargs
    for message in (ours, theirs):
        message.pop("body")
        message["headers"].pop("origin")
        message["properties"].pop("delivery_tag")
        for extra in ("argsrepr", "kwargsrepr"):  # kombu copies them into the properties too; nothing reads them
            message["properties"].pop(extra, None)
    assert ours == theirs


def test_a_job_part_is_computed_as_one_batch_and_answered_in_one_record(service, client_app, redis_client):
    """A job's part (several images in one message, one Redis value) is one batch, and its answer one record
    with an answer per image in order: an image for a version not served fails alone. Flower shows the part as
    one task with its image count."""
    from tests.helpers import FLOWER_AUTH

    photos = labelled_photos()[:5]
    pixels = b"".join(decode_to_pixels((SHARED / r["path"]).read_bytes(), 224, 10**9) for r in photos)
    part_id = f"{uuid.uuid4()}.0"
    versions = [1, 1, 99, 1, 1]  # the test model serves version 1 only
    enqueue_classify(client_app, redis_client, part_id, pixels, (224, 224), 3, 600,
                     queue="bulk.mobilenet_v1_0.75", version=1, pinned=True,
                     part={"items": [10, 11, 12, 13, 14], "versions": versions})
    (meta,) = wait_all(redis_client, [part_id])
    assert meta["status"] == "SUCCESS", meta
    result = meta["result"]
    assert result["items"] == [10, 11, 12, 13, 14] and len(result["answers"]) == 5
    for row, version, answer in zip(photos, versions, result["answers"]):
        if version == 99:
            assert "version 99 is not served" in answer["error"]
            continue
        assert answer["model_version"] == 1 and len(answer["predictions"]) == 3
        assert answer["predictions"][0]["class_id"] == int(row["expected_class_id"])
    assert not redis_client.exists(PIXELS_PREFIX + part_id)  # its pixels went with the answer

    user, password = FLOWER_AUTH.split(":")
    deadline = time.monotonic() + 30
    while (task := httpx.get(f"{service.flower_url}/api/task/info/{part_id}", auth=(user, password),
                             timeout=10)).status_code != 200 or task.json().get("state") != "SUCCESS":
        assert time.monotonic() < deadline, f"Flower never showed the part as done: {task.text[:300]}"
        time.sleep(0.5)
    shown = task.json()
    assert "'images': 5" in shown["kwargs"] and shown["result"] == "4 of 5 images answered", shown
