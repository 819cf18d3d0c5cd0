"""Closing the loop on the real service: the review queue (rules, dedup, labelling, exports and imports) and
promotion by evidence (a good candidate promoted step by step to the default, a bad one rolled back), with its own
Redis and embedded PostgreSQL.

The repository is made here: `plants` classifies an image's mean colour (tests/user_models.py). Version 2 is an
exact copy of version 1 (a good candidate: the same answers); version 3 is version 1 unable to say class 0 (a bad
candidate: wrong on one class, right on the others). The synthetic ground truth is version 1's answer, computed
in-process with Keras on the pixels the service makes.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import ProcessGroup, wait_until
from imageclf.models.images import decode_to_pixels
from tests.helpers import ROOT, screenshot
from tests.user_models import LABELS, colour_classifier, write_model

ADMIN = "review-admin-key"
AS_ADMIN = {"X-API-Key": ADMIN}
SIZE = (160, 160)


def bad_classifier():
    """Version 1 that never answers class 0: its images go to their second-best class."""
    model = colour_classifier(1)
    weights, bias = model.layers[-1].get_weights()
    bias[0] -= 100.0
    model.layers[-1].set_weights([weights, bias])
    return model


def texture(rng: np.random.Generator) -> np.ndarray:
    """An image of coloured 8×8 blocks over a colour: distinct structure (perceptual hashes far apart) and a mean
    colour that spreads the answers over the classes."""
    blocks = rng.integers(0, 2, (8, 8, 1)).astype(np.float32)
    low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    image = (low + blocks * (high - low)).astype(np.uint8)
    return np.asarray(Image.fromarray(image).resize(SIZE, Image.Resampling.NEAREST))


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = [png(texture(np.random.default_rng(1000 + i))) for i in range(60)]


@pytest.fixture(scope="module")
def expected() -> dict[int, np.ndarray]:
    """Each version's probabilities for IMAGES, on the service's pixels."""
    pixels = np.stack([np.frombuffer(decode_to_pixels(data, SIZE, 10**9), np.uint8).reshape(*SIZE, 3)
                       for data in IMAGES]).astype("float32") / 255
    return {1: colour_classifier(1).predict(pixels, verbose=0), 3: bad_classifier().predict(pixels, verbose=0)}


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    from imageclf.launch.redis_server import start_scratch_redis

    work = tmp_path_factory.mktemp("review-promotion")
    repository = work / "models"
    for version, make in ((1, lambda: colour_classifier(1)), (2, lambda: colour_classifier(1)), (3, bad_classifier)):
        write_model(repository, "plants", version, lambda d, make=make: make().save(d / "model.keras"),
                    config={"version_policy": {"all": True}, "traffic": {"default": 1}})
    group = ProcessGroup()
    service = ServiceProcess({
        "REDIS_URL": start_scratch_redis(group, work), "MODEL_REPOSITORY": str(repository), "MODELS": "plants",
        "MODEL_POLL_S": "0.5", "PROMOTION_CHECK_S": "0.5", "API_WORKERS": "1", "API_THREADS": "32",
        "BATCH_SIZE": "8", "ADMIN_API_KEYS": ADMIN, "UPLOAD_DIR": str(work / "uploads"),
        "POSTGRES_DATA_DIR": str(work / "postgres"), "SHADOW_MAX_QUEUED": "100000",
    }, work / "service.log").start()
    yield service
    try:
        assert service.stop() == 0, service.log_tail()
    finally:
        group.stop_all()


def put_policy(svc: ServiceProcess, **policy) -> None:
    answer = httpx.put(svc.url + "/models/plants/policy", json=policy, headers=AS_ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    time.sleep(1.5)  # the workers re-read config.json every MODEL_POLL_S, the API its routes every second


def predict(svc: ServiceProcess, data: bytes, **params) -> dict:
    answer = httpx.post(svc.url + "/predict", params={"top": 4, **params}, files={"image": ("i.png", data)},
                        timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def queue(svc: ServiceProcess, **params) -> dict:
    answer = httpx.get(svc.url + "/review", params={"model": "plants", "labelled": "all", "limit": 1000, **params},
                       headers=AS_ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def kept_ids(svc: ServiceProcess, asked: set[str], until=lambda kept: True, timeout_s: float = 60) -> dict:
    """The kept images among `asked` (id -> reasons) once `until(kept)` holds (the writers are asynchronous, and
    the shadow copies run after the answers), or as they are after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        kept = {item["id"]: item["reasons"] for item in queue(svc)["items"] if item["id"] in asked}
        if until(kept) or time.monotonic() > deadline:
            return kept
        time.sleep(0.5)


def test_review_needs_an_admin_key(svc: ServiceProcess):
    assert httpx.get(svc.url + "/review", timeout=10).status_code == 401
    assert httpx.get(svc.url + "/review", headers={"X-API-Key": "not-a-key"}, timeout=10).status_code == 403
    bad = httpx.get(svc.url + "/review", params={"reason": "bored"}, headers=AS_ADMIN, timeout=10)
    assert bad.status_code == 400 and "confidence_below" in bad.json()["error"]
    refused = httpx.put(svc.url + "/models/plants/policy", json={"review": {"confidence": 1}}, headers=AS_ADMIN,
                        timeout=10)
    assert refused.status_code == 400 and "unknown key" in refused.json()["error"]


def test_the_rules_select_exactly_the_images_they_describe(svc: ServiceProcess, expected):
    confidences = np.sort(expected[1].max(axis=1))
    gaps = [(b - a, (a + b) / 2) for a, b in zip(confidences, confidences[1:]) if 0.3 < (a + b) / 2 < 0.8]
    threshold = float(max(gaps)[1])  # in the widest gap: no image sits on the line
    put_policy(svc, review={"confidence_below": threshold, "shadow_disagrees": True, "random_share": 20,
                            "distance": 4}, shadow={"version": 3, "share": 100})
    answers = [predict(svc, data) for data in IMAGES]
    for answer, probabilities in zip(answers, expected[1]):
        assert answer["model_version"] == 1
        assert answer["predictions"][0]["probability"] == pytest.approx(float(probabilities.max()), abs=1e-4)

    def reasons(request_id: str, row: np.ndarray, disagrees: bool) -> list[str]:
        found = ["confidence_below"] if row.max() < threshold else []
        found += ["shadow_disagrees"] if disagrees else []
        return found + (["random_share"] if zlib.crc32(b"review:" + request_id.encode()) % 10_000 < 2000 else [])

    wanted = {}
    for answer, v1, v3 in zip(answers, expected[1], expected[3]):
        first = reasons(answer["id"], v1, False)  # the default's row is written first; the shadow's is its duplicate
        shadow = reasons(answer["id"], v3, int(v1.argmax()) != int(v3.argmax()))
        if first or shadow:
            wanted[answer["id"]] = first or shadow
    assert {"confidence_below", "shadow_disagrees", "random_share"} <= {r for rs in wanted.values() for r in rs}
    assert len(wanted) < len(IMAGES)  # some images match no rule
    assert kept_ids(svc, {a["id"] for a in answers}, lambda kept: kept == wanted) == wanted
    time.sleep(2)  # and nothing more comes
    assert kept_ids(svc, {a["id"] for a in answers}) == wanted


def test_dedup_keeps_one_of_ten_near_identical_frames(svc: ServiceProcess):
    put_policy(svc, review={"random_share": 100, "distance": 6}, shadow=None)
    rng = np.random.default_rng(7)
    scene = texture(rng)
    frames = []
    for _ in range(10):
        noisy = np.clip(scene.astype(np.int16) + rng.integers(-6, 7, scene.shape), 0, 255).astype(np.uint8)
        frames.append(png(np.roll(noisy, int(rng.integers(0, 3)), axis=1)))
    others = [png(texture(np.random.default_rng(5000 + i))) for i in range(5)]
    frame_ids = {predict(svc, frame)["id"] for frame in frames}
    other_ids = {predict(svc, other)["id"] for other in others}
    assert set(kept_ids(svc, other_ids, lambda kept: set(kept) == other_ids)) == other_ids
    time.sleep(2)  # the frames went first: their rows are written by now
    assert len(kept_ids(svc, frame_ids)) == 1


FIGURES = ("labelled", "accuracy", "top5_accuracy", "per_class", "confusion")


def _evaluate(svc: ServiceProcess, path: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "imageclf", "evaluate", str(path), "--model", "plants", "--versions",
                           "1", "--json", "--url", svc.url], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_labels_exports_and_imports_agree_with_the_live_figures(svc: ServiceProcess, expected, tmp_path: Path):
    items = [item for item in queue(svc)["items"] if item["label"] is None]
    assert len(items) >= 10
    truth = {}
    for n, item in enumerate(items):  # labels that agree with version 1 on some images only
        answer = httpx.post(svc.url + f"/review/{item['id']}", json={"label": LABELS[n % 4]}, headers=AS_ADMIN,
                            timeout=30)
        assert answer.status_code == 200, answer.text
        truth[item["id"]] = LABELS[n % 4]
    assert httpx.post(svc.url + f"/review/{items[0]['id']}", json={"label": "mould"}, headers=AS_ADMIN,
                      timeout=30).status_code == 400
    assert httpx.post(svc.url + "/review/no-such-id", json={"label": "rust"}, headers=AS_ADMIN,
                      timeout=30).status_code == 404
    thumbnail = httpx.get(svc.url + items[0]["thumbnail"], headers=AS_ADMIN, timeout=30)
    assert thumbnail.status_code == 200 and Image.open(io.BytesIO(thumbnail.content)).size == (160, 160)

    def live() -> dict:
        figures = httpx.get(svc.url + "/models/plants/quality", params={"window": "1h"}, timeout=30).json()
        return {k: figures["versions"]["1"][k] for k in FIGURES}

    before = live()
    assert before["labelled"] == len(truth)  # every kept request has its version-1 answer
    assert 0 < before["accuracy"] < 1

    exports = {}
    for kind in ("imagefolder", "csv", "labelstudio"):
        answer = httpx.get(svc.url + "/review/export", params={"format": kind, "model": "plants"}, headers=AS_ADMIN,
                           timeout=60)
        assert answer.status_code == 200, answer.text
        exports[kind] = zipfile.ZipFile(io.BytesIO(answer.content))
    folders = Counter(name.split("/")[0] for name in exports["imagefolder"].namelist())
    assert sum(folders.values()) == len(truth) and set(folders) <= set(LABELS)

    archive = tmp_path / "imagefolder.zip"
    archive.write_bytes(httpx.get(svc.url + "/review/export", params={"format": "imagefolder"}, headers=AS_ADMIN,
                                  timeout=60).content)
    offline = _evaluate(svc, archive)
    result = offline["versions"]["1"]
    assert result["images"] == before["labelled"]
    assert {k: result[k] for k in FIGURES[1:]} == {k: before[k] for k in FIGURES[1:]}

    csv_text = exports["csv"].read("labels.csv").decode()
    assert csv_text.startswith("file,label,id\n") and len(csv_text.strip().splitlines()) == len(truth) + 1
    tasks = json.loads(exports["labelstudio"].read("tasks.json"))
    assert "<Choice value=\"rust\"/>" in exports["labelstudio"].read("label_config.xml").decode()
    assert all(t["predictions"][0]["result"][0]["value"]["choices"][0] in LABELS for t in tasks)
    annotated = [t for t in tasks if t.get("annotations")]
    assert {t["data"]["imageclf_id"]: t["annotations"][0]["result"][0]["value"]["choices"][0]
            for t in annotated} == truth

    for files in ({"file": ("labels.csv", csv_text.encode())},
                  {"file": ("export.json", exports["labelstudio"].read("tasks.json"))}):
        imported = httpx.post(svc.url + "/review/import", files=files, headers=AS_ADMIN, timeout=60)
        assert imported.status_code == 200, imported.text
        assert imported.json()["labelled"] == len(truth)
        assert imported.json()["skipped"] == (len(tasks) - len(annotated) if files["file"][0].endswith(".json") else 0)
        assert live() == before
    assert {item["id"]: item["label"] for item in queue(svc, labelled="true")["items"]} == truth


class Load:
    """16 clients, each classifying an image every THINK_S after its last answer, and a labeller giving every
    answer its ground truth (version 1's class) a moment later, as feedback. The pause leaves the workers the
    headroom a service keeps for its shadow copies, which wait behind every client's request."""

    def __init__(self, svc: ServiceProcess, expected: dict[int, np.ndarray], clients: int = 16) -> None:
        self.svc, self.truth = svc, [LABELS[int(row.argmax())] for row in expected[1]]
        self.statuses: Counter = Counter()
        self.answered: list[tuple[float, str, str]] = []
        self.labelled = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]
        self._threads.append(threading.Thread(target=self._labeller))
        for thread in self._threads:
            thread.start()

    def _client(self, n: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = n
            while not self._stop.is_set():
                try:
                    answer = client.post(self.svc.url + "/predict", files={"image": ("i.png", IMAGES[i % 60])})
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                    continue
                with self._lock:
                    self.statuses[answer.status_code] += 1
                    if answer.status_code == 200:
                        self.answered.append((time.monotonic(), answer.json()["id"], self.truth[i % 60]))
                i += 16
                self._stop.wait(THINK_S)

    def _labeller(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.wait(0.5):
                with self._lock:
                    cutoff = time.monotonic() - 1.5
                    ready = [a for a in self.answered if a[0] < cutoff]
                    self.answered = [a for a in self.answered if a[0] >= cutoff]
                entries = [{"id": request_id, "label": label} for _, request_id, label in ready]
                while entries:
                    answer = client.post(self.svc.url + "/feedback", json=entries)
                    if answer.status_code == 200:
                        self.labelled += len(entries)
                        break
                    missing = answer.json()["error"].split("'")[1]  # not written yet: that one waits for later
                    with self._lock:
                        self.answered += [(time.monotonic(), e["id"], e["label"]) for e in entries
                                          if e["id"] == missing]
                    entries = [e for e in entries if e["id"] != missing]

    def stop(self) -> Counter:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.statuses


THINK_S = 0.2


def promotion(svc: ServiceProcess) -> dict:
    return httpx.get(svc.url + "/models/plants/promotion", timeout=30).json()


def config(svc: ServiceProcess) -> dict:
    return json.loads((Path(svc.env["MODEL_REPOSITORY"]) / "plants" / "config.json").read_text())


PLAN = {"steps": [5, 25, 50, 100], "hold": "2s", "min_compared": 30, "min_labelled": 30, "agreement_at_least": 0.97,
        "accuracy_drop_at_most": 0.01, "p95_ratio_at_most": 5.0, "error_rate_at_most": 0.001}


def test_a_bad_candidate_is_rolled_back_at_the_first_step_by_the_accuracy_guard(svc: ServiceProcess, expected):
    put_policy(svc, review=None, shadow=None)
    load = Load(svc, expected)
    try:
        put_policy(svc, promotion={**PLAN, "candidate": 3, "agreement_at_least": None})
        assert wait_until(lambda: promotion(svc)["status"] == "rolled_back", 180), promotion(svc)
    finally:
        statuses = load.stop()
    state = promotion(svc)
    rollback, start = state["history"][0], state["history"][-1]
    assert start["action"] == "start" and start["share"] == 5
    assert rollback["action"] == "rollback" and rollback["step"] == 0 and rollback["share"] == 0
    assert rollback["guard"] == "accuracy_drop_at_most"
    accuracy = rollback["figures"]["accuracy_drop_at_most"]
    assert accuracy["ok"] is False and accuracy["candidate_accuracy"] < accuracy["default_accuracy"] == 1.0
    assert accuracy["candidate_labelled"] >= 30
    written = config(svc)
    assert written["traffic"]["3"] == 0 and written["traffic"]["default"] == 1 and "shadow" not in written
    assert set(statuses) == {200}, statuses


def test_a_good_candidate_is_promoted_through_every_step_to_the_default(svc: ServiceProcess, expected):
    load = Load(svc, expected)
    try:
        put_policy(svc, promotion={**PLAN, "candidate": 2})
        assert wait_until(lambda: promotion(svc)["status"] == "promoted", 300), promotion(svc)
        time.sleep(2)  # requests on the new default
    finally:
        statuses = load.stop()
    assert set(statuses) == {200}, statuses
    assert load.labelled > 100
    history = [h for h in promotion(svc)["history"] if h["candidate"] == 2][::-1]
    assert [(h["action"], h["share"]) for h in history] == [("start", 5), ("advance", 25), ("advance", 50),
                                                            ("promote", 100)]
    for step in history[1:]:
        assert set(step["figures"]) == {"agreement_at_least", "accuracy_drop_at_most", "p95_ratio_at_most",
                                        "error_rate_at_most"}
        assert all(figure["ok"] for figure in step["figures"].values()), step
        assert step["figures"]["agreement_at_least"]["value"] == 1.0
    written = config(svc)
    assert written["traffic"]["default"] == 2 and "2" not in written["traffic"] and "shadow" not in written
    assert wait_until(lambda: predict(svc, IMAGES[0])["model_version"] == 2, 30)


def test_operators_pause_resume_and_abort_a_rollout(svc: ServiceProcess):
    put_policy(svc, promotion={**PLAN, "candidate": 1, "hold": "1h"})  # 1 back, behind the default 2
    assert wait_until(lambda: promotion(svc)["status"] == "running", 30), promotion(svc)
    assert httpx.post(svc.url + "/models/plants/promotion/pause", timeout=10).status_code == 401
    for action, status in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        answer = httpx.post(svc.url + f"/models/plants/promotion/{action}", headers=AS_ADMIN, timeout=10)
        assert answer.status_code == 202, answer.text
        assert wait_until(lambda status=status: promotion(svc)["status"] == status, 30), promotion(svc)
        assert promotion(svc)["history"][0]["by"].startswith("admin key")
    assert config(svc)["traffic"]["1"] == 0
    assert httpx.post(svc.url + "/models/plants/promotion/launch", headers=AS_ADMIN, timeout=10).status_code == 404


def test_the_quality_and_review_views(svc: ServiceProcess, browser):
    put_policy(svc, review={"random_share": 100, "distance": 4}, promotion=None)
    waiting = {predict(svc, png(texture(np.random.default_rng(9000 + i))))["id"] for i in range(6)}
    assert len(kept_ids(svc, waiting, lambda kept: len(kept) == 6)) == 6
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.goto(svc.url + "/#quality")
    page.wait_for_selector('article[data-model="plants"] tr[data-action="promote"]', timeout=30_000)
    decisions = page.locator('article[data-model="plants"] .promotion tbody tr').evaluate_all(
        "rows => rows.map(r => r.dataset.action)")
    assert decisions == [h["action"] for h in promotion(svc)["history"]]
    failed = page.locator("tr[data-action='rollback'] .figures .failed-guard").first.text_content()
    assert failed.startswith("accuracy drop"), failed
    assert page.locator("svg.chart polyline").count() >= 2  # a line per labelled version
    assert page.locator("table.drift tbody tr").count() >= 1
    screenshot(page, "web-quality-view")

    page.goto(svc.url + "/#review")
    page.fill("#review-key", ADMIN)
    page.dispatch_event("#review-key", "change")
    page.wait_for_function("() => document.querySelectorAll('#review-grid li').length === 6", timeout=30_000)
    page.wait_for_function("() => [...document.querySelectorAll('#review-grid img')].every(i => i.complete &&"
                           " i.naturalWidth > 0)", timeout=30_000)
    screenshot(page, "web-review")
    first = page.locator("#review-grid button").first.get_attribute("data-id")
    page.locator("#review-grid button").first.click()
    page.fill("#labeller-search", "no such class")
    page.click("#labeller-save")
    assert "not one of the model's classes" in page.locator("#labeller-error").text_content()
    page.fill("#labeller-search", "scab")
    page.click("#labeller-save")
    page.wait_for_function("() => document.querySelectorAll('#review-grid li').length === 5", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#labeller').open", timeout=10_000)  # the next image is up
    labelled = {item["id"]: item["label"] for item in queue(svc, labelled="true")["items"]}
    assert labelled[first] == "scab"
    context.close()
