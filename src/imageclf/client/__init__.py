"""A small Python client for the service.

    from imageclf.client import Client
    with Client("http://127.0.0.1:5000") as c:
        c.predict("dog.jpg")["predictions"][0]["label"]
        job = c.submit("holiday.mp4", fps=2)            # or a list of images, folders, zips
        c.wait(job["id"], on_progress=print)["result"]["summary"]

Every non-2xx answer raises ServiceError with the service's own error message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

__all__ = ["Client", "ServiceError", "collect_files", "is_video"]

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".3gp", ".flv",
                            ".wmv", ".ogv"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".ico"})
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class ServiceError(Exception):
    """The service refused or failed a request; `status` is the HTTP status (0: unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the images and zips inside folders (recursively, sorted); FileNotFoundError if missing."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                            and p.suffix.lower() in IMAGE_SUFFIXES | {".zip"})
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    return found


class Client:
    def __init__(self, url: str = "http://127.0.0.1:5000", api_key: str | None = None, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(self, image: str | Path | bytes, top: int = 5, model: str | None = None) -> dict[str, Any]:
        """Classify one image (with `model`, or the service's default); waits for the answer even past the
        service's synchronous timeout."""
        content = image if isinstance(image, bytes) else Path(image).read_bytes()
        name = "image" if isinstance(image, bytes) else Path(image).name
        params = {"top": top, **({"model": model} if model else {})}
        body = self._call("POST", "/predict", params=params, files={"image": (name, content)})
        if body.get("status") in ("PENDING", "STARTED"):  # 202: queued longer than the timeout
            final = self.wait(body["id"])
            if final["status"] != "SUCCESS":
                raise ServiceError(500, final.get("error", final["status"]))
            return final["result"]
        return body

    def submit(self, paths: str | Path | Iterable[str | Path], top: int = 5, fps: float | None = None,
               every_n_frames: int | None = None, max_frames: int | None = None,
               model: str | None = None) -> dict[str, Any]:
        """Start a job: one video, or images, zips and folders of images. Returns {"id", "total", ...} at once."""
        files = collect_files([paths] if isinstance(paths, (str, Path)) else paths)
        if not files:
            raise ValueError("nothing to submit: no image, zip or video found")
        videos = [f for f in files if is_video(f)]
        if videos and len(files) > 1:
            raise ValueError("a job is either one video or a set of images and zips; submit videos one by one")
        form = {k: str(v) for k, v in {"top": top, "fps": fps, "every_n_frames": every_n_frames,
                                       "max_frames": max_frames, "model": model}.items() if v is not None}
        field = "video" if videos else "images"
        with ExitStack() as stack:  # files are streamed from disk, not read into memory
            uploads = [(field, (f.name, stack.enter_context(open(f, "rb")))) for f in files]
            return self._call("POST", "/jobs", data=form, files=uploads)

    def submit_source(self, source: str, top: int = 5, model: str | None = None) -> dict[str, Any]:
        """Start a job on images that are already where the service's decoders can read them, uploading nothing:
        a folder under the service's JOB_SOURCE_ROOTS, or an `s3://bucket/prefix`. Returns {"id", "total", ...}
        at once."""
        form = {k: str(v) for k, v in {"source": source, "top": top, "model": model}.items() if v is not None}
        return self._call("POST", "/jobs", data=form)

    def evaluate(self, paths: str | Path | Iterable[str | Path], versions: str | None = None,
                 labels: str | Path | None = None, model: str | None = None) -> dict[str, Any]:
        """Start an evaluation job: zips in ImageFolder layout (or images with a `file,label` CSV), on each of
        `versions` ("1,2"; default: the model's default version). Returns {"id", "total", ...} at once."""
        files = [f for f in collect_files([paths] if isinstance(paths, (str, Path)) else paths) if not is_video(f)]
        if not files:
            raise ValueError("nothing to evaluate: no image or zip found")
        form = {k: v for k, v in {"evaluate": "true", "versions": versions, "model": model}.items() if v}
        with ExitStack() as stack:
            uploads = [("images", (f.name, stack.enter_context(open(f, "rb")))) for f in files]
            if labels is not None:
                uploads.append(("labels", (Path(labels).name, stack.enter_context(open(labels, "rb")))))
            return self._call("POST", "/jobs", data=form, files=uploads)

    def evaluation_csv(self, job_id: str) -> str:
        """A finished evaluation's per-image predictions as CSV text."""
        try:
            response = self._http.get(f"/result/{job_id}", params={"format": "csv"})
        except httpx.TransportError as exc:
            raise ServiceError(0, f"cannot reach {self._http.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise ServiceError(response.status_code, response.json().get("error", response.reason_phrase))
        return response.text

    def result(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/result/{task_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/jobs/{job_id}")

    def wait(self, task_id: str, on_progress: Callable[[int, int], None] | None = None, poll_s: float = 0.5,
             timeout: float | None = None) -> dict[str, Any]:
        """Poll until the request or job ends; `on_progress(done, total)` after every poll of a job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            body = self.result(task_id)
            if on_progress is not None and "total" in body:
                on_progress(body["done"], body["total"])
            if body["status"] in FINAL_STATES:
                return body
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{task_id} still {body['status']} after {timeout:g} s")
            time.sleep(poll_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceError(0, f"cannot reach {self._http.base_url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        if response.status_code >= 400:
            raise ServiceError(response.status_code, body.get("error", response.reason_phrase))
        return body
