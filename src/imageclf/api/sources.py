"""Jobs that name their images where they already are: `source`, a folder under JOB_SOURCE_ROOTS, or an object
store prefix (`s3://bucket/prefix`).

A million images need no upload. A folder lies on a volume that the API and every decoder mount at the same
path, and the job's items name its files. Only what lies inside a root may be read: `..` is refused, and the
folder and every file in it are resolved (symbolic links followed) and must stay inside the root they were
named under, so a link cannot lead a job to /etc. The decoders check each file again as they read it
(imageclf.workers.jobs.driver), since the volume can change between the listing and the reading.

An `s3://` prefix is listed with fsspec's s3fs, which takes its credentials, region and endpoint from the
environment as boto does (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...); the decoders read each object the same way.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from imageclf.api.errors import APIError
from imageclf.workers.jobs.store import S3_SCHEME, inside, source_roots


def source_folder(source: str) -> tuple[Path, Path]:
    """(the folder, resolved; the root it lies in) for `source`: a path relative to a root (the first root holding
    it), or an absolute path inside one. 400 naming the problem otherwise."""
    allowed = source_roots()
    if not allowed:
        raise APIError(400, "this service reads no folders: 'source' needs JOB_SOURCE_ROOTS (folders every decoder "
                            "mounts at the same path); upload the images as 'images' instead")
    if "\x00" in source or not source.strip():
        raise APIError(400, "'source' must be a folder path")
    if ".." in PurePosixPath(source).parts:
        raise APIError(400, f"'source' may not contain '..': {source[:200]!r}")
    given = Path(source)
    candidates = [given] if given.is_absolute() else [root / given for root in allowed]
    for candidate in candidates:
        root = next((r for r in allowed if inside(Path(os.path.abspath(candidate)), r)), None)
        if root is None:
            continue
        real = candidate.resolve()
        if not inside(real, root):
            raise APIError(400, f"'source' {source[:200]!r} leads outside JOB_SOURCE_ROOTS through a symbolic link")
        if real.is_dir():
            return real, root
    if given.is_absolute() and not any(inside(Path(os.path.abspath(given)), r) for r in allowed):
        raise APIError(400, f"'source' {source[:200]!r} is outside JOB_SOURCE_ROOTS "
                            f"({', '.join(map(str, allowed))})")
    raise APIError(400, f"'source' {source[:200]!r} is not a folder under JOB_SOURCE_ROOTS")


def source_items(source: str, most: int, limit: str) -> list[dict[str, Any]]:
    """One item per file under the `source` folder or `s3://` prefix (subfolders included, hidden files skipped),
    in path order: its name relative to the source (so an ImageFolder tree names its classes) and where to read
    it. At most `most` (the setting `limit`): 413 past it; 400 when it holds no file, a link leads outside, or
    the bucket cannot be listed (with the provider's error)."""
    if source.startswith(S3_SCHEME):
        return _object_items(source, most, limit)
    folder, root = source_folder(source)
    items: list[dict[str, Any]] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(current) / name
            real = path.resolve()
            relative = path.relative_to(folder).as_posix()
            if not inside(real, root):
                raise APIError(400, f"'source' holds {relative!r}, a symbolic link leading outside "
                                    "JOB_SOURCE_ROOTS")
            items.append({"name": relative, "path": relative, "source": str(real)})
            if len(items) > most:
                raise APIError(413, f"the folder holds more than {most} files ({limit})")
    if not items:
        raise APIError(400, f"'source' {source[:200]!r} holds no files")
    return items


def _object_items(source: str, most: int, limit: str) -> list[dict[str, Any]]:
    """source_items for an `s3://bucket/prefix`."""
    from s3fs import S3FileSystem  # imported only for an object store source: aiobotocore is a heavy import

    prefix = source[len(S3_SCHEME):].strip("/")
    if not prefix or ".." in PurePosixPath(prefix).parts:
        raise APIError(400, f"'source' must be s3://<bucket>/<prefix> without '..', got {source[:200]!r}")
    try:
        keys = sorted(S3FileSystem().find(prefix))
    except Exception as exc:  # botocore, aiohttp and fsspec raise many kinds; all mean the same to the client
        raise APIError(400, f"cannot list {source[:200]!r}: {type(exc).__name__}: {exc}") from None
    items: list[dict[str, Any]] = []
    for key in keys:
        relative = key[len(prefix):].lstrip("/") or PurePosixPath(key).name
        if any(part.startswith(".") for part in PurePosixPath(relative).parts):
            continue
        items.append({"name": relative, "path": relative, "source": S3_SCHEME + key})
        if len(items) > most:
            raise APIError(413, f"the prefix holds more than {most} objects ({limit})")
    if not items:
        raise APIError(400, f"'source' {source[:200]!r} holds no objects")
    return items
