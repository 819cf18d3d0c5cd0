"""Evaluation jobs (POST /jobs evaluate=true) against the real service: each version's figures on a labelled
set equal a straight in-process computation (Keras on the very pixels the service makes, imageclf.models.evaluation
over its answers); ImageFolder zips and a labels CSV; the refusals; the CSV download.

The model is made here: `colours` tells three classes apart by an image's mean colour (tests/user_models.py),
versions 1 and 2 with different weights, so they agree on some images and not on others.
"""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from imageclf.launch.service_process import ServiceProcess
from imageclf.models.evaluation import Evaluation, Prediction, agreement
from imageclf.models.images import decode_to_pixels
from tests.helpers import SHARED, labelled_photos, screenshot
from tests.user_models import colour_classifier, coloured_images, write_model

CLASSES = ["red", "green", "blue"]
SEEDS = {1: 1, 2: 2}
IMAGES = coloured_images(30, seed=5)
TRUTH = [i % 3 for i in range(len(IMAGES))]  # the dataset's labels, whatever the models say


@pytest.fixture(scope="module")
def svc(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    repo = tmp_path_factory.mktemp("evaluate_repository")
    for version, seed in SEEDS.items():
        write_model(repo, "colours", version,
                    lambda d, seed=seed: colour_classifier(seed, classes=3).save(d / "model.keras"),
                    config={"version_policy": {"all": True}}, labels=CLASSES)
    service = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/10", "MODEL_REPOSITORY": str(repo), "MODELS": "colours",
        "MODEL_POLL_S": "0.5", "API_WORKERS": "1", "BATCH_SIZE": "8",
        "UPLOAD_DIR": str(tmp_path_factory.mktemp("evaluate-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "evaluate.log").start()
    yield service
    assert service.stop() == 0, service.log_tail()


def name(i: int) -> str:
    return f"img{i:02d}.png"


def imagefolder_zip(folders: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, data in enumerate(IMAGES):
            archive.writestr(f"photos/{folders[i]}/{name(i)}", data)
    return buffer.getvalue()


def in_process(version: int, names: list[str]) -> tuple[dict, dict[str, Prediction]]:
    """The figures Keras gives on the service's pixels, computed with imageclf.models.evaluation."""
    pixels = np.stack([np.frombuffer(decode_to_pixels(d, (160, 160), 10**9), np.uint8).reshape(160, 160, 3)
                       for d in IMAGES]).astype("float32") / 255
    rows = colour_classifier(SEEDS[version], classes=3).predict(pixels, verbose=0)
    evaluation, answers = Evaluation(CLASSES), {}
    for file, label, row in zip(names, TRUTH, rows):
        order = np.argsort(-row)
        prediction = Prediction(file, label, tuple((int(c), float(row[c])) for c in order))
        evaluation.add(prediction)
        answers[file] = prediction
    return evaluation.result(), answers


def finished(svc: ServiceProcess, response: httpx.Response) -> dict:
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 120
    while (body := httpx.get(svc.url + response.json()["result_url"], timeout=10).json())["status"] not in (
            "SUCCESS", "FAILURE"):
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    assert body["status"] == "SUCCESS", body
    return body


def assert_same(got: dict, expected: dict) -> None:
    assert (got["images"], got["wrong_count"]) == (expected["images"], expected["wrong_count"])
    for key in ("accuracy", "top5_accuracy", "expected_calibration_error"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert got["confusion"] == expected["confusion"]
    assert [w["file"] for w in got["wrong"]] == [w["file"] for w in expected["wrong"]]
    for cls, figures in expected["per_class"].items():
        for key, value in figures.items():
            assert got["per_class"][cls][key] == (pytest.approx(value, abs=1e-6) if value is not None else None)


def test_an_imagefolder_zip_gives_each_versions_figures_as_computed_in_process(svc):
    files = {"images": ("plants.zip", imagefolder_zip([CLASSES[t] for t in TRUTH]))}
    body = finished(svc, httpx.post(svc.url + "/jobs", data={"evaluate": "true", "versions": "1,2"},
                                    files=files, timeout=60))
    result = body["result"]
    assert body["total"] == 2 * len(IMAGES) and result["failed"] == [] and result["failed_count"] == 0
    names = [f"plants.zip/photos/{CLASSES[t]}/{name(i)}" for i, t in enumerate(TRUTH)]
    expected = {v: in_process(v, names) for v in SEEDS}
    for version in SEEDS:
        assert_same(result["versions"][str(version)], expected[version][0])
    compared = agreement(expected[1][1], expected[2][1])
    assert 0 < compared["top1_agreement"] < 1, "the two versions must disagree on some images"
    assert result["agreement"]["1-2"]["top1_agreement"] == pytest.approx(compared["top1_agreement"])
    got = result["agreement"]["1-2"]
    assert got["disagreement_counts"] == compared["disagreement_counts"]
    assert {group: sorted(files) for group, files in got["disagreements"].items()} == compared["disagreements"]

    download = httpx.get(svc.url + body["id"].join(["/result/", "?format=csv"]), timeout=10)
    assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert len(rows) == 2 * len(IMAGES) and set(rows[0]) == {"file", "version", "true", "predicted", "probability",
                                                             "correct"}
    by_version = {v: [r for r in rows if r["version"] == str(v)] for v in SEEDS}
    assert sum(int(r["correct"]) for r in by_version[1]) == round(expected[1][0]["accuracy"] * len(IMAGES))

    heatmap = httpx.get(f"{svc.url}/result/{body['id']}", params={"format": "png", "version": "2"}, timeout=30)
    assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"
    assert heatmap.content.startswith(b"\x89PNG") and len(heatmap.content) > 5000
    missing = httpx.get(f"{svc.url}/result/{body['id']}", params={"format": "png", "version": "7"}, timeout=30)
    assert missing.status_code == 404 and "it evaluated 1, 2" in missing.json()["error"]


def test_images_with_a_labels_csv_and_class_ids_for_labels(svc):
    table = "file,label\n" + "".join(f"{name(i)},{t if i % 2 else CLASSES[t]}\n" for i, t in enumerate(TRUTH))
    files = [("images", (name(i), data)) for i, data in enumerate(IMAGES)] + [("labels", ("labels.csv", table))]
    body = finished(svc, httpx.post(svc.url + "/jobs", data={"evaluate": "true", "version": "1"}, files=files,
                                    timeout=60))
    assert list(body["result"]["versions"]) == ["1"] and "agreement" not in body["result"]
    assert_same(body["result"]["versions"]["1"], in_process(1, [name(i) for i in range(len(IMAGES))])[0])


def test_what_cannot_be_evaluated_is_refused_before_anything_is_accepted(svc):
    folders = [CLASSES[t] for t in TRUTH]
    folders[3], folders[4] = "purple", "cats"
    refused = httpx.post(svc.url + "/jobs", data={"evaluate": "true"}, timeout=60,
                         files={"images": ("x.zip", imagefolder_zip(folders))})
    assert refused.status_code == 400 and "'cats', 'purple' match no class" in refused.json()["error"]
    table = "file,label\n" + f"{name(0)},red\n"
    files = [("images", (name(i), IMAGES[i])) for i in range(3)] + [("labels", ("labels.csv", table))]
    refused = httpx.post(svc.url + "/jobs", data={"evaluate": "true"}, files=files, timeout=60)
    assert refused.status_code == 400 and f"files without a label: '{name(1)}', '{name(2)}'" in refused.json()["error"]
    loose = httpx.post(svc.url + "/jobs", data={"evaluate": "true"}, files={"images": (name(0), IMAGES[0])})
    assert loose.status_code == 400 and "not in a class folder" in loose.json()["error"]
    unserved = httpx.post(svc.url + "/jobs", data={"evaluate": "true", "versions": "1,9"}, timeout=60,
                          files={"images": ("x.zip", imagefolder_zip([CLASSES[t] for t in TRUTH]))})
    assert unserved.status_code == 404 and "served versions: 1, 2" in unserved.json()["error"]
    bad_flag = httpx.post(svc.url + "/jobs", data={"evaluate": "maybe"}, files={"images": (name(0), IMAGES[0])})
    assert bad_flag.status_code == 400 and "'evaluate' must be true or false" in bad_flag.json()["error"]
    plain = finished(svc, httpx.post(svc.url + "/jobs", files={"images": (name(0), IMAGES[0])}, timeout=60))
    not_evaluation = httpx.get(f"{svc.url}/result/{plain['id']}?format=csv", timeout=10)
    assert not_evaluation.status_code == 400 and "not an evaluation" in not_evaluation.json()["error"]
    assert json.loads(httpx.get(f"{svc.url}/result/{plain['id']}?format=xml", timeout=10).text)["error"].startswith(
        "'format' must be json, csv or png")


def test_the_cli_prints_the_figures_and_gates_on_a_minimum_accuracy(svc, tmp_path, capsys):
    from imageclf.client.cli import main

    archive = tmp_path / "photos.zip"
    archive.write_bytes(imagefolder_zip([CLASSES[t] for t in TRUTH]))
    names = [f"photos.zip/photos/{CLASSES[t]}/{name(i)}" for i, t in enumerate(TRUTH)]
    accuracy = {v: in_process(v, names)[0]["accuracy"] for v in SEEDS}
    base = ["evaluate", str(archive), "--url", svc.url, "--model", "colours", "--no-progress"]

    assert main([*base, "--versions", "1,2"]) == 0
    out = capsys.readouterr().out
    assert f"{accuracy[1]:.1%}" in out.splitlines()[1] and f"{accuracy[2]:.1%}" in out.splitlines()[2]
    assert "version 1, worst classes:" in out and "versions 1 and 2: top-1 agreement" in out

    assert main([*base, "--versions", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["versions"]["1"]["accuracy"] == pytest.approx(accuracy[1])
    assert main([*base, "--versions", "2", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(IMAGES) and {r["version"] for r in rows} == {"2"}

    assert main([*base, "--versions", "1,2", "--min-accuracy", str(min(accuracy.values()) + 1e-3)]) == 1
    assert "accuracy below" in capsys.readouterr().err
    assert main([*base, "--min-accuracy", "0"]) == 0
    assert main([*base, "--versions", "7"]) == 1 and "not served" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.zip"), "--url", svc.url]) == 2


def _photos_zip(copies: int = 1) -> bytes:
    """The shared labelled photos in ImageFolder layout, folders named by ImageNet class name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for copy in range(copies):
            for row in labelled_photos():
                archive.write(SHARED / row["path"], f"imagenet/{row['expected_label']}/{copy}-{Path(row['path']).name}")
    return buffer.getvalue()


def test_the_shared_imagenet_model_gets_every_labelled_photo_right(service):
    body = finished(service, httpx.post(service.url + "/jobs", data={"evaluate": "true"}, timeout=120,
                                        files={"images": ("photos.zip", _photos_zip())}))
    figures = body["result"]["versions"]["1"]
    assert figures["images"] == len(labelled_photos()) and figures["accuracy"] == 1.0 and figures["wrong"] == []
    assert figures["top5_accuracy"] == 1.0 and len(figures["per_class"]) == 1000
    assert figures["per_class"]["zebra"]["recall"] == 1.0 and figures["per_class"]["tabby"]["support"] == 0


def test_an_evaluation_can_be_cancelled_while_it_runs(service):
    submitted = httpx.post(service.url + "/jobs", data={"evaluate": "true"}, timeout=120,
                           files={"images": ("photos.zip", _photos_zip(copies=10))})
    assert submitted.status_code == 202, submitted.text
    cancelled = httpx.delete(f"{service.url}/jobs/{submitted.json()['id']}", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "REVOKED"
    assert cancelled.json()["done"] < submitted.json()["total"]
    body = httpx.get(service.url + submitted.json()["result_url"], timeout=10).json()
    assert body["status"] == "REVOKED"


def test_the_web_page_evaluates_a_dropped_zip(svc, browser, tmp_path):
    """In Chromium: accuracy per version, each version's heatmap, worst classes, thumbnails of the mistakes."""
    archive = tmp_path / "labelled.zip"
    archive.write_bytes(imagefolder_zip([CLASSES[t] for t in TRUTH]))
    names = [f"labelled.zip/photos/{CLASSES[t]}/{name(i)}" for i, t in enumerate(TRUTH)]
    expected = {v: in_process(v, names)[0] for v in SEEDS}
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.goto(svc.url + "/")
    page.check("#evaluate")
    page.fill("#versions", "1,2")
    page.set_input_files("#files", str(archive))
    page.wait_for_selector("#evaluation-summary", timeout=120_000)
    for version in SEEDS:
        cell = page.locator(f'#evaluation-summary tr[data-version="{version}"] td.accuracy').text_content()
        assert cell == f"{100 * expected[version]['accuracy']:.1f}%"
        section = page.locator(f'section.evaluated[data-version="{version}"]')
        page.wait_for_function(f"document.querySelector('section.evaluated[data-version=\"{version}\"] img.heatmap')"
                               "?.naturalWidth > 0", timeout=30_000)
        assert section.locator("ol.worst li").count() == 3
        shown = section.locator("ul.mistakes li")
        assert shown.count() == len(expected[version]["wrong"]) > 0
        first = expected[version]["wrong"][0]
        assert shown.first.text_content().startswith(f"{first['true']} → {first['predicted']}")
    assert "Versions 1 and 2 agree on" in page.locator("p.agreement").text_content()
    with page.expect_download() as download:
        page.click("#evaluation-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == 2 * len(IMAGES) and {r["file"] for r in rows} == set(names)
    screenshot(page, "web-evaluate")
    context.close()
