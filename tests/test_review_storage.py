"""Where kept images go: the review queue's keeper (imageclf.core.review_queue) with REVIEW_DIR on an object store
(moto's S3 server on 127.0.0.1), a real PostgreSQL (the embedded one) for the near-duplicate query and a real
Redis for the day's quota."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import redis
from PIL import Image

from imageclf import settings
from imageclf.core import review_queue
from imageclf.core.prediction_log import COLUMNS, Pending, rows
from imageclf.models.review_rules import ReviewRules
from tests.helpers import S3_CREDENTIALS, embedded_postgres


@pytest.fixture()
def postgres(tmp_path: Path) -> Iterator[str]:
    with embedded_postgres(tmp_path / "pg") as url:
        yield url


def _row(request_id: str, image: np.ndarray, rules: ReviewRules) -> tuple:
    probabilities = np.array([0.4, 0.3, 0.2, 0.1])
    who = {"request_id": request_id, "route": "predict", "review": Pending(image, ["confidence_below"], rules)}
    return rows("plants", 1, [(who, probabilities)], time.time(), 4, 100)[0]


def test_kept_images_go_to_an_object_store_once_per_near_duplicate(postgres: str, redis_url: str, s3_endpoint: str,
                                                                   monkeypatch: pytest.MonkeyPatch):
    import boto3

    for name, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="kept-images")
    monkeypatch.setattr(settings, "REVIEW_DIR", "s3://kept-images/review")
    client = redis.Redis.from_url(redis_url)
    rules = ReviewRules(confidence_below=0.5, max_per_day=2, distance=4)
    rng = np.random.default_rng(3)
    scene = rng.integers(0, 256, (8, 8, 3), np.uint8).repeat(20, axis=0).repeat(20, axis=1)
    other = rng.integers(0, 256, (8, 8, 3), np.uint8).repeat(20, axis=0).repeat(20, axis=1)
    third = rng.integers(0, 256, (8, 8, 3), np.uint8).repeat(20, axis=0).repeat(20, axis=1)
    client.delete(f"{review_queue.KEPT_PREFIX}plants:{time.strftime('%Y-%m-%d', time.gmtime())}")

    keeper = review_queue.Keeper(client)
    review, review_file = (COLUMNS.index(c) for c in ("review", "review_file"))
    with psycopg.connect(postgres) as connection:
        first = keeper.keep(connection, [_row("a", scene, rules), _row("b", scene.copy(), rules)])
        assert [(r[0], r[review]) for r in first] == [("a", ["confidence_below"]), ("b", None)]  # b is a again
        with connection.cursor() as cursor:  # written, as the prediction log's writer does after keeping
            with cursor.copy(f"COPY predictions ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in first:
                    copy.write_row(row)
        connection.commit()
        later = keeper.keep(connection, [_row("c", scene, rules), _row("d", other, rules), _row("e", third, rules)])
    # c is a again (found in the table), d is new, e is past the day's quota of two
    assert [(r[0], r[review]) for r in later] == [("c", None), ("d", ["confidence_below"]), ("e", None)]
    kept = Image.open(io.BytesIO(review_queue.read_image(first[0][review_file])))
    assert kept.size == (160, 160) and np.array_equal(np.asarray(kept), scene)  # lossless, as the model saw it
    assert first[0][review_file].startswith("plants/") and later[0][review_file] is None


def test_a_drifting_version_has_its_answers_selected(redis_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """The drift flag the promotion controller refreshes (imageclf.core.promotion.DRIFT_PREFIX) selects the answers
    of the drifting version only, when the rules ask for it."""
    import json

    from imageclf.core.promotion import DRIFT_PREFIX
    from imageclf.workers.model.review import Selector

    (tmp_path / "plants").mkdir()
    (tmp_path / "plants" / "config.json").write_text(json.dumps({"review": {"drift": True}}))
    monkeypatch.setattr(settings, "MODEL_REPOSITORY", str(tmp_path))
    client = redis.Redis.from_url(redis_url)
    client.set(DRIFT_PREFIX + "plants", json.dumps([2]), ex=60)
    selector = Selector(client)
    image, row = np.zeros((8, 8, 3), np.uint8), np.array([0.9, 0.1])
    assert selector.pending("plants", 1, {"request_id": "r1", "route": "predict"}, row, image) is None
    drifting = selector.pending("plants", 2, {"request_id": "r2", "route": "predict"}, row, image)
    assert drifting is not None and drifting.reasons == ["drift"]
    shadow = selector.pending("plants", 2, {"request_id": "r3", "route": "shadow", "against": 1}, row, image)
    assert shadow is not None and shadow.reasons == ["drift"]  # disagreeing, but that rule is off
