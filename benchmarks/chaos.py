"""Chaos: the whole service under load while random processes of every role are killed with SIGKILL.

    python -m benchmarks.chaos --minutes 10 --seed 1 --out benchmarks/results/benchmark-chaos

It starts `imageclf run` as `make run` does (its own embedded Redis, which the launcher restarts), serving the
shared ImageNet MobileNet. For `--minutes` it sends, all at once:
- `/predict` from closed-loop clients (labelled photos; a 202 is followed at /result/<id>),
- Open Inference Protocol requests (`POST /v2/models/<m>/infer`, the photo as binary BYTES),
- a zip job of 30-50 photos every ~12 s, a video every fourth job, an evaluation (ImageFolder zip) every ~60 s;
and every 4-9 s (seeded) kills one process with SIGKILL. The roles are taken in seeded rounds, each round every
role once in a shuffled order, so that a short run still kills each: Redis, the API's gunicorn master and
worker, the gRPC server, Flower, a model worker's main and pool process, a decoder's main and pool process. The
launchers themselves (imageclf run, imageclf.launch.start_workers) are the supervisors and are left alone, as init is.

Then it stops the load and checks what the service promises (exit status 1 if any check fails):
- every accepted job ends SUCCESS with each of its items answered once, in upload order, with the right labels
  (an evaluation: accuracy 1.0 on all its images; a video: its labelled summary);
- every request is answered 200 with the right label, or 202 then SUCCESS with it, or refused 503/429; a
  connection broken or refused only while an API process it used had just been killed; no 500, nothing that
  hangs past its own timeout;
- the shared photos are answered right again within 30 s of the last kill;
- the service's memory (all its processes) ends within 1.5x of where it started.
It prints kills per role, outcomes per route, the longest wait beyond normal latency per role killed (requests:
latency minus the median of requests that saw no kill; jobs: the longest time without progress), and the
recovery time.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import signal
import statistics
import struct
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from benchmarks import ROOT
from benchmarks.reports import publish
from imageclf.launch.service_process import ServiceProcess

SHARED = ROOT.parent / "shared" / "assets"
MODEL = "mobilenet_v1_0.75"
ROLES = ("redis", "api-master", "api-worker", "grpc", "flower", "model-main", "model-child", "decoder-main",
         "decoder-child")
API_ROLES = {"api-master", "api-worker"}
PREDICT_TIMEOUT_S = 30.0  # /predict's and v2's own default (PREDICT_TIMEOUT_S)
HANG_SLACK_S = 15.0       # an HTTP call that takes longer than its timeout plus this hangs
RESULT_DEADLINE_S = 300.0  # a 202 or a job still not ended this long after the load stopped is lost
RECOVERY_LIMIT_S = 30.0
MEMORY_LIMIT = 1.5


def labelled() -> list[dict[str, Any]]:
    rows = [line.split("\t") for line in (SHARED / "MANIFEST.tsv").read_text().splitlines()]
    header = rows[0]
    records = [dict(zip(header, row)) for row in rows[1:]]
    return [r for r in records if r["expected_class_id"]]


PHOTOS = [(r["path"], (SHARED / r["path"]).read_bytes(), int(r["expected_class_id"]))
          for r in labelled() if r["kind"] == "image"]
VIDEOS = [(r["path"], r["expected_label"]) for r in labelled() if r["path"] in ("video/cockatoo.mp4",
                                                                                 "video/dog_corgi.mp4")]


def role_of(proc: psutil.Process) -> str | None:
    """The role a process of the service plays (None: a launcher, or something else)."""
    cmd = " ".join(proc.cmdline())
    parent = proc.parent()
    parent_cmd = " ".join(parent.cmdline()) if parent else ""
    if "redis-server" in cmd:
        return "redis"
    if "gunicorn" in cmd:
        return "api-worker" if "gunicorn" in parent_cmd else "api-master"
    if "imageclf.api.grpc_server" in cmd:
        return "grpc"
    if " flower" in cmd:
        return "flower"
    if " worker" in cmd and "celery" in cmd:
        kind = "decoder" if "--queues jobs" in cmd else "model"
        return f"{kind}-child" if "celery" in parent_cmd else f"{kind}-main"
    return None


def processes(root: int) -> dict[str, list[psutil.Process]]:
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.Process(root).children(recursive=True):
        try:
            role = role_of(proc)
        except psutil.Error:
            continue
        if role:
            found.setdefault(role, []).append(proc)
    return found


def rss_mb(root: int) -> float:
    total = 0.0
    for proc in psutil.Process(root).children(recursive=True):
        try:
            total += proc.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return total


def redis_url_of(svc: ServiceProcess) -> str:
    """The embedded Redis' URL, as the launcher logged it."""
    for line in svc.log_path.read_text(errors="replace").splitlines():
        if "listening on redis://" in line:
            return line.split("listening on ", 1)[1].split()[0]
    raise RuntimeError("the launcher never said where its Redis listens")


def where_is(client: redis.Redis, task_id: str) -> dict[str, Any]:
    """Where a classify task's traces are in Redis: for a request never answered, which step lost it."""
    queued = [q.decode() for q in client.keys("interactive.*") + client.keys("bulk.*")
              if any(task_id.encode() in m for m in client.lrange(q, 0, -1))]
    unacked = [(tag.decode(), client.zscore("unacked_index", tag)) for tag, raw in client.hscan_iter("unacked")
               if task_id.encode() in raw]
    return {"id": task_id, "pixels": bool(client.exists(f"imageclf:pixels:{task_id}")),
            "result": bool(client.exists(f"celery-task-meta-{task_id}")),
            "deliveries": (client.get(f"imageclf:deliveries:{task_id}") or b"").decode(), "queued_in": queued,
            "unacked": [(tag, round(time.time() - score, 1) if score else None) for tag, score in unacked]}


def diagnose(svc: ServiceProcess, chaos: Chaos) -> list[dict[str, Any]]:
    """For every request still unanswered and every item of a job not ended: where it is in Redis."""
    client = redis.Redis.from_url(redis_url_of(svc), socket_timeout=10)
    found = [where_is(client, o.detail_id) for o in chaos.outcomes if o.outcome == "202-never-ended" and o.detail_id]
    for job in chaos.jobs:
        if job.ended is None:
            pending = client.hgetall(f"imageclf:job:{job.id}:pending")
            record = client.hgetall(f"imageclf:job:{job.id}")
            fields = {k.decode(): v.decode(errors="replace") for k, v in record.items()
                      if k.decode() not in ("spec", "result")}
            found.append({"job": job.id, "fields": fields, "items": client.hlen(f"imageclf:job:{job.id}:items"),
                          "model_window": client.zcard(f"imageclf:bulk:in-flight:{MODEL}"),
                          "pending": [where_is(client, tid.decode()) for tid in list(pending)[:5]]})
    return found


@dataclass
class Outcome:
    route: str
    started: float
    ended: float
    outcome: str          # 200, 202-success, refused-503, refused-429, api-killed, and the failures
    ok: bool
    detail: str = ""
    detail_id: str = ""   # the request's id, when it was accepted


@dataclass
class Job:
    id: str
    kind: str
    submitted: float
    expected: dict[str, Any]
    progress: list[tuple[float, int]] = field(default_factory=list)
    ended: float | None = None
    ok: bool = False
    detail: str = "did not end"


class Chaos:
    def __init__(self, svc: ServiceProcess, seed: int, roles: tuple[str, ...] = ROLES) -> None:
        self.svc = svc
        self.roles = roles
        self.rng = random.Random(seed)
        self.load_rng = random.Random(seed + 1)
        self.kills: list[tuple[float, str, int]] = []
        self.outcomes: list[Outcome] = []
        self.jobs: list[Job] = []
        self.lock = threading.Lock()
        self.stop_load = threading.Event()
        self.stop_kills = threading.Event()

    # -- what the clients see ------------------------------------------------------------------------------------

    def api_killed_during(self, started: float, ended: float, before_s: float = 30.0) -> bool:
        return any(role in API_ROLES and started - before_s <= t <= ended for t, role, _ in self.kills)

    def killed_during(self, started: float, ended: float) -> bool:
        return any(started <= t <= ended for t, _, _ in self.kills)

    def record(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def transport_failure(self, route: str, started: float, exc: Exception) -> Outcome:
        ended = time.time()
        if isinstance(exc, httpx.TimeoutException):
            return Outcome(route, started, ended, "hang", False, repr(exc))
        if self.api_killed_during(started, ended):
            return Outcome(route, started, ended, "api-killed", True, type(exc).__name__)
        return Outcome(route, started, ended, "connection-failed", False, repr(exc))

    def predict_client(self, index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(timeout=PREDICT_TIMEOUT_S + HANG_SLACK_S) as http:
            while not self.stop_load.is_set():
                name, photo, expected = rng.choice(PHOTOS)
                started = time.time()
                try:
                    response = http.post(self.svc.url + "/predict", files={"image": (Path(name).name, photo)})
                except httpx.HTTPError as exc:
                    self.record(self.transport_failure("/predict", started, exc))
                    time.sleep(0.5)
                    continue
                self.record(self.predict_outcome(http, started, response, expected))

    def predict_outcome(self, http: httpx.Client, started: float, response: httpx.Response,
                        expected: int) -> Outcome:
        status = response.status_code
        if status in (503, 429):
            time.sleep(0.5)  # as a client honouring Retry-After would, roughly
            return Outcome("/predict", started, time.time(), f"refused-{status}", True)
        if status == 200:
            top = response.json()["predictions"][0]["class_id"]
            return Outcome("/predict", started, time.time(), "200" if top == expected else "wrong-label",
                           top == expected, f"{top} != {expected}" if top != expected else "")
        if status == 202:
            body = self.follow_request(http, response.json()["id"])
            if body is None:
                return Outcome("/predict", started, time.time(), "202-never-ended", False, response.text,
                               response.json()["id"])
            if body["status"] != "SUCCESS":
                return Outcome("/predict", started, time.time(), "202-failed", False, json.dumps(body)[:300])
            top = body["result"]["predictions"][0]["class_id"]
            return Outcome("/predict", started, time.time(), "202-success" if top == expected else "wrong-label",
                           top == expected)
        return Outcome("/predict", started, time.time(), f"http-{status}", False, response.text[:300])

    def follow_request(self, http: httpx.Client, task_id: str) -> dict[str, Any] | None:
        deadline = None
        while True:
            if self.stop_load.is_set() and deadline is None:
                deadline = time.monotonic() + RESULT_DEADLINE_S
            if deadline is not None and time.monotonic() > deadline:
                return None
            try:
                body = http.get(f"{self.svc.url}/result/{task_id}").json()
                if body.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                    return body
            except (httpx.HTTPError, ValueError):
                pass  # the API is restarting: ask again
            time.sleep(0.5)

    def v2_client(self, index: int) -> None:
        rng = random.Random(1000 + index)
        with httpx.Client(timeout=PREDICT_TIMEOUT_S + HANG_SLACK_S) as http:
            while not self.stop_load.is_set():
                _, photo, expected = rng.choice(PHOTOS)
                header = json.dumps({
                    "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                "parameters": {"binary_data_size": 4 + len(photo)}}],
                    "outputs": [{"name": "probabilities", "parameters": {"classification": 1,
                                                                         "binary_data": False}}]}).encode()
                started = time.time()
                try:
                    response = http.post(f"{self.svc.url}/v2/models/{MODEL}/infer",
                                         content=header + struct.pack("<I", len(photo)) + photo,
                                         headers={"Content-Type": "application/octet-stream",
                                                  "Inference-Header-Content-Length": str(len(header))})
                except httpx.HTTPError as exc:
                    self.record(self.transport_failure("v2", started, exc))
                    time.sleep(0.5)
                    continue
                ended = time.time()
                status = response.status_code
                if status == 200:
                    top = int(response.json()["outputs"][0]["data"][0].split(":")[1])
                    self.record(Outcome("v2", started, ended, "200" if top == expected else "wrong-label",
                                        top == expected))
                elif status in (503, 429):
                    self.record(Outcome("v2", started, ended, f"refused-{status}", True))
                    time.sleep(0.5)
                elif status == 504:  # not answered within its timeout: a clear status, if a kill explains it
                    self.record(Outcome("v2", started, ended, "timeout-504", self.killed_during(started - 30, ended),
                                        response.text[:200]))
                else:
                    self.record(Outcome("v2", started, ended, f"http-{status}", False, response.text[:300]))

    # -- jobs ----------------------------------------------------------------------------------------------------

    def job_submitter(self) -> None:
        count = 0
        while not self.stop_load.wait(self.load_rng.uniform(9, 15)):
            count += 1
            if count % 5 == 0:
                self.submit_evaluation()
            elif count % 4 == 0:
                self.submit_video()
            else:
                self.submit_zip()

    def submit(self, kind: str, expected: dict[str, Any], **request: Any) -> None:
        started = time.time()
        try:
            response = httpx.post(self.svc.url + "/jobs", timeout=60, **request)
        except httpx.HTTPError as exc:
            self.record(self.transport_failure("/jobs", started, exc))
            return
        if response.status_code in (503, 429):
            self.record(Outcome("/jobs", started, time.time(), f"refused-{response.status_code}", True))
            return
        if response.status_code != 202:
            self.record(Outcome("/jobs", started, time.time(), f"http-{response.status_code}", False,
                                response.text[:300]))
            return
        self.record(Outcome("/jobs", started, time.time(), "202", True))
        job = Job(response.json()["id"], kind, started, expected)
        with self.lock:
            self.jobs.append(job)
        threading.Thread(target=self.follow_job, args=(job,), daemon=True).start()

    def submit_zip(self) -> None:
        chosen = [self.load_rng.choice(PHOTOS) for _ in range(self.load_rng.randint(30, 50))]
        names = [f"{i:03d}_{Path(name).name}" for i, (name, _, _) in enumerate(chosen)]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            for entry, (_, photo, _) in zip(names, chosen):
                z.writestr(entry, photo)
        self.submit("zip", {"names": names, "labels": [c for _, _, c in chosen]},
                    files={"images": ("photos.zip", archive.getvalue(), "application/zip")})

    def submit_video(self) -> None:
        path, label = self.load_rng.choice(VIDEOS)
        self.submit("video", {"label": label}, files={"video": (Path(path).name, (SHARED / path).read_bytes())},
                    data={"fps": "1"})

    def submit_evaluation(self) -> None:
        chosen = [self.load_rng.choice(PHOTOS) for _ in range(self.load_rng.randint(20, 40))]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            for i, (name, photo, class_id) in enumerate(chosen):
                z.writestr(f"{class_id}/{i:03d}_{Path(name).name}", photo)
        self.submit("evaluation", {"images": len(chosen)},
                    files={"images": ("labelled.zip", archive.getvalue(), "application/zip")},
                    data={"evaluate": "true"})

    def follow_job(self, job: Job) -> None:
        deadline = None
        with httpx.Client(timeout=30) as http:
            while True:
                if self.stop_load.is_set() and deadline is None:
                    deadline = time.monotonic() + RESULT_DEADLINE_S
                if deadline is not None and time.monotonic() > deadline:
                    job.detail = f"still {job.progress[-1] if job.progress else 'unseen'} {RESULT_DEADLINE_S:g} s " \
                                 "after the load stopped"
                    return
                try:
                    body = http.get(f"{self.svc.url}/result/{job.id}").json()
                except (httpx.HTTPError, ValueError):
                    time.sleep(0.5)
                    continue
                if "status" not in body:  # an error answer (Redis restarting): ask again
                    time.sleep(0.5)
                    continue
                job.progress.append((time.time(), body.get("done", 0)))
                if body["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                    job.ended = time.time()
                    job.ok, job.detail = check_job(job, body)
                    return
                time.sleep(0.5)

    # -- the killer ----------------------------------------------------------------------------------------------

    def killer(self) -> None:
        rounds: list[str] = []
        while not self.stop_kills.wait(self.rng.uniform(4, 9)):
            if not rounds:
                rounds = list(self.roles)
                self.rng.shuffle(rounds)
            found = processes(self.svc.proc.pid)
            role = next((r for r in rounds if found.get(r)), None)  # the next role with a process up now
            if role is None:
                continue
            rounds.remove(role)
            victim = self.rng.choice(sorted(found[role], key=lambda p: p.pid))
            at = time.time()  # before the signal: a client cut by it may note its failure before this thread runs
            try:
                victim.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
            with self.lock:
                self.kills.append((at, role, victim.pid))
            print(f"[chaos] {time.strftime('%H:%M:%S')} killed {role} (pid {victim.pid})", file=sys.stderr,
                  flush=True)

    def recovery_s(self, since: float, limit_s: float = 120.0) -> float | None:
        """Seconds from `since` (the last kill) until one pass over every labelled photo is all right."""
        deadline = time.monotonic() + limit_s
        with httpx.Client(timeout=PREDICT_TIMEOUT_S) as http:
            while time.monotonic() < deadline:
                try:
                    right = all(
                        (r := http.post(self.svc.url + "/predict", files={"image": photo})).status_code == 200
                        and r.json()["predictions"][0]["class_id"] == expected for _, photo, expected in PHOTOS)
                except httpx.HTTPError:
                    right = False
                if right:
                    return time.time() - since
                time.sleep(0.5)
        return None


def check_job(job: Job, body: dict[str, Any]) -> tuple[bool, str]:
    """Whether a finished job is what was asked, each item answered once and right; why not."""
    if body["status"] != "SUCCESS":
        return False, f"{body['status']}: {body.get('error', '')}"[:300]
    result = body["result"]
    if job.kind == "zip":
        items = result["items"]
        names = [item["name"].split("/", 1)[-1] for item in items]  # "<zip>/<entry>"
        if names != job.expected["names"] or [item["index"] for item in items] != list(range(len(names))):
            return False, f"items {len(items)} not the {len(job.expected['names'])} uploaded, in order"
        wrong = [(item["name"], item.get("error") or item["predictions"][0]["class_id"])
                 for item, label in zip(items, job.expected["labels"])
                 if item["status"] != "SUCCESS" or item["predictions"][0]["class_id"] != label]
        return (not wrong), f"wrong or failed: {wrong[:3]}" if wrong else ""
    if job.kind == "video":
        times = [frame["t"] for frame in result["frames"]]
        if len(times) != body["total"] or times != sorted(set(times)):
            return False, f"{len(times)} frames for {body['total']}, or out of order"
        label = result["summary"]["label"]
        return label == job.expected["label"], f"summary {label}, expected {job.expected['label']}"
    figures = next(iter(result["versions"].values()))
    if figures["images"] != job.expected["images"] or figures["accuracy"] != 1.0:
        return False, f"{figures['images']} images, accuracy {figures['accuracy']}"
    return True, ""


def waits_beyond_normal(chaos: Chaos) -> dict[str, Any]:
    """Per role killed: the longest request latency beyond the median of requests that saw no kill, and the
    longest time a job went without progress. A request's wait is put on the first kill from 10 s before it
    started to its end (what was down when it arrived, or what died under it), a job's pause on the first kill
    from 10 s before the pause to its end."""
    answered = [o for o in chaos.outcomes if o.route in ("/predict", "v2") and o.outcome in ("200", "202-success")]
    calm = [o.ended - o.started for o in answered if not chaos.killed_during(o.started - 30, o.ended)]
    normal = statistics.median(calm) if calm else 0.0
    waits: dict[str, dict[str, float]] = {role: {"request_s": 0.0, "job_s": 0.0} for role in ROLES}
    longest: tuple[float, str, float, float] = (0.0, "", 0.0, 0.0)
    kills = sorted(chaos.kills)
    for o in answered:
        role = _first_kill(kills, o.started - 10, o.ended)
        if role:
            waits[role]["request_s"] = max(waits[role]["request_s"], o.ended - o.started - normal)
    for job in chaos.jobs:
        moves = [job.progress[0]] if job.progress else []
        for point in job.progress[1:]:
            if point[1] != moves[-1][1]:
                moves.append(point)
        if job.ended and moves:
            moves.append((job.ended, -1))
        for (t0, _), (t1, _) in zip(moves, moves[1:]):
            role = _first_kill(kills, t0 - 10, t1)
            if role:
                waits[role]["job_s"] = max(waits[role]["job_s"], t1 - t0)
            longest = max(longest, (t1 - t0, job.id, t0, t1))
    figures: dict[str, Any] = {role: {k: round(v, 1) for k, v in w.items()} for role, w in waits.items()}
    pause, job_id, t0, t1 = longest
    figures["normal_request_s"] = {"request_s": round(normal, 3), "job_s": 0.0}
    figures["longest_job_pause"] = {
        "job": job_id, "seconds": round(pause, 1), "from": time.strftime("%H:%M:%S", time.localtime(t0)),
        "kills_before_and_during": [f"{time.strftime('%H:%M:%S', time.localtime(t))} {role}"
                                    for t, role, _ in kills if t0 - 20 <= t <= t1]}
    return figures


def _first_kill(kills: list[tuple[float, str, int]], since: float, until: float) -> str | None:
    return next((role for t, role, _ in kills if since <= t <= until), None)


def run(minutes: float, seed: int, clients: int, v2_clients: int, roles: tuple[str, ...] = ROLES) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    env = {"MODEL": MODEL, "MODEL_WEIGHTS": str(SHARED / "models" / "mobilenet_v1_0.75_224_imagenet.keras"),
           "CLASS_INDEX": str(SHARED / "imagenet_class_index.json"), "REDIS_URL": "",
           "REDIS_DATA_DIR": str(work / "redis"), "UPLOAD_DIR": str(work / "uploads"),
           "MODEL_CACHE_DIR": str(work / "model-cache")}
    svc = ServiceProcess(env, work / "service.log").start(600)
    chaos = Chaos(svc, seed, roles)
    try:
        warm = Chaos(svc, seed)  # one answer of each photo before the clock starts
        if warm.recovery_s(time.time(), 300) is None:
            raise SystemExit(f"the service never answered every photo right:\n{svc.log_tail()}")
        memory_before = rss_mb(svc.proc.pid)
        load = [threading.Thread(target=chaos.predict_client, args=(i,)) for i in range(clients)]
        load += [threading.Thread(target=chaos.v2_client, args=(i,)) for i in range(v2_clients)]
        load += [threading.Thread(target=chaos.job_submitter)]
        killer = threading.Thread(target=chaos.killer)
        started = time.time()
        for thread in [*load, killer]:
            thread.start()
        time.sleep(minutes * 60)
        chaos.stop_kills.set()
        killer.join()
        chaos.stop_load.set()
        last_kill = chaos.kills[-1][0] if chaos.kills else time.time()
        recovery = chaos.recovery_s(last_kill)
        for thread in load:
            thread.join()
        deadline = time.monotonic() + RESULT_DEADLINE_S + 30
        while any(job.ended is None and not job.detail.startswith("still") for job in chaos.jobs) \
                and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)  # what the drain freed is given back
        memory_after = rss_mb(svc.proc.pid)
        launcher_alive = svc.proc.poll() is None
        stuck = diagnose(svc, chaos)
    finally:
        code = svc.stop(180)
    result = report(chaos, minutes, seed, started, recovery, memory_before, memory_after, launcher_alive, code,
                    svc.log_tail(40))
    result["stuck_in_redis"] = stuck
    result["work_dir"] = str(work)
    return result


def report(chaos: Chaos, minutes: float, seed: int, started: float, recovery: float | None, memory_before: float,
           memory_after: float, launcher_alive: bool, code: int, log_tail: str) -> dict[str, Any]:
    routes: dict[str, Counter] = {}
    for o in chaos.outcomes:
        routes.setdefault(o.route, Counter())[o.outcome] += 1
    jobs = Counter(f"{job.kind}: {'SUCCESS, all items right' if job.ok else 'FAILED CHECK'}" for job in chaos.jobs)
    failures = [f"{o.route} {o.outcome} at +{o.started - started:.0f} s: {o.detail}" for o in chaos.outcomes
                if not o.ok]
    failures += [f"job {job.id} ({job.kind}): {job.detail}" for job in chaos.jobs if not job.ok]
    checks = {
        "every accepted job ended SUCCESS, each item once and right": all(job.ok for job in chaos.jobs),
        "every request answered, refused or broken by a killed API process (no 500, no hang)":
            all(o.ok for o in chaos.outcomes),
        f"photos right within {RECOVERY_LIMIT_S:g} s of the last kill": recovery is not None
                                                                         and recovery <= RECOVERY_LIMIT_S,
        f"memory within {MEMORY_LIMIT:g}x of the start": memory_after <= MEMORY_LIMIT * memory_before,
        "the launcher kept running and stopped cleanly": launcher_alive and code == 0,
    }
    return {
        "minutes": minutes, "seed": seed, "ok": all(checks.values()), "checks": checks,
        "kills": dict(Counter(role for _, role, _ in chaos.kills)), "kills_total": len(chaos.kills),
        "routes": {route: dict(counts) for route, counts in routes.items()},
        "jobs": dict(jobs), "jobs_accepted": len(chaos.jobs),
        "jobs_stuck": sum(job.ended is None for job in chaos.jobs),
        "requests_lost": sum(o.outcome in ("202-never-ended", "hang") for o in chaos.outcomes),
        "waits_beyond_normal_s": waits_beyond_normal(chaos), "recovery_s": None if recovery is None
        else round(recovery, 1), "memory_mb": {"start": round(memory_before), "end": round(memory_after)},
        "failures": failures[:30], "log_tail": log_tail if failures or not launcher_alive else "",
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# Chaos: {r['minutes']:g} minutes, seed {r['seed']}: {'PASSED' if r['ok'] else 'FAILED'}", "",
             "| check | |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in r["checks"].items()]
    lines += ["", f"Kills: {r['kills_total']}", "", "| role killed | kills | longest request wait beyond normal, s "
              "| longest job without progress, s |", "|---|---|---|---|"]
    waits = r["waits_beyond_normal_s"]
    lines += [f"| {role} | {r['kills'].get(role, 0)} | {waits[role]['request_s']} | {waits[role]['job_s']} |"
              for role in ROLES]
    lines += ["", f"Normal request latency (median of those no kill touched): "
              f"{waits['normal_request_s']['request_s'] * 1000:.0f} ms", "",
              "| route | outcomes |", "|---|---|"]
    lines += [f"| {route} | {', '.join(f'{k}: {v}' for k, v in sorted(c.items()))} |"
              for route, c in r["routes"].items()]
    lines += ["", f"Jobs accepted: {r['jobs_accepted']}, stuck: {r['jobs_stuck']}; "
              + ", ".join(f"{k}: {v}" for k, v in sorted(r["jobs"].items())),
              f"Requests lost: {r['requests_lost']}",
              f"Recovery (photos right after the last kill): {r['recovery_s']} s",
              f"Memory of the service's processes: {r['memory_mb']['start']} MB at the start, "
              f"{r['memory_mb']['end']} MB at the end",
              f"Longest pause of a job: {waits['longest_job_pause']}"]
    if r["failures"]:
        lines += ["", "Failures:", *[f"- {f}" for f in r["failures"]]]
    if r["log_tail"]:
        lines += ["", "```", r["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=6, help="closed-loop /predict clients")
    parser.add_argument("--v2-clients", type=int, default=2, help="closed-loop Open Inference Protocol clients")
    parser.add_argument("--roles", default=",".join(ROLES), help="the roles killed, comma-separated")
    parser.add_argument("--out", type=Path, help="write the report as <out>.json and <out>.md")
    args = parser.parse_args()
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    if not roles or set(roles) - set(ROLES):
        parser.error(f"--roles: choose among {', '.join(ROLES)}")
    result = run(args.minutes, args.seed, args.clients, args.v2_clients, roles)
    publish(result, args.out, markdown)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
