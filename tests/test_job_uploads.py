"""POST /jobs refuses what it cannot take before accepting it, with the limit named, and leaves no files.

An API with tight limits and no worker: everything here is decided by the API
itself. Accepted jobs stay PENDING (no decoder runs) and can be cancelled.
"""

from __future__ import annotations

import io
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imageclf.launch.redis_server import free_port, ping, redis_argv
from imageclf.launch.supervise import wait_until
from tests.helpers import SHARED, labelled_photos, start_api

VIDEO = SHARED / "video"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    server = subprocess.Popen(redis_argv(port, str(tmp_path_factory.mktemp("redis-jobs")), durable=False))
    assert wait_until(lambda: ping(redis_url), 15)
    uploads = tmp_path_factory.mktemp("uploads")
    proc, url = start_api(redis_url, {
        "UPLOAD_DIR": str(uploads), "MAX_JOB_FILES": "3", "MAX_UNZIPPED_MB": "1", "MAX_JOB_UPLOAD_MB": "2",
        "MAX_VIDEO_SECONDS": "5", "MAX_VIDEO_FRAMES": "10",
    })
    yield url, uploads
    proc.terminate()
    proc.wait(20)
    server.terminate()
    server.wait(10)


def photo(n: int = 0) -> bytes:
    return (SHARED / labelled_photos()[n]["path"]).read_bytes()


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


REFUSED = {
    "no files": (dict(data={"top": "5"}), 400, "no files"),
    "unknown field": (dict(files={"image": ("a.jpg", photo())}), 400, "unknown file field"),
    "images and video": (dict(files=[("images", ("a.jpg", photo())),
                                     ("video", ("v.mp4", (VIDEO / "realshort.mp4").read_bytes()))]), 400, "either"),
    "two videos": (dict(files=[("video", ("a.mp4", b"1")), ("video", ("b.mp4", b"2"))]), 400, "one 'video'"),
    "too many files": (dict(files=[("images", (f"{n}.jpg", photo())) for n in range(4)]), 413, "MAX_JOB_FILES"),
    "too many zip entries": (dict(files={"images": ("a.zip", zipped({f"{n}.jpg": photo() for n in range(4)}))}),
                             413, "MAX_JOB_FILES"),
    "zip bomb": (dict(files={"images": ("bomb.zip", zipped({"zeros.jpg": bytes(3 * 2**20)}))}),
                 413, "MAX_UNZIPPED_MB"),
    "corrupt zip": (dict(files={"images": ("bad.zip", b"PK\x03\x04" + bytes(100))}), 400, "not a readable zip"),
    "empty zip": (dict(files={"images": ("empty.zip", zipped({"folder/": b""}))}), 400, "holds no files"),
    "body too large": (dict(files={"images": ("big.jpg", bytes(3 * 2**20))}), 413, "MAX_JOB_UPLOAD_MB"),
    "text as video": (dict(files={"video": ("notes.mp4", b"this is not a video\n" * 50)}), 415, "notes.mp4"),
    "image as video": (dict(files={"video": ("photo.mp4", photo())}), 415, "photo.mp4"),
    "video too long": (dict(files={"video": ("c.mp4", (VIDEO / "cockatoo.mp4").read_bytes())}), 413,
                       "MAX_VIDEO_SECONDS"),
    "too many frames": (dict(files={"video": ("r.mp4", (VIDEO / "realshort.mp4").read_bytes())},
                             data={"every_n_frames": "1"}), 413, "MAX_VIDEO_FRAMES"),
    "fps and every_n_frames": (dict(files={"video": ("r.mp4", (VIDEO / "realshort.mp4").read_bytes())},
                                    data={"fps": "2", "every_n_frames": "3"}), 400, "not both"),
    "fps zero": (dict(files={"video": ("r.mp4", (VIDEO / "realshort.mp4").read_bytes())}, data={"fps": "0"}),
                 400, "'fps'"),
    "top not a number": (dict(files={"images": ("a.jpg", photo())}, data={"top": "many"}), 400, "'top'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_the_reason_and_nothing_left_on_disk(api, case):
    url, uploads = api
    kwargs, status, words = REFUSED[case]
    response = httpx.post(url + "/jobs", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and words in body["error"], body
    assert list(uploads.iterdir()) == [], "a refused upload left files behind"


def test_accepted_jobs_report_their_size_at_once_and_cancel_removes_their_files(api):
    url, uploads = api
    video = httpx.post(url + "/jobs", files={"video": ("r.mp4", (VIDEO / "realshort.mp4").read_bytes())},
                       data={"every_n_frames": "1", "max_frames": "5"}, timeout=60)
    assert video.status_code == 202, video.text
    assert video.json()["total"] == 5 and video.json()["kind"] == "video"
    images = httpx.post(url + "/jobs", files=[("images", ("a.jpg", photo(0))),
                                              ("images", ("b.zip", zipped({"x/1.jpg": photo(1), "2.jpg": photo(2)})))],
                        timeout=60)
    assert images.status_code == 202, images.text
    assert images.json()["total"] == 3
    job = images.json()["id"]
    assert images.headers["Location"] == f"/result/{job}"
    state = httpx.get(url + f"/result/{job}", timeout=10).json()
    assert (state["status"], state["done"], state["total"]) == ("PENDING", 0, 3)
    assert (uploads / job).is_dir()

    cancelled = httpx.delete(url + f"/jobs/{job}", timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "REVOKED"
    assert not (uploads / job).exists()
    state = httpx.get(url + f"/result/{job}", timeout=10).json()
    assert state["status"] == "REVOKED" and "cancelled" in state["error"]
    again = httpx.delete(url + f"/jobs/{job}", timeout=10)
    assert again.status_code == 409 and "REVOKED" in again.json()["error"]
    assert httpx.delete(url + "/jobs/not-a-job", timeout=10).status_code == 404


def test_zip_entry_names_are_labels_never_paths(api):
    """Path traversal names are reported as given; nothing is written outside the job's folder."""
    url, uploads = api
    hostile = zipped({"../../escaped.jpg": photo(0), "/abs/olute.jpg": photo(1), "ok\x00\x1b.jpg": photo(2)})
    response = httpx.post(url + "/jobs", files={"images": ("t.zip", hostile)}, timeout=60)
    assert response.status_code == 202, response.text
    job = response.json()["id"]
    assert sorted(p.name for p in (uploads / job).iterdir()) == ["00000.zip", "items.jsonl"]
    assert not (uploads.parent / "escaped.jpg").exists() and not Path("/abs/olute.jpg").exists()
    assert httpx.delete(url + f"/jobs/{job}", timeout=10).status_code == 200
