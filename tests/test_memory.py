"""Bounded memory whatever arrives: 62-megapixel PNGs of one colour (200 KB files, 250 MB decoded).

48 uploads from 24 clients are all answered, or refused with 503 + Retry-After; the API's
RSS stays under 1 GB and is back under 400 MB within a minute. The same files in jobs keep
each decoder process under 1 GB and give the memory back.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from PIL import Image

from tests.helpers import SHARED, finished_job, labelled_photos

MB = 2**20


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (7900, 7900), (40, 140, 90)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 300_000
    return buffer.getvalue()


def _processes(service, match: Callable[[str], bool]) -> list[psutil.Process]:
    children = psutil.Process(service.proc.pid).children(recursive=True)
    return [p for p in children if match(" ".join(p.cmdline()))]


def _rss(processes: list[psutil.Process]) -> list[int]:
    sizes = []
    for p in processes:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.NoSuchProcess:
            sizes.append(0)
    return sizes


class _PeakSampler:
    """Samples the processes' RSS every 20 ms in a thread; `peak` is the largest seen."""

    def __init__(self, processes: list[psutil.Process], combine: Callable[[list[int]], int]) -> None:
        self.processes, self.combine, self.peak = processes, combine, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.combine(_rss(self.processes)))
            time.sleep(0.02)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _settles_under(processes: list[psutil.Process], combine, limit: int, within_s: float) -> int:
    deadline = time.monotonic() + within_s
    while (now := combine(_rss(processes))) >= limit and time.monotonic() < deadline:
        time.sleep(0.5)
    return now


def test_48_huge_pngs_from_24_clients_keep_the_api_under_1_gb(service, huge_png):
    api = _processes(service, lambda cmd: "gunicorn" in cmd)
    assert api, "no gunicorn process found"

    def send(_: int) -> httpx.Response:
        return httpx.post(service.url + "/predict", files={"image": ("huge.png", huge_png)}, timeout=120)

    with _PeakSampler(api, sum) as sampler, ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(send, range(48)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 2, statuses  # the budget lets them through, one after another
    assert all("Retry-After" in r.headers and "decode budget" in r.json()["error"]
               for r in responses if r.status_code == 503)
    assert sampler.peak <= 1024 * MB, f"API peak RSS {sampler.peak / MB:.0f} MB"
    settled = _settles_under(api, sum, 400 * MB, 60)
    assert settled < 400 * MB, f"API RSS still {settled / MB:.0f} MB a minute later"
    print(f"API: {statuses.count(200)} answered, {statuses.count(503)} refused; "
          f"peak {sampler.peak / MB:.0f} MB, then {settled / MB:.0f} MB")
    photo = SHARED / labelled_photos()[0]["path"]
    assert httpx.post(service.url + "/predict", files={"image": photo.read_bytes()}, timeout=60).status_code == 200


def test_huge_pngs_in_jobs_keep_each_decoder_under_1_gb(service, huge_png):
    decoders = _processes(service, lambda cmd: "decoder@" in cmd)
    assert decoders, "no decoder process found"
    files = [("images", (f"huge-{i}.png", huge_png)) for i in range(4)]
    with _PeakSampler(decoders, max) as sampler:
        jobs = [httpx.post(service.url + "/jobs", files=files, timeout=60) for _ in range(2)]
        for job in jobs:
            assert job.status_code == 202, job.text
            body = finished_job(service.url, job.headers["Location"], 180)
            assert body["status"] == "SUCCESS" and body["result"]["succeeded"] == 4, body
    assert sampler.peak <= 1024 * MB, f"a decoder's peak RSS {sampler.peak / MB:.0f} MB"
    settled = _settles_under(decoders, max, 400 * MB, 60)
    assert settled < 400 * MB, f"a decoder's RSS still {settled / MB:.0f} MB a minute later"
    print(f"decoders: peak {sampler.peak / MB:.0f} MB per process, then {settled / MB:.0f} MB")
