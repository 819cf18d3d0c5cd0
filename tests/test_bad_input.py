"""Client mistakes get a 4xx JSON error naming the problem, and the worker keeps serving."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from tests.helpers import SHARED, labelled_photos


def post(service, files=None, params=None, **kw) -> httpx.Response:
    return httpx.post(service.url + "/predict", files=files, params=params, timeout=60, **kw)


def png_of(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


JPEG = (SHARED / labelled_photos()[0]["path"]).read_bytes()

CASES = [
    ("missing field", {"picture": ("a.jpg", JPEG)}, None, 400, "missing file field 'image'"),
    ("no body", None, None, 400, "missing file field 'image'"),
    ("empty file", {"image": ("empty.jpg", b"")}, None, 400, "empty"),
    ("text file", {"image": ("notes.txt", b"hello, not an image\n" * 20)}, None, 415, "not an image"),
    ("truncated jpeg", {"image": ("cut.jpg", JPEG[: len(JPEG) // 3])}, None, 400, "truncated or corrupt"),
    ("top not a number", {"image": ("a.jpg", JPEG)}, {"top": "five"}, 400, "'top' must be an integer"),
    ("top zero", {"image": ("a.jpg", JPEG)}, {"top": "0"}, 400, "'top' must be between"),
    ("negative timeout", {"image": ("a.jpg", JPEG)}, {"timeout": "-1"}, 400, "'timeout' must be between"),
    ("bad deadline", {"image": ("a.jpg", JPEG)}, {"deadline": "soon"}, 400, "'deadline' must be a number"),
    ("nan timeout", {"image": ("a.jpg", JPEG)}, {"timeout": "nan"}, 400, "'timeout'"),
]


@pytest.mark.parametrize("name, files, params, status, message", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_a_clear_4xx(service, name, files, params, status, message):
    response = post(service, files=files, params=params)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert message in body["error"]


def test_oversized_body_is_413(service):
    response = post(service, files={"image": ("big.jpg", b"\xff" * (21 * 2**20))})
    assert response.status_code == 413
    assert "MAX_UPLOAD_MB" in response.json()["error"]


def test_decompression_bomb_is_refused_before_decoding(service):
    # 10000 x 10000 = 1e8 pixels > the default 64e6 limit; the PNG itself is small.
    response = post(service, files={"image": ("bomb.png", png_of((10000, 10000)))})
    assert response.status_code == 413
    assert "pixels" in response.json()["error"]


def test_unknown_route_and_wrong_method_are_json(service):
    assert httpx.get(service.url + "/nope", timeout=10).json()["success"] is False
    wrong = httpx.get(service.url + "/predict", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["success"] is False


def test_worker_still_serves_after_bad_input(service):
    for _, files, params, _, _ in CASES:
        post(service, files=files, params=params)
    assert httpx.get(service.url + "/readyz", timeout=10).status_code == 200
    ok = post(service, files={"image": ("a.jpg", JPEG)})
    assert ok.status_code == 200
    assert ok.json()["predictions"][0]["class_id"] == int(labelled_photos()[0]["expected_class_id"])
