"""Jobs that name a `source` folder under JOB_SOURCE_ROOTS, or an s3:// prefix (on a local S3 server), instead of
uploading: every file is answered, in path order, a labelled tree evaluates, nothing outside the roots can be
named or reached through a link, and a bucket that cannot be listed is refused with the provider's error."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.helpers import ROOT, S3_CREDENTIALS, SHARED, finished_job, labelled_photos


def photo_tree(root: Path, by_class: bool = False) -> tuple[str, list[str], list[int]]:
    """A new folder under `root` holding the labelled photos in two subfolders (or one per class name); its name,
    the files in path order, and their classes."""
    folder = root / f"set-{uuid.uuid4().hex[:8]}"
    placed = []
    for i, row in enumerate(labelled_photos()):
        sub = row["expected_label"] if by_class else ("a" if i % 2 else "b")
        name = f"{sub}/{i:03d}{Path(row['path']).suffix}"
        (folder / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / row["path"], folder / name)
        placed.append((name, int(row["expected_class_id"])))
    placed.sort()
    return folder.name, [n for n, _ in placed], [c for _, c in placed]


def test_a_source_folder_is_classified_file_by_file_in_path_order(service, source_root):
    name, files, classes = photo_tree(source_root)
    (source_root / name / ".hidden.jpg").write_bytes(b"skipped")
    for source in (name, str(source_root / name)):  # relative to a root, or absolute inside one
        submitted = httpx.post(service.url + "/jobs", data={"source": source}, timeout=30)
        assert submitted.status_code == 202 and submitted.json()["total"] == len(files), submitted.text
        body = finished_job(service.url, submitted.json()["result_url"])
        items = body["result"]["items"]
        assert [item["name"] for item in items] == files
        assert [item["predictions"][0]["class_id"] for item in items] == classes


def test_a_labelled_source_tree_is_evaluated(service, source_root):
    name, files, _ = photo_tree(source_root, by_class=True)
    submitted = httpx.post(service.url + "/jobs", data={"source": name, "evaluate": "true"}, timeout=30)
    assert submitted.status_code == 202, submitted.text
    figures = finished_job(service.url, submitted.json()["result_url"])["result"]["versions"]["1"]
    assert figures["images"] == len(files) and figures["accuracy"] == 1.0


def test_what_lies_outside_the_roots_is_refused_naming_the_problem(service, source_root, tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes((SHARED / labelled_photos()[0]["path"]).read_bytes())
    escape = source_root / f"escape-{uuid.uuid4().hex[:8]}"
    os.symlink(outside, escape)
    leaky = source_root / f"leaky-{uuid.uuid4().hex[:8]}"
    leaky.mkdir()
    os.symlink(outside / "secret.jpg", leaky / "photo.jpg")
    (source_root / "plain-file.jpg").write_bytes(b"x")
    empty = source_root / f"empty-{uuid.uuid4().hex[:8]}"
    empty.mkdir()
    cases = {
        "../private": "may not contain '..'",
        f"{leaky.name}/../../private": "may not contain '..'",
        str(outside): "outside JOB_SOURCE_ROOTS",
        escape.name: "through a symbolic link",
        leaky.name: "a symbolic link leading outside",
        "plain-file.jpg": "is not a folder",
        "no-such-folder": "is not a folder",
        empty.name: "holds no files",
    }
    for source, problem in cases.items():
        response = httpx.post(service.url + "/jobs", data={"source": source}, timeout=30)
        assert response.status_code == 400 and problem in response.json()["error"], (source, response.text)
    both = httpx.post(service.url + "/jobs", data={"source": leaky.name}, timeout=30,
                      files={"images": ("x.jpg", b"\xff\xd8")})
    assert both.status_code == 400 and "not both" in both.json()["error"]


def test_an_s3_prefix_is_classified_object_by_object_in_key_order(service, s3_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                      region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])
    bucket, prefix = f"photos-{uuid.uuid4().hex[:8]}", "incoming/2026"
    s3.create_bucket(Bucket=bucket)
    placed = []
    for i, row in enumerate(labelled_photos()):
        key = f"{'a' if i % 2 else 'b'}/{i:03d}{Path(row['path']).suffix}"
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=(SHARED / row["path"]).read_bytes())
        placed.append((key, int(row["expected_class_id"])))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/.DS_Store", Body=b"skipped")
    placed.sort()
    submitted = httpx.post(service.url + "/jobs", data={"source": f"s3://{bucket}/{prefix}/"}, timeout=60)
    assert submitted.status_code == 202 and submitted.json()["total"] == len(placed), submitted.text
    items = finished_job(service.url, submitted.json()["result_url"])["result"]["items"]
    assert [item["name"] for item in items] == [key for key, _ in placed]
    assert [item["predictions"][0]["class_id"] for item in items] == [c for _, c in placed]

    s3.create_bucket(Bucket=bucket + "-empty")
    cases = {
        f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x": "bucket does not exist",
        f"s3://{bucket}-empty/anything": "holds no objects",
        "s3://": "must be s3://<bucket>/<prefix>",
        f"s3://{bucket}/../other": "without '..'",
    }
    for source, problem in cases.items():
        response = httpx.post(service.url + "/jobs", data={"source": source}, timeout=60)
        assert response.status_code == 400 and problem in response.json()["error"], (source, response.text)


def test_the_cli_classifies_a_source_folder_and_refuses_paths_beside_it(service, source_root, tmp_path):
    name, files, classes = photo_tree(source_root)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imageclf.client", "classify", "--url", service.url,
                               "--no-progress", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    done = cli("--source", name, "--csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [row["name"] for row in rows] == files
    labels = {int(row["expected_class_id"]): row["expected_label"] for row in labelled_photos()}
    assert [row["label"] for row in rows] == [labels[c] for c in classes]
    both = cli("--source", name, str(tmp_path))
    assert both.returncode == 2 and "not both" in both.stderr
    outside = cli("--source", "../etc")
    assert outside.returncode == 1 and "may not contain '..'" in outside.stderr
